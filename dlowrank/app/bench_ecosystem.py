"""``dlowrank bench --suite ecosystem``: TruncatedSVD estimators side by side.

dlowrank's ``TruncatedSVD`` (streaming the Zarr path), dask-ml's ``TruncatedSVD``
(``algorithm="tsqr"``, an exact SVD by a tall-skinny QR, and ``"randomized"`` with its
default ``n_iter=5``) on ``da.from_zarr``, and scikit-learn's (randomized, default
``n_iter=5``) on the matrix loaded into memory. Each runs in a process of its own on
dask's threads (so that each peak is its own), fitting the estimator, whose explained
variance needs the total variance of A besides the SVD. A row reports seconds, reads of
A, the process tree's peak memory and the relative error sqrt(1 - sum s^2 / ||A||^2)
(exact for all four: each returns the singular values of a projection of A). A method
whose library is not installed is reported as such.

``python -m dlowrank.app.bench_ecosystem INPUT METHOD [RANK]`` runs one method.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

METHODS = ("dlowrank", "daskml_tsqr", "daskml_randomized", "sklearn")
LABELS = {
    "dlowrank": "dlowrank TruncatedSVD (Zarr path, 2 passes)",
    "daskml_tsqr": "dask-ml TruncatedSVD tsqr",
    "daskml_randomized": "dask-ml TruncatedSVD randomized (n_iter=5)",
    "sklearn": "scikit-learn TruncatedSVD (in memory, n_iter=5)",
}


def run_one(path: str, method: str, rank: int = 20) -> dict:
    import dask
    import dask.array as da
    import numpy as np

    from dlowrank.runtime.budget import PeakMemory

    if method not in METHODS:
        raise SystemExit(f"METHOD must be one of {', '.join(METHODS)}")
    try:
        with PeakMemory() as peak, dask.config.set(scheduler="threads"):
            start = time.perf_counter()
            if method == "dlowrank":
                from dlowrank import TruncatedSVD

                est = TruncatedSVD(rank, random_state=0).fit(path)
                passes = est.n_passes_
            elif method.startswith("daskml"):
                from dask_ml.decomposition import TruncatedSVD as DaskTSVD

                x = da.from_zarr(path)
                if method == "daskml_tsqr":  # tsqr needs one chunk across the columns
                    x = x.rechunk({1: -1})
                    est = DaskTSVD(rank, algorithm="tsqr").fit(x)
                    passes = 2  # the SVD's read, and the variance's
                else:
                    est = DaskTSVD(rank, algorithm="randomized", random_state=0).fit(x)
                    # svd_compressed q = 5 (12 products with A) and the variance; dask holds
                    # A in memory after its first read (compute=False), so these are not
                    # all reads of the store
                    passes = 2 * 5 + 2 + 1
            else:
                import zarr
                from sklearn.decomposition import TruncatedSVD as SkTSVD

                x = zarr.open_array(path, mode="r")[...]
                est = SkTSVD(rank, algorithm="randomized", random_state=0).fit(x)
                passes = 1  # loaded once; then in memory
            seconds = time.perf_counter() - start
    except ImportError as exc:
        return {"method": method, "missing": str(exc)}
    s = np.asarray(est.singular_values_, dtype=np.float64)
    return {
        "method": method,
        "seconds": round(seconds, 2),
        "passes": int(passes),
        "sum_s2": float(np.sum(s**2)),
        "tree_peak_mb": round(peak.peak / 2**20),
    }


def run_ecosystem_bench(
    path: str,
    rank: int = 20,
    say: Callable[[str], None] = print,
    methods: tuple[str, ...] = METHODS,
) -> dict:
    """Every method in its own process; the errors from one read of ||A||_F^2 here."""
    import dask.array as da

    fro2 = float((da.from_zarr(path).astype("f8") ** 2).sum().compute())
    rows = []
    for method in methods:
        say(LABELS[method])
        proc = subprocess.run(
            [sys.executable, "-m", "dlowrank.app.bench_ecosystem", path, method, str(rank)],
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            rows.append({"method": method, "failed": proc.stderr.strip()[-300:]})
            continue
        row = json.loads(lines[-1])
        if "sum_s2" in row:
            row["rel_error"] = max(1 - row.pop("sum_s2") / fro2, 0.0) ** 0.5
        rows.append(row)
    return {"input": path, "rank": rank, "rows": rows}


def format_ecosystem(result: dict) -> str:
    lines = [
        f"{result['input']}, rank {result['rank']}, dask threads, one process per method",
        f"{'method':48} {'seconds':>8} {'reads':>6} {'peak MB':>8} {'rel. error':>11}",
    ]
    base = next((r for r in result["rows"] if r["method"] == "dlowrank" and "seconds" in r), None)
    for r in result["rows"]:
        label = LABELS[r["method"]]
        if "seconds" not in r:
            lines.append(f"{label:48} {('not installed' if 'missing' in r else 'failed'):>8}")
            continue
        ratio = f"  ({r['seconds'] / base['seconds']:.2f}x dlowrank)" if base else ""
        lines.append(
            f"{label:48} {r['seconds']:8.2f} {r['passes']:6d} {r['tree_peak_mb']:8d} "
            f"{r['rel_error']:11.6f}{ratio}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 3):
        raise SystemExit(__doc__)
    print(json.dumps(run_one(args[0], args[1], int(args[2]) if len(args) == 3 else 20)))
