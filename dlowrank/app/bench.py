"""``dlowrank bench``: dlowrank against dask and scikit-learn, side by side, in one run.

For each scheduler (dask's threads; a 2-worker LocalCluster of processes) it times
one bare read pass (the floor), dask's ``svd_compressed(compute=True)`` with the
same rank, oversampling and power iterations, scikit-learn's ``randomized_svd``
on the matrix loaded in memory (when it fits), and dlowrank's single-pass sketch
and multi-pass randomized SVD. For every method it reports seconds, passes over
A, the peak resident memory of the whole process tree, the relative Frobenius
error (measured afterwards by an untimed pass, for all methods alike), its ratio
to the optimal error, and the speed ratio to dask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil

from dlowrank.engine.passes import ByRows, PassEngine
from dlowrank.generate import generate
from dlowrank.io.matrix import open_matrix
from dlowrank.io.source import open_source
from dlowrank.kernels import passkernels
from dlowrank.runtime.budget import PeakMemory
from dlowrank.streaming import randomized_svd, sketch_svd

logger = logging.getLogger(__name__)

#: The anchor recipe (shared/bench/make_matrix.py): s_i = 1000 * 0.95^i, i < 200, noise 1e-3.
RECIPE = {"rank": 200, "kind": "exponential", "decay": 0.95, "scale": 1000.0, "noise": 1e-3}


@dataclass
class Row:
    scheduler: str
    method: str
    seconds: float
    passes: int | None
    peak_mb: float
    added_mb: float
    rel_error: float | None
    ratio_to_optimal: float | None = None
    speedup_vs_dask: float | None = None


def true_error(url: str, u: np.ndarray, s: np.ndarray, vt: np.ndarray, client: Any) -> float:
    """||A - U diag(s) V^T||_F / ||A||_F by one (untimed) pass over the stored A."""
    engine = PassEngine(open_source(url), layout="panel", client=client)
    if engine.transpose:
        u, vt = vt.T, u.T
    out = engine.run(
        passkernels.residual,
        ByRows(np.asarray(u, np.float64)),
        np.asarray(s, np.float64),
        np.asarray(vt, np.float64),
    )
    return float(np.sqrt(out.sums["res2"] / out.sums["fro2"]))


def optimal_error(attrs: dict, shape: tuple[int, int], rank: int) -> float | None:
    """Optimal rank-k relative error of a generated matrix, from its stored spectrum.

    Exact without noise; with iid noise of variance nu^2 the noise adds about
    nu^2 (m - k)(n - k) to the tail and nu^2 m n to ||A||_F^2 (its part outside the
    top-k directions), which is what this returns.
    """
    s = np.asarray(attrs.get("singular_values") or [], dtype=np.float64)
    if s.size == 0:
        return None
    m, n = shape
    nu2 = float(attrs.get("noise") or 0.0) ** 2
    tail = float(np.sum(s[rank:] ** 2)) + nu2 * (m - rank) * (n - rank)
    return float(np.sqrt(tail / (float(np.sum(s**2)) + nu2 * m * n)))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Result, seconds, peak process-tree RSS (MB) and its rise over the start (MB)."""
    with PeakMemory() as mem:
        base = mem.peak
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak / 1e6, (mem.peak - base) / 1e6


@contextlib.contextmanager
def _scheduler(name: str, workers: int) -> Iterator[Any]:
    if name == "threads":
        with dask.config.set(scheduler="threads"):
            yield None
        return
    from dlowrank.runtime import local_cluster

    with local_cluster(workers, threads_per_worker=1) as client:
        yield client


def _methods(url: str, rank: int, p: int, q: int, seed: int, client: Any, sklearn: bool):
    x = da.from_zarr(url)
    yield "read pass (dask from_zarr sum)", 1, lambda: (x.sum().compute(), None)[1]

    def dask_svd():
        u, s, v = da.linalg.svd_compressed(
            x, rank, n_power_iter=q, n_oversamples=p, seed=seed, compute=True
        )
        return dask.compute(u, s, v)

    yield f"dask svd_compressed q={q}", 2 * q + 2, dask_svd
    if sklearn:
        from sklearn.utils.extmath import randomized_svd as sk_rsvd

        def sk():
            a = open_matrix(url).compute()
            return sk_rsvd(a, rank, n_oversamples=p, n_iter=q, random_state=seed)

        yield f"scikit-learn randomized_svd q={q} (incl. load)", 1 + (2 * q + 2), sk

    def ours_sketch():
        r = sketch_svd(url, rank, seed=seed, client=client)
        return r.u, r.s, r.vt, r.passes

    def ours_rsvd(**passes):
        r = randomized_svd(url, rank, n_oversamples=p, seed=seed, client=client, **passes)
        return r.u, r.s, r.vt, r.passes

    yield "dlowrank sketch_svd (1 pass)", None, ours_sketch
    yield f"dlowrank randomized_svd q={q}", None, lambda: ours_rsvd(n_power_iter=q)
    yield "dlowrank randomized_svd (default, 2 wide)", None, ours_rsvd


