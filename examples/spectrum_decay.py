"""Why some matrices compress and others do not: fast-decaying against flat spectra.

Two matrices of the same size and norm: one with singular values 0.8^i, one of
pure noise (a flat, Marchenko-Pastur spectrum). At every rank the best possible
error (Eckart-Young) is tiny for the first and close to 1 for the second, and
``dlowrank.spectrum_summary`` says which is which. For the flat one, no low-rank
method can help: the information is spread over all directions.

    python examples/spectrum_decay.py [--out figures]
"""

from __future__ import annotations

import numpy as np
from _common import parser, pyplot, save_figure

import dlowrank


def main() -> None:
    args = parser(__doc__).parse_args()
    m, n = (300, 100) if args.tiny else (3000, 500)
    fast = dlowrank.make_matrix((m, n), n, decay=0.8, seed=0).array.compute()
    flat = np.random.default_rng(0).standard_normal((m, n))
    flat *= np.linalg.norm(fast) / np.linalg.norm(flat)
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, a in (("fast decay 0.8^i", fast), ("noise (flat)", flat)):
        s = dlowrank.exact_svd(a).s
        summary = dlowrank.spectrum_summary(s)
        errors = [dlowrank.optimal_error(s, k).rel_frobenius for k in range(1, n)]
        print(
            f"{name:18}: {summary.verdict:10} stable rank {summary.stable_rank:7.1f}; best "
            f"rank-10 error {errors[9]:.4f}; {summary.message}"
        )
        ax1.semilogy(np.arange(1, n + 1), s, label=name)
        ax2.plot(np.arange(1, n), errors, label=name)
    ax1.set(xlabel="i", ylabel="$\\sigma_i$", title="spectrum")
    ax2.set(xlabel="rank k", ylabel="best relative error", title="Eckart-Young error", ylim=(0, 1))
    ax1.legend()
    ax2.legend()
    save_figure(fig, args.out, "spectrum_decay.png")


if __name__ == "__main__":
    main()
