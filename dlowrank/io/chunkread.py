"""Whole chunks of a plain Zarr array, fetched from its store and decoded in place.

A pass reads every chunk once, and reading is its floor. zarr's own read of a
selection decodes each chunk into a buffer of its own and copies it into the
result. For an array whose chunks are plain bytes (a ``bytes`` codec in native
order, or Zarr v2 with no filters and C order) behind at most one compressor,
this module fetches a chunk's bytes from the array's own store (any store zarr
opens: local, fsspec, memory) and has numcodecs decode them straight into the
task's array, with the next chunk's bytes fetched while this one is decoded.
Measured on the bench matrix (20 chunks of 10,000 x 2,000 float64, zstd), cold,
two threads, ``ZarrSource.read`` under a 1.5 GB cap: 5.3 and 7.2 s (two runs) read
here, 7.1 and 8.5 s through zarr's selection.

Anything else (sharding, filters, a transpose codec, big-endian data) is read by
zarr as before: :func:`plan` returns None for it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

#: zarr v3 compressors and the numcodecs codec that decodes what they wrote.
_V3 = {"ZstdCodec": "Zstd", "BloscCodec": "Blosc", "GzipCodec": "GZip"}


@dataclass(frozen=True)
class Direct:
    """How to read an array's chunks without zarr's selection machinery."""

    codec: Any  # a numcodecs codec, or None for raw bytes
    chunk: tuple[int, int]  # the stored chunk shape (edge chunks are stored whole)
    dtype: np.dtype
    fill: Any  # an absent chunk's value (absent chunks are refused before a pass)


def plan(arr: Any) -> Direct | None:
    """A :class:`Direct` for ``arr`` when its chunks are plain native-order bytes behind
    at most one numcodecs-decodable compressor; else None (zarr reads it)."""
    import numcodecs

    meta = arr.metadata
    try:
        dtype = np.dtype(arr.dtype)
    except TypeError:
        return None
    if dtype.kind not in "fiu" or not dtype.isnative or arr.ndim != 2:
        return None
    if meta.zarr_format == 2:
        if meta.filters or meta.order != "C":
            return None
        codec = meta.compressor
    else:
        codecs = list(meta.codecs)
        first = codecs.pop(0) if codecs else None
        if type(first).__name__ != "BytesCodec" or len(codecs) > 1:
            return None
        endian = getattr(first.endian, "value", first.endian)
        if dtype.itemsize > 1 and endian is not None and endian != sys.byteorder:
            return None
        codec = None
        if codecs:
            name = _V3.get(type(codecs[0]).__name__)
            if name is None:
                return None
            codec = getattr(numcodecs, name)()  # decoding needs no parameters
    if codec is not None and not hasattr(codec, "decode"):
        return None
    return Direct(codec, tuple(int(c) for c in arr.chunks), dtype, meta.fill_value)


@functools.lru_cache(maxsize=1)
def _fetcher() -> ThreadPoolExecutor:
    """Threads that fetch chunk bytes ahead of their decoding (I/O releases the GIL)."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="dlowrank-fetch")


def _key(arr: Any, index: tuple[int, int]) -> str:
    path = arr.store_path.path
    key = arr.metadata.encode_chunk_key(index)
    return f"{path}/{key}" if path else key


