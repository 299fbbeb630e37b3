"""Image compression: rank-5/20/50 approximations of photographs, exact and streaming.

A grayscale image is a matrix; its best rank-k approximation (Eckart-Young) keeps
the k largest singular triplets. This example compresses scikit-image's bundled
"camera" and "astronaut" (in gray) at ranks 5, 20 and 50, with the exact SVD and
with dlowrank's streaming randomized SVD (its default: 2 passes), and prints both
errors next to the Eckart-Young optimum: the streaming error matches it.

    python examples/image_compression.py [--out figures]
"""

from __future__ import annotations

import numpy as np
from _common import parser, pyplot, save_figure
from skimage import color, data

import dlowrank


def main() -> None:
    args = parser(__doc__).parse_args()
    images = {"camera": data.camera() / 255.0, "astronaut": color.rgb2gray(data.astronaut())}
    ranks = (5, 20, 50)
    if args.tiny:
        images = {k: v[::4, ::4] for k, v in images.items()}
        ranks = (2, 5, 10)
    plt = pyplot()
    fig, axes = plt.subplots(len(images), len(ranks) + 1, figsize=(3 * (len(ranks) + 1), 6))
    for row, (name, img) in enumerate(images.items()):
        s_full = dlowrank.exact_svd(img).s
        axes[row, 0].imshow(img, cmap="gray")
        axes[row, 0].set_title(f"{name} (rank {np.linalg.matrix_rank(img)})")
        for col, k in enumerate(ranks, start=1):
            exact = dlowrank.exact_svd(img, k)
            fast = dlowrank.randomized_svd(img, k, seed=0)
            optimum = dlowrank.optimal_error(s_full, k).rel_frobenius
            print(
                f"{name:9} rank {k:3d}: exact {exact.rel_error:.5f}, streaming "
                f"{fast.rel_error:.5f} ({fast.passes} passes), optimum {optimum:.5f}, "
                f"storage {k * (sum(img.shape) + 1) / img.size:.1%}"
            )
            axes[row, col].imshow(np.clip(fast.to_dense(), 0, 1), cmap="gray")
            axes[row, col].set_title(f"rank {k}: rel. Frobenius error {fast.rel_error:.3f}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("randomized SVD at rank k; error = ||A - A_k||_F / ||A||_F")
    save_figure(fig, args.out, "image_compression.png")


if __name__ == "__main__":
    main()
