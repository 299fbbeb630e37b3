"""Checkpoints: the outputs of completed passes, so that a killed job resumes.

A checkpoint is a folder (local path or fsspec URL) holding ``checkpoint.json``
(what it belongs to: input fingerprint and parameters) and one ``.npz`` file per
completed pass, each written under a temporary name and renamed into place, so a
kill leaves either a whole pass or none. Knows nothing of the algorithms: a pass
output is a flat dict of arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import uuid
import warnings
from typing import Any

import numpy as np

from dlowrank.errors import CheckpointError, DlowrankWarning, UnsafeOutputError
from dlowrank.io.matrix import filesystem

logger = logging.getLogger(__name__)

FORMAT = 2  # 2: the first pass holds ||A||_F^2 under the engine's own key
#: Names of the files a checkpoint writes (all it ever removes).
_OWN_PREFIXES = ("checkpoint.json", "pass-", ".tmp-", "tall-")
#: What may be ours in a folder without checkpoint.json: pass files (each checked on load),
#: never folders (tall-* scratch is written only after checkpoint.json, and is removed
#: recursively: a folder of that name without it is someone else's).
_LOOSE_PREFIXES = ("pass-", ".tmp-")
#: The scratch folders dlowrank names in a checkpoint (engine/tall.py): tall-NNNN-key
#: for a pass's outputs, tall-x<8 hex>-what for a computed quantity.
_SCRATCH = re.compile(r"tall-(\d{4}|x[0-9a-f]{8})-")


class Checkpoint:
    """Pass outputs of one computation, keyed by pass number and kernel name."""

    def __init__(
        self, url: str | os.PathLike, meta: dict, *, storage_options: dict | None = None
    ) -> None:
        self.url = os.fspath(url)
        self.storage_options = storage_options
        self.meta = {"format": FORMAT, **meta}
        #: The input's fingerprint, taken by the caller just before the run (a job's
        #: preflight): the engine then need not take it again. None: the engine takes it.
        self.verified_fingerprint: str | None = None
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
        entries = [e for e in self._entries() if not e.startswith(_LOOSE_PREFIXES)]
        if entries:  # pass files alone (checkpoint.json lost) are ours, each checked on load
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

    def load(
        self, index: int, name: str, input_fingerprint: str | None = None
    ) -> dict[str, np.ndarray] | None:
        """The arrays saved for pass ``index`` by kernel ``name``, or None.

        A pass file is used only when its own metadata holds: the checksum of its
        arrays, the input fingerprint it was computed from, and the digest of
        this checkpoint's parameters. A damaged or foreign file is discarded with
        a warning (the pass is computed again).
        """
        target = self._file(f"pass-{index:04d}-{name}.npz")
        if not self.fs.exists(target):
            return None
        try:
            with np.load(io.BytesIO(self.fs.cat_file(target)), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays.pop(_META)))
        except Exception as exc:  # truncated, garbled, or without metadata: never trusted
            return self._discard(target, f"it cannot be read ({type(exc).__name__}: {exc})")
        expected = {
            "checksum": _digest(arrays),
            "input_fingerprint": input_fingerprint,
            "params": self._params_digest(),
        }
        wrong = [k for k, v in expected.items() if meta.get(k) != v]
        if wrong:
            return self._discard(target, f"its {', '.join(wrong)} do not match this run")
        return arrays

    def _discard(self, target: str, why: str) -> None:
        warnings.warn(
            f"checkpoint {self.url}: discarding {target.rsplit('/', 1)[-1]}, since {why}; "
            "the pass is computed again",
            DlowrankWarning,
            stacklevel=3,
        )
        try:
            self.fs.rm(target)
        except OSError:
            pass
        return None

    def _params_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:32]

    def save(
        self,
        index: int,
        name: str,
        arrays: dict[str, np.ndarray],
        input_fingerprint: str | None = None,
    ) -> None:
        """Save a pass's arrays with their checksum, input fingerprint and parameters."""
        meta = {
            "checksum": _digest(arrays),
            "input_fingerprint": input_fingerprint,
            "params": self._params_digest(),
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays, **{_META: np.array(json.dumps(meta))})
        self._write(self._file(f"pass-{index:04d}-{name}.npz"), buf.getvalue())
        logger.info("checkpoint: pass %d saved to %s", index, self.url)

    def remove(self) -> None:
        """Remove the checkpoint's own files, then its folder if nothing else is left.

        A folder without ``checkpoint.json`` is not a checkpoint: an empty one is
        left alone, one with files raises :class:`UnsafeOutputError`. Nothing
        dlowrank did not write is ever removed.
        """
        if not self.fs.exists(self._file("checkpoint.json")):
            self.check_owned()  # only dlowrank's pass files, if anything
            if not self._entries():
                return
        for name in self._entries():
            if _SCRATCH.match(name):  # a pass's (or a computed quantity's) scratch panels
                self.fs.rm(self._file(name), recursive=True)
            elif name.startswith(_LOOSE_PREFIXES + ("checkpoint.json",)):
                self.fs.rm(self._file(name))
        if self._entries():
            logger.warning(
                "checkpoint %s: removed dlowrank's files; left the folder, which holds others",
                self.url,
            )
        elif self.fs.exists(self.path):
            self.fs.rmdir(self.path)


_META = "__dlowrank_pass__"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def fingerprint(source: Any) -> str:
    """A short identity of an input: its store listing (each file's name, size and
    time or ETag), or with ``dlowrank.verify-input = "checksum"`` its bytes.

    For an in-memory array it is dask's content token; for a zarr.Array on a
    store that cannot be listed, its identity and metadata.
    """
    from dask.base import tokenize

    from dlowrank.io.inventory import inspect_store, source_url

    url = source_url(source)
    if url is None:
        array = getattr(source, "array", None)
        if array is not None:  # another store: its identity and metadata only
            return tokenize(repr(array.store_path), array.metadata.to_dict())[:32]
        return tokenize(getattr(source, "x", source))[:32]
    return inspect_store(url, getattr(source, "storage_options", None))
