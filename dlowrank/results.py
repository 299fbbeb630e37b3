"""Result objects and their Zarr layout.

A saved result is a Zarr group. Its arrays (``u``, ``s``, ``vt`` for an SVD;
``w``, ``v`` for an eigen-decomposition; ``u``, ``v``, ``loss`` for a
factorization) live in an immutable version group inside it, ``v-<tag>``. The
group's own attribute ``dlowrank`` holds the provenance: exactly
:meth:`SVDResult.to_dict`, the arrays' SHA-256 ``checksums`` (of a lazy factor, by
blocks: see :data:`BLOCKS`), ``"complete":
true`` and ``"current": "v-<tag>"``. It is written last, in one atomic step, so a
reader that goes through it (:func:`load`) sees the old result or the new one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import zarr

from dlowrank.errors import ResultError, StoreNotFoundError
from dlowrank.io.store import is_unpublished, publish_result, read_marker

FORMAT_VERSION = 1


def _version() -> str:
    from dlowrank import __version__

    return __version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class _Provenance:
    """Fields every result carries besides its arrays."""

    rel_error: float
    error_kind: str  # "exact" (computed) or "estimated" (from an error sketch)
    passes: int
    algorithm: str
    params: dict = field(default_factory=dict)
    seed: int | dict | None = None  # parse_seed(seed) replays it
    input: dict = field(default_factory=dict)
    seconds: float = 0.0
    restored_passes: int = 0  # passes taken from a checkpoint of an earlier run
    # the process tree's peak resident memory during the run (MiB): this process and its
    # children (a LocalCluster's workers), sampled every 0.1 s; 0 when not measured
    peak_memory_mb: float = 0.0
    version: str = field(default_factory=_version)
    created: str = field(default_factory=_now)
    # the dims, coordinates and attributes of an xarray.DataArray input (not stored)
    labels: Any = field(default=None, repr=False, compare=False)

    _arrays: ClassVar[tuple[str, ...]] = ()
    _optional: ClassVar[tuple[str, ...]] = ()  # arrays stored only when present
    _kind: ClassVar[str] = ""

    def _stored(self) -> tuple[str, ...]:
        """The arrays this result stores: its own, and the optional ones it has."""
        return self._arrays + tuple(n for n in self._optional if getattr(self, n) is not None)

    def to_dict(self) -> dict:
        """Provenance as stored in the Zarr attributes (JSON types only)."""
        out: dict[str, Any] = {"kind": self._kind, "format": FORMAT_VERSION}
        for f in fields(self):
            if f.name in self._arrays or f.name in self._optional or f.name == "labels":
                continue
            out[f.name] = getattr(self, f.name)
        out.update(self._derived())
        return out

    def _derived(self) -> dict:
        return {}

    def _named(self) -> dict:
        """The arrays ``to_xarray`` shows: name -> (axes, array), the axes among "row",
        "col" (the input's dims) and "component"."""
        raise NotImplementedError

    def to_xarray(self, unstack: bool = True) -> Any:
        """The result as an ``xarray.Dataset``: the factors on the input's dims with its
        coordinates (for a DataArray input; else dims "row" and "col"), the small arrays
        on "component", the error and passes in the attributes. Lazy factors stay lazy.
        With ``unstack`` a dim the input had stacked (a MultiIndex) is unstacked, so
        patterns come back on (lat, lon). Needs xarray."""
        from dlowrank.xr import result_dataset

        return result_dataset(self, unstack)

    def _chunks(self, name: str, data: np.ndarray) -> Any:
        """Stored chunks: a factor along the input's rows (or columns) in the input's
        chunking, with all its columns; anything else Zarr's default."""
        shape, chunks = self.input.get("shape"), self.input.get("chunks")
        if data.ndim != 2 or not shape or not chunks or data.size == 0:
            return "auto"
        for axis in (0, 1):  # u (m, k) or v (n, k); vt (k, n)
            if data.shape[0] == shape[axis] and data.shape[1] != shape[axis]:
                return (min(chunks[axis], data.shape[0]), data.shape[1])
            if data.shape[1] == shape[axis] and data.shape[0] != shape[axis]:
                return (data.shape[0], min(chunks[axis], data.shape[1]))
        return "auto"

    def __repr__(self) -> str:
        """One line: kind, rank, shape, error, passes (the arrays are not printed)."""
        d = self._derived()
        return (
            f"{type(self).__name__}(rank={d.get('rank')}, shape={tuple(d.get('shape', ()))}, "
            f"rel_error={self.rel_error:.4g} ({self.error_kind}), passes={self.passes}, "
            f"algorithm={self.algorithm!r})"
        )

    def save(
        self,
        url: str | os.PathLike,
        *,
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> None:
        """Write the result to a Zarr group at ``url``, atomically for readers.

        The arrays go to a new immutable version folder inside ``url``; the
        group's own metadata, holding the provenance and the name of the current
        version, is written last in one atomic step (see module doc).
        """
        self._publish(url, overwrite=overwrite, storage_options=storage_options)

    def _publish(
        self, url: Any, *, overwrite: bool = False, storage_options: dict | None = None
    ) -> str:
        """``save``; return the name of the version written (lazy factors are copied and
        hashed by their own tasks, so they are read once)."""
        kwargs = {"storage_options": storage_options} if storage_options else {}
        arrays = {name: _in_memory_or_lazy(getattr(self, name)) for name in self._stored()}
        sums = {k: _checksum(v) for k, v in arrays.items() if isinstance(v, np.ndarray)}
        attrs = {**self.to_dict(), "checksums": sums}

        def write(version: str) -> None:
            group = zarr.open_group(version, mode="w", **kwargs)
            group.attrs["dlowrank"] = attrs  # first: the version is recognisably dlowrank's
            for name, data in arrays.items():
                if isinstance(data, np.ndarray):
                    group.create_array(name, data=data, chunks=self._chunks(name, data))
                else:  # a factor larger than memory: copied chunk by chunk, never whole
                    sums[name] = _store_lazy(group, name, data)
            group.attrs["dlowrank"] = attrs  # with the checksums of the lazy factors

        return publish_result(
            url,
            write,
            attrs,
            overwrite=overwrite,
            storage_options=storage_options,
            inputs=[self.input.get("source")],
        )

    def _reopened(self, url: Any, version: str, storage_options: dict | None = None) -> Any:
        """This result with its lazy factors read from the published ``version`` of
        ``url`` (so they outlive the run's temporary copies)."""
        import dask.array as da

        kwargs = {"storage_options": storage_options} if storage_options else {}
        base = f"{os.fspath(url).rstrip('/')}/{version}"
        lazy = {
            name: da.from_zarr(zarr.open_array(f"{base}/{name}", mode="r", **kwargs))
            for name in self._stored()
            if _is_lazy(getattr(self, name))
        }
        return replace(self, **lazy) if lazy else self


#: Largest piece of a lazy factor read at once (to hash it in the driver: older results).
SLAB_BYTES = 64 << 20

#: Prefix of a block checksum: ``blocks:R,C:HEX`` is the SHA-256 of the concatenated
#: SHA-256 digests of the array's (R, C) blocks in C order, each block's bytes in C order.
#: The tasks that copy a lazy factor hash their own blocks, so only digests reach the
#: driver; a plain ``HEX`` is the SHA-256 of the whole array's bytes (small arrays).
BLOCKS = "blocks:"


def _in_memory_or_lazy(a: Any) -> Any:
    """NumPy arrays as they are (contiguous); dask arrays stay lazy."""
    return a if _is_lazy(a) else np.ascontiguousarray(a)


def _is_lazy(a: Any) -> bool:
    return not isinstance(a, np.ndarray) and hasattr(a, "shape") and hasattr(a, "dtype")


def _slabs(shape: tuple, itemsize: int):
    """Index tuples covering an array in C order, each of at most SLAB_BYTES (whole rows
    while a row fits, else pieces of one row)."""
    if len(shape) != 2:
        yield (slice(None),)
        return
    m, n = shape
    row = max(1, n * itemsize)
    if row <= SLAB_BYTES:
        step = max(1, SLAB_BYTES // row)
        for r in range(0, m, step):
            yield (slice(r, min(m, r + step)), slice(None))
        return
    step = max(1, SLAB_BYTES // itemsize)
    for r in range(m):
        for c in range(0, n, step):
            yield (slice(r, r + 1), slice(c, min(n, c + step)))


def _digest(block: Any) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(block)).digest()


def _combine(block: tuple[int, ...], digests: list[bytes]) -> str:
    return f"{BLOCKS}{','.join(map(str, block))}:" + hashlib.sha256(b"".join(digests)).hexdigest()


def _checksum(a: Any) -> str:
    """SHA-256 of an array's bytes in C order: load verifies what it read against it. A
    lazy array (dask, or an open Zarr array) is hashed piece by piece, never whole."""
    if isinstance(a, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(a)).hexdigest()
    h = hashlib.sha256()
    for index in _slabs(a.shape, np.dtype(a.dtype).itemsize):
        h.update(np.ascontiguousarray(np.asarray(a[index])))
    return h.hexdigest()


def _block_grid(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The index tuples of the blocks of shape ``block`` of an array, in C order."""
    from dask.array.core import normalize_chunks, slices_from_chunks

    return slices_from_chunks(normalize_chunks(block, shape))


def _block_checksum(a: Any, block: tuple[int, ...]) -> str:
    """The ``blocks:`` checksum of ``a``: for a dask array, one task per block (only the
    digests come back), else block by block here."""
    import dask

    if not dask.is_dask_collection(a):
        return _combine(block, [_digest(np.asarray(a[i])) for i in _block_grid(a.shape, block)])
    x = a.rechunk(block)
    tasks = [dask.delayed(_digest)(x.blocks[i]) for i in np.ndindex(*x.numblocks)]
    return _combine(block, list(dask.compute(*tasks)))


def verify(a: Any, recorded: str) -> bool:
    """Whether ``a`` matches a checksum recorded by ``save`` (either kind)."""
    if recorded.startswith(BLOCKS):
        try:
            block = tuple(int(b) for b in recorded[len(BLOCKS) :].split(":")[0].split(","))
        except ValueError:  # a damaged record
            return False
        return len(block) == a.ndim and min(block) > 0 and _block_checksum(a, block) == recorded
    return _checksum(a) == recorded


def _copy_block(block: np.ndarray, target: Any, index: tuple[slice, ...]) -> bytes:
    """Write one block of a lazy factor to its place in ``target``; return its digest."""
    target[index] = block
    return _digest(block)


def _store_lazy(group: Any, name: str, data: Any) -> str:
    """Write a dask array into ``group`` in its own chunking, one task per Zarr chunk that
    writes it and hashes it (one read of ``data``, only digests to the driver); return
    its ``blocks:`` checksum."""
    import dask

    block = tuple(c[0] for c in data.chunks)
    target = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=block)
    x = data.rechunk(block)
    tasks = [
        dask.delayed(_copy_block)(x.blocks[i], target, index)
        for i, index in zip(np.ndindex(*x.numblocks), _block_grid(x.shape, block), strict=True)
    ]
    return _combine(block, list(dask.compute(*tasks)))


@dataclass(frozen=True, repr=False)
class SVDResult(_Provenance):
    """A truncated SVD ``a ≈ u @ diag(s) @ vt``.

    Columns of ``u`` (m, k) and rows of ``vt`` (k, n) are orthonormal; ``s`` (k,)
    is non-negative and non-increasing; signs follow the package convention (the
    largest-magnitude entry of each column of ``u`` is positive). ``rel_error`` is
    ``||a - u diag(s) vt||_F / ||a||_F``, exact or estimated as ``error_kind``
    says; ``passes`` is the number of full reads of ``a``.

    Tall factors: a factor within the run's limit for tall quantities (min(256 MB, a
    sixth of the tasks' budget), capped by dask config ``dlowrank.factor-memory``) is a
    NumPy array; a larger one (``u``, or ``vt`` of a wide input)
    is a dask array over a Zarr copy in a temporary folder that lives as long as the
    array, so it is never whole in memory. ``save`` copies it chunk by chunk.
    """

    u: np.ndarray = None
    s: np.ndarray = None
    vt: np.ndarray = None
    # the single pass's sketches in tall orientation (keep_sketch=True; see
    # :func:`dlowrank.update`): Y (m, k), X (k, n), Z (s, s), E (d, n)
    sketch_y: Any = None
    sketch_x: np.ndarray = None
    sketch_z: np.ndarray = None
    sketch_e: np.ndarray = None
    _arrays: ClassVar[tuple[str, ...]] = ("u", "s", "vt")
    _optional: ClassVar[tuple[str, ...]] = ("sketch_y", "sketch_x", "sketch_z", "sketch_e")
    _kind: ClassVar[str] = "svd"

    @property
    def updatable(self) -> bool:
        """Whether the result keeps the sketches that :func:`dlowrank.update` extends."""
        return self.sketch_y is not None and "sketch" in self.params

    @property
    def rank(self) -> int:
        return int(len(self.s))

    @property
    def v(self) -> np.ndarray:
        return self.vt.T

    def to_dense(self) -> np.ndarray:
        """``u @ diag(s) @ vt`` (m, n) in memory: for small results only."""
        return (self.u * self.s) @ self.vt

    def _derived(self) -> dict:
        return {"rank": self.rank, "shape": [int(self.u.shape[0]), int(self.vt.shape[1])]}

    def _named(self) -> dict:
        return {
            "u": (("row", "component"), self.u),
            "s": (("component",), np.asarray(self.s)),
            "v": (("col", "component"), self.vt.T),
        }


@dataclass(frozen=True, repr=False)
class EighResult(_Provenance):
    """A truncated eigen-decomposition ``a ≈ v @ diag(w) @ v.T`` of a symmetric matrix.

    ``w`` (k,) is ordered by decreasing ``|w|``; columns of ``v`` (n, k) are
    orthonormal and follow the package sign convention.
    """

    w: np.ndarray = None
    v: np.ndarray = None
    _arrays: ClassVar[tuple[str, ...]] = ("w", "v")
    _kind: ClassVar[str] = "eigh"

    @property
    def rank(self) -> int:
        return int(len(self.w))

    def to_dense(self) -> np.ndarray:
        return (self.v * self.w) @ self.v.T

    def to_svd(self) -> SVDResult:
        """The same decomposition as an SVD: s = |w|, u = v, vt = (sign(w) v)^T."""
        signs = np.where(self.w < 0, -1, 1).astype(self.v.dtype)
        prov = {f.name: getattr(self, f.name) for f in fields(_Provenance)}
        return SVDResult(**prov, u=self.v, s=np.abs(self.w), vt=(self.v * signs).T)

    def _derived(self) -> dict:
        return {"rank": self.rank, "shape": [int(self.v.shape[0])] * 2}

    def _named(self) -> dict:
        return {"w": (("component",), np.asarray(self.w)), "v": (("row", "component"), self.v)}


@dataclass(frozen=True, repr=False)
class FactorizationResult(_Provenance):
    """A factorization ``a ≈ u @ v.T`` (weight decay, ALS/GD, missing entries, or NMF).

    ``loss`` is the objective after each iteration,
    1/2 ||mask * (u v^T - a)||_F^2 + weight_decay/2 (||u||_F^2 + ||v||_F^2),
    its last entry the objective at the returned factors;
    ``rel_error`` is ||mask * (a - u v^T)||_F / ||mask * a||_F at the returned
    factors (for ALS and NMF computed from the pass's sums, so it bottoms out near
    sqrt(eps) ~ 1e-8 for a near-perfect fit); ``passes`` counts the full reads of
    ``a`` (initialization included).
    """

    u: np.ndarray = None
    v: np.ndarray = None
    loss: np.ndarray = None
    n_iter: int = 0
    converged: bool = False
    # ``factorize(..., biases=True)``: a ≈ mean + row_bias[:, None] + col_bias + u @ v.T
    mean: float | None = None
    row_bias: Any = None
    col_bias: Any = None
    _arrays: ClassVar[tuple[str, ...]] = ("u", "v", "loss")
    _optional: ClassVar[tuple[str, ...]] = ("row_bias", "col_bias")
    _kind: ClassVar[str] = "factorization"

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    @property
    def has_biases(self) -> bool:
        return self.mean is not None

    def to_dense(self) -> np.ndarray:
        x = self.u @ self.v.T
        if self.has_biases:
            x = x + (self.mean + np.asarray(self.row_bias)[:, None] + np.asarray(self.col_bias))
        return x

    def _derived(self) -> dict:
        return {"rank": self.rank, "shape": [int(self.u.shape[0]), int(self.v.shape[0])]}

    def _named(self) -> dict:
        named = {"u": (("row", "component"), self.u), "v": (("col", "component"), self.v)}
        if self.has_biases:
            named["row_bias"] = (("row",), self.row_bias)
            named["col_bias"] = (("col",), self.col_bias)
        return named


_CLASSES = {"svd": SVDResult, "eigh": EighResult, "factorization": FactorizationResult}


#: How often ``load`` re-reads the pointer when a replacement raced with its read.
LOAD_ATTEMPTS = 5


def load(url: str | os.PathLike, *, storage_options: dict | None = None) -> SVDResult | EighResult:
    """Load a result saved by ``save``; refuse one without its completion marker.

    Reads the result's pointer (its group metadata) first, then the arrays of the
    version it names, and checks them against the checksums stored with it; if a
    concurrent replacement removed that version meanwhile, it reads the pointer
    again. So a reader gets the old result or the new one, whole, never a mix.

    An array larger than ``dlowrank.factor-memory`` (dask config; default 256 MB) is
    returned lazily, as a dask array reading the stored version (its checksum is
    verified piece by piece first); it stays readable until a later replacement of
    the result removes that version.

    Examples
    --------
    >>> import tempfile, os, numpy as np, dlowrank
    >>> r = dlowrank.exact_svd(np.arange(12.0).reshape(4, 3), 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "r.zarr")
    >>> r.save(path)
    >>> bool(np.array_equal(dlowrank.load(path).s, r.s))
    True
    """
    url = os.fspath(url).rstrip("/")
    kwargs = {"storage_options": storage_options} if storage_options else {}
    problem = ""
    for _ in range(LOAD_ATTEMPTS):
        attrs = _pointer(url, storage_options)
        cls = _CLASSES[attrs["kind"]]
        base = f"{url}/{attrs['current']}" if attrs.get("current") else url
        sums = attrs.get("checksums") or {}
        stored = cls._arrays + tuple(n for n in cls._optional if n in sums)
        try:
            arrays = {n: _read(zarr.open_array(f"{base}/{n}", mode="r", **kwargs)) for n in stored}
        except Exception as exc:  # the version went away under us: read the pointer again
            problem = f"{type(exc).__name__}: {exc}"
            continue
        bad = [n for n, a in arrays.items() if n in sums and not verify(a, sums[n])]
        if bad:
            problem = f"the arrays {', '.join(bad)} do not match their checksums"
            continue
        names = {f.name for f in fields(cls) if f.name not in (*cls._arrays, *cls._optional)}
        return cls(**{k: v for k, v in attrs.items() if k in names}, **arrays)
    raise ResultError(
        f"result {url} could not be read whole in {LOAD_ATTEMPTS} attempts ({problem}); it is "
        "damaged, or being replaced very often"
    )


def _read(array: Any) -> Any:
    """A stored array: in memory when at most ``dlowrank.factor-memory`` bytes (default
    256 MB), else lazily, as a dask array over the stored one (its checksum is still
    verified on load, reading it piece by piece)."""
    from dlowrank.engine.tall import factor_limit

    nbytes = int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    if nbytes <= factor_limit():
        return array[...]
    import dask.array as da

    return da.from_zarr(array)


def _pointer(url: str, storage_options: dict | None) -> dict:
    """The result's provenance and current version, from its group metadata (raw JSON)."""
    from dlowrank.io.matrix import filesystem

    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise StoreNotFoundError(f"result {url} does not exist")
    attrs = read_marker(url, storage_options)
    unpublished = attrs is None and is_unpublished(url, storage_options)
    if attrs is None:  # the pointer may have appeared between the two looks
        attrs = read_marker(url, storage_options)
    if attrs is None and unpublished:
        raise StoreNotFoundError(
            f"result {url} is not published yet (its first write is in progress, or was "
            "interrupted; rerun the job that makes it)"
        )
    if attrs is None or attrs.get("kind") not in _CLASSES:
        raise ResultError(f"{url} is not a dlowrank result (no `dlowrank` attribute with a kind)")
    if not attrs.get("complete"):
        raise ResultError(
            f"result {url} is incomplete (no completion marker): it was not "
            "fully written; rerun the job that makes it"
        )
    return attrs
