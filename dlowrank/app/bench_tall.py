"""``dlowrank bench --suite tall``: a tall matrix (millions of rows, few columns) under a
memory cap on the whole process tree, as in issue "tall factors stay distributed".

Every run is the CLI in a subprocess, capped and cold (``bench_memory``'s cgroup runner):
a bare read pass (dask's ``from_zarr(...).sum()``, the floor), ``svd --passes 3`` (randomized,
q = 2), ``svd --passes 1`` (single pass), ``factorize`` and ``nmf`` (3 iterations each;
nmf on |A|). Outside the cap, uncapped and after the runs, one Gram pass gives A's exact
singular values (A has few columns), hence the optimal rank-k error; each SVD's true
error comes from one more pass with its stored U (||A - U S V^T||_F^2 = ||A||_F^2 -
2 sum_i s_i u_i^T A v_i + sum_i s_i^2 for orthonormal U and V), and U's orthonormality
and row chunking are read from the output store. ``--heights`` repeats ``svd`` uncapped
on the first rows of A at other heights, to show that the peak does not grow with m.
``--cluster-memory`` repeats the four calls through the library on a 2-worker
LocalCluster whose workers are capped at that ``memory_limit``, with a scheduler plugin
that records every task's inputs (its dependencies' sizes and its own serialized spec):
the largest is compared with the m-row operands, which no task may receive whole.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from dlowrank.app.bench_memory import _read_pass, _run, can_cap

#: The runs of the table: (name, CLI arguments after INPUT --out OUT); "{abs}" runs on |A|.
COMMANDS = (
    ("svd (randomized, q=2)", ["svd", "--rank", "{rank}", "--passes", "3"]),
    ("svd --passes 1 (sketch)", ["svd", "--rank", "{rank}", "--passes", "1"]),
    ("factorize 3 iterations", ["factorize", "--rank", "{rank}", "--max-iter", "3"]),
    ("nmf 3 iterations (on |A|)", ["nmf", "--rank", "{rank}", "--max-iter", "3"]),
)


def _abs_copy(path: str, out: str) -> None:
    import dask.array as da

    x = da.from_zarr(path)
    abs(x).to_zarr(out)


def _spectrum(path: str) -> tuple[np.ndarray, float]:
    """A's singular values from its Gram matrix (n x n, summed over chunks) and ||A||_F^2."""
    import dask.array as da

    x = da.from_zarr(path).astype(np.float64)
    g = (x.T @ x).compute()
    w = np.clip(np.linalg.eigvalsh(g)[::-1], 0, None)
    return np.sqrt(w), float(np.trace(g))


def _check_svd(path: str, out: str, fro2: float) -> dict:
    """From the stored result: its true relative error (one pass), U's orthonormality and
    U's row chunks."""
    import dask.array as da
    import zarr

    import dlowrank

    r = dlowrank.load(out)
    u = da.asarray(r.u).astype(np.float64)
    a = da.from_zarr(path).astype(np.float64)
    u = u.rechunk((a.chunks[0], u.shape[1]))
    uta, utu = da.compute(u.T @ a, u.T @ u)
    v = np.asarray(r.vt, dtype=np.float64).T
    s = np.asarray(r.s, dtype=np.float64)
    cross = float(np.sum(s * np.einsum("kn,nk->k", uta, v)))
    err2 = max(fro2 - 2 * cross + float(np.sum(s**2)), 0.0)
    group = zarr.open_group(out, mode="r")
    stored = group[group.attrs["dlowrank"]["current"]]["u"]
    return {
        "true_error": float(np.sqrt(err2 / fro2)),
        "orthonormality": float(np.max(np.abs(utu - np.eye(utu.shape[0])))),
        "u_chunks": list(stored.chunks),
        "u_lazy": not isinstance(r.u, np.ndarray),
    }


