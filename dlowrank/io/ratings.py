"""Sparse ratings: (row, column, value) triplets stored as a Zarr group, read by row panels.

Layout of the group (attribute ``dlowrank``: kind "ratings", shape, nnz, complete):
``indptr`` (m + 1,) int64, and ``col`` (nnz,) int64 and ``val`` (nnz,) float64
sorted by row, i.e. compressed sparse rows. A row panel is the slice
indptr[r0]:indptr[r1] of ``col`` and ``val``: it is read without densifying.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import zarr

from dlowrank.errors import InputError, ParameterError, StoreNotFoundError
from dlowrank.io.store import check_writable, publish, read_marker

logger = logging.getLogger(__name__)

ROW_BAND = 1000
ENTRY_CHUNK = 1 << 20


@dataclass(frozen=True)
class RatingsSource:
    """A ratings group that pass tasks read themselves, one row panel at a time."""

    url: str
    shape: tuple[int, int]
    nnz: int
    storage_options: dict | None = None
    sparse = True

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    @property
    def chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        m, n = self.shape
        rows = (ROW_BAND,) * (m // ROW_BAND) + ((m % ROW_BAND,) if m % ROW_BAND else ())
        return rows, (n,)

    def read(self, rect: tuple[int, int, int, int]) -> scipy.sparse.csr_matrix:
        r0, r1, c0, c1 = rect
        if (c0, c1) != (0, self.shape[1]):
            raise ParameterError("ratings are read by whole row panels only")
        group = zarr.open_group(self.url, mode="r", **_kw(self.storage_options))
        ptr = group["indptr"][r0 : r1 + 1]
        lo, hi = int(ptr[0]), int(ptr[-1])
        cols = group["col"][lo:hi]
        vals = group["val"][lo:hi]
        return scipy.sparse.csr_matrix((vals, cols, ptr - lo), shape=(r1 - r0, self.shape[1]))


def _kw(storage_options: dict | None) -> dict:
    return {"storage_options": storage_options} if storage_options else {}


def open_ratings(
    url: str | os.PathLike, *, storage_options: dict | None = None
) -> RatingsSource | None:
    """The ratings group at ``url``, or None if ``url`` is not one."""
    url = os.fspath(url)
    attrs = read_marker(url, storage_options) or {}  # raw JSON: nothing foreign is parsed
    if attrs.get("kind") != "ratings":
        return None
    if not attrs.get("complete"):
        raise InputError(f"ratings {url} are incomplete (no completion marker); convert again")
    return RatingsSource(url, tuple(attrs["shape"]), int(attrs["nnz"]), storage_options)


def write_ratings(
    out: str | os.PathLike,
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    *,
    shape: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> RatingsSource:
    """Sort triplets by row, check them, and publish them as a ratings group at ``out``."""
    out = os.fspath(out)
    for name, idx in (("row", rows), ("column", cols)):
        idx = np.asarray(idx)
        if idx.size and idx.dtype.kind == "f" and not np.all(idx == np.round(idx)):
            i = int(np.argmax(idx != np.round(idx)))
            raise InputError(f"{name} index {float(idx[i])!r} (entry {i}) is not a whole number")
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    vals = np.asarray(vals, dtype=np.float64)
    if not (rows.shape == cols.shape == vals.shape) or rows.ndim != 1:
        raise InputError("ratings need row, column and value arrays of one length")
    if rows.size == 0:
        raise InputError("ratings hold no entries")
    if rows.min() < 0 or cols.min() < 0:
        raise InputError("row and column indices must be >= 0")
    if not np.all(np.isfinite(vals)):
        i = int(np.argmax(~np.isfinite(vals)))
        raise InputError(f"rating {i} (row {rows[i]}, column {cols[i]}) is not finite")
    m = int(rows.max()) + 1 if shape is None else int(shape[0])
    n = int(cols.max()) + 1 if shape is None else int(shape[1])
    if rows.max() >= m or cols.max() >= n:
        raise InputError(f"indices exceed the shape ({m}, {n})")
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    dup = np.nonzero((np.diff(rows) == 0) & (np.diff(cols) == 0))[0]
    if dup.size:
        i = int(dup[0])
        raise InputError(f"entry (row {rows[i]}, column {cols[i]}) appears more than once")
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    check_writable(out, overwrite=overwrite)

    def write(tmp: str) -> None:
        group = zarr.open_group(tmp, mode="w")
        group.create_array("indptr", data=indptr, chunks=(min(m + 1, ENTRY_CHUNK),))
        group.create_array("col", data=cols, chunks=(min(cols.size, ENTRY_CHUNK),))
        group.create_array("val", data=vals, chunks=(min(vals.size, ENTRY_CHUNK),))

    def mark(final: str) -> None:
        zarr.open_group(final, mode="r+").attrs["dlowrank"] = {
            "kind": "ratings",
            "shape": [m, n],
            "nnz": int(vals.size),
            "complete": True,
        }

    publish(out, write, overwrite=overwrite, mark_complete=mark)
    return RatingsSource(out, (m, n), int(vals.size))


def read_table(path: str, columns: tuple[str, str, str] | None = None) -> tuple[np.ndarray, ...]:
    """(rows, cols, vals) from a CSV or Parquet file: the first three columns, or ``columns``."""
    if not os.path.exists(path):
        raise StoreNotFoundError(f"input {path} does not exist")
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ParameterError("reading Parquet needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(path)
        names = list(columns) if columns else table.column_names[:3]
        data = [table.column(c).to_numpy() for c in names]
    else:
        with open(path) as f:
            first = f.readline()
        has_header = not _numeric_fields(first)
        try:
            data = np.loadtxt(
                path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2, usecols=(0, 1, 2)
            ).T
        except ValueError as exc:
            raise InputError(
                f"input {path} is not a ratings table (row, column, value): {exc}"
            ) from None
    return np.asarray(data[0]), np.asarray(data[1]), np.asarray(data[2])


def _numeric_fields(line: str) -> bool:
    """True when the first three comma-separated fields all parse as numbers."""
    fields = line.strip().split(",")[:3]
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return len(fields) == 3
