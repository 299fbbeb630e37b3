"""Open a matrix from Zarr (any fsspec URL) or take one in memory, and validate it.

Safety first: the store's metadata is read as plain JSON and checked *before*
zarr parses it or decodes any chunk. Object codecs (pickle above all) turn chunk
bytes into Python objects; a pickle chunk can run arbitrary code when decoded,
so a store that names one is refused outright.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import zarr

from dlowrank.errors import BackendError, InputError, StoreNotFoundError, UnsafeInputError

if TYPE_CHECKING:  # imported where used: opening a path for a pass needs no dask.array
    import dask.array as da  # (which imports xarray and pandas when they are installed)

logger = logging.getLogger(__name__)

# Dask arrays made by open_matrix, by graph name: passes over them read the store
# directly. A name changes with any transformation, so only the untouched array matches.
_ZARR_ORIGINS: dict[str, tuple[str, dict | None]] = {}


def zarr_origin(x: da.Array) -> tuple[str, dict | None] | None:
    """(url, storage_options) if ``x`` is exactly an array returned by :func:`open_matrix`."""
    return _ZARR_ORIGINS.get(x.name)


#: Codecs that decode chunk bytes into Python objects (numcodecs ids, v2 and v3 names).
OBJECT_CODECS = frozenset(
    {
        "pickle",
        "json",
        "json2",
        "msgpack",
        "msgpack2",
        "vlen-utf8",
        "vlen-bytes",
        "vlen-array",
        "categorize",
        "object",
    }
)


def compute_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """The dtype dlowrank computes in for an input of ``dtype``.

    float32 and float64 are kept, float16 becomes float32, integers and bools
    become float64; anything else is refused with an :class:`InputError`.
    """
    dtype = np.dtype(dtype)
    if dtype.fields is not None:
        raise InputError(
            f"{where} has a structured dtype {dtype}; dlowrank needs a numeric "
            "matrix (store each field as its own array)"
        )
    if dtype.kind == "f":
        if dtype.itemsize > 8:
            raise InputError(f"{where} has dtype {dtype}; dlowrank supports float16/32/64")
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(np.float64)
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    if dtype.kind == "c":
        raise InputError(
            f"{where} has complex dtype {dtype}; dlowrank handles real matrices "
            "only (split real and imaginary parts or stack them)"
        )
    raise InputError(
        f"{where} has dtype {dtype} ({_KIND_NAMES.get(dtype.kind, 'non-numeric')}); "
        "dlowrank needs a real numeric matrix"
    )


_KIND_NAMES = {
    "O": "object",
    "U": "string",
    "S": "bytes",
    "V": "raw/structured",
    "M": "datetime",
    "m": "timedelta",
}


def check_shape(shape: tuple[int, ...], where: str) -> None:
    """Refuse anything but a 2-D shape with no zero-length dimension."""
    if len(shape) != 2:
        raise InputError(
            f"{where} has {len(shape)} dimensions (shape {tuple(shape)}); "
            "dlowrank needs a 2-D matrix"
        )
    if min(shape) == 0:
        raise InputError(
            f"{where} has a zero-length dimension (shape {tuple(shape)}); "
            "dlowrank needs at least one row and one column"
        )


#: Bounds on stored metadata, checked before zarr or dask see it.
MAX_DIM = 2**48  # rows or columns
MAX_CHUNK_BYTES = 2**31  # one chunk, decoded: a task holds a few of them
MAX_CHUNKS = 10**9  # stored chunk files


def check_layout(meta: dict, where: str) -> None:
    """Shape and chunk sizes within sane bounds, from raw metadata; nonsense is an
    :class:`InputError` naming the key and the value, never a crash inside dask."""
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise InputError(f"{where}: metadata `shape` must be a list of integers; got {shape!r}")
    for d in shape:
        if not 0 <= d <= MAX_DIM:
            raise InputError(
                f"{where}: metadata `shape` {shape} has a dimension outside [0, 2**48]; "
                "the store's metadata is damaged or not a matrix"
            )
    if meta.get("zarr_format") == 3:
        grid = meta.get("chunk_grid") or {}
        chunks = (grid.get("configuration") or {}).get("chunk_shape")
        key = "chunk_grid.configuration.chunk_shape"
        if grid.get("name") != "regular":
            raise InputError(f"{where}: only a regular chunk grid is supported; got {grid!r}")
    else:
        chunks, key = meta.get("chunks"), "chunks"
    if (
        not isinstance(chunks, list)
        or len(chunks) != len(shape)
        or not all(_is_int(c) and c >= 1 for c in chunks)
    ):
        raise InputError(
            f"{where}: metadata `{key}` must list {len(shape)} integers >= 1; got {chunks!r}"
        )
    itemsize = compute_dtype(_metadata_dtype(meta, where), where).itemsize
    nbytes = itemsize * int(np.prod([min(c, d) for c, d in zip(chunks, shape, strict=True)]))
    if nbytes > MAX_CHUNK_BYTES:
        raise InputError(
            f"{where}: one chunk ({' x '.join(map(str, chunks))}) holds {nbytes / 2**30:.1f} "
            f"GiB decoded, above the {MAX_CHUNK_BYTES / 2**30:.0f} GiB dlowrank reads at once; "
            "rechunk the array (dlowrank convert --chunks)"
        )
    count = float(np.prod([-(-d // c) for d, c in zip(shape, chunks, strict=True)], dtype=float))
    if count > MAX_CHUNKS:
        raise InputError(
            f"{where}: {count:.3g} chunks of {' x '.join(map(str, chunks))}, above "
            f"{MAX_CHUNKS:.0e}; rechunk the array with larger chunks"
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _codec_names(node: Any) -> Iterator[str]:
    """Every codec id/name in a metadata tree, nested (sharding) ones included."""
    if isinstance(node, dict):
        for key in ("id", "name"):
            if isinstance(node.get(key), str):
                yield node[key]
        for value in node.values():
            yield from _codec_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _codec_names(value)


def _check_codecs(meta: dict, where: str) -> None:
    parts = [meta.get(k) for k in ("codecs", "compressor", "filters", "object_codec")]
    for name in _codec_names(parts):
        short = name.lower().removeprefix("numcodecs.")
        if short in OBJECT_CODECS or "pickle" in short:
            raise UnsafeInputError(
                f"{where} uses the codec {name!r}, which decodes chunks into Python objects "
                "(a pickle codec can run arbitrary code); dlowrank refuses such stores. "
                "Rewrite the array with a numeric dtype and byte codecs (zstd, blosc, ...)"
            )


def _metadata_dtype(meta: dict, where: str) -> np.dtype:
    raw = meta.get("data_type", meta.get("dtype"))
    if isinstance(raw, list):
        raise InputError(f"{where} has a structured dtype {raw}; dlowrank needs a numeric matrix")
    try:
        return np.dtype(raw if isinstance(raw, str) else raw["name"])
    except (TypeError, KeyError, ValueError):
        raise InputError(
            f"{where} has dtype {raw!r}, which is not a real numeric type; "
            "dlowrank needs a real numeric matrix"
        ) from None


#: fsspec protocols and the package (and dlowrank extra) that provides each.
_BACKENDS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", None),
    "abfs": ("adlfs", None),
    "http": ("aiohttp", None),
    "https": ("aiohttp", None),
}


def filesystem(
    url: str | os.PathLike, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """``fsspec.core.url_to_fs`` with one clear error for an unknown or uninstalled protocol."""
    url = os.fspath(url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError:
        package, extra = _BACKENDS.get(protocol, (f"the fsspec backend for {protocol}://", None))
        hint = f"pip install 'dlowrank[{extra}]'" if extra else f"pip install {package}"
        raise BackendError(
            f"{url}: reading {protocol}:// needs the package {package}, which is not "
            f"installed; run `{hint}`"
        ) from None
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise
        raise BackendError(
            f"{url}: fsspec knows no protocol {protocol!r}; use a local path or a "
            "URL such as s3://, gs://, memory://"
        ) from None


#: File extensions that are matrices in other formats, for the hint to `dlowrank convert`.
_CONVERTIBLE = (".npy", ".npz", ".h5", ".hdf5", ".csv", ".tsv", ".txt", ".mtx", ".parquet")


def _not_zarr(url: str, detail: str) -> InputError:
    hint = ""
    if url.lower().rstrip("/").endswith(_CONVERTIBLE):
        flag = " --ratings" if url.lower().endswith(".parquet") else ""
        target = os.path.splitext(url.rstrip("/"))[0] + ".zarr"
        hint = f"; convert it first: dlowrank convert {url} --out {target}{flag}"
    return InputError(f"input {url} is not a Zarr array ({detail}){hint}")


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    try:
        raw = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc}); the store's metadata is damaged"
        ) from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} does not hold a JSON object; the store's metadata is damaged")
    return meta


def _raw_metadata(url: str, fs: fsspec.AbstractFileSystem, path: str) -> dict:
    """The array's metadata as stored (v3 zarr.json or v2 .zarray), no zarr parsing."""
    meta = _read_json(fs, f"{path}/zarr.json") or _read_json(fs, f"{path}/.zarray")
    if meta is not None and meta.get("node_type", "array") == "array":
        return meta
    if meta is None and not fs.exists(path):
        raise StoreNotFoundError(f"input {url} does not exist")
    if meta is not None or fs.exists(f"{path}/.zgroup"):
        members = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
        members = [m for m in members if not m.startswith(".") and m != "zarr.json"]
        raise InputError(
            f"input {url} is a Zarr group, not an array; name one of its members, "
            f"e.g. {url.rstrip('/')}/{members[0] if members else 'NAME'}"
        )
    if fs.isfile(path):
        raise _not_zarr(url, "it is a file")
    raise _not_zarr(url, "no zarr.json or .zarray found there")


