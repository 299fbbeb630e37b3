"""One method of the benchmark in a process of its own, for runs under a memory cap.

``python -m dlowrank.app.bench_one INPUT METHOD [RANK]`` runs METHOD on dask's threads
and prints one JSON line: seconds, passes over A, the exact error where the method
gives one, and the process tree's peak resident memory. Under
``../shared/bench/capped.sh MB`` each method then gets its own cgroup and a cold page
cache, as the issues' figures were taken.

METHOD: ``read`` (a bare ``da.from_zarr(...).sum()``), ``dask_q2`` (dask
``svd_compressed`` q = 2), ``q2`` (``randomized_svd(passes=3)``), ``default``
(``randomized_svd``: 2 passes), ``sketch`` (``sketch_svd``); ``_dask`` after a
dlowrank method gives it ``da.from_zarr(INPUT)`` instead of the path.
"""

from __future__ import annotations

import json
import sys
import time

METHODS = ("read", "dask_q2", "q2", "default", "sketch")


def run_one(path: str, method: str, rank: int = 20) -> dict:
    import dask
    import dask.array as da

    import dlowrank
    from dlowrank.runtime.budget import PeakMemory, return_freed_memory

    name = method.removesuffix("_dask")
    if name not in METHODS or (method.endswith("_dask") and name in ("read", "dask_q2")):
        raise SystemExit(f"METHOD must be one of {', '.join(METHODS)} (dlowrank's + _dask)")
    return_freed_memory()
    err, passes = None, None
    with PeakMemory() as peak, dask.config.set(scheduler="threads"):
        start = time.perf_counter()
        if name == "read":
            da.from_zarr(path).sum().compute()
            passes = 1
        elif name == "dask_q2":
            x = da.from_zarr(path)
            u, s, v = da.linalg.svd_compressed(
                x, rank, n_power_iter=2, n_oversamples=10, seed=0, compute=True
            )
            dask.compute(u, s, v)
            passes = 6
        else:
            a = da.from_zarr(path) if method.endswith("_dask") else path
            if name == "sketch":
                r = dlowrank.sketch_svd(a, rank, seed=0)
            else:
                r = dlowrank.randomized_svd(a, rank, passes=3 if name == "q2" else None, seed=0)
            passes, err = r.passes, r.rel_error
        seconds = time.perf_counter() - start
    return {
        "method": method,
        "seconds": round(seconds, 2),
        "passes": passes,
        "rel_error": err,
        "tree_peak_mb": round(peak.peak / 2**20),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 3):
        raise SystemExit(__doc__)
    print(json.dumps(run_one(args[0], args[1], int(args[2]) if len(args) == 3 else 20)))
