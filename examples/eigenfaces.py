"""Eigenfaces: the spectrum of faces and the top singular vectors as images.

scikit-image's bundled ``lfw_subset`` holds 200 face images of 25 x 25 pixels: a
200 x 625 matrix once each face is a row. After centering, its spectrum decays
fast, so a few "eigenfaces" capture most of the variation. The example prints
the ranks that reach 90, 95 and 99 % of the energy and draws the spectrum, the
cumulative energy and the first eigenfaces.

    python examples/eigenfaces.py [--out figures]
"""

from __future__ import annotations

import numpy as np
from _common import parser, pyplot, save_figure
from skimage import data

import dlowrank


def main() -> None:
    args = parser(__doc__).parse_args()
    faces = data.lfw_subset().reshape(200, -1).astype(np.float64)
    if args.tiny:
        faces = faces[:60]
    centered = faces - faces.mean(axis=0)
    svd = dlowrank.exact_svd(centered)
    energy = dlowrank.cumulative_energy(svd.s)
    for frac in (0.90, 0.95, 0.99):
        print(f"{frac:.0%} of the variance: rank {dlowrank.rank_for_energy(svd.s, frac)}")
    summary = dlowrank.spectrum_summary(svd.s)
    print(f"spectrum: {summary.message}")
    streaming = dlowrank.randomized_svd(centered, 8, seed=0)
    print(
        f"streaming rank 8: error {streaming.rel_error:.4f} vs optimum "
        f"{dlowrank.optimal_error(svd.s, 8).rel_frobenius:.4f}"
    )
    plt = pyplot()
    fig = plt.figure(figsize=(12, 5))
    ax = fig.add_subplot(2, 6, (1, 7))
    ax.semilogy(svd.s, "o", ms=3)
    ax.set(title="singular values", xlabel="i")
    ax = fig.add_subplot(2, 6, (2, 8))
    ax.plot(np.arange(1, len(energy) + 1), energy)
    ax.set(title="cumulative energy", xlabel="rank", ylim=(0, 1.02))
    for i in range(8):
        ax = fig.add_subplot(2, 6, 3 + i + (i >= 4) * 2)
        ax.imshow(streaming.vt[i].reshape(25, 25), cmap="RdBu")
        ax.set_title(f"eigenface {i + 1}")
        ax.axis("off")
    save_figure(fig, args.out, "eigenfaces.png")


if __name__ == "__main__":
    main()
