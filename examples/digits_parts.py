"""Parts and cancellations: NMF against SVD on handwritten digits.

scikit-learn's bundled digits (1,797 images of 8 x 8 pixels, entries >= 0). The
SVD's components mix positive and negative pixels that cancel each other; NMF's
components are non-negative, so each is a stroke or blob that adds up to digits:
parts a person can read. Both errors are printed; the SVD's is the lowest any
rank-k approximation can reach (Eckart-Young), NMF pays a little for readability.

    python examples/digits_parts.py [--out figures]
"""

from __future__ import annotations

import numpy as np
from _common import parser, pyplot, save_figure
from sklearn.datasets import load_digits

import dlowrank


def main() -> None:
    args = parser(__doc__).parse_args()
    x = load_digits().data.astype(np.float64)
    k = 10
    if args.tiny:
        x, k = x[:300], 6
    svd = dlowrank.randomized_svd(x, k, seed=0)
    parts = dlowrank.nmf(x, k, seed=0, max_iter=300)
    negative = float(np.mean(svd.vt < 0))
    print(f"rank {k}: SVD error {svd.rel_error:.4f} (optimal), NMF error {parts.rel_error:.4f}")
    print(
        f"SVD components: {negative:.0%} of their pixels negative; NMF components: "
        f"{float(np.mean(parts.v < 0)):.0%} negative, {float(np.mean(parts.v < 1e-9)):.0%} zero"
    )
    plt = pyplot()
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.6))
    for i in range(k):
        axes[0, i].imshow(svd.vt[i].reshape(8, 8), cmap="RdBu")
        axes[1, i].imshow(parts.v[:, i].reshape(8, 8), cmap="Greys")
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[0, 0].set_title("SVD: cancelling patterns", loc="left")
    axes[1, 0].set_title("NMF: additive parts", loc="left")
    save_figure(fig, args.out, "digits_parts.png")


if __name__ == "__main__":
    main()
