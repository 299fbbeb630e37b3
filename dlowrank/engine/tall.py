"""Tall quantities: one row per row of A (tall orientation), held as row panels.

The sketch Y, its orthonormal basis Q and the output U have m rows; m is the long
dimension (10^7 to 10^9 rows), so none of them is ever concatenated in the driver.
A :class:`Tall` is a list of row panels, one per row range of the pass engine, and
each panel lives where the :class:`Space` of the computation puts it:

- **in memory** (a NumPy array in this process) when the whole quantity is at most
  the space's ``limit`` bytes (float64): the fast path for moderate m;
- **in a scratch Zarr folder** otherwise, one array per panel, written by the task
  that computed it and read back by the tasks that need that panel only. The folder is
  the checkpoint's (so a killed run resumes from its panels) or a temporary one
  removed when the computation ends.

A Tall may carry a pending small right factor (``times``): Q @ U_B, its truncation and
its sign flip cost nothing until a panel is read. Operations on panels (``map``,
``reduce``) run in this process for in-memory panels and as one task per panel
(dask's threads or the cluster) for scratch panels, so only l x l quantities reach
the driver. Algorithms do not branch on the placement; the engine decides it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.threaded import get as threaded_get

from dlowrank.kernels.exact import sign_flip

logger = logging.getLogger(__name__)

#: A tall quantity at most this large (float64 bytes) stays in memory by default
#: (also bounded by the memory budget; dask config ``dlowrank.tall-memory`` overrides).
TALL_MEMORY = 256 << 20
#: Name prefix of scratch folders (a checkpoint folder recognizes them as its own).
PREFIX = "tall-"


def _open_kwargs(storage_options: dict | None) -> dict:
    return {"storage_options": storage_options} if storage_options else {}


@dataclass(frozen=True)
class PanelRef:
    """One panel stored as a Zarr array at ``url`` (read by the task that needs it)."""

    url: str
    storage_options: dict | None = None

    def read(self, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The panel, or its rows ``rows[0]:rows[1]`` (only their chunks are read)."""
        import zarr

        arr = zarr.open_array(self.url, mode="r", **_open_kwargs(self.storage_options))
        return np.asarray(arr[...] if rows is None else arr[rows[0] : rows[1]])


def write_panel(url: str, data: np.ndarray, storage_options: dict | None = None) -> PanelRef:
    """Store ``data`` as a Zarr array at ``url`` (uncompressed: scratch is read back soon,
    and compressing float64 noise gains nothing); return its reference."""

    data = np.ascontiguousarray(data)
    arr = _create_panel(url, data.shape, data.dtype, storage_options)
    arr[...] = data
    return PanelRef(url, storage_options)


def _create_panel(url: str, shape: tuple, dtype: Any, storage_options: dict | None) -> Any:
    """An empty scratch panel, chunked by SLAB_ROWS rows (slabs read whole chunks)."""
    import zarr

    return zarr.create_array(
        url,
        shape=shape,
        dtype=dtype,
        chunks=(max(1, min(shape[0], SLAB_ROWS)), *shape[1:]),
        compressors=None,
        overwrite=True,
        **_open_kwargs(storage_options),
    )


@dataclass(frozen=True)
class Part:
    """Panel ``base`` (in memory, or a :class:`PanelRef`) times the small matrices of
    ``right`` in turn (each product rounded before the next: as if materialized)."""

    base: Any
    right: tuple | None = None


@dataclass(frozen=True)
class Combo:
    """sum_j coefs[j] * parts[j]: a linear combination of panels, made where it is read."""

    coefs: list
    parts: list


def resolve(item: Any, rows: tuple[int, int] | None = None) -> Any:
    """A task's view of an operand (or of its rows ``rows[0]:rows[1]``, local to the
    panel): stored panels are read, pending products and linear combinations applied;
    anything else is returned as it is."""
    if isinstance(item, Part):
        base = resolve(item.base, rows)
        for matrix in item.right or ():
            base = base @ matrix
        return base
    if isinstance(item, Combo):
        out = None
        for c, part in zip(item.coefs, item.parts, strict=True):
            term = c * resolve(part, rows)
            out = term if out is None else out + term
        return out
    if isinstance(item, PanelRef):
        return item.read(rows)
    if rows is not None and isinstance(item, np.ndarray):
        return item[rows[0] : rows[1]]
    return item


