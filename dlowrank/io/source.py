"""Sources: where A is read from. One protocol, one opener (:func:`open_source`).

A source has ``shape``, ``dtype`` (the compute dtype), ``chunks``, ``sparse`` and
either ``read(rect)`` (the task reads its own rectangle: a NumPy array, or a SciPy
CSR matrix for a sparse source) or ``delayed_block(rect)`` (dask computes it).

- :class:`ZarrSource` is small and picklable: a pass's task carries it to a worker
  and reads its own rectangle of A there, so only sketches travel between workers,
  never chunks (ARCHITECTURE.md, "only sketches travel").
- :class:`dlowrank.io.ratings.RatingsSource`: a sparse ratings group, read by row
  panels without densifying.
- :class:`DaskSource`: any other input; dask computes and moves its blocks.

Every entry point opens its input with :func:`open_source`; functions that need
every entry of a dense matrix in memory call :func:`dense` on the source.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import zarr

from dlowrank.errors import InputError, StorageError

if TYPE_CHECKING:  # dask.array is imported where it is used: the tasks that read a
    import dask.array as da  # source run in workers that need not import it (nor xarray)

Rect = tuple[int, int, int, int]  # r0, r1, c0, c1 in A's coordinates


@functools.lru_cache(maxsize=32)
def _open_cached(url: str, options_json: str, shape: tuple, chunks: tuple) -> zarr.Array:
    """Open once per process; the key includes the expected layout, so an array
    rewritten at the same URL with another shape or chunking is opened afresh."""
    options = json.loads(options_json)
    arr = zarr.open_array(url, mode="r", **({"storage_options": options} if options else {}))
    if arr.shape != shape or tuple(arr.chunks) != chunks:
        raise InputError(
            f"input {url} changed while in use: shape {arr.shape}, chunks "
            f"{arr.chunks}; expected shape {shape}, chunks {chunks}"
        )
    return arr


@dataclass(frozen=True)
class ZarrSource:
    """A Zarr array that tasks read themselves (by URL, or a picklable ``zarr.Array``)."""

    shape: tuple[int, int]
    dtype: np.dtype
    chunks: tuple[tuple[int, ...], tuple[int, ...]]
    url: str | None = None
    storage_options: dict | None = None
    array: Any = field(default=None, repr=False)
    sparse = False

    def _zarr(self) -> zarr.Array:
        if self.array is not None:
            return self.array
        return _open_cached(
            self.url,
            json.dumps(self.storage_options or {}, sort_keys=True),
            tuple(self.shape),
            tuple(c[0] for c in self.chunks),
        )

    def to_dask(self) -> da.Array:
        """A as a Dask array in the compute dtype."""
        import dask.array as da

        x = da.from_zarr(self._zarr())
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _direct(self, arr: Any) -> Any:
        """How tasks read ``arr``'s chunks themselves (see :mod:`dlowrank.io.chunkread`),
        or None when zarr reads them."""
        from dlowrank.io import chunkread

        direct = chunkread.plan(arr)
        return direct if direct is not None and direct.dtype == self.dtype else None

    def reads_in_place(self) -> bool:
        """Whether its chunks are decoded straight into the tasks' pieces."""
        return self._direct(self._zarr()) is not None

    def read(self, rect: Rect, ahead: bool = True) -> np.ndarray:
        """``A[r0:r1, c0:c1]`` in the compute dtype (``ahead``: see :meth:`read_tiles`).

        Plain chunks are fetched and decoded into the result here, a chunk at a time
        (:mod:`dlowrank.io.chunkread`). Others are read by zarr one chunk column at a
        time: reading a whole panel at once lets zarr decode all its chunks
        concurrently, holding every compressed and decoded chunk besides the output
        (about 3x the panel, measured).
        """
        r0, r1, c0, c1 = rect
        arr = self._zarr()
        out = np.empty((r1 - r0, c1 - c0), dtype=self.dtype)
        direct = self._direct(arr)
        if direct is not None:
            from dlowrank.io import chunkread

            with self._named(arr):
                chunkread.read_into(arr, direct, [(rect, out)], ahead)
            return out
        edges = np.cumsum((0,) + self.chunks[1])
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            lo, hi = max(a, c0), min(b, c1)
            if lo < hi:
                try:
                    out[:, lo - c0 : hi - c0] = arr[r0:r1, lo:hi]
                except (MemoryError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    raise self._damaged(arr, (r0, r1, lo, hi), exc) from None
        return out

    def read_tiles(self, rect: Rect, axis: int, ahead: bool = True) -> list | None:
        """``A[r0:r1, c0:c1]`` as tiles cut at the chunk boundaries along ``axis``, each
        in memory of its own (a tile one chunk wide takes its chunks without a copy):
        ``[(lo, hi, tile)]`` in the rect's coordinates; None when zarr must read A.
        ``ahead``: fetch the next chunk's bytes while one is decoded."""
        from dlowrank.io import chunkread

        arr = self._zarr()
        direct = self._direct(arr)
        if direct is None:
            return None
        with self._named(arr):
            return chunkread.read_tiles(arr, direct, rect, axis, ahead)

    @contextlib.contextmanager
    def _named(self, arr: Any) -> Iterator[None]:
        """A chunk the reader cannot fetch or decode, named as a StorageError."""
        from dlowrank.io import chunkread

        try:
            yield
        except chunkread.ChunkError as exc:
            raise self._chunk_error(arr, exc.index, exc.cause, exc.fetched) from None

    def _damaged(self, arr: Any, rect: Rect, exc: Exception) -> StorageError:
        """Name the chunk of ``rect`` that fails to read (a damaged or truncated file)."""
        r0, r1, c0, c1 = rect
        rows, cols = arr.chunks
        where = self.url or "the input"
        for i in range(r0 // rows, (r1 - 1) // rows + 1):
            for j in range(c0 // cols, (c1 - 1) // cols + 1):
                try:
                    arr[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
                except Exception as err:
                    return self._chunk_error(arr, (i, j), err)
        return StorageError(
            f"{where}: rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1} cannot be read: "
            f"{type(exc).__name__}: {exc}"
        )

    def _chunk_error(
        self, arr: Any, index: tuple[int, int], err: Exception, fetched: bool = True
    ) -> StorageError:
        """Name the chunk ``index`` that failed: a fetched chunk that does not decode is
        damaged; one that could not be fetched is the store's failure."""
        i, j = index
        rows, cols = arr.chunks
        key = arr.metadata.encode_chunk_key((i, j))
        last_row = min((i + 1) * rows, arr.shape[0]) - 1
        last_col = min((j + 1) * cols, arr.shape[1]) - 1
        where = (
            f"chunk {key} of {self.url or 'the input'} (rows {i * rows}-{last_row}, "
            f"columns {j * cols}-{last_col})"
        )
        if not fetched:
            return StorageError(f"{where} cannot be read: {type(err).__name__}: {err}")
        return StorageError(
            f"{where} cannot be decoded: {type(err).__name__}: {err}; the file is damaged "
            "or truncated: restore it from its source"
        )


@dataclass(frozen=True)
class DaskSource:
    """Any Dask array: a rectangle is assembled from its (chunk-aligned) blocks."""

    x: da.Array
    sparse = False

    def to_dask(self) -> da.Array:
        return self.x

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.x.chunks

    @functools.cached_property
    def _blocks(self) -> np.ndarray:
        return self.x.to_delayed()

    def delayed_block(self, rect: Rect) -> Any:
        """A Delayed of ``x[r0:r1, c0:c1]``; the rectangle must follow chunk boundaries."""
        r0, r1, c0, c1 = rect
        rb = np.cumsum((0,) + self.x.chunks[0])
        cb = np.cumsum((0,) + self.x.chunks[1])
        i0, i1 = int(np.searchsorted(rb, r0)), int(np.searchsorted(rb, r1))
        j0, j1 = int(np.searchsorted(cb, c0)), int(np.searchsorted(cb, c1))
        grid = self._blocks[i0:i1, j0:j1].tolist()
        return dask.delayed(np.block)(grid)


@dataclass(frozen=True)
class Window:
    """The rectangle ``[r0:r0 + m, c0:c0 + n]`` of another source (``origin`` = (r0, c0),
    on the base's chunk boundaries), read by the same means. With ``global_index`` the
    pass engine gives the kernels A's global indices (the window's plus ``origin``), so
    test matrices are the whole matrix's: an update reads only the window of new entries.
    Without it (a user's slice of A, which is the matrix of the computation) the kernels
    see the window's own indices."""

    base: Any
    origin: tuple[int, int]
    shape: tuple[int, int]
    global_index: bool = True

    @property
    def index_origin(self) -> tuple[int, int]:
        """Where the kernels' indices start: ``origin``, or (0, 0) for a user's slice."""
        return self.origin if self.global_index else (0, 0)

    def __post_init__(self) -> None:
        for axis in (0, 1):
            edges = np.cumsum((0,) + tuple(self.base.chunks[axis]))
            start, stop = self.origin[axis], self.origin[axis] + self.shape[axis]
            if start not in edges or stop > edges[-1]:
                raise ValueError(
                    f"window {self.origin} + {self.shape} is not on the chunk "
                    f"boundaries of a {tuple(self.base.shape)} source"
                )

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def sparse(self) -> bool:
        return self.base.sparse

    @property
    def url(self) -> str | None:
        return getattr(self.base, "url", None)

    @property
    def storage_options(self) -> dict | None:
        return getattr(self.base, "storage_options", None)

    @property
    def array(self) -> Any:
        return getattr(self.base, "array", None)

    @functools.cached_property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        out = []
        for axis in (0, 1):
            edges = np.cumsum((0,) + tuple(self.base.chunks[axis]))
            start, stop = self.origin[axis], self.origin[axis] + self.shape[axis]
            inner = [int(e) for e in edges if start < e < stop]
            bounds = [start, *inner, stop]
            out.append(tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)))
        return out[0], out[1]

    def _shift(self, rect: Rect) -> Rect:
        r0, r1, c0, c1 = rect
        dr, dc = self.origin
        return r0 + dr, r1 + dr, c0 + dc, c1 + dc

    def read(self, rect: Rect, ahead: bool = True) -> Any:
        if hasattr(self.base, "read_tiles"):
            return self.base.read(self._shift(rect), ahead)
        return self.base.read(self._shift(rect))

    def reads_in_place(self) -> bool:
        check = getattr(self.base, "reads_in_place", None)
        return bool(check is not None and check())

    def read_tiles(self, rect: Rect, axis: int, ahead: bool = True) -> list | None:
        read = getattr(self.base, "read_tiles", None)
        return None if read is None else read(self._shift(rect), axis, ahead)

    def __getattr__(self, name: str) -> Any:
        if name == "delayed_block" and hasattr(self.base, "delayed_block"):
            return lambda rect: self.base.delayed_block(self._shift(rect))
        raise AttributeError(name)


def open_source(a: Any, *, name: str = "a", storage_options: dict | None = None) -> Any:
    """Validate ``a`` and choose how passes read it (self-reading whenever it is Zarr):
    a URL or path (a Zarr array or a ratings group), a zarr.Array, a Dask or NumPy
    array, or a source already opened."""
    if hasattr(a, "read") and hasattr(a, "chunks") and hasattr(a, "sparse"):
        return a
    if isinstance(a, (str, os.PathLike)):
        from dlowrank.io.ratings import open_ratings

        ratings = open_ratings(a, storage_options=storage_options)
        if ratings is not None:
            return ratings
        from dlowrank.io.matrix import open_zarr, stored_chunks

        arr, dtype = open_zarr(a, storage_options=storage_options)
        chunks = stored_chunks(arr.shape, arr.chunks)
        return ZarrSource(
            arr.shape, dtype, chunks, url=os.fspath(a), storage_options=storage_options
        )
    from dlowrank.io.matrix import as_dask_matrix, zarr_origin

    found = zarr_window(a)  # da.from_zarr(...) as it came, or its chunk-aligned slice:
    if found is not None:  # read the store directly
        z, origin = found
        if origin == (0, 0) and tuple(a.shape) == tuple(z.shape):
            a = z
        else:
            base = open_source(z, name=name)
            return Window(base, origin, tuple(int(d) for d in a.shape), global_index=False)
    if isinstance(a, zarr.Array):
        x = as_dask_matrix(a, name=name)
        return ZarrSource(x.shape, x.dtype, x.chunks, array=a)
    x = as_dask_matrix(a, name=name, storage_options=storage_options)
    origin = zarr_origin(x)
    if origin is not None:
        url, options = origin
        return ZarrSource(x.shape, x.dtype, x.chunks, url=url, storage_options=options)
    return DaskSource(x)


def bare_zarr(a: Any) -> zarr.Array | None:
    """The Zarr array behind ``a`` when ``a`` is exactly ``da.from_zarr(z)`` (the whole
    array, in its own chunks, nothing computed on it): passes then read the store
    themselves, as for a path, instead of dask reading chunks and moving them."""
    da = sys.modules.get("dask.array")  # not imported: ``a`` cannot be a Dask array
    if da is None or not isinstance(a, da.Array) or len(a.dask.layers) != 2 or a.ndim != 2:
        return None
    graph = dict(a.dask)
    if len(graph) != int(np.prod(a.numblocks)) + 1:
        return None
    z = _one_zarr(graph)
    if z is None:
        return None
    own = da.core.normalize_chunks(z.chunks, z.shape)
    if z.shape != a.shape or z.dtype != a.dtype or a.chunks != own:
        return None
    return z


def zarr_window(a: Any) -> tuple[zarr.Array, tuple[int, int]] | None:
    """(z, origin) when ``a`` is ``da.from_zarr(z)`` as it came (origin (0, 0)) or a slice
    of it on z's chunk boundaries (dask then aliases each of its blocks to a block of the
    original, offset by the same number of blocks: origin is that offset in rows and
    columns); else None (anything computed on it, a step, a reversal, another chunking)."""
    z = bare_zarr(a)
    if z is not None:
        return z, (0, 0)
    da = sys.modules.get("dask.array")
    if da is None or not isinstance(a, da.Array) or a.ndim != 2 or len(a.dask.layers) != 3:
        return None
    *inner, last = a.dask.layers
    return _aliased(a, inner, dict(a.dask.layers[last]))


def _one_zarr(graph: dict) -> zarr.Array | None:
    """The one zarr.Array a dask graph holds, or None (none, or several)."""
    found = [
        v for v in (getattr(v, "value", v) for v in graph.values()) if isinstance(v, zarr.Array)
    ]
    return found[0] if len(found) == 1 else None


def _aliased(a: Any, inner: list, tasks: dict) -> tuple[zarr.Array, tuple[int, int]] | None:
    """The (z, origin) of :func:`zarr_window` for a from_zarr graph ``inner`` (two layers)
    under a layer ``tasks`` of aliases."""
    from dlowrank.io.matrix import stored_chunks

    z = _one_zarr(dict(a.dask))
    if z is None or z.dtype != a.dtype or z.ndim != 2:
        return None
    source_name = inner[-1]
    da = sys.modules["dask.array"]
    if da.from_zarr(z).name != source_name:  # z read in other chunks than its own
        return None
    offsets = set()
    for key, task in tasks.items():
        target = getattr(task, "target", None)
        if type(task).__name__ != "Alias" or not isinstance(target, tuple) or len(target) != 3:
            return None
        if target[0] != source_name or len(key) != 3:
            return None
        offsets.add((target[1] - key[1], target[2] - key[2]))
    if len(offsets) != 1 or len(tasks) != int(np.prod(a.numblocks)):
        return None
    (di, dj), (ch, cw) = offsets.pop(), z.chunks
    rows, cols = stored_chunks(z.shape, z.chunks)
    nb0, nb1 = a.numblocks
    if tuple(a.chunks) != (rows[di : di + nb0], cols[dj : dj + nb1]):
        return None
    return z, (di * ch, dj * cw)


def dense(source: Any, what: str, name: str = "a") -> da.Array:
    """The source as a dense Dask array, for functions that need every entry; a sparse
    ratings group is refused with what to use instead."""
    if source.sparse:
        raise InputError(
            f"{what} needs a dense matrix, and `{name}` is a ratings group (sparse: its "
            "unstored entries are unobserved, not zeros). Use factorize for ratings "
            "(only stored entries count), or randomized_svd / sketch_svd, which read it "
            "sparse with unstored entries as zeros"
        )
    return source.to_dask()


def describe(a: Any) -> str | None:
    """The URL of a path-like input, for provenance."""
    return os.fspath(a) if isinstance(a, (str, os.PathLike)) else None


def input_info(x: Any, a: Any) -> dict:
    """Provenance of an input: shape, dtype and chunks of ``x`` (a Dask array or a
    source), and the URL it came from when there is one."""
    info = {
        "shape": [int(d) for d in x.shape],
        "dtype": str(x.dtype),
        "chunks": [int(c[0]) for c in x.chunks],
    }
    url = describe(a) or getattr(x, "url", None)
    if url:
        info["source"] = url
    return info
