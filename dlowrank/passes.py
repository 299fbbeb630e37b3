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
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from dask.callbacks import Callback
from threadpoolctl import threadpool_limits

from dlowrank.errors import DlowrankWarning, PassTimeoutError, StorageError
from dlowrank.io.source import DaskSource, Rect, ZarrSource

logger = logging.getLogger(__name__)

#: Default target size of a row panel (several chunk rows are grouped up to this).
PANEL_BYTES = 256 << 20
#: Default largest panel a task may hold; beyond it the engine works chunk by chunk.
MAX_PANEL_BYTES = 1 << 30
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
    rows: dict[str, list[np.ndarray]]  # per row range, in order of ``row_ranges``
    cols: dict[str, list[np.ndarray]]


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


def _run_piece(
    block_or_source: Any, rect: Rect, transpose: bool, kernel: Callable, args: tuple
) -> dict:
    # a stored source (Zarr array, ratings group) is read here, by the task itself
    block = block_or_source.read(rect) if hasattr(block_or_source, "read") else block_or_source
    r0, r1, c0, c1 = rect
    if transpose:
        block, r0, r1, c0, c1 = block.T, c0, c1, r0, r1
    return kernel(block, (r0, r1), (c0, c1), *args)


@dataclass
class PassEngine:
    """Runs passes over a source; counts them.

    Parameters
    ----------
    source : ZarrSource or DaskSource
    layout : {"panel", "block", "auto"}
        "auto" picks panels when one chunk row (or column, for a wide A) fits
        ``max_panel_bytes``, else blocks.
    client : distributed.Client, optional
        Run on this client; by default dask's current scheduler (an active
        distributed client is used if there is one).
    checkpoint : dlowrank.io.checkpoint.Checkpoint, optional
        Save every pass's output there; a pass already saved (same number, same
        kernel) is restored instead of read again: a killed computation resumes.
    progress : callable, optional
        Receives a :class:`PassEvent` when a pass starts, as pieces finish (dask's
        threads) and when it is done.

    ``passes`` counts the full reads of A the computation needed, restored ones
    included; ``restored`` how many of them came from the checkpoint.
    """

    source: ZarrSource | DaskSource
    layout: str = "auto"
    panel_bytes: int = PANEL_BYTES
    max_panel_bytes: int = MAX_PANEL_BYTES
    client: Any = None
    checkpoint: Any = None
    progress: Callable[[PassEvent], None] | None = None
    passes: int = field(default=0, init=False)
    restored: int = field(default=0, init=False)
    _distributed: Any = field(default=None, init=False, repr=False)
    _first_seconds: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._fit_budget_to_workers()
        m, n = self.source.shape
        self.transpose = n > m
        chunks = self.source.chunks
        self.tall_shape = (n, m) if self.transpose else (m, n)
        self.tall_chunks = (chunks[1], chunks[0]) if self.transpose else chunks
        band_bytes = self.tall_shape[1] * 8  # float64 work copy per row of a panel
        if self.layout == "auto":
            widest = max(self.tall_chunks[0]) * band_bytes
            self.layout = "panel" if widest <= self.max_panel_bytes else "block"
            if self.layout == "block":
                warnings.warn(
                    f"a row panel of {max(self.tall_chunks[0])} x {self.tall_shape[1]} needs "
                    f"{widest / 2**30:.2f} GiB, above the {self.max_panel_bytes / 2**30:.2f} GiB "
                    "budget: working chunk by chunk, which costs two passes per power "
                    "iteration; store A with fewer rows per chunk to avoid this",
                    DlowrankWarning,
                    stacklevel=4,
                )
        if self.layout == "panel":
            self.row_ranges = _bands(self.tall_chunks[0], band_bytes, self.panel_bytes)
            self.col_ranges = [(0, self.tall_shape[1])]
        else:
            self.row_ranges = _ranges(self.tall_chunks[0])
            self.col_ranges = _ranges(self.tall_chunks[1])

    def _fit_budget_to_workers(self) -> None:
        """On a distributed cluster, keep panels well inside the smallest worker's memory:
        a task holds its panel, a float64 copy and its products (about 3x the panel)."""
        client = self.client
        if client is None:
            try:
                from distributed import get_client

                client = get_client()
            except (ImportError, ValueError):
                return
        self._distributed = client
        limits = [w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values()]
        limits = [lim for lim in limits if lim > 0]
        if limits:
            self.panel_bytes = min(self.panel_bytes, min(limits) // 8)
            self.max_panel_bytes = min(self.max_panel_bytes, min(limits) // 4)

    def _piece(
        self, rows: tuple[int, int], cols: tuple[int, int], kernel: Callable, args: tuple
    ) -> Any:
        rect = (*cols, *rows) if self.transpose else (*rows, *cols)
        if isinstance(self.source, DaskSource):
            data = self.source.delayed_block(rect)
        else:
            data = self.source
        return dask.delayed(_run_piece, pure=False)(data, rect, self.transpose, kernel, args)

    def _share(self, arg: Any) -> Any:
        """Broadcast arrays once: on a cluster, large ones are scattered to every worker."""
        if not isinstance(arg, np.ndarray):
            return arg
        client = self.client or self._distributed
        if client is not None and arg.nbytes > SCATTER_BYTES:
            return client.scatter(arg, broadcast=True, hash=False)
        return dask.delayed(arg)

    def run(self, kernel: Callable, *args: Any) -> PassOutput:
        """One pass: ``kernel(block, rows, cols, *args)`` on every piece, then reduce.

        The kernel gets a float block of the tall-oriented A with its global
        ``rows`` and ``cols`` ranges and returns ``{"sums": {...}, "rows": {...},
        "cols": {...}}`` of arrays. Large broadcast ``args`` are shared, not copied
        per task.
        """
        index, name = self.passes + 1, kernel.__name__
        fp = self.input_fingerprint
        saved = self.checkpoint.load(index, name, fp) if self.checkpoint is not None else None
        if saved is not None:
            self.passes += 1
            self.restored += 1
            self._emit(PassEvent("done", index, 1, 1, restored=True))
            logger.info("pass %d (%s) restored from the checkpoint", index, name)
            return _unflatten(saved)
        start = time.perf_counter()
        out = self._compute(kernel, args, index)
        self._check_input(index)
        self.passes += 1
        if self.checkpoint is not None:
            self.checkpoint.save(index, name, _flatten(out), fp)
            # A pause after each saved pass, for tests that kill a job between passes.
            time.sleep(float(os.environ.get("DLOWRANK_TEST_PASS_DELAY", "0")))
        seconds = time.perf_counter() - start
        if self._first_seconds is None:
            self._first_seconds = seconds
        nbytes = int(np.prod(self.source.shape)) * self.source.dtype.itemsize
        self._emit(PassEvent("done", index, 1, 1, seconds, nbytes))
        logger.info("pass %d (%s) done in %.2f s", index, name, seconds)
        return out

    def _pass_limit(self) -> float | None:
        """``dlowrank.pass-timeout``; else, on a cluster, after the first pass, the larger
        of DERIVED_FLOOR seconds and DERIVED_FACTOR times the first pass."""
        explicit = dask.config.get("dlowrank.pass-timeout", None)
        if explicit is not None:
            return float(explicit)
        if self._first_seconds is None:
            return None
        return max(DERIVED_FLOOR, DERIVED_FACTOR * self._first_seconds)

    def _watch(self, client: Any, futures: list, index: int) -> None:
        """Wait for a pass on a cluster, never forever: the pass limit, and a cluster
        left without workers for ``dlowrank.no-workers-timeout`` seconds."""
        from distributed import wait

        from dlowrank.errors import ClusterError

        limit = self._pass_limit()
        start = time.monotonic()
        empty_since = None
        no_workers = float(dask.config.get("dlowrank.no-workers-timeout", None) or 60.0)
        while True:
            step = WATCH_POLL
            if limit is not None:
                step = max(min(step, limit - (time.monotonic() - start)), 1e-3)
            try:
                wait(futures, timeout=step)
                return
            except TimeoutError:
                pass
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

    @functools.cached_property
    def input_fingerprint(self) -> str | None:
        """The input's fingerprint when the run started (None for in-memory input)."""
        from dlowrank.io.checkpoint import fingerprint
        from dlowrank.io.inventory import source_url

        return fingerprint(self.source) if source_url(self.source) else None

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

    def run_pieces(self, kernel: Callable, *args: Any) -> list[Any]:
        """One pass returning every piece's own output, unreduced (for diagnostics)."""
        shared = tuple(self._share(a) for a in args)
        leaves = [
            self._piece(r, c, kernel, shared) for r in self.row_ranges for c in self.col_ranges
        ]
        client = self.client or self._distributed
        out = (
            client.gather(client.compute(leaves))
            if client is not None
            else dask.compute(*leaves, scheduler="threads")
        )
        self.passes += 1
        return list(out)

    def _emit(self, event: PassEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def _compute(self, kernel: Callable, args: tuple, index: int) -> PassOutput:
        shared = tuple(self._share(a) for a in args)
        leaves = {
            (i, j): self._piece(r, c, kernel, shared)
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
        client = self.client or self._distributed
        if client is not None:
            futures = client.compute([total, rows, cols])
            self._emit(PassEvent("start", index, 0, len(leaves)))  # tasks already submitted
            self._watch(client, futures, index)
            total, rows, cols = client.gather(futures)
        else:
            self._emit(PassEvent("start", index, 0, len(leaves)))
            # Dask's threads each run a task; BLAS threads on top would oversubscribe the
            # cores (measured: q = 2 on 100,000 x 4,000 took 21.8 s with 2 BLAS threads per
            # task, 13.1 s with one).
            timeout = dask.config.get("dlowrank.pass-timeout", None)
            with (
                threadpool_limits(limits=1, user_api="blas"),
                _PieceCounter(self, index, len(leaves), timeout),
            ):
                total, rows, cols = dask.compute(total, rows, cols, scheduler="threads")
        return PassOutput(
            sums=total,
            rows={k: [r[k] for r in rows] for k in rows[0]},
            cols={k: [c[k] for c in cols] for k in cols[0]},
        )


#: Without --timeout, a pass on a cluster may take at most this factor times the first
#: pass, and never less than the floor (seconds).
DERIVED_FACTOR, DERIVED_FLOOR = 20.0, 600.0
#: Seconds between looks at the cluster while a pass runs on it.
WATCH_POLL = 2.0


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


def _flatten(out: PassOutput) -> dict[str, np.ndarray]:
    flat = {f"sums__{k}": np.asarray(v) for k, v in out.sums.items()}
    for part in ("rows", "cols"):
        for k, values in getattr(out, part).items():
            flat.update({f"{part}__{k}__{i}": np.asarray(v) for i, v in enumerate(values)})
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> PassOutput:
    out = PassOutput(sums={}, rows={}, cols={})
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
