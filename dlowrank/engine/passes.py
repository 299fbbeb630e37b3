"""The pass engine: stream over A's chunks once, apply a kernel per piece, reduce.

One *pass* reads every chunk of A exactly once. The engine cuts A into pieces
along chunk boundaries; each piece is read by its own task (from Zarr, when A is
stored there) and handed to a kernel that returns small sketches. The engine sums
them: ``sums`` over all pieces, ``rows`` per row range of the (tall-oriented)
matrix, ``cols`` per column range. Algorithms see A in *tall orientation*
(m >= n): a wide A is transposed once here, so no algorithm has a wide branch.

Two layouts:

- ``"panel"``: a piece is a whole row panel of the tall-oriented matrix (several
  chunk rows, every column), so a kernel may apply A^T A in one read
  (HMT 2011, §4.5: Z = sum_i A_i^T (A_i X)).
- ``"block"``: a piece is one chunk, for kernels whose sketches are sums of
  per-chunk terms; used when a panel would not fit the memory budget.
"""

from __future__ import annotations

import functools
import logging
import operator
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.callbacks import Callback
from dask.local import get_sync as SYNC
from dask.system import CPU_COUNT
from dask.threaded import get as THREADS
from dask.utils import format_bytes, parse_bytes

from dlowrank.engine.tall import (
    TALL_MEMORY,
    PanelRef,
    Space,
    Tall,
    resolve,
    scratch_root_of,
    write_panel,
)
from dlowrank.errors import DlowrankWarning, PassTimeoutError, StorageError
from dlowrank.io.source import Rect

# A separable kernel works on a dense piece in row slabs of at most SLAB_BYTES float64
# bytes, so its temporaries (the float64 copy, products with wide sketches) stay small;
# a tile is converted in slabs of the same size.
from dlowrank.kernels.passkernels import SLAB_BYTES

logger = logging.getLogger(__name__)

#: Default target size of a row panel (several chunk rows are grouped up to this).
#: Measured on the CLI's default LocalCluster, 5,000,000 x 20 float64 (800 MB, chunks
#: 250,000 x 20), rank 5: 256 MB panels peaked at 1378 MB in 20.6 s, 128 MB panels at
#: 1037 MB in 17.2 s (64 MB: 1035 MB, 18.0 s).
PANEL_BYTES = 128 << 20
#: Bytes a task holds per stored entry of a sparse panel: the values and indices, the
#: indicator's copy, a shifted copy, the row index, and gathers by column and by row.
SPARSE_ENTRY_BYTES = 64
#: A task working on a panel or chunk holds about this many times its float64 bytes (the
#: raw read, the float64 copy, a decoded chunk in flight, its products).
TASK_FACTOR = 3
#: On dask's threads, the tasks share this part of the run's budget; the rest is for the
#: driver's own growth (the gathered sketches, the result, modules imported later).
TASK_SHARE = 0.75
#: The most one task may hold: row panels up to a third of it (1 GiB).
MAX_TASK_BYTES = 3 << 30
#: A tall quantity stays in memory up to the tasks' budget divided by this (several are
#: alive at once: measured, Y and Q of 131 MB each took a 600 MB run over its cap).
TALL_SHARE = 6
#: Arguments larger than this are scattered to the workers rather than put in the graph.
SCATTER_BYTES = 1 << 20


@dataclass(frozen=True)
class PassEvent:
    """Progress of a pass: ``stage`` is "start", "piece" (one piece done) or "done"."""

    stage: str
    index: int
    done: int
    total: int
    seconds: float = 0.0
    nbytes: int = 0
    restored: bool = False


@dataclass
class PassOutput:
    """What one pass accumulated."""

    sums: dict[str, np.ndarray]
    rows: dict[str, Any]  # per row range: a Tall for (m, w) outputs, else a list in order
    cols: dict[str, list[np.ndarray]]


