"""Gradient descent with weight decay lands on the soft-thresholded SVD.

Minimizing 1/2 ||U V^T - A||_F^2 + alpha/2 (||U||_F^2 + ||V||_F^2) over factors is
the nuclear-norm problem in disguise: its optimum is sum_i (sigma_i - alpha)_+ u_i v_i^T
(Mazumder, Hastie, Tibshirani 2010). Started from small random factors, gradient
descent (one pass over A per step) moves every singular value of U V^T to
(sigma_i - alpha)_+: the ones above alpha shrink by alpha, the others go to zero.
The plot follows them over the iterations.

    python examples/nuclear_norm.py [--out figures]
"""

from __future__ import annotations

import numpy as np
from _common import parser, pyplot, save_figure

import dlowrank


def main() -> None:
    args = parser(__doc__).parse_args()
    shape, alpha, rank = ((200, 60), 0.3, 8) if args.tiny else ((2000, 300), 0.3, 8)
    a = dlowrank.make_matrix(shape, 12, decay=0.8, noise=0.0, seed=0).array.compute()
    sigma = np.linalg.svd(a, compute_uv=False)[:rank]
    target = np.maximum(sigma - alpha, 0)
    steps = [2, 3, 5, 10, 20, 50, 100, 200, 400]  # the first pass only scales the start
    history = []
    for it in steps:
        r = dlowrank.factorize(
            a, rank, weight_decay=alpha, solver="gd", max_iter=it, tol=0.0, seed=0
        )
        history.append(np.linalg.svd(r.to_dense(), compute_uv=False)[:rank])
    oracle = dlowrank.svt(a, alpha).to_dense()
    dist = np.linalg.norm(r.to_dense() - oracle) / np.linalg.norm(oracle)
    print(f"after {steps[-1]} gradient steps: ||U V^T - X*|| / ||X*|| = {dist:.2e}")
    print("singular values of U V^T: " + " ".join(f"{v:.4f}" for v in history[-1]))
    print("(sigma - alpha)_+:         " + " ".join(f"{v:.4f}" for v in target))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    hist = np.array(history)
    for i in range(rank):
        (line,) = ax.semilogx(steps, hist[:, i], "o-", ms=3)
        ax.axhline(target[i], color=line.get_color(), ls=":", lw=1)
    ax.set(
        xlabel="gradient steps (= passes over A)",
        ylabel="singular values of $UV^T$",
        title=f"weight decay {alpha}: dotted lines are $(\\sigma_i - \\alpha)_+$",
    )
    save_figure(fig, args.out, "nuclear_norm.png")


if __name__ == "__main__":
    main()
