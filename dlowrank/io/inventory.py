"""What a Zarr input holds: its chunk listing, checked against its shape, and a fingerprint.

One listing of the store serves two checks. Every chunk the shape implies must
be there: zarr reads an absent chunk as its fill value, so a lost file would
silently become zeros. And the listing (each file's name, size, and time or
ETag) is the input's fingerprint, compared before and after every pass so that
a matrix rewritten under a run is never mixed into its result.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
from typing import Any

import dask

from dlowrank.errors import StorageError

logger = logging.getLogger(__name__)

#: Fingerprint modes: the listing's sizes and times (or ETags), or the bytes themselves.
VERIFY_MODES = ("listing", "checksum")


def chunk_layout(meta: dict) -> tuple[tuple[int, ...], str, str]:
    """(chunk grid shape, key prefix, separator) of an array from its raw metadata.

    For a sharded array the grid is the shard grid: shards are the stored files.
    """
    shape = [int(d) for d in meta["shape"]]
    if meta.get("zarr_format") == 3:
        chunks = [int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        encoding = meta.get("chunk_key_encoding") or {"name": "default"}
        config = encoding.get("configuration") or {}
        if encoding.get("name") == "v2":
            prefix, sep = "", config.get("separator", ".")
        else:
            sep = config.get("separator", "/")
            prefix = "c" + sep
    else:
        chunks = [int(c) for c in meta["chunks"]]
        prefix, sep = "", meta.get("dimension_separator") or "."
    grid = tuple(math.ceil(d / c) for d, c in zip(shape, chunks, strict=True))
    return grid, prefix, sep


def _listing(url: str, storage_options: dict | None) -> tuple[str, dict[str, dict]]:
    from dlowrank.io.matrix import filesystem

    fs, path = filesystem(url, storage_options)
    path = path.rstrip("/")
    found = fs.find(path, detail=True)
    return path, {name[len(path) + 1 :]: info for name, info in found.items()}


def missing_chunks(meta: dict, keys: set[str], limit: int = 3) -> tuple[int, list[str]]:
    """How many chunk files the shape implies but ``keys`` lacks, and the first few."""
    grid, prefix, sep = chunk_layout(meta)
    expected = math.prod(grid)
    present = sum(
        1 for k in keys if k.startswith(prefix) and k.count(sep) == len(grid) - 1 + bool(prefix)
    )
    if present >= expected:
        return 0, []
    first = []
    for index in itertools.product(*(range(g) for g in grid)):
        key = prefix + sep.join(map(str, index))
        if key not in keys:
            first.append(key)
            if len(first) >= limit:
                break
    return expected - present, first


def check_chunks(url: str, meta: dict, keys: set[str]) -> None:
    """Refuse an input with absent chunks, unless ``dlowrank.allow-missing-chunks`` is set."""
    if dask.config.get("dlowrank.allow-missing-chunks", False):
        return
    count, first = missing_chunks(meta, keys)
    if count:
        grid, _, _ = chunk_layout(meta)
        raise StorageError(
            f"input {url} lacks {count} of {math.prod(grid)} chunk files (first: "
            f"{', '.join(first)}); zarr would read them as the fill value "
            f"{meta.get('fill_value')!r}, silently. Restore them, or pass "
            "--allow-missing-chunks if the array is sparse by design (zarr skips "
            "writing chunks equal to the fill value unless write_empty_chunks is set)"
        )


def fingerprint_listing(files: dict[str, dict]) -> str:
    """A digest of a store listing: each file's name, size, and ETag or time."""
    digest = hashlib.sha256()
    for name, info in sorted(files.items()):
        digest.update(f"{name}|{_stamp(info)}\n".encode())
    return digest.hexdigest()[:32]


def fingerprint_bytes(url: str, storage_options: dict | None, files: dict[str, dict]) -> str:
    """A digest of every stored file's bytes (``--verify-input checksum``): a full read."""
    from dlowrank.io.matrix import filesystem

    fs, path = filesystem(url, storage_options)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(fs.cat_file(f"{path.rstrip('/')}/{name}")).digest())
    return digest.hexdigest()[:32]


def check_store_chunks(url: str, storage_options: dict | None, meta: dict) -> None:
    """List the store and check its chunk files against ``meta`` (no fingerprint)."""
    _, files = _listing(url, storage_options)
    check_chunks(url, meta, set(files))


def inspect_store(url: str, storage_options: dict | None) -> str:
    """The store's fingerprint, by listing or by checksum as ``dlowrank.verify-input``
    says (a checksum reads every stored byte: one full read of A)."""
    _, files = _listing(url, storage_options)
    if dask.config.get("dlowrank.verify-input", "listing") == "checksum":
        return fingerprint_bytes(url, storage_options, files)
    return fingerprint_listing(files)


def source_url(source: Any) -> str | None:
    """The URL a source is read from, also for a ``zarr.Array`` on a local store."""
    url = getattr(source, "url", None)
    if url is not None:
        return url
    array = getattr(source, "array", None)
    root = getattr(getattr(array, "store", None), "root", None)
    if root is not None:
        return os.path.join(str(root), array.path) if array.path else str(root)
    return None


def _stamp(info: dict) -> str:
    stamp = (
        info.get("ETag")
        or info.get("etag")
        or info.get("mtime")
        or info.get("LastModified")
        or info.get("created")
        or ""
    )
    return f"{info.get('size')}|{stamp}"


def chunk_files(url: str, storage_options: dict | None) -> tuple[dict[str, str], tuple, str, str]:
    """The stored chunk files of the array at ``url``: ({key: "size|time or ETag"}, the
    shape of a file's chunk, the key prefix, the separator). An update compares the stamps
    to know that the chunks it does not read are the ones an earlier result saw."""
    import json

    from dlowrank.io.matrix import filesystem

    path, files = _listing(url, storage_options)
    fs, _ = filesystem(url, storage_options)
    name = "zarr.json" if "zarr.json" in files else ".zarray"
    meta = json.loads(fs.cat_file(f"{path}/{name}"))
    grid, prefix, sep = chunk_layout(meta)
    if meta.get("zarr_format") == 3:
        chunk = [int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]]
    else:
        chunk = [int(c) for c in meta["chunks"]]
    keys = {prefix + sep.join(map(str, i)) for i in itertools.product(*(range(g) for g in grid))}
    stamps = {k: _stamp(info) for k, info in files.items() if k in keys}
    return stamps, tuple(chunk), prefix, sep