@functools.lru_cache(maxsize=1)
def _blas() -> Any:
    """The process's BLAS libraries, found once: threadpoolctl's lookup reads the loaded
    libraries each time (measured 4.6 ms a pass, a third of a small NMF's time)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> Any:
    """A context in which BLAS runs one thread (dask's threads each run a task)."""
    return _blas().limit(limits=1, user_api="blas")


def _bands(bounds: tuple[int, ...], band_bytes: int, limit: int) -> list[tuple[int, int]]:
    """Group consecutive chunk bands until adding one would exceed ``limit`` bytes."""
    out, start, size, pos = [], 0, 0, 0
    for c in bounds:
        if size and size + c * band_bytes > limit:
            out.append((start, pos))
            start, size = pos, 0
        size += c * band_bytes
        pos += c
    out.append((start, pos))
    return out


def _ranges(bounds: tuple[int, ...]) -> list[tuple[int, int]]:
    edges = np.cumsum((0,) + tuple(bounds))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _add(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def _tree_sum(parts: list[Any]) -> Any:
    """Pairwise tree reduction of delayed dicts of arrays (depth log2 of the count)."""
    while len(parts) > 1:
        pairs = [dask.delayed(_add)(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


@dataclass(frozen=True)
class ByRows:
    """An operand with one row per row of A (tall orientation): each piece's task receives
    only the rows of its own piece (``array[r0:r1]``), never the whole. ``array`` may also
    be a :class:`~dlowrank.engine.tall.Tall` or a list of panels, one per row range (as a
    pass's ``rows`` output is): a stored panel is then read by the task itself."""

    array: np.ndarray | list | Tall


class _Slices(list):
    """A ByRows operand cut by the engine's row ranges."""


#: The key under which the first pass sums ||A||_F^2 (taken out before algorithms see it).
FRO2 = "__fro2__"


def _with_fro2(kernel: Callable, missing: bool, block: Any, rows, cols, *args: Any) -> dict:
    """``kernel``'s output, with the piece's ||block||_F^2 added to its sums."""
    from dlowrank.kernels.passkernels import block_fro2

    out = kernel(block, rows, cols, *args)
    return {**out, "sums": {**out["sums"], FRO2: block_fro2(block, missing)}}


@dataclass(frozen=True)
class _RowArg:
    """A kernel argument holding the piece's own rows of a tall operand."""

    value: Any


def _declares(kernel: Callable, flag: str) -> bool:
    """Whether ``kernel`` (or the kernel inside the first pass's wrapper) sets ``flag``:
    ``separable``, its output over a piece is its outputs over row slabs (sums and
    column sums added, row outputs stacked); ``tiles``, it takes a panel as
    :class:`~dlowrank.kernels.passkernels.Tiles`."""
    if isinstance(kernel, functools.partial) and kernel.func is _with_fro2:
        kernel = kernel.args[0]
    return bool(getattr(kernel, flag, False))


def _read(source: Any, rect: Rect, transpose: bool, kernel: Callable, ahead: bool) -> Any:
    """The piece ``rect`` of a stored source; for a kernel that takes tiles, a panel of
    several chunk columns (tall orientation) as tiles decoded straight from the store,
    never assembled (:meth:`ZarrSource.read_tiles`): the task then holds the panel and
    one or two chunks' bytes in flight (two with ``ahead``)."""
    if not hasattr(source, "read_tiles"):
        return source.read(rect)
    if _declares(kernel, "tiles"):
        tiles = source.read_tiles(rect, 0 if transpose else 1, ahead)
        if tiles is not None and len(tiles) > 1:
            from dlowrank.kernels.passkernels import Tiles

            return Tiles([(lo, hi, t.T if transpose else t) for lo, hi, t in tiles])
        if tiles is not None:
            return tiles[0][2]
    return source.read(rect, ahead)


class _Joined:
    """Outputs of a piece's row slabs, joined as they come: sums and column sums added,
    row outputs copied into one array per key (no list of slab outputs is kept)."""

    def __init__(self, rows: int) -> None:
        self.rows, self.out = rows, None

    def add(self, part: dict, s0: int, s1: int) -> None:
        if self.out is None:
            self.out = {"sums": dict(part["sums"]), "cols": dict(part["cols"]), "rows": {}}
            for key, value in part["rows"].items():
                value = np.asarray(value)
                self.out["rows"][key] = np.empty((self.rows, *value.shape[1:]), value.dtype)
        else:
            for kind in ("sums", "cols"):
                for key, value in part[kind].items():
                    self.out[kind][key] = self.out[kind][key] + value
        for key, value in part["rows"].items():
            self.out["rows"][key][s0:s1] = value


def _run_piece(
    block_or_source: Any,
    rect: Rect,
    transpose: bool,
    kernel: Callable,
    args: tuple,
    settle: tuple | None = None,
    origin: tuple[int, int] = (0, 0),
    report: str | None = None,
    ahead: bool = True,
) -> dict:
    """A piece's kernel outputs; with ``settle`` (the piece is its row range's only one)
    its row outputs are settled here (:func:`_settle`), so that no later task holds them
    beside the next piece (measured: on 500 MB workers the single pass over 8,000,000 x
    64 lost every worker with a separate settling task). ``origin``: where the source's
    (0, 0) lies in A (an update's window of A): the kernel sees A's global indices. ``ahead``: a
    stored source fetches the next chunk's bytes while one is decoded."""
    out = _piece_outputs(block_or_source, rect, transpose, kernel, args, origin, ahead)
    if settle is not None:
        out = {**out, "rows": _settle(out["rows"], *settle)}
    if report is not None:
        _report_piece(report)
    return out


def _report_piece(topic: str) -> None:
    """Log a finished piece as an event of ``topic`` on the scheduler (the driver counts
    them for piece-level progress). The worker's own stream carries it: no client is made
    in the task. Best effort: progress never fails a pass."""
    try:
        from distributed import get_worker

        get_worker().log_event(topic, 1)
    except Exception as exc:  # noqa: BLE001 - a lost progress message is not an error
        logger.debug("progress of a piece not reported: %s", exc)


def _piece_outputs(
    block_or_source: Any,
    rect: Rect,
    transpose: bool,
    kernel: Callable,
    args: tuple,
    origin: tuple[int, int] = (0, 0),
    ahead: bool = True,
) -> dict:
    # a stored source (Zarr array, ratings group) is read here, by the task itself
    block = block_or_source
    if hasattr(block_or_source, "read"):
        block = _read(block_or_source, rect, transpose, kernel, ahead)
    rowwise = [isinstance(a, _RowArg) for a in args]
    # the piece's own panels of tall operands
    args = tuple(resolve(a.value if isinstance(a, _RowArg) else a) for a in args)
    r0, r1, c0, c1 = rect
    r0, r1, c0, c1 = r0 + origin[0], r1 + origin[0], c0 + origin[1], c1 + origin[1]
    if transpose:  # tiles come in tall orientation already
        from dlowrank.kernels.passkernels import Tiles

        block = block if isinstance(block, Tiles) else block.T
        r0, r1, c0, c1 = c0, c1, r0, r1
    slab = max(1, SLAB_BYTES // max(1, 8 * (c1 - c0)))
    if r1 - r0 <= slab or not isinstance(block, np.ndarray) or not _declares(kernel, "separable"):
        return kernel(block, (r0, r1), (c0, c1), *args)
    joined = _Joined(r1 - r0)
    for s0 in range(0, r1 - r0, slab):
        s1 = min(r1 - r0, s0 + slab)
        sub = tuple(a[s0:s1] if cut else a for a, cut in zip(args, rowwise, strict=True))
        joined.add(kernel(block[s0:s1], (r0 + s0, r0 + s1), (c0, c1), *sub), s0, s1)
    return joined.out


@dataclass(frozen=True)
class Plan:
    """How a pass cuts the input: decided once, from its chunks and the memory budget.

    ``transpose``: A is wide and is seen as A^T (tall orientation, m >= n);
    ``kind``: "panel" (a piece is a whole row panel) or "block" (one chunk);
    ``row_ranges`` and ``col_ranges``: the pieces' global ranges, tall orientation.
    """

    kind: str
    transpose: bool
    tall_shape: tuple[int, int]
    tall_chunks: tuple[tuple[int, ...], tuple[int, ...]]
    row_ranges: tuple[tuple[int, int], ...]
    col_ranges: tuple[tuple[int, int], ...]
    budget: int  # bytes one task may hold
    threads: int | None = None  # tasks in flight on dask's threads (None: a cluster's)
    ahead: bool = True  # fetch a chunk's bytes while the previous one is decoded

    @classmethod
    def make(
        cls,
        source: Any,
        layout: str,
        budget: int,
        threads: int | None = None,
        transpose: bool | None = None,
        rank: int | None = None,
        tiles: bool = False,
    ) -> Plan:
        """The plan for ``layout`` ("auto": panels when a task can hold a chunk row, about
        :func:`_entry_bytes` an entry, within ``budget``); ``transpose`` by default when A
        is wide (a window of A takes the orientation of the whole)."""
        m, n = source.shape
        transpose = n > m if transpose is None else transpose
        chunks = source.chunks
        tall_shape = (n, m) if transpose else (m, n)
        tall_chunks = (chunks[1], chunks[0]) if transpose else chunks
        band_bytes = tall_shape[1] * 8  # float64 work copy per row of a panel
        nnz = getattr(source, "nnz", None)
        if getattr(source, "sparse", False) and nnz:  # a row holds its stored entries
            band_bytes = min(band_bytes, _sparse_row_bytes(nnz, tall_shape[0], rank))
        panel = max(tall_chunks[0]) * tall_shape[1] * _entry_bytes(source)
        chunk = _stored_chunk(source)
        # a chunk that cannot be decoded where it belongs passes through a chunk buffer:
        # an edge chunk, a tile of several chunks (a wide A's), a panel assembled whole
        whole = _tiles_whole(source, transpose) if tiles else False
        scratch = 0 if whole else chunk
        if layout == "auto":  # a panel's task holds it and at least one chunk's bytes
            widest = panel + chunk + scratch
            layout = "panel" if widest <= budget else "block"
            if layout == "block":
                warnings.warn(
                    f"a row panel of {max(tall_chunks[0])} x {tall_shape[1]} needs "
                    f"{format_bytes(widest)} in a task, above a task's "
                    f"{format_bytes(budget)}: working "
                    "chunk by chunk, which costs two passes per power iteration; store A "
                    "with fewer rows per chunk to avoid this",
                    DlowrankWarning,
                    stacklevel=5,
                )
        if layout == "panel":
            rows = _bands(tall_chunks[0], band_bytes, min(PANEL_BYTES, budget // 6))
            cols = [(0, tall_shape[1])]
        else:
            rows, cols = _ranges(tall_chunks[0]), _ranges(tall_chunks[1])
        # the next chunk's bytes are fetched during a decode when a task can hold them
        piece = panel + scratch if layout == "panel" else _chunk_need(source) - 2 * chunk
        ahead = piece + 2 * chunk <= budget
        return cls(
            layout,
            transpose,
            tall_shape,
            tall_chunks,
            tuple(rows),
            tuple(cols),
            budget,
            threads,
            ahead,
        )


def _sparse_row_bytes(nnz: int, rows: int, rank: int | None) -> int:
    """A task's bytes per row of a sparse panel: its stored entries, and four (k+1) x
    (k+1) float64 arrays (the row's Gram, its ridge system, the outer product of its new
    factor, the solver's copy); k = 32 when the call has no rank."""
    k1 = (rank or 32) + 1
    return 32 * k1 * k1 + SPARSE_ENTRY_BYTES * -(-nnz // rows)


def _chunk_need(source: Any) -> int:
    """Bytes a task holds to work on one chunk. Read by zarr: per entry, the chunk as
    read and its decoded buffer (2 x the itemsize) and 8 bytes for the float64 work (a
    slab's copy and products, the piece's row outputs): TASK_FACTOR x its float64 size
    for float64 input, 2x for float32 (measured, 8,000,000 x 64 float32 under 1 GB: 2
    tasks peak below the cap). Read in place: the chunk (:func:`_entry_bytes`), two
    chunks' stored bytes in flight, and a chunk buffer where edge chunks pass through
    one."""
    if getattr(source, "sparse", False):
        return 0  # read by row panels of stored entries: no dense chunk is made
    edges = any(len(set(c)) > 1 for c in source.chunks)  # decoded through a chunk buffer
    stored = _in_flight(source) + (_stored_chunk(source) if edges else 0)
    return _entry_bytes(source) * max(source.chunks[0]) * max(source.chunks[1]) + stored


def _in_place(source: Any) -> bool:
    """Whether tasks decode the source's chunks straight into their pieces
    (:mod:`dlowrank.io.chunkread`)."""
    check = getattr(source, "reads_in_place", None)
    return bool(check is not None and check())


def _entry_bytes(source: Any) -> int:
    """A task's bytes per entry of its piece (see :func:`_chunk_need`): decoded in place,
    the piece itself, plus a float64 work copy for other dtypes (kernels that need one
    make it whole)."""
    item = np.dtype(source.dtype).itemsize
    if _in_place(source):
        return item + (0 if item == 8 else 8)
    return 2 * item + 8


def _stored_chunk(source: Any) -> int:
    """At most a chunk's stored bytes (its size in memory) when the source is read in
    place, else 0 (zarr's reads are in :func:`_entry_bytes`)."""
    if not _in_place(source):
        return 0
    return np.dtype(source.dtype).itemsize * max(source.chunks[0]) * max(source.chunks[1])


def _in_flight(source: Any) -> int:
    """A task's bytes besides its piece: decoded in place, the stored bytes of the chunk
    being decoded and of the next, fetched meanwhile."""
    return 2 * _stored_chunk(source)


def _tiles_whole(source: Any, transpose: bool) -> bool:
    """Whether a panel's tiles take every chunk whole (no chunk buffer): A tall, one
    chunk a tile, no edge chunk."""
    return not transpose and all(len(set(c)) == 1 for c in source.chunks)


def _too_small(need: int, task: int, have: str, source: Any) -> Exception:
    from dlowrank.errors import InputError

    r, c = max(source.chunks[0]), max(source.chunks[1])
    rows = max(1, r * task // need // 2)
    return InputError(
        f"the memory budget, {have}, cannot hold one chunk of {r} x {c} (a task holds "
        f"about {format_bytes(need)} for it: {_entry_bytes(source)} bytes an entry"
        f"{', and two chunks of stored bytes in flight' if _in_place(source) else ''}); store "
        "the input with smaller chunks, e.g. dlowrank convert INPUT.zarr --out "
        f"SMALLER.zarr --chunks {rows} {c}, or give the run more memory (--memory, or a "
        "larger limit)"
    )


def _budget(memory: int | None, client: Any, source: Any) -> tuple[int, int | None]:
    """(bytes one task may hold, tasks in flight on dask's threads; None on a cluster).

    On a cluster: TASK_FACTOR / 4 of the smallest worker's memory_limit (``memory``, when
    given, stands for that limit), shared by a worker's threads. On dask's threads: the run's budget
    (:func:`dlowrank.runtime.budget.measure`: the cgroup limit, RLIMIT_AS or the
    available memory, minus what the process holds; or ``memory``): TASK_SHARE of it,
    shared by as many threads as can each hold a chunk; at most MAX_TASK_BYTES a task. A budget that
    cannot hold one chunk is refused before any pass (InputError).
    """
    need = _chunk_need(source)
    if client is not None:
        workers = client.scheduler_info()["workers"].values()
        limits = [w.get("memory_limit") or 0 for w in workers]
        limits = [int(memory)] if memory is not None else [lim for lim in limits if lim > 0]
        if not limits:
            return MAX_TASK_BYTES, None
        threads = max([w.get("nthreads") or 1 for w in workers] or [1])
        task = min(MAX_TASK_BYTES, TASK_FACTOR * (min(limits) // 4) // threads)
        if need > task:
            raise _too_small(need, task, f"{format_bytes(task)} a task on a worker", source)
        return task, None
    from dlowrank.runtime.budget import measure

    run = measure(memory)
    usable = int(TASK_SHARE * run.total)
    threads = max(1, int(dask.config.get("num_workers", None) or CPU_COUNT))
    if need:
        threads = min(threads, max(1, usable // need))
    task = min(MAX_TASK_BYTES, usable // threads)
    if need > task:
        raise _too_small(need, task, str(run), source)
    logger.info(
        "memory budget %s: %d task(s) in flight, up to %.0f MiB each", run, threads, task / 2**20
    )
    return task, threads


def _current_client(client: Any) -> Any:
    """``client``, else the active distributed client, if any: none can exist before
    distributed is imported, and importing it just to find out costs about a second."""
    if client is not None:
        return client
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


class PassEngine:
    """Runs passes over a source; counts them.

    Parameters
    ----------
    source : ZarrSource, DaskSource, RatingsSource, or a Window of one
    layout : {"panel", "block", "auto"}
        "auto" picks panels when one chunk row (or column, for a wide A) fits
        the memory budget, else blocks.
    client : distributed.Client, optional
        Run on this client; by default dask's current scheduler (an active
        distributed client is used if there is one).
    checkpoint : dlowrank.io.checkpoint.Checkpoint, optional
        Save every pass's output there; a pass already saved (same number, same
        kernel) is restored instead of read again: a killed computation resumes.
    progress : callable, optional
        Receives a :class:`PassEvent` when a pass starts, as pieces finish (dask's
        threads) and when it is done.
    timeout : float, optional
        Seconds one pass may take; default on a cluster: 20 times the first pass,
        at least 600 (on threads: none).
    memory : int, optional
        Bytes one task may use (see :func:`_budget` for the default).
    missing : bool
        NaN entries are missing values: ||A||_F^2 sums the observed entries, and only
        infinite entries are refused.
    transpose : bool, optional
        See A as A^T; default: when A is wide (a window of A is given the whole's).
    fingerprint : str, optional
        The input's fingerprint when the caller has taken it already (a job); else it
        is taken at the first pass. The input must keep it until the last pass.

    The first pass also accumulates ||A||_F^2 (``fro2``) and refuses a non-finite
    input. ``passes`` counts the full reads of A the computation needed, restored
    ones included; ``restored`` how many of them came from the checkpoint.
    """

    def __init__(
        self,
        source: Any,
        layout: str = "auto",
        *,
        client: Any = None,
        checkpoint: Any = None,
        progress: Callable[[PassEvent], None] | None = None,
        timeout: float | None = None,
        memory: int | None = None,
        fingerprint: str | None = None,
        missing: bool = False,
        transpose: bool | None = None,
        rank: int | None = None,
        tiles: bool = False,
    ) -> None:
        self.source = source
        self.client = _current_client(client)
        self.progress = progress
        self.timeout = timeout
        self.missing = missing
        task, threads = _budget(memory, self.client, source)
        self.plan = Plan.make(source, layout, task, threads, transpose, rank=rank, tiles=tiles)
        self.space = self._space()
        self._checkpoint = None
        self.checkpoint = checkpoint
        self.passes = 0
        self.restored = 0
        self.fro2: float | None = None
        self._fingerprint = fingerprint
        self._first_seconds: float | None = None

    def _space(self, root: str | None = None, storage_options: dict | None = None) -> Space:
        """Where this computation's tall quantities live (see :mod:`dlowrank.engine.tall`):
        in memory up to ``dlowrank.tall-memory`` bytes each (default: TALL_MEMORY, at
        most the tasks' budget / TALL_SHARE), else in scratch Zarr (the checkpoint's folder, or a
        temporary one)."""
        limit = dask.config.get("dlowrank.tall-memory", None)
        if limit is None:  # a few live at once (Y, Q, U) beside the tasks' share
            limit = min(TALL_MEMORY, self.plan.budget * (self.plan.threads or 1) // TALL_SHARE)
        return Space(
            self.plan.row_ranges,
            parse_bytes(limit) if isinstance(limit, str) else int(limit),
            root=root,
            storage_options=storage_options,
            execute=self._execute,
        )

    @property
    def checkpoint(self) -> Any:
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, checkpoint: Any) -> None:
        """Attach a checkpoint: pass outputs are saved there, tall ones as scratch panels in
        its folder (so a resumed run reads them back)."""
        self._checkpoint = checkpoint
        if checkpoint is not None:
            self.space.close()
            self.space = self._space(
                scratch_root_of(checkpoint), getattr(checkpoint, "storage_options", None)
            )

    def _execute(self, tasks: list) -> list:
        """Run tasks that do not read A (operations on tall panels) where passes run."""
        client = self.client
        if client is not None:
            return client.gather(client.compute(tasks))
        with one_blas_thread():
            return list(dask.compute(*tasks, scheduler=THREADS, num_workers=self.plan.threads))

    def close(self) -> None:
        """Remove the computation's temporary tall panels (not a checkpoint's pass panels)."""
        self.space.close()

    # the plan, as the algorithms read it
    @property
    def layout(self) -> str:
        return self.plan.kind

    @property
    def transpose(self) -> bool:
        return self.plan.transpose

    @property
    def tall_shape(self) -> tuple[int, int]:
        return self.plan.tall_shape

    @property
    def row_ranges(self) -> tuple[tuple[int, int], ...]:
        return self.plan.row_ranges

    @property
    def col_ranges(self) -> tuple[tuple[int, int], ...]:
        return self.plan.col_ranges

    def _piece(
        self,
        rows: tuple[int, int],
        cols: tuple[int, int],
        kernel: Callable,
        args: tuple,
        settle: tuple | None = None,
        report: str | None = None,
    ) -> Any:
        rect = (*cols, *rows) if self.transpose else (*rows, *cols)
        if hasattr(self.source, "delayed_block"):  # dask computes the block
            data = self.source.delayed_block(rect)
        else:
            data = self.source
        origin = getattr(self.source, "index_origin", (0, 0))
        return dask.delayed(_run_piece, pure=False)(
            data, rect, self.transpose, kernel, args, settle, origin, report, self.plan.ahead
        )

    def _share(self, arg: Any) -> Any:
        """Broadcast arrays once: on a cluster, large ones are scattered to every worker."""
        if not isinstance(arg, np.ndarray):
            return arg
        client = self.client
        if client is not None and arg.nbytes > SCATTER_BYTES:
            return client.scatter(arg, broadcast=True, hash=False)
        return dask.delayed(arg)

    def run(self, kernel: Callable, *args: Any) -> PassOutput:
        """One pass: ``kernel(block, rows, cols, *args)`` on every piece, then reduce.

        The kernel gets a float block of the tall-oriented A (a NumPy array, or a
        SciPy sparse matrix for a ratings source) with its global ``rows`` and
        ``cols`` ranges (and, for a :class:`ByRows` argument, only that argument's rows
        ``rows[0]:rows[1]``) and returns ``{"sums": {...}, "rows": {...}, "cols": {...}}``
        of arrays. Large broadcast ``args`` are shared, not copied per task. The
        first pass also sums ||A||_F^2 into :attr:`fro2` and refuses non-finite input.
        """
        index, name = self.passes + 1, kernel.__name__
        if self.fro2 is None:
            kernel = functools.partial(_with_fro2, kernel, self.missing)
        fp = self.input_fingerprint
        saved = self.checkpoint.load(index, name, fp) if self.checkpoint is not None else None
        out = self._restore(saved)
        if out is not None:
            self.passes += 1
            self.restored += 1
            self._take_fro2(out)
            self._emit(PassEvent("done", index, 1, 1, restored=True))
            logger.info("pass %d (%s) restored from the checkpoint", index, name)
            return out
        start = time.perf_counter()
        out = self._compute(kernel, args, index)
        self._check_input(index)
        self.passes += 1
        if self.checkpoint is not None:
            self.checkpoint.save(index, name, _flatten(out), fp)
        out = self._tall(out)
        self._take_fro2(out)
        seconds = time.perf_counter() - start
        if self._first_seconds is None:
            self._first_seconds = seconds
        nbytes = int(np.prod(self.source.shape)) * self.source.dtype.itemsize
        self._emit(PassEvent("done", index, 1, 1, seconds, nbytes))
        logger.info("pass %d (%s) done in %.2f s", index, name, seconds)
        return out

    def _restore(self, saved: dict | None) -> PassOutput | None:
        """A saved pass's output, or None when there is none or its scratch panels are gone
        (then the pass is read again)."""
        if saved is None:
            return None
        out = _unflatten(saved, getattr(self.checkpoint, "storage_options", None))
        for values in out.rows.values():
            if values and isinstance(values[0], PanelRef) and not _all_exist(values):
                logger.warning(
                    "checkpoint: the scratch panels of a saved pass are gone; reading it again"
                )
                return None
        return self._tall(out)

    def _tall(self, out: PassOutput) -> PassOutput:
        """Row outputs with one row per row of A become Talls (their panels stay where the
        tasks left them); others stay lists."""
        ranges = self.row_ranges

        def wrap(values: list) -> Any:
            if values and all(isinstance(v, PanelRef) for v in values):
                owner = self.space.pass_owner(values[0].url.rsplit("/", 1)[0])
                return Tall(self.space, refs=list(values), owner=owner)
            tall = all(
                isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == r1 - r0
                for v, (r0, r1) in zip(values, ranges, strict=True)
            )
            return Tall(self.space, panels=list(values)) if values and tall else values

        out.rows = {k: wrap(v) for k, v in out.rows.items()}
        return out

    def _take_fro2(self, out: PassOutput) -> None:
        """||A||_F^2 from the first pass; it is NaN or inf iff A has a non-finite entry
        (or overflows float64): then find the first one, at the cost of one more pass."""
        if FRO2 not in out.sums:
            return
        self.fro2 = float(out.sums.pop(FRO2))
        if not np.isfinite(self.fro2):
            self._refuse_nonfinite()

    def _refuse_nonfinite(self) -> None:
        from dlowrank.errors import InputError
        from dlowrank.kernels import passkernels

        found = [p for p in self.run_pieces(passkernels.nonfinite, self.missing) if p["count"]]
        if not found:
            raise InputError(
                "`a` is finite but its squared Frobenius norm overflows float64 "
                "(entries of magnitude 1e154 or more); rescale it first"
            )
        count = sum(p["count"] for p in found)
        i, j = min(p["first"] for p in found)
        if self.transpose:
            i, j = j, i
        chunks = self.source.chunks
        ci = int(np.searchsorted(np.cumsum(chunks[0]), i, side="right"))
        cj = int(np.searchsorted(np.cumsum(chunks[1]), j, side="right"))
        what = "infinite" if self.missing else "NaN or infinite"
        raise InputError(
            f"`a` holds {count} {what} values (the first at row {i}, column {j}, in "
            f"chunk ({ci}, {cj})); dlowrank needs finite input"
        )

    def _pass_limit(self) -> float | None:
        """``timeout``; else, on a cluster, after the first pass, the larger of
        DERIVED_FLOOR seconds and DERIVED_FACTOR times the first pass."""
        if self.timeout is not None:
            return float(self.timeout)
        if self._first_seconds is None:
            return None
        return max(DERIVED_FLOOR, DERIVED_FACTOR * self._first_seconds)

    def _watch(
        self, client: Any, futures: list, index: int, topic: str | None = None, total: int = 0
    ) -> None:
        """Wait for a pass on a cluster, never forever: the pass limit, and a cluster
        left without workers for ``dlowrank.no-workers-timeout`` seconds. With ``topic``
        (where the pieces log themselves), report each piece as it finishes."""
        from distributed import wait

        from dlowrank.errors import ClusterError

        limit = self._pass_limit()
        start = time.monotonic()
        empty_since = None
        no_workers = float(dask.config.get("dlowrank.no-workers-timeout", None) or 60.0)
        done = 0
        while True:
            step = WATCH_POLL if topic is None else PROGRESS_POLL
            if limit is not None:
                step = max(min(step, limit - (time.monotonic() - start)), 1e-3)
            try:
                with client.as_current():  # the run's client, default or not
                    wait(futures, timeout=step)
                finished = True
            except TimeoutError:
                finished = False
            done = self._pieces_done(client, topic, index, done, total, finished)
            if finished:
                return
            now = time.monotonic()
            if limit is not None and now - start > limit:
                client.cancel(futures)
                raise _timeout_error(index, limit)
            if _workers(client) == 0:
                empty_since = empty_since or now
                if now - empty_since > no_workers:
                    client.cancel(futures)
                    raise ClusterError(
                        f"pass {index}: the cluster has had no workers for {no_workers:g} s; "
                        "its workers are gone (restart them, then rerun to resume from "
                        "the checkpoint)"
                    )
            else:
                empty_since = None

    def _pieces_done(
        self, client: Any, topic: str | None, index: int, done: int, total: int, finished: bool
    ) -> int:
        """Emit a "piece" event for the pieces logged since ``done``; all of them once the
        pass has finished (a count lost on its way is not waited for)."""
        if topic is None:
            return done
        try:
            now = total if finished else min(len(client.get_events(topic)), total)
        except Exception:  # noqa: BLE001 - the count is best effort
            now = total if finished else done
        for k in range(done + 1, now + 1):
            self._emit(PassEvent("piece", index, k, total))
        return max(done, now)

    @functools.cached_property
    def input_fingerprint(self) -> str | None:
        """The input's fingerprint when the run started (None for in-memory input)."""
        from dlowrank.io.checkpoint import fingerprint
        from dlowrank.io.inventory import source_url

        if not source_url(self.source):
            return None
        return self._fingerprint or fingerprint(self.source)

    def _check_input(self, index: int) -> None:
        """The input must be as it was when the run started: a matrix rewritten between
        passes would mix old and new data into one result."""
        before = self.input_fingerprint
        if before is None:
            return
        from dlowrank.io.checkpoint import fingerprint
        from dlowrank.io.inventory import source_url

        if fingerprint(self.source) != before:
            raise StorageError(
                f"the input {source_url(self.source)} changed during the run (found after "
                f"pass {index}: its files' sizes, times or checksums differ); nothing was "
                "published. Run again once the input is final"
            )

    def _args(self, args: tuple) -> list:
        """Arguments as the tasks receive them: broadcast ones shared once, ByRows ones cut
        into the slices of the row ranges (one per range)."""
        return [_Slices(self._slices(a)) if isinstance(a, ByRows) else self._share(a) for a in args]

    def _slices(self, arg: ByRows) -> list:
        client = self.client
        out = []
        array = arg.array
        if isinstance(array, Tall) and not array.in_memory:
            return [dask.delayed(array._item(i)) for i in range(len(self.row_ranges))]
        panels = array if isinstance(array, (list, Tall)) else None
        for i, (r0, r1) in enumerate(self.row_ranges):
            part = panels[i] if panels is not None else array[r0:r1]
            big = client is not None and part.nbytes > SCATTER_BYTES
            out.append(client.scatter(part, hash=False) if big else dask.delayed(part))
        return out

    @staticmethod
    def _for_rows(args: list, i: int) -> tuple:
        """The arguments of a piece in row range ``i``."""
        return tuple(_RowArg(a[i]) if isinstance(a, _Slices) else a for a in args)

    def run_pieces(self, kernel: Callable, *args: Any) -> list[Any]:
        """One pass returning every piece's own output, unreduced (for diagnostics)."""
        shared = self._args(args)
        leaves = [
            self._piece(r, c, kernel, self._for_rows(shared, i))
            for i, r in enumerate(self.row_ranges)
            for c in self.col_ranges
        ]
        client = self.client
        out = (
            client.gather(client.compute(leaves))
            if client is not None
            else dask.compute(*leaves, scheduler=THREADS)
        )
        self.passes += 1
        return list(out)

    def _emit(self, event: PassEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def _compute(self, kernel: Callable, args: tuple, index: int) -> PassOutput:
        shared = self._args(args)
        m, space = self.tall_shape[0], self.space
        prefix = space.folder(f"{index:04d}")

        def settle(i: int) -> tuple:
            return (i, self.row_ranges[i], m, space.limit, prefix, space.storage_options)

        alone = len(self.col_ranges) == 1  # a row range's only piece settles its own rows
        client = self.client
        # on a cluster, pieces log themselves on the scheduler; the watch counts them
        report = (
            f"dlowrank-pieces-{uuid.uuid4().hex}"
            if client is not None and self.progress is not None
            else None
        )
        leaves = {
            (i, j): self._piece(
                r, c, kernel, self._for_rows(shared, i), settle(i) if alone else None, report
            )
            for i, r in enumerate(self.row_ranges)
            for j, c in enumerate(self.col_ranges)
        }
        pick = dask.delayed(operator.getitem)
        total = _tree_sum([pick(v, "sums") for v in leaves.values()])
        rows = [
            _tree_sum([pick(leaves[i, j], "rows") for j in range(len(self.col_ranges))])
            for i in range(len(self.row_ranges))
        ]
        cols = [
            _tree_sum([pick(leaves[i, j], "cols") for i in range(len(self.row_ranges))])
            for j in range(len(self.col_ranges))
        ]
        if not alone:  # summed over the row range's pieces first
            rows = [dask.delayed(_settle)(r, *settle(i)) for i, r in enumerate(rows)]
        if client is not None:
            futures = client.compute([total, rows, cols])
            self._emit(PassEvent("start", index, 0, len(leaves)))  # tasks already submitted
            self._watch(client, futures, index, report, len(leaves))
            total, rows, cols = client.gather(futures)
        else:
            self._emit(PassEvent("start", index, 0, len(leaves)))
            # Dask's threads each run a task; BLAS threads on top would oversubscribe the
            # cores (measured: q = 2 on 100,000 x 4,000 took 21.8 s with 2 BLAS threads per
            # task, 13.1 s with one).
            with (
                one_blas_thread(),
                _PieceCounter(self, index, len(leaves), self.timeout),
            ):
                # one piece (a small in-memory input): no thread pool to start
                scheduler = SYNC if len(leaves) == 1 else THREADS
                total, rows, cols = dask.compute(
                    total, rows, cols, scheduler=scheduler, num_workers=self.plan.threads
                )
        return PassOutput(
            sums=total,
            rows={k: [r[k] for r in rows] for k in rows[0]},
            cols={k: [c[k] for c in cols] for k in cols[0]},
        )


#: Without --timeout, a pass on a cluster may take at most this factor times the first
#: pass, and never less than the floor (seconds).
DERIVED_FACTOR, DERIVED_FLOOR = 20.0, 600.0
#: Seconds between looks at the cluster while a pass runs on it (with a progress display:
#: PROGRESS_POLL, so that pieces show as they finish).
WATCH_POLL = 2.0
PROGRESS_POLL = 0.25


def _timeout_error(index: int, timeout: float) -> PassTimeoutError:
    return PassTimeoutError(
        f"pass {index} did not finish within the pass limit of {timeout:g} s (--timeout); "
        "raise --timeout, or check that the cluster's workers are alive"
    )


def _workers(client: Any) -> int:
    try:
        return len(client.scheduler_info(n_workers=-1)["workers"])
    except TypeError:  # a distributed without the n_workers keyword
        return len(client.scheduler_info()["workers"])


class _PieceCounter(Callback):
    """Reports each finished piece of a pass run on dask's threads, and enforces the
    pass limit: checked whenever a task starts or ends (dask calls both from its
    scheduling loop, so raising here stops the pass)."""

    def __init__(
        self, engine: PassEngine, index: int, total: int, timeout: float | None = None
    ) -> None:
        super().__init__()
        self.engine, self.index, self.total, self.done = engine, index, total, 0
        self.lock = threading.Lock()
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _timeout_error(self.index, self.timeout)

    def _pretask(self, key, dsk, state) -> None:
        self._check_deadline()

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self._check_deadline()
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith("_run_piece") and self.engine.progress is not None:
            with self.lock:
                self.done += 1
                done = self.done
            self.engine._emit(PassEvent("piece", self.index, done, self.total))


def _settle(
    rows: dict, i: int, span: tuple, m: int, limit: int, prefix: str, storage_options: Any
) -> dict:
    """A row range's outputs as the driver receives them: an (m, w) output larger than the
    space's limit is written to scratch by this task (only its reference travels)."""
    out = {}
    for key, value in rows.items():
        value = np.asarray(value)
        if (
            value.ndim == 2
            and value.shape[0] == span[1] - span[0]
            and m * value.shape[1] * 8 > limit
        ):
            out[key] = write_panel(f"{prefix}-{key}/p{i:05d}", value, storage_options)
        else:
            out[key] = value
    return out


def _all_exist(refs: list) -> bool:
    from dlowrank.io.matrix import filesystem

    for ref in refs:
        fs, path = filesystem(ref.url, ref.storage_options)
        if not fs.exists(f"{path.rstrip('/')}/zarr.json"):
            return False
    return True


#: Key prefix of a tall output saved as references to its scratch panels.
_TALL_KEY = "talls__"


def _flatten(out: PassOutput) -> dict[str, np.ndarray]:
    import json

    flat = {f"sums__{k}": np.asarray(v) for k, v in out.sums.items()}
    for part in ("rows", "cols"):
        for k, values in getattr(out, part).items():
            if isinstance(values, Tall) and not values.in_memory:
                flat[f"{_TALL_KEY}{k}"] = np.array(json.dumps([r.url for r in values.refs]))
                continue
            if isinstance(values, list) and values and isinstance(values[0], PanelRef):
                flat[f"{_TALL_KEY}{k}"] = np.array(json.dumps([r.url for r in values]))
                continue
            flat.update({f"{part}__{k}__{i}": np.asarray(v) for i, v in enumerate(values)})
    return flat


def _unflatten(flat: dict[str, np.ndarray], storage_options: Any = None) -> PassOutput:
    import json

    out = PassOutput(sums={}, rows={}, cols={})
    for key in [k for k in flat if k.startswith(_TALL_KEY)]:
        urls = json.loads(str(flat[key]))
        out.rows[key[len(_TALL_KEY) :]] = [PanelRef(u, storage_options) for u in urls]
    flat = {k: v for k, v in flat.items() if not k.startswith(_TALL_KEY)}
    for key in sorted(
        flat,
        key=lambda s: (
            s.rsplit("__", 1)[0],
            int(s.rsplit("__", 1)[1]) if s.count("__") == 2 else 0,
        ),
    ):
        part, _, rest = key.partition("__")
        if part == "sums":
            out.sums[rest] = flat[key]
        else:
            name = rest.rsplit("__", 1)[0]
            getattr(out, part).setdefault(name, []).append(flat[key])
    return out