def _fetch(arr: Any, key: str) -> Any:
    """The stored bytes of one chunk (a NumPy uint8 array), or None if it is absent."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(arr.store_path.store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.as_numpy_array()


class ChunkError(Exception):
    """A chunk that cannot be fetched (``fetched`` False) or whose bytes do not decode."""

    def __init__(
        self, key: str, index: tuple[int, int], cause: Exception, fetched: bool = True
    ) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.key, self.index, self.cause, self.fetched = key, index, cause, fetched


def _decode(direct: Direct, raw: Any, out: np.ndarray) -> None:
    """Decode one whole chunk's bytes into ``out`` (C-contiguous, the chunk's shape)."""
    if raw is None:  # zarr's reading of an absent chunk (v2's null fill value: zeros)
        out[...] = 0 if direct.fill is None else direct.fill
    elif direct.codec is None:
        flat = out.reshape(-1).view(np.uint8)
        if raw.size != flat.size:
            raise ValueError(f"{raw.size} bytes stored where the chunk has {flat.size}")
        flat[...] = raw
    else:
        size = decoded_size(direct.codec, raw)
        if size is None:  # a codec whose output does not record its size: decode, check
            data = np.frombuffer(memoryview(direct.codec.decode(raw)).cast("B"), np.uint8)
            _check_size(data.size, out)
            out.reshape(-1).view(np.uint8)[...] = data
        else:  # numcodecs would fill the front of ``out`` with a short chunk, no more
            _check_size(size, out)
            direct.codec.decode(raw, out=out)


def _check_size(size: int, out: np.ndarray) -> None:
    if size != out.nbytes:
        raise ValueError(f"the chunk decodes to {size} bytes where it has {out.nbytes}")


def decoded_size(codec: Any, raw: Any) -> int | None:
    """The size ``raw`` decodes to, from its own header where the format records it
    (zstd's frame content size, blosc's header, gzip's trailer, modulo 2^32); else None."""
    raw = np.frombuffer(memoryview(raw).cast("B"), np.uint8)
    name = type(codec).__name__
    if name == "Blosc" and raw.size >= 16:
        return int.from_bytes(raw[4:8].tobytes(), "little")
    if name == "GZip" and raw.size >= 18:
        return int.from_bytes(raw[-4:].tobytes(), "little")  # ISIZE: the size mod 2^32
    if name == "Zstd" and raw.size >= 6 and raw[:4].tobytes() == b"\x28\xb5\x2f\xfd":
        fhd = int(raw[4])
        single = (fhd >> 5) & 1
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
        width = (single, 2, 4, 8)[fhd >> 6]
        if width == 0 or raw.size < pos + width:
            return None
        value = int.from_bytes(raw[pos : pos + width].tobytes(), "little")
        return value + 256 if width == 2 else value
    return None


def _edges(start: int, stop: int, size: int) -> Iterator[tuple[int, int, int]]:
    """(chunk index, lo, hi) of the chunks along one axis that meet [start, stop)."""
    for i in range(start // size, (stop - 1) // size + 1):
        yield i, max(start, i * size), min(stop, (i + 1) * size)


def read_tiles(
    arr: Any, direct: Direct, rect: tuple[int, int, int, int], axis: int, ahead: bool = True
) -> list:
    """``arr[r0:r1, c0:c1]`` as tiles cut at the chunk boundaries along ``axis`` (1: one
    tile per chunk column, spanning the rect's rows; 0: one per chunk row): a list of
    ``(lo, hi, tile)``, [lo, hi) the tile's range along ``axis`` in the rect's own
    coordinates. A tile one chunk wide takes its whole chunks without a copy."""
    r0, r1, c0, c1 = rect
    start, stop, size = (c0, c1, direct.chunk[1]) if axis == 1 else (r0, r1, direct.chunk[0])
    parts = []
    for _, lo, hi in _edges(start, stop, size):
        sub = (r0, r1, lo, hi) if axis == 1 else (lo, hi, c0, c1)
        parts.append((sub, np.empty((sub[1] - sub[0], sub[3] - sub[2]), dtype=direct.dtype)))
    read_into(arr, direct, parts, ahead)
    return [
        (sub[2 * (axis == 1)] - start, sub[2 * (axis == 1) + 1] - start, out) for sub, out in parts
    ]


def read_into(arr: Any, direct: Direct, parts: list, ahead: bool = True) -> None:
    """Fill each ``out`` of ``parts`` = [(rect, out)] with ``arr[r0:r1, c0:c1]``.

    A whole chunk that spans ``out``'s width is decoded straight into its rows; others
    (edge chunks, several chunks across, a rect off the chunk boundaries) pass through
    one chunk-sized buffer. With ``ahead`` the next chunk's bytes are fetched while one
    is decoded (two chunks' bytes in flight), else after it.
    """
    ch, cw = direct.chunk
    jobs = []
    for (r0, r1, c0, c1), out in parts:
        for i, a, b in _edges(r0, r1, ch):
            for j, c, d in _edges(c0, c1, cw):
                jobs.append(
                    ((i, j), out, (a - r0, b - r0, c - c0, d - c0), (a - i * ch, c - j * cw))
                )
    scratch = None
    pool = _fetcher()
    nxt = pool.submit(_fetch, arr, _key(arr, jobs[0][0])) if jobs else None
    for n, (index, out, (a, b, c, d), (i0, j0)) in enumerate(jobs):
        if nxt is None:
            nxt = pool.submit(_fetch, arr, _key(arr, index))
        try:
            raw = nxt.result()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller names the chunk
            raise ChunkError(_key(arr, index), index, exc, fetched=False) from None
        nxt = None
        if ahead and n + 1 < len(jobs):
            nxt = pool.submit(_fetch, arr, _key(arr, jobs[n + 1][0]))
        try:
            if (b - a, d - c) == (ch, cw) and d - c == out.shape[1]:
                _decode(direct, raw, out[a:b])
            else:
                if scratch is None:
                    scratch = np.empty((ch, cw), dtype=direct.dtype)
                _decode(direct, raw, scratch)
                out[a:b, c:d] = scratch[i0 : i0 + b - a, j0 : j0 + d - c]
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller names the chunk
            if nxt is not None:
                nxt.cancel()
            raise ChunkError(_key(arr, index), index, exc) from None
        del raw