def run_tall_bench(
    input: str | None,
    *,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    rank: int,
    cap_mb: int,
    heights: tuple[int, ...] = (),
    cluster_memory: str | None = None,
    workdir: str | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """The rows of the tall table (see the module's docstring)."""
    import dlowrank

    capped = cap_mb if can_cap() else None
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if input is None:
            input = os.path.join(tmp, "a.zarr")
            say(f"generating {shape[0]} x {shape[1]} float32 in {input}")
            # noise's top singular value about 0.05 (Davidson & Szarek): below s_10 = 0.39
            noise = 0.05 / np.sqrt(shape[0])
            dlowrank.generate(input, shape, 20, chunks=chunks, dtype="float32", noise=noise, seed=0)
        x = dlowrank.open_matrix(input)
        positive = os.path.join(tmp, "abs.zarr")
        _abs_copy(input, positive)
        say("bare read pass (capped, cold)")
        read = _read_pass(input, capped)
        rows = []
        for name, args in COMMANDS:
            source = positive if name.startswith("nmf") else input
            out = os.path.join(tmp, f"{uuid.uuid4().hex[:8]}.zarr")
            say(f"{name}: capped at {capped} MB" if capped else f"{name}: uncapped")
            args = [a.replace("{rank}", str(rank)) for a in args]
            row = {**_run([args[0], source, "--out", out, *args[1:]], capped), "command": name}
            row["out"] = out
            rows.append(row)
        say("exact spectrum and true errors (uncapped)")
        s, fro2 = _spectrum(input)
        optimal = float(np.sqrt(max(fro2 - np.sum(s[:rank] ** 2), 0.0) / fro2))
        for row in rows:
            if row.get("rc") == 0 and row["command"].startswith("svd"):
                row.update(_check_svd(input, row["out"], fro2))
            row.pop("out")
        by_height = []
        for m in heights:
            part = input
            if m < x.shape[0]:  # the first m rows, as their own matrix
                import dask.array as da

                part = os.path.join(tmp, f"rows{m}.zarr")
                da.from_zarr(input)[:m].rechunk(x.chunksize).to_zarr(part)
            out = os.path.join(tmp, f"s{m}.zarr")
            say(f"svd on {m} rows (uncapped)")
            run = _run(["svd", part, "--out", out, "--rank", str(rank), "--passes", "3"], None)
            by_height.append({**run, "rows": min(m, x.shape[0])})
        cluster = []
        if cluster_memory:
            say(f"2-worker LocalCluster, workers capped at {cluster_memory}")
            cluster = _cluster_rows(input, positive, rank, cluster_memory, tmp)
    return {
        "shape": list(x.shape),
        "chunks": [c[0] for c in x.chunks],
        "dtype": str(x.dtype),
        "matrix_mb": x.nbytes / 2**20,
        "cap_mb": capped,
        "read_seconds": read.get("seconds"),
        "read_peak_mb": read.get("cgroup_peak_mb"),
        "optimal_error": optimal,
        "rows": rows,
        "heights": by_height,
        "cluster": cluster,
        "cluster_memory": cluster_memory,
    }


def format_tall(result: dict) -> str:
    cap = result["cap_mb"]
    read = result["read_seconds"]
    lines = [
        f"matrix {result['shape'][0]} x {result['shape'][1]} {result['dtype']}, chunks "
        f"{result['chunks'][0]} x {result['chunks'][1]}, {result['matrix_mb']:.0f} MiB; "
        + (f"cap {cap} MiB on the whole process tree, cold" if cap else "uncapped (no cgroup v1)"),
        f"bare read pass: {read:.1f} s; optimal rank error {result['optimal_error']:.6g}",
        f"{'command':27} {'status':>7} {'s':>7} {'passes':>6} {'x floor':>7} {'tree MB':>8} "
        f"{'cg MB':>6} {'error':>10} {'x opt':>7} {'orth':>8} U chunks",
    ]
    for r in result["rows"]:
        status = "done" if r.get("rc") == 0 else f"rc {r.get('rc')}"
        passes = r.get("passes") or 0
        floor = (
            r["seconds"] / (passes * read) if passes and read and "seconds" in r else float("nan")
        )
        err = r.get("true_error", r.get("rel_error", float("nan")))
        ratio = err / result["optimal_error"] if "true_error" in r else float("nan")
        lines.append(
            f"{r['command']:27} {status:>7} {r.get('seconds', float('nan')):7.1f} {passes:6d} "
            f"{floor:7.2f} {r.get('peak_memory_mb', float('nan')):8.0f} "
            f"{r.get('cgroup_peak_mb', float('nan')):6.0f} {err:10.6g} {ratio:7.4f} "
            f"{r.get('orthonormality', float('nan')):8.1e} {r.get('u_chunks', '')}"
        )
    if result.get("cluster"):
        lines.append(
            f"2-worker LocalCluster, memory_limit {result['cluster_memory']} per worker: "
            f"{'call':15} {'status':>7} {'s':>6} {'passes':>6} {'worker peaks MB':>16} "
            f"{'largest task input':>18} (task) vs m-row operand"
        )
        for r in result["cluster"]:
            status = (
                "done"
                if r.get("rc") == 0 and not r.get("workers_removed")
                else (f"rc {r.get('rc')}" if r.get("rc") else f"{r['workers_removed']} lost")
            )
            peaks = "/".join(f"{p:.0f}" for p in r.get("worker_peaks_mb", []))
            lines.append(
                f"  {r['call']:15} {status:>7} {r.get('seconds', float('nan')):6.1f} "
                f"{r.get('passes', 0):6d} {peaks:>16} "
                f"{r.get('largest_input_bytes', 0) / 2**20:15.2f} MB "
                f"({r.get('largest_input_task', '?')}) vs "
                f"{r.get('m_row_operand_bytes', 0) / 2**20:.0f} MB"
            )
    for h in result["heights"]:
        lines.append(
            f"svd on {h['rows']} rows (uncapped): {h.get('seconds', float('nan')):.1f} s, "
            f"peak {h.get('peak_memory_mb', float('nan')):.0f} MB"
        )
    return "\n".join(lines)


# --- on a 2-worker LocalCluster: the task inputs, from the scheduler -----------------------

#: The library calls of the cluster rows (``abs``: on |A|).
CLUSTER_CALLS = ("randomized_svd", "sketch_svd", "factorize", "nmf")


def _task_inputs_plugin() -> Any:
    """A scheduler plugin recording, for every task that starts, what it receives: its
    dependencies' sizes (data sent to it) and its serialized spec (arguments embedded in
    the graph). Made here so that ``distributed`` is imported only when used."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskInputs(SchedulerPlugin):
        name = "dlowrank-task-inputs"

        def start(self, scheduler: Any) -> None:
            self.scheduler = scheduler
            self.tasks, self.largest, self.removed = 0, (0, "", 0, 0), 0

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if finish != "processing":
                return
            ts = self.scheduler.tasks.get(key)
            if ts is None:
                return
            deps = sum(max(d.nbytes, 0) for d in ts.dependencies)
            try:
                spec = len(pickle.dumps(ts.run_spec, protocol=5))
            except Exception:  # noqa: BLE001 - an unpicklable spec: count it from cloudpickle
                import cloudpickle

                spec = len(cloudpickle.dumps(ts.run_spec))
            self.tasks += 1
            if deps + spec > self.largest[0]:
                biggest = max(ts.dependencies, key=lambda d: d.nbytes, default=None)
                what = f"{ts.prefix.name} <- {biggest.prefix.name}" if biggest else ts.prefix.name
                self.largest = (deps + spec, what, deps, spec)

        def remove_worker(self, scheduler: Any, worker: str, **kw: Any) -> None:
            self.removed += 1

        def report(self) -> dict:
            total, prefix, deps, spec = self.largest
            return {
                "tasks": self.tasks,
                "largest_input_bytes": total,
                "largest_input_task": prefix,
                "largest_input_deps_bytes": deps,
                "largest_input_spec_bytes": spec,
                "workers_removed": self.removed,
            }

    return TaskInputs()


def _worker_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


def cluster_call(path: str, call: str, rank: int, out: str, worker_memory: str) -> dict:
    """One library call on a 2-worker LocalCluster (1 thread each, ``worker_memory``
    each): seconds, passes, the workers' own peaks, and the largest task input."""
    import dlowrank
    from dlowrank.runtime.budget import PeakMemory
    from dlowrank.runtime.client import local_cluster

    kwargs = {"max_iter": 3} if call in ("factorize", "nmf") else {}
    with local_cluster(2, 1, worker_memory) as client, PeakMemory(0.1) as tree:
        plugin = _task_inputs_plugin()
        client.register_plugin(plugin)
        start = time.perf_counter()
        r = getattr(dlowrank, call)(path, rank, client=client, out=out, **kwargs)
        seconds = time.perf_counter() - start
        seen = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[plugin.name].report()
        )
        peaks = client.run(_worker_peak)
    m, n = r.u.shape[0], r.v.shape[0] if hasattr(r, "v") else r.vt.shape[1]
    return {
        "seconds": seconds,
        "passes": r.passes,
        "rel_error": r.rel_error,
        "tree_peak_mb": tree.peak / 2**20,
        "worker_peaks_mb": sorted(p / 2**20 for p in peaks.values()),
        "m_row_operand_bytes": max(m, n) * r.rank * 8,  # the narrowest tall quantity
        **seen,
    }


def _cluster_rows(path: str, positive: str, rank: int, memory: str, tmp: str) -> list[dict]:
    """The cluster rows, each call in its own subprocess (cold start, own peaks)."""
    rows = []
    for call in CLUSTER_CALLS:
        source = positive if call == "nmf" else path
        out = os.path.join(tmp, f"c{uuid.uuid4().hex[:8]}.zarr")
        args = [source, call, str(rank), out, memory]
        command = [sys.executable, "-m", "dlowrank.app.bench_tall", *args]
        rows.append({**_run([], None, command=command), "call": call})
    return rows


if __name__ == "__main__":  # one cluster row: python -m dlowrank.app.bench_tall PATH CALL ...
    path, call, rank, out, memory = sys.argv[1:6]
    print(json.dumps(cluster_call(path, call, int(rank), out, memory)))
