"""``dlowrank bench --suite growing``: update a result after the matrix grew, against
the single pass over the whole grown matrix.

The bench matrix recipe (exponential decay 0.95, scale 1000, noise 1e-3, seed 0) is
written at the grown shape; a copy of its leading rows is the matrix as it was. The
single pass over that copy keeps its sketches (saved); then the new rows are appended
with :func:`dlowrank.append` and the saved result is updated in place. Side by side,
in one run and one process (so with the same page cache): the update, and
``sketch_svd`` of the grown matrix with the same seed, each saving its result. A row
reports seconds, the fraction of the grown matrix read, the process tree's peak memory,
and the relative Frobenius difference between the two results.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np


def run_growing_bench(
    shape: tuple[int, int] = (100_000, 4_000),
    chunks: tuple[int, int] = (10_000, 2_000),
    growth: float = 0.1,
    rank: int = 20,
    seed: int = 0,
    workdir: str | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Grow a ``shape`` matrix by ``growth`` of its rows; time the update and the fresh
    single pass (on dask's threads)."""
    import dask.array as da
    import zarr

    from dlowrank.generate import generate
    from dlowrank.results import load
    from dlowrank.streaming import sketch_svd
    from dlowrank.updates import append, update

    m0, n = shape
    m1 = m0 + int(round(growth * m0))
    folder = workdir or tempfile.mkdtemp(prefix="dlowrank-growing-")
    full, path = os.path.join(folder, "grown.zarr"), os.path.join(folder, "a.zarr")
    say(f"writing the {m1} x {n} matrix and a copy of its first {m0} rows in {folder}")
    generate(
        full, (m1, n), 200, decay=0.95, scale=1e3, noise=1e-3, chunks=chunks, seed=0,
        overwrite=True,
    )  # fmt: skip
    src = zarr.open_array(full, mode="r")
    base = zarr.create_array(path, shape=(m0, n), chunks=chunks, dtype=src.dtype, overwrite=True)
    da.from_zarr(src)[:m0].rechunk(chunks).to_zarr(base)
    kept = os.path.join(folder, "kept.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        say("the single pass over the first rows, keeping its sketches")
        first = sketch_svd(path, rank, seed=seed, keep_sketch=True, out=kept, overwrite=True)
        say(f"appending rows {m0}-{m1 - 1}")
        append(path, src[m0:m1])
        say("update (reads the appended rows)")
        start = time.perf_counter()
        updated = update(kept, path)
        t_update = time.perf_counter() - start
        say("sketch_svd of the grown matrix (reads all of it)")
        start = time.perf_counter()
        fresh = sketch_svd(
            path,
            rank,
            seed=seed,
            sketch_size=tuple(first.params["sketch_size"]),
            keep_sketch=True,
            out=os.path.join(folder, "fresh.zarr"),
            overwrite=True,
        )
        t_fresh = time.perf_counter() - start
    diff = _rel_diff(updated, fresh)
    info = updated.params["update"]
    return {
        "shape": [m0, n],
        "grown": [m1, n],
        "chunks": list(chunks),
        "rank": rank,
        "rows": [
            {
                "method": "update (appended rows only)",
                "seconds": t_update,
                "fraction_read": info["fraction_read"],
                "peak_memory_mb": updated.peak_memory_mb,
                "rel_error": updated.rel_error,
            },
            {
                "method": "sketch_svd of the grown matrix",
                "seconds": t_fresh,
                "fraction_read": 1.0,
                "peak_memory_mb": fresh.peak_memory_mb,
                "rel_error": fresh.rel_error,
            },
        ],
        "speedup": t_fresh / t_update,
        "rel_diff": diff,
        "equal_after_reload": _rel_diff(load(kept), fresh),
    }


def _rel_diff(a, b) -> float:
    """||U_a S_a V_a^T - U_b S_b V_b^T||_F / ||U_b S_b V_b^T||_F, from the factors, never
    the dense m x n matrices: the difference is [U_a S_a, -U_b S_b] [V_a^T; V_b^T], whose
    norm is that of R [V_a^T; V_b^T] with R from a QR of the (m, 2r) left block (a Gram
    matrix would lose half the digits to cancellation)."""
    xa, xb = np.asarray(a.u) * np.asarray(a.s), np.asarray(b.u) * np.asarray(b.s)
    va, vb = np.asarray(a.vt), np.asarray(b.vt)
    r = np.linalg.qr(np.hstack([xa, -xb]), mode="r")
    rb = np.linalg.qr(xb, mode="r")
    return float(np.linalg.norm(r @ np.vstack([va, vb])) / np.linalg.norm(rb @ vb))


def format_growing(result: dict) -> str:
    m0, n = result["shape"]
    m1 = result["grown"][0]
    lines = [
        f"{m0} x {n} grown to {m1} x {n} (chunks {result['chunks'][0]} x "
        f"{result['chunks'][1]}), rank {result['rank']}, dask threads",
        f"{'method':34} {'seconds':>8} {'read':>7} {'peak MB':>8} {'est. error':>11}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['method']:34} {r['seconds']:8.2f} {100 * r['fraction_read']:6.1f}% "
            f"{r['peak_memory_mb']:8.0f} {r['rel_error']:11.6f}"
        )
    lines.append(
        f"update {result['speedup']:.1f}x faster; ||update - fresh||_F / ||fresh||_F = "
        f"{result['rel_diff']:.1e} (saved and reloaded: {result['equal_after_reload']:.1e})"
    )
    return "\n".join(lines)


#: The warm-start table's choices: (label, randomized_svd keywords; "start" is replaced by
#: the previous result).
WARM_CHOICES: tuple[tuple[str, dict], ...] = (
    ("cold q=2 (3 passes)", {"passes": 3}),
    ("cold default (2 passes)", {}),
    ("warm, 1 pass", {"passes": 1, "start": True}),
    ("warm, 2 passes", {"passes": 2, "start": True}),
)


def _grown_matrices(scale: float) -> list[tuple[str, np.ndarray, int]]:
    """(name, grown matrix, rows before it grew): 10 % more rows."""
    from skimage import data

    from dlowrank.generate import make_matrix

    out = [("camera 466 -> 512 rows", data.camera() / 255.0, 466)]
    m, n = max(220, int(11_000 * scale)), max(100, int(1_000 * scale))
    m0 = int(round(m / 1.1))
    for name, rank, kw in (
        ("0.95^i + noise (bench)", 200, {"decay": 0.95, "scale": 1e3, "noise": 1e-3}),
        ("s_i = 1/i", n, {"kind": "polynomial", "decay": 1.0}),
        ("s_i = 1/sqrt(i)", n, {"kind": "polynomial", "decay": 0.5}),
        ("flat 40 + noise", 40, {"kind": "flat", "noise": 0.3 / np.sqrt(m)}),
    ):
        a = make_matrix((m, n), min(rank, n), chunks=(m, n), seed=1, **kw).array.compute()
        out.append((f"{m0} -> {m} x {n}, {name}", a, m0))
    # new rows of another structure, as strong as the old ones: the start points away
    a = make_matrix((m, n), 40, kind="flat", chunks=(m, n), seed=1).array.compute()
    b = make_matrix((m, n), 40, kind="flat", chunks=(m, n), seed=2).array.compute()
    a[m0:] = b[m0:] * np.linalg.norm(a[:m0]) / np.linalg.norm(b[m0:]) * np.sqrt((m - m0) / m0)
    out.append((f"{m0} -> {m} x {n}, new rows of another flat 40", a, m0))
    return out


def run_warm_bench(
    rank: int = 20, seeds: int = 3, scale: float = 1.0, say: Callable[[str], None] = print
) -> list[dict]:
    """For each matrix grown by 10 % of its rows: the error over the optimum (mean over
    seeds) of cold randomized_svd and of one warm-started from the result (q = 2) of
    the matrix before it grew."""
    from dlowrank.streaming import randomized_svd

    rows = []
    for name, a, m0 in _grown_matrices(scale):
        say(name)
        s = np.linalg.svd(a, compute_uv=False)
        optimum = float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)))
        before = randomized_svd(a[:m0], rank, passes=3, seed=0)
        row: dict = {"matrix": name, "optimum": optimum}
        for label, kw in WARM_CHOICES:
            kw = {**kw, "start": before} if kw.get("start") else kw
            runs = [randomized_svd(a, rank, seed=seed, **kw) for seed in range(seeds)]
            row[label] = {
                "ratio": float(np.mean([r.rel_error for r in runs]) / optimum),
                "passes": sorted({r.passes for r in runs}),
            }
        rows.append(row)
    return rows


def format_warm(rows: list[dict]) -> str:
    labels = [label for label, _ in WARM_CHOICES]
    lines = [f"{'matrix grown by 10 % of its rows':48}" + "".join(f"{x:>25}" for x in labels)]
    for row in rows:
        cells = "".join(
            f"{row[x]['ratio']:.4f} ({'/'.join(map(str, row[x]['passes']))} p)".rjust(25)
            for x in labels
        )
        lines.append(f"{row['matrix']:48}" + cells)
    lines.append("error / optimal rank-k error, mean over seeds; (n p): passes over A")
    return "\n".join(lines)