def _remove_folder(url: str, storage_options: dict | None) -> None:
    from dlowrank.io.matrix import filesystem

    try:
        fs, path = filesystem(url, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError:  # already gone, or its space's folder was removed first
        pass


class _Owner:
    """Owns a scratch folder: removed when the last Tall reading it is collected (or
    when its space closes)."""

    def __init__(self, url: str, storage_options: dict | None) -> None:
        self.url = url
        self.remove = weakref.finalize(self, _remove_folder, url, storage_options)


class Space:
    """Where the tall quantities of one computation live.

    ``ranges``: the engine's row ranges (tall orientation); ``limit``: the largest
    float64 size kept in memory; ``root``: the scratch folder (a URL or path; default: a
    temporary folder made on first use and removed by :meth:`close` or when the space
    is collected); ``execute``: runs a list of delayed tasks (the engine's scheduler).
    """

    def __init__(
        self,
        ranges: Sequence[tuple[int, int]],
        limit: int,
        *,
        root: str | None = None,
        storage_options: dict | None = None,
        execute: Callable[[list], list] | None = None,
    ) -> None:
        self.ranges = tuple(ranges)
        self.m = self.ranges[-1][1] if self.ranges else 0
        self.limit = int(limit)
        self.storage_options = storage_options
        self._root = root.rstrip("/") if root else None
        self._own_root = root is None
        self._execute = execute or (
            lambda tasks: list(dask.compute(*tasks, scheduler=threaded_get))
        )
        self._made: list[weakref.ref] = []  # owners of the folders made here (see close)
        self._finalizer: Any = None
        self._folder: _Folder | None = None  # the local temporary root, when made

    @property
    def root(self) -> str:
        """The scratch folder, made on first use: a new folder under dask config
        ``dlowrank.scratch`` (a path or URL every worker can reach, e.g. an object-store
        prefix for a cluster spread over machines), else under dask's
        ``temporary-directory`` or the system's temporary folder (this machine: dask's
        threads or a LocalCluster)."""
        if self._root is None:
            shared = dask.config.get("dlowrank.scratch", None)
            if shared:
                self._root = f"{str(shared).rstrip('/')}/dlowrank-scratch-{uuid.uuid4().hex[:12]}"
                self._finalizer = weakref.finalize(
                    self, _remove_folder, self._root, self.storage_options
                )
            else:
                self._folder = _Folder("dlowrank-scratch-")
                self._root, self._finalizer = self._folder.path, self._folder.remove
            logger.info("scratch folder for tall quantities: %s", self._root)
        return self._root

    def in_memory(self, width: int) -> bool:
        """Whether an (m, width) float64 quantity stays in memory."""
        return self.m * width * 8 <= self.limit

    def folder(self, name: str) -> str:
        return f"{self.root}/{PREFIX}{name}"

    def new_folder(self, what: str) -> _Owner:
        """A new scratch folder for a computed quantity, removed with its last reader."""
        owner = _Owner(self.folder(f"x{uuid.uuid4().hex[:8]}-{what}"), self.storage_options)
        self._made.append(weakref.ref(owner))
        return owner

    def pass_owner(self, url: str) -> _Owner | None:
        """The owner of a pass's scratch folder ``url``: in a temporary root it goes with
        its last reader; in a checkpoint's folder it stays (a resumed run reads it)."""
        if not self._own_root:
            return None
        owner = _Owner(url, self.storage_options)
        self._made.append(weakref.ref(owner))
        return owner

    def make(self, fn: Callable, *, args: tuple = (), width: int, what: str = "panels") -> Tall:
        """A new (m, width) quantity, panel i = fn(i, (r0, r1), *args), made in memory or
        written to scratch by one task per panel."""
        if self.in_memory(width):
            return Tall(
                self, panels=[np.asarray(fn(i, span, *args)) for i, span in enumerate(self.ranges)]
            )
        owner = self.new_folder(what)
        tasks = [
            dask.delayed(_panel_task, pure=False)(
                fn, i, span, (), args, (f"{owner.url}/p{i:05d}", self.storage_options)
            )
            for i, span in enumerate(self.ranges)
        ]
        return Tall(self, refs=list(self.execute(tasks)), base_width=width, owner=owner)

    def execute(self, tasks: list) -> list:
        return self._execute(tasks) if tasks else []

    def close(self) -> None:
        """Remove what this space wrote: the whole temporary folder, or (in a checkpoint's
        folder) the panels made by ``map``; a pass's panels stay with its checkpoint."""
        if self._own_root:
            if self._finalizer is not None:
                self._finalizer()
            self._root, self._folder = None, None
            return
        for ref in self._made:
            owner = ref()
            if owner is not None:
                owner.remove()
        self._made.clear()


#: A panel task works in slabs of this many rows, so its temporaries stay small whatever
#: the panel's height (measured: whole 250,000 x 64 panels, two tasks in flight, took
#: the single pass over a 1 GB cap after its pass).
SLAB_ROWS = 65536


def _panel_task(
    fn: Callable, i: int, span: tuple, items: tuple, args: tuple, dest: Any, fold: Any = None
) -> Any:
    """fn over panel i in row slabs (fn is row-local: it sees each slab's global rows).
    With ``dest`` the slabs are written there (a new scratch panel); else the slabs'
    results are stacked (``fold`` "stack"), folded by ``fold``, or summed."""
    r0, r1 = span
    out, target, stacked = None, None, []
    for s0 in range(r0, max(r1, r0 + 1), SLAB_ROWS):
        s1 = min(r1, s0 + SLAB_ROWS)
        local = (s0 - r0, s1 - r0)
        part = fn(i, (s0, s1), *[resolve(x, local) for x in items], *args)
        if dest is not None:
            if target is None:
                target = _create_panel(dest[0], (r1 - r0, *part.shape[1:]), part.dtype, dest[1])
            target[local[0] : local[1]] = part
        elif fold == "stack":
            stacked.append(part)
        elif out is None:
            out = part
        else:
            out = fold(out, part) if fold is not None else out + part
    if dest is not None:
        return PanelRef(dest[0], dest[1])
    return np.concatenate(stacked) if fold == "stack" else out


class Tall:
    """An (m, width) quantity as row panels matching ``space.ranges``: in memory
    (``panels``: NumPy arrays) or in scratch (``refs``: :class:`PanelRef`), times an
    optional pending small matrix ``right``. Indexing gives panel i as a NumPy array."""

    def __init__(
        self,
        space: Space,
        *,
        panels: list[np.ndarray] | None = None,
        refs: list[PanelRef] | None = None,
        terms: list[tuple[float, Tall]] | None = None,
        right: tuple | None = None,
        base_width: int | None = None,
        owner: _Owner | None = None,
    ) -> None:
        if sum(x is not None for x in (panels, refs, terms)) != 1:
            raise ValueError("a Tall holds exactly one of panels, refs or terms")
        self.space, self.panels, self.refs, self.right = space, panels, refs, right
        self.terms = terms
        self.owner = owner  # keeps the scratch folder of ``refs`` while this lives
        if base_width is None:
            if terms is not None:
                base_width = terms[0][1].width
            else:
                base_width = panels[0].shape[1] if panels else _stored_width(refs[0])
        self.base_width = base_width

    # --- shape and access --------------------------------------------------------
    @property
    def width(self) -> int:
        return self.base_width if not self.right else int(self.right[-1].shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.space.m, self.width)

    @property
    def in_memory(self) -> bool:
        """Whether every panel is a NumPy array in this process (a pending combination of
        stored panels is not)."""
        if self.terms is not None:
            return all(t.in_memory for _, t in self.terms)
        return self.panels is not None

    def __len__(self) -> int:
        return len(self.space.ranges)

    def _item(self, i: int) -> Any:
        if self.terms is not None:
            return Combo([c for c, _ in self.terms], [t._item(i) for _, t in self.terms])
        return Part(self.panels[i] if self.panels is not None else self.refs[i], self.right)

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError("a Tall is indexed by panel number; use to_numpy() for arrays")
        return resolve(self._item(int(i)))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def times(self, right: np.ndarray, *, stage: bool = False) -> Tall:
        """This quantity times a small (width, w) matrix: pending, nothing is computed.
        It is folded into the pending factor, unless ``stage``: then the panel times the
        pending factor is rounded first, exactly as if that product had been
        materialized (CholeskyQR2's second step needs the rounded Q_1, not Y (R_1^{-1}
        R_2^{-1}), whose error grows with cond(Y))."""
        right = np.asarray(right, dtype=np.float64)
        if self.terms is not None:
            return Tall(self.space, terms=[(c, t.times(right, stage=stage)) for c, t in self.terms])
        if not self.right or stage:
            combined = (*(self.right or ()), right)
        else:
            combined = (*self.right[:-1], self.right[-1] @ right)
        return Tall(
            self.space,
            panels=self.panels,
            refs=self.refs,
            right=combined,
            base_width=self.base_width,
            owner=self.owner,
        )

    #: NumPy scalars and arrays defer to Tall's own operators (never converting a Tall).
    __array_ufunc__ = None

    def __mul__(self, c: float) -> Tall:
        return lincomb([(float(c), self)])

    __rmul__ = __mul__

    def __add__(self, other: Tall) -> Tall:
        return lincomb([(1.0, self), (1.0, other)])

    def __sub__(self, other: Tall) -> Tall:
        return lincomb([(1.0, self), (-1.0, other)])

    def columns(self, k: int) -> Tall:
        """The first ``k`` columns (pending)."""
        return self.times(np.eye(self.width)[:, :k])

    def to_numpy(self) -> np.ndarray:
        """The whole (m, width) array: for quantities that fit in memory only."""
        return np.concatenate(list(self))

    # --- operations over panels -------------------------------------------------
    def _tasks(self, fn, others, args, dests, fold=None):
        return [
            dask.delayed(_panel_task, pure=False)(
                fn, i, span, (self._item(i), *[o._item(i) for o in others]), args, dests[i], fold
            )
            for i, span in enumerate(self.space.ranges)
        ]

    def _local(self, others: Sequence[Tall]) -> bool:
        return self.in_memory and all(o.in_memory for o in others)

    def reduce(
        self, fn: Callable, *others: Tall, args: tuple = (), combine: Callable | None = None
    ) -> Any:
        """sum_i fn(i, (r0, r1), panel_i, other panels_i..., *args), or the panels' results
        folded by ``combine``: small results only."""
        if self._local(others):
            parts = [
                fn(i, span, self[i], *[o[i] for o in others], *args)
                for i, span in enumerate(self.space.ranges)
            ]
        else:
            parts = self.space.execute(self._tasks(fn, others, args, [None] * len(self), combine))
        if combine is None:
            return sum(parts[1:], parts[0])
        out = parts[0]
        for part in parts[1:]:
            out = combine(out, part)
        return out

    def map(
        self, fn: Callable, *others: Tall, args: tuple = (), width: int, what: str = "panels"
    ) -> Tall:
        """A new (m, width) quantity, panel i = fn(i, (r0, r1), panel_i, ..., *args),
        placed by the space (in memory, or written to scratch by each panel's task)."""
        space = self.space
        if space.in_memory(width):
            if self._local(others):
                panels = [
                    fn(i, span, self[i], *[o[i] for o in others], *args)
                    for i, span in enumerate(space.ranges)
                ]
            else:
                panels = space.execute(self._tasks(fn, others, args, [None] * len(self), "stack"))
            return Tall(space, panels=[np.asarray(p) for p in panels])
        owner = space.new_folder(what)
        dests = [(f"{owner.url}/p{i:05d}", space.storage_options) for i in range(len(self))]
        refs = space.execute(self._tasks(fn, others, args, dests))
        return Tall(space, refs=list(refs), base_width=width, owner=owner)

    def gram(self) -> np.ndarray:
        """sum_i P_i^T P_i (width x width)."""
        return self.reduce(_gram)

    def cross(self, other: Tall) -> np.ndarray:
        """sum_i P_i^T O_i (width x other's width)."""
        return self.reduce(_cross, other)

    def materialize(self, what: str = "panels") -> Tall:
        """This quantity with its pending factor or combination applied (a new Tall)."""
        if not self.right and self.terms is None:
            return self
        return self.map(_identity, width=self.width, what=what)


def lincomb(terms: list[tuple[float, Tall]]) -> Tall:
    """sum_j c_j T_j of Talls of one space and width: computed at once in memory, else
    pending (each task combines its own panels when it reads them)."""
    flat: list[tuple[float, Tall]] = []
    for c, t in terms:
        if t.terms is not None:
            flat.extend((c * c2, t2) for c2, t2 in t.terms)
        else:
            flat.append((c, t))
    space = flat[0][1].space
    if all(t.in_memory for _, t in flat):
        panels = [sum(c * t[i] for c, t in flat) for i in range(len(space.ranges))]
        return Tall(space, panels=panels)
    return Tall(space, terms=flat)


def _stored_width(ref: PanelRef) -> int:
    import zarr

    return int(zarr.open_array(ref.url, mode="r", **_open_kwargs(ref.storage_options)).shape[1])


def _gram(i, span, p):
    return p.T @ p


def _cross(i, span, p, o):
    return p.T @ o


def _identity(i, span, p):
    return p


def memory_tall(panels: Sequence[np.ndarray], space: Space | None = None) -> Tall:
    """A Tall of in-memory panels (a space of their own when none is given)."""
    panels = [np.asarray(p, dtype=np.float64) for p in panels]
    if space is None:
        edges = np.cumsum([0] + [p.shape[0] for p in panels])
        ranges = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        space = Space(ranges, limit=1 << 62)
    return Tall(space, panels=panels)


def as_tall(panels: Any) -> Tall:
    """``panels`` as a Tall: a Tall, or a sequence of NumPy panels (in memory)."""
    return panels if isinstance(panels, Tall) else memory_tall(panels)


def scratch_root_of(checkpoint: Any) -> str | None:
    """The scratch folder of a computation with a checkpoint: the checkpoint's own."""
    return None if checkpoint is None else os.fspath(checkpoint.url).rstrip("/")


# --- tall factors of a result ------------------------------------------------------

#: A result factor at most this large (bytes, in A's dtype) is returned as NumPy; a larger
#: one as a dask array over Zarr (dask config ``dlowrank.factor-memory`` overrides).
FACTOR_MEMORY = 256 << 20


def factor_limit() -> int:
    from dask.utils import parse_bytes

    limit = dask.config.get("dlowrank.factor-memory", None)
    if limit is None:
        return FACTOR_MEMORY
    return parse_bytes(limit) if isinstance(limit, str) else int(limit)


def _signed_max(i, span, p):
    """Per column: |largest entry|, its global row, its value (sign convention)."""
    idx = np.argmax(np.abs(p), axis=0)
    vals = p[idx, np.arange(p.shape[1])]
    return np.stack([np.abs(vals), idx + span[0], vals])


def _larger(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise the entry of larger magnitude; the earlier row on a tie."""
    return np.where(b[0] > a[0], b, a)


class KeptArray:
    """A read-only Zarr array that keeps its temporary folder (``keeper``: a local
    :class:`_Folder`, or the :class:`_Owner` of a folder under ``dlowrank.scratch``) as
    long as it (or a dask array reading it) lives. Pickled (to a worker) it is the bare
    Zarr URL."""

    def __init__(self, url: str, keeper: Any = None, storage_options: dict | None = None) -> None:
        import zarr

        self.url, self._keeper, self._so = url, keeper, storage_options
        self._array = zarr.open_array(url, mode="r", storage_options=storage_options)
        self.shape, self.dtype, self.ndim = self._array.shape, self._array.dtype, self._array.ndim
        self.chunks = self._array.chunks

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._array[key]

    def __reduce__(self):
        return (KeptArray, (self.url, None, self._so))


class _Folder:
    """A local temporary folder (under dask's ``temporary-directory`` or the system's),
    removed when the last reference to it goes or by ``remove()``."""

    def __init__(self, prefix: str) -> None:
        base = dask.config.get("temporary-directory", None) or tempfile.gettempdir()
        self.path = tempfile.mkdtemp(prefix=prefix, dir=base)
        self.remove = weakref.finalize(self, shutil.rmtree, self.path, True)


def _write_factor(i, span, p, url, transpose, dtype, storage_options):
    """Write a panel of the factor; return its column maxima (the sign convention)."""
    import zarr

    arr = zarr.open_array(url, mode="r+", storage_options=storage_options)
    if transpose:
        arr[:, span[0] : span[1]] = p.T.astype(dtype)
    else:
        arr[span[0] : span[1]] = p.astype(dtype)
    return _signed_max(i, span, p)


def factor(
    u: Tall,
    dtype: np.dtype,
    chunk_rows: int,
    *,
    transpose: bool = False,
    flip: bool = False,
    limit: int | None = None,
) -> Any:
    """A result's factor from a Tall, in ``dtype``: NumPy when at most
    :func:`factor_limit` bytes, else a dask array over a Zarr array in a temporary
    folder (under dask config ``dlowrank.scratch`` when set, which every worker and the
    driver reach, else a local one) that lives as long as the array does, written panel
    by panel by tasks, in ``chunk_rows`` row chunks (the input's). ``transpose``: the
    factor is u^T (a wide input's vt), stored in (1, chunk_rows) chunks so that rows
    read in order.

    ``flip``: apply the sign convention of :func:`~dlowrank.kernels.exact.sign_flip`
    (per column, the sign of its entry of largest magnitude, the first on a tie),
    decided from the column maxima the writing tasks return (no separate read); returns
    (factor, signs).
    ``limit``: a smaller limit than the configured one (the run's memory budget)."""
    dtype = np.dtype(dtype)
    m, k = u.shape
    limit = factor_limit() if limit is None else min(limit, factor_limit())
    if m * k * dtype.itemsize <= limit:
        out = u.to_numpy()
        signs = np.ones(k)
        if flip:
            out, flips = sign_flip(out, np.eye(k))
            signs = np.diag(flips)
        out = out.astype(dtype)
        out = out.T if transpose else out
        return (out, signs) if flip else out
    import dask.array as da  # a lazy factor only: an in-memory one needs neither
    import zarr

    so = u.space.storage_options
    shared = dask.config.get("dlowrank.scratch", None)
    if shared:  # where every worker can write and every reader can read
        folder = f"{str(shared).rstrip('/')}/dlowrank-factor-{uuid.uuid4().hex[:12]}"
        keeper: Any = _Owner(folder, so)
    else:
        keeper = _Folder("dlowrank-factor-")
        folder, so = keeper.path, None
    url = f"{folder}/factor"
    shape, chunks = ((k, m), (1, chunk_rows)) if transpose else ((m, k), (chunk_rows, k))
    zarr.create_array(
        url, shape=shape, dtype=dtype, chunks=chunks, compressors=None, storage_options=so
    )
    aligned = all(r0 % chunk_rows == 0 for r0, _ in u.space.ranges)
    tasks = u._tasks(_write_factor, (), (url, transpose, dtype, so), [None] * len(u), _larger)
    if aligned:
        stats = u.space.execute(tasks)
    else:  # panels share chunks: one writer at a time
        stats = [u.space.execute([task])[0] for task in tasks]
    lazy = da.from_array(
        KeptArray(url, keeper, so), chunks=chunks, name=f"dlowrank-factor-{uuid.uuid4().hex}"
    )
    if not flip:
        return lazy
    signs = np.sign(functools.reduce(_larger, stats)[2])
    signs[signs == 0] = 1
    scale = signs.astype(dtype)
    return (lazy * (scale[:, None] if transpose else scale)), signs
