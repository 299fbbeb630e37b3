"""Checkpoints: the outputs of completed passes, so that a killed job resumes.

A checkpoint is a folder (local path or fsspec URL) holding ``checkpoint.json``
(what it belongs to: input fingerprint and parameters) and one ``.npz`` file per
completed pass, each written under a temporary name and renamed into place, so a
kill leaves either a whole pass or none. Knows nothing of the algorithms: a pass
output is a flat dict of arrays.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from typing import Any

import numpy as np

from dlowrank.errors import CheckpointError, UnsafeOutputError
from dlowrank.io.matrix import filesystem

logger = logging.getLogger(__name__)

FORMAT = 1
#: Names of the files a checkpoint writes (all it ever removes).
_OWN_PREFIXES = ("checkpoint.json", "pass-", ".tmp-")


class Checkpoint:
    """Pass outputs of one computation, keyed by pass number and kernel name."""

    def __init__(
        self, url: str | os.PathLike, meta: dict, *, storage_options: dict | None = None
    ) -> None:
        self.url = os.fspath(url)
        self.meta = {"format": FORMAT, **meta}
        self.fs, self.path = filesystem(self.url, storage_options)
        self.path = self.path.rstrip("/")

    def _file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def check(self) -> int:
        """Check an existing checkpoint without changing anything; return its completed passes.

        Raises :class:`CheckpointError` naming what differs when the checkpoint
        was made for another input or other parameters, and
        :class:`UnsafeOutputError` when the folder holds files dlowrank did not
        write (dlowrank keeps checkpoints only in folders of its own).
        """
        meta_file = self._file("checkpoint.json")
        if not self.fs.exists(meta_file):
            self.check_owned()
            return 0
        try:
            old = _flat(json.loads(self.fs.cat_file(meta_file)))
        except ValueError:
            raise CheckpointError(
                f"checkpoint {self.url} has a damaged checkpoint.json; discard it with --restart"
            ) from None
        new = _flat(json.loads(json.dumps(self.meta)))  # the same JSON types as stored
        diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diffs:
            detail = "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}" for k in diffs)
            raise CheckpointError(
                f"checkpoint {self.url} belongs to another computation ({detail}); "
                "rerun with --restart to discard it, or choose another --checkpoint"
            )
        return len(self._passes())

    def open(self) -> int:
        """Create the checkpoint, or check an existing one (see :meth:`check`); return
        its completed passes."""
        done = self.check()
        if not self.fs.exists(self._file("checkpoint.json")):
            self.fs.makedirs(self.path, exist_ok=True)
            self._write(
                self._file("checkpoint.json"), json.dumps(self.meta, sort_keys=True).encode()
            )
        return done

    def _entries(self) -> list[str]:
        if not self.fs.isdir(self.path):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)]

    def check_owned(self) -> None:
        """Refuse a folder that is not a checkpoint unless it is empty (or absent)."""
        if self.fs.exists(self._file("checkpoint.json")):
            return
        if self.fs.exists(self.path) and not self.fs.isdir(self.path):
            raise UnsafeOutputError(
                f"checkpoint {self.url} is a file, not a checkpoint folder; choose "
                "another --checkpoint; nothing was touched"
            )
        entries = self._entries()
        if entries:
            raise UnsafeOutputError(
                f"checkpoint folder {self.url} already holds {len(entries)} entr"
                f"{'y' if len(entries) == 1 else 'ies'} that dlowrank did not write "
                f"(e.g. {sorted(entries)[0]}); choose another --checkpoint; nothing was touched"
            )

    @property
    def completed(self) -> int:
        """How many pass files the checkpoint holds (0 when it does not exist)."""
        return len(self._passes()) if self.fs.exists(self._file("checkpoint.json")) else 0

    def _passes(self) -> list[str]:
        names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)]
        return sorted(n for n in names if n.startswith("pass-") and n.endswith(".npz"))

    def _write(self, target: str, data: bytes) -> None:
        tmp = f"{self.path}/.tmp-{uuid.uuid4().hex[:12]}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, target)

    def load(self, index: int, name: str) -> dict[str, np.ndarray] | None:
        """The arrays saved for pass ``index`` by kernel ``name``, or None."""
        target = self._file(f"pass-{index:04d}-{name}.npz")
        if not self.fs.exists(target):
            return None
        with np.load(io.BytesIO(self.fs.cat_file(target)), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def save(self, index: int, name: str, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self._write(self._file(f"pass-{index:04d}-{name}.npz"), buf.getvalue())
        logger.info("checkpoint: pass %d saved to %s", index, self.url)

    def remove(self) -> None:
        """Remove the checkpoint's own files, then its folder if nothing else is left.

        A folder without ``checkpoint.json`` is not a checkpoint: an empty one is
        left alone, one with files raises :class:`UnsafeOutputError`. Nothing
        dlowrank did not write is ever removed.
        """
        if not self.fs.exists(self._file("checkpoint.json")):
            self.check_owned()
            return
        for name in self._entries():
            if name.startswith(_OWN_PREFIXES):
                self.fs.rm(self._file(name))
        if self._entries():
            logger.warning(
                "checkpoint %s: removed dlowrank's files; left the folder, which holds others",
                self.url,
            )
        elif self.fs.exists(self.path):
            self.fs.rmdir(self.path)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fingerprint(source: Any) -> str:
    """A short identity of an input: its metadata and each stored chunk's size and time.

    For a Zarr store, hashing the listing (not the bytes) is cheap and changes
    when any chunk is rewritten; for an in-memory array it is dask's content token.
    """
    import hashlib

    from dask.base import tokenize

    url = getattr(source, "url", None)
    if url is None:
        array = getattr(source, "array", None)
        root = getattr(getattr(array, "store", None), "root", None)
        if root is not None:  # a zarr.Array on a local store: list its files as for a URL
            url = os.path.join(str(root), array.path) if array.path else str(root)
        elif array is not None:  # another store: its identity and metadata only
            return tokenize(repr(array.store_path), array.metadata.to_dict())[:32]
        else:
            return tokenize(getattr(source, "x", source))[:32]
    fs, path = filesystem(url, getattr(source, "storage_options", None))
    digest = hashlib.sha256()
    for file, info in sorted(fs.find(path, detail=True).items()):
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
        digest.update(f"{file[len(path) :]}|{info.get('size')}|{stamp}\n".encode())
    return digest.hexdigest()[:32]