def open_matrix(url: str | os.PathLike, *, storage_options: dict | None = None) -> da.Array:
    """Open a 2-D Zarr array as a Dask array chunked as stored.

    Parameters
    ----------
    url : str or path-like
        Local path or any fsspec URL (``memory://``, ``s3://``, ...) of a Zarr
        array, format 2 or 3.
    storage_options : dict, optional
        Passed to fsspec (credentials, endpoint, ...).

    Returns
    -------
    dask.array.Array
        The matrix, lazily; integer and bool input is cast to float64, float16
        to float32.

    Raises
    ------
    StoreNotFoundError
        Nothing exists at ``url``.
    UnsafeInputError
        The store names a pickle or other object codec. Decided from the raw
        metadata before zarr parses it or any chunk is decoded.
    InputError
        Not an array (a group, a plain folder), not 2-D, a zero-length dimension,
        or a non-real-numeric dtype.

    Examples
    --------
    >>> import tempfile, os, numpy as np, zarr, dlowrank
    >>> path = os.path.join(tempfile.mkdtemp(), "a.zarr")
    >>> zarr.create_array(path, shape=(6, 4), chunks=(3, 4), dtype="i4")[...] = 1
    >>> x = dlowrank.open_matrix(path)
    >>> x.chunks, x.dtype.name
    (((3, 3), (4,)), 'float64')
    """
    import dask.array as da

    arr, dtype = open_zarr(url, storage_options=storage_options)
    x = da.from_zarr(arr)
    x = x if x.dtype == dtype else x.astype(dtype)
    _ZARR_ORIGINS[x.name] = (os.fspath(url), storage_options)
    return x


