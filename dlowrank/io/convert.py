"""Convert matrices from common formats to Zarr, chunked, streaming where the format allows.

.npy (memory-mapped) and HDF5 (h5py) are streamed chunk by chunk; dense CSV is
read a block of rows at a time; .npz members and Matrix Market files are read
whole (their formats give no random access), so they must fit in memory.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dlowrank.errors import InputError, ParameterError, StoreNotFoundError
from dlowrank.io.matrix import check_shape, compute_dtype
from dlowrank.io.store import check_writable, publish

logger = logging.getLogger(__name__)

FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "csv",
    ".mtx": "mtx",
    ".zarr": "zarr",
}


def _format(path: str) -> str:
    for ext, fmt in FORMATS.items():
        if path.lower().endswith(ext):
            return fmt
    raise ParameterError(
        f"cannot tell the format of {path} from its extension; use one of "
        f"{', '.join(sorted(FORMATS))}"
    )


def _open_array(path: str, fmt: str, dataset: str | None) -> Any:
    """An array-like with .shape and .dtype, sliceable without loading all of it if possible."""
    if fmt == "npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            name = dataset or (names[0] if len(names) == 1 else None)
            if name not in names:
                raise ParameterError(f"{path} holds {', '.join(names)}; choose one with --dataset")
            return data[name]
    if fmt == "hdf5":
        try:
            import h5py
        except ImportError:
            raise ParameterError("reading HDF5 needs h5py: pip install h5py") from None
        f = h5py.File(path, "r")
        if dataset is None or dataset not in f:
            names = [k for k in f if isinstance(f[k], h5py.Dataset)]
            raise ParameterError(
                f"{path}: choose a dataset with --dataset (found: {', '.join(names) or 'none'})"
            )
        return f[dataset]
    if fmt == "zarr":  # a Zarr matrix, rechunked (dask splits and merges chunks lazily)
        from dlowrank.io.matrix import open_matrix

        return open_matrix(path)
    if fmt == "mtx":
        import scipy.io
        import scipy.sparse

        m = scipy.io.mmread(path)
        return m.toarray() if scipy.sparse.issparse(m) else np.asarray(m)
    raise AssertionError(fmt)


def _csv_blocks(path: str, rows: int, delimiter: str | None):
    """Yield blocks of at most ``rows`` rows of a dense text matrix."""
    with open(path) as f:
        while True:
            with warnings.catch_warnings():  # the end of the file reads as "no data"
                warnings.simplefilter("ignore", UserWarning)
                try:
                    block = np.loadtxt(f, delimiter=delimiter, max_rows=rows, ndmin=2)
                except ValueError as exc:  # ragged rows, text that is not a number
                    raise InputError(f"input {path} is not a dense numeric matrix: {exc}") from None
            if block.size == 0:
                return
            yield block


def convert(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunks: tuple[int, int] | None = None,
    dtype: Any = None,
    dataset: str | None = None,
    overwrite: bool = False,
) -> da.Array:
    """Write the matrix in ``path`` to a Zarr array at ``out`` (atomically); returns it opened."""
    from dlowrank.io.matrix import open_matrix

    path, out = os.fspath(path), os.fspath(out)
    if not os.path.exists(path):
        raise StoreNotFoundError(f"input {path} does not exist")
    fmt = _format(path)
    check_writable(out, overwrite=overwrite, inputs=[path])
    if fmt == "csv":
        delimiter = (
            "\t"
            if path.lower().endswith(".tsv")
            else ("," if path.lower().endswith(".csv") else None)
        )
        write = _csv_writer(path, chunks, dtype, delimiter)
    else:
        arr = _open_array(path, fmt, dataset)
        where = f"input {path}"
        check_shape(tuple(arr.shape), where)
        computed = compute_dtype(arr.dtype, where)  # refuses complex, strings, objects
        target = np.dtype(dtype) if dtype is not None else computed
        if isinstance(arr, da.Array):
            x = arr.rechunk(chunks or arr.chunks).astype(target)
        else:
            x = da.from_array(arr, chunks=chunks or "auto").astype(target)

        def write(tmp: str) -> None:
            x.to_zarr(tmp)

    publish(
        out,
        write,
        overwrite=overwrite,
        mark_complete=lambda final: _mark(final, path, fmt),
        inputs=[path],
    )
    logger.info("converted %s (%s) to %s", path, fmt, out)
    return open_matrix(out)


def _csv_writer(path: str, chunks: tuple[int, int] | None, dtype: Any, delimiter: str | None):
    rows = chunks[0] if chunks else 10_000

    def write(tmp: str) -> None:
        arr, m = None, 0
        for block in _csv_blocks(path, rows, delimiter):
            if arr is None:
                n = block.shape[1]
                target = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
                arr = zarr.create_array(
                    tmp, shape=(0, n), chunks=(rows, chunks[1] if chunks else n), dtype=target
                )
            if block.shape[1] != arr.shape[1]:
                raise InputError(
                    f"input {path}: row {m + 1} has {block.shape[1]} values, the "
                    f"first row {arr.shape[1]}"
                )
            arr.resize((m + len(block), arr.shape[1]))
            arr[m : m + len(block)] = block
            m += len(block)
        if arr is None:
            raise InputError(f"input {path} holds no rows")

    return write


def _mark(final: str, path: str, fmt: str) -> None:
    arr = zarr.open_array(final, mode="r+")
    arr.attrs["dlowrank"] = {"kind": "converted", "source": path, "format": fmt, "complete": True}