def run_bench(
    url: str | None = None,
    *,
    shape: tuple[int, int] = (100_000, 4_000),
    chunks: tuple[int, int] = (10_000, 2_000),
    rank: int = 20,
    n_oversamples: int = 10,
    n_power_iter: int = 2,
    seed: int = 0,
    schedulers: tuple[str, ...] = ("threads", "local"),
    workers: int = 2,
    sklearn: bool | None = None,
    workdir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run the comparison; generate the anchor matrix when no ``url`` is given.

    ``progress`` receives a line before each step (the CLI prints them to stderr).
    """
    say = progress or logger.info
    with tempfile.TemporaryDirectory(dir=workdir, prefix="dlowrank-bench-") as tmp:
        if url is None:
            url = os.path.join(tmp, "a.zarr")
            say(f"generating {shape[0]} x {shape[1]} (recipe of shared/bench/make_matrix.py)")
            generate(
                url,
                shape,
                min(RECIPE["rank"], min(shape)),
                chunks=chunks,
                seed=seed,
                **{k: v for k, v in RECIPE.items() if k != "rank"},
            )
        x = open_matrix(url)
        import zarr

        attrs = dict(zarr.open_array(url, mode="r").attrs.get("dlowrank") or {})
        optimum = optimal_error(attrs, x.shape, rank)
        if sklearn is None:
            sklearn = x.nbytes < psutil.virtual_memory().available / 3
        if sklearn:
            try:
                import sklearn as _  # noqa: F401
            except ImportError:
                say("scikit-learn is not installed (pip install 'dlowrank[bench]'): skipped")
                sklearn = False
        rows = []
        for sched in schedulers:
            with _scheduler(sched, workers) as client:
                rows += _bench_one(
                    url,
                    sched,
                    rank,
                    n_oversamples,
                    n_power_iter,
                    seed,
                    client,
                    sklearn,
                    optimum,
                    say,
                )
        return rows


def _bench_one(url, sched, rank, p, q, seed, client, sklearn, optimum, say) -> list[Row]:
    rows = []
    for name, passes, fn in _methods(url, rank, p, q, seed, client, sklearn):
        say(f"{sched}: {name}")
        out, seconds, peak, added = _timed(fn)
        err = None
        if out is not None:
            u, s, vt = out[:3]
            passes = out[3] if len(out) > 3 else passes
            err = true_error(url, np.asarray(u), np.asarray(s), np.asarray(vt), client)
        rows.append(
            Row(
                sched,
                name,
                seconds,
                passes,
                peak,
                added,
                err,
                err / optimum if err is not None and optimum else None,
            )
        )
    dask_row = next(r for r in rows if r.method.startswith("dask"))
    for r in rows:
        r.speedup_vs_dask = dask_row.seconds / r.seconds
    return rows


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'scheduler':9} {'method':46} {'seconds':>8} {'passes':>6} {'peak MB':>8} "
        f"{'+MB':>6} "
        f"{'rel_error':>10} {'/optimal':>8} {'vs dask':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        err = f"{r.rel_error:.6f}" if r.rel_error is not None else "-"
        ratio = f"{r.ratio_to_optimal:.4f}" if r.ratio_to_optimal is not None else "-"
        lines.append(
            f"{r.scheduler:9} {r.method:46} {r.seconds:8.2f} {r.passes or '-':>6} "
            f"{r.peak_mb:8.0f} {r.added_mb:6.0f} {err:>10} {ratio:>8} {r.speedup_vs_dask:7.2f}x"
        )
    return "\n".join(lines)


def rows_to_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


def _bare_pass(block, rows, cols) -> dict:
    """The cheapest useful kernel: ||A_i||_F^2 (a read, a decode and one sweep)."""
    return {"sums": {"fro2": passkernels.fro2(block)}, "rows": {}, "cols": {}}


def bench_throughput(
    url: str,
    *,
    workers: tuple[int, ...] = (1, 2),
    repeat: int = 2,
    say: Callable[[str], None] = logger.info,
) -> list[dict]:
    """Seconds and MB/s of one engine pass on dask's threads and on LocalClusters of
    ``workers`` single-threaded processes; the best of ``repeat`` runs each."""
    rows = []
    nbytes = int(np.prod(open_matrix(url).shape)) * 8
    for sched in ("threads", *[f"{w} worker(s)" for w in workers]):
        say(f"throughput: {sched}")
        with contextlib.ExitStack() as stack:
            client = None
            if sched != "threads":
                from dlowrank.runtime import local_cluster

                n = int(sched.split()[0])
                client = stack.enter_context(local_cluster(n, threads_per_worker=1))
            engine = PassEngine(open_source(url), layout="panel", client=client)
            best = min(_timed(lambda e=engine: e.run(_bare_pass))[1] for _ in range(repeat))
        rows.append({"scheduler": sched, "seconds": best, "mb_per_s": nbytes / 1e6 / best})
    return rows
