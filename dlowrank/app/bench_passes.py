"""``dlowrank bench --suite passes``: the error per read of each pass choice.

A pass costs a read of A; a wider sketch costs GEMM time that hides behind the read.
This suite measures, on the examples' real images, eigenfaces, and slow and flat test
spectra, the error over the optimum (mean over seeds) of:

- ``passes=2`` (the default): one power iteration at width 3 (k + p) (at most 256);
- ``passes=3`` (``n_power_iter=2``): the classic q = 2 at width k + p (dask's and the
  former default);
- ``n_power_iter=1``: one power iteration at width k + p (what 2 passes gave before);
- ``sketch_svd``: the single pass, with its error estimate's verdict.

It holds each matrix in memory (the largest is 10,000 x 1,000) and computes the
optimum with LAPACK; the time per read of the large matrices is the main suite's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np

from dlowrank.generate import make_matrix
from dlowrank.streaming import randomized_svd, sketch_svd

#: (label, keyword arguments of randomized_svd, or None for sketch_svd).
CHOICES: tuple[tuple[str, dict | None], ...] = (
    ("passes=2 (default)", {}),
    ("passes=3 (q=2)", {"passes": 3}),
    ("n_power_iter=1", {"n_power_iter": 1}),
    ("sketch_svd (1 pass)", None),
)


def matrices(scale: float = 1.0) -> Iterator[tuple[str, np.ndarray]]:
    """The suite's matrices; ``scale`` < 1 shrinks the synthetic ones (tests)."""
    from skimage import color, data

    yield "camera 512 x 512", data.camera() / 255.0
    yield "astronaut (gray) 512 x 512", color.rgb2gray(data.astronaut())
    yield "lfw faces 200 x 625", data.lfw_subset().reshape(200, -1).astype(np.float64)
    m, n = max(200, int(10_000 * scale)), max(100, int(1_000 * scale))
    for name, rank, kw in (
        ("s_i = 1/i", n, {"kind": "polynomial", "decay": 1.0}),
        ("s_i = 1/sqrt(i)", n, {"kind": "polynomial", "decay": 0.5}),
        ("flat 40 + noise", 40, {"kind": "flat", "noise": 0.3 / np.sqrt(m)}),
        ("0.95^i + noise (bench)", 200, {"decay": 0.95, "scale": 1e3, "noise": 1e-3}),
    ):
        made = make_matrix((m, n), min(rank, n), chunks=(m, n), seed=1, **kw)
        yield f"{m} x {n}, {name}", made.array.compute()
    from sklearn.datasets import make_low_rank_matrix

    yield (
        f"{m // 2} x {n}, scikit-learn low rank, tail 0.5",
        make_low_rank_matrix(m // 2, n, effective_rank=10, tail_strength=0.5, random_state=0),
    )


def run_passes_bench(
    rank: int = 20, seeds: int = 3, scale: float = 1.0, say: Callable[[str], None] = print
) -> list[dict]:
    """One row per matrix: each choice's mean error over the optimum and its passes."""
    rows = []
    for name, a in matrices(scale):
        say(f"{name}")
        s = np.linalg.svd(a, compute_uv=False)
        optimum = float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)))
        row = {"matrix": name, "optimum": optimum}
        for label, kwargs in CHOICES:
            ratios, passes = [], set()
            for seed in range(seeds):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # sketch_svd's far-from-truncation warning
                    if kwargs is None:
                        r = sketch_svd(a, rank, seed=seed)
                        u, sv, vt = np.asarray(r.u), np.asarray(r.s), np.asarray(r.vt)
                        err = np.linalg.norm(a - (u * sv) @ vt) / np.linalg.norm(a)
                    else:
                        r = randomized_svd(a, rank, seed=seed, **kwargs)
                        err = r.rel_error  # exact (Pythagoras)
                ratios.append(err / optimum)
                passes.add(r.passes)
            row[label] = {"ratio": float(np.mean(ratios)), "passes": sorted(passes)}
        rows.append(row)
    return rows


def format_passes(rows: list[dict]) -> str:
    labels = [label for label, _ in CHOICES]
    head = f"{'matrix':42}" + "".join(f"{label:>22}" for label in labels)
    lines = [head]
    for row in rows:
        cells = []
        for label in labels:
            c = row[label]
            p = "/".join(str(x) for x in c["passes"])
            cells.append(f"{c['ratio']:.4f} ({p} p)".rjust(22))
        lines.append(f"{row['matrix']:42}" + "".join(cells))
    lines.append("error / optimal rank-k error, mean over seeds; (n p): passes over A")
    return "\n".join(lines)