def open_zarr(
    url: str | os.PathLike, *, storage_options: dict | None = None
) -> tuple[zarr.Array, np.dtype]:
    """The checks of :func:`open_matrix`, then the zarr array and its compute dtype."""
    url = os.fspath(url)
    fs, path = filesystem(url, storage_options)
    meta = _raw_metadata(url, fs, path.rstrip("/"))
    where = f"input {url}"
    _check_codecs(meta, where)
    dtype = compute_dtype(_metadata_dtype(meta, where), where)
    check_layout(meta, where)
    check_shape(tuple(meta["shape"]), where)
    from dlowrank.io.inventory import check_store_chunks

    check_store_chunks(url, storage_options, meta)  # every chunk the shape implies is stored
    kwargs = {"storage_options": storage_options} if storage_options else {}
    return zarr.open_array(url, mode="r", **kwargs), dtype


def stored_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Dask-style chunks (every block's size per axis) of a regular chunk grid."""
    return tuple(
        (c,) * (d // c) + ((d % c,) if d % c else ()) for d, c in zip(shape, chunks, strict=True)
    )


def as_dask_matrix(a: Any, *, name: str = "a", storage_options: dict | None = None) -> da.Array:
    """Any supported input (URL, path, zarr.Array, Dask or NumPy array), validated, as Dask."""
    import dask.array as da

    if isinstance(a, (str, os.PathLike)):
        return open_matrix(a, storage_options=storage_options)
    if isinstance(a, zarr.Array):
        where = f"zarr array `{name}`"
        _check_codecs(a.metadata.to_dict(), where)
        a = da.from_zarr(a)
    elif not isinstance(a, da.Array):
        a = np.asarray(a)
    where = f"`{name}`"
    check_shape(a.shape, where)
    dtype = compute_dtype(a.dtype, where)
    if isinstance(a, da.Array):
        if any(np.isnan(c) for dim in a.chunks for c in dim):
            raise InputError(
                f"{where} has unknown chunk sizes; call `{name}.compute_chunk_sizes()` first"
            )
    else:
        a = da.from_array(a, chunks="auto")
    return a if a.dtype == dtype else a.astype(dtype)
