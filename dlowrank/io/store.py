"""Write results so that they appear at their path complete or not at all.

dlowrank removes or replaces only what it wrote:

- an output is replaced (``overwrite``) only when it is a complete dlowrank node:
  a Zarr array or group whose ``dlowrank`` attribute carries ``"complete": true``;
- scratch folders (the temporary copy of a result being written) hold a marker
  file, :data:`SCRATCH_MARKER`, written before anything else, and a leftover one
  is removed only when the marker is there;
- the output may never be the input, contain it, or lie inside it.

Anything else at the output path is refused with :class:`UnsafeOutputError`
before any work starts, and nothing is touched.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import fsspec
import fsspec.implementations.local

from dlowrank.errors import OutputExistsError, UnsafeOutputError

logger = logging.getLogger(__name__)

#: File that marks a folder as dlowrank's own scratch (safe for dlowrank to remove).
SCRATCH_MARKER = ".dlowrank-scratch"


def is_local(url: str | os.PathLike) -> bool:
    """True for a plain path or a ``file://`` URL."""
    url = os.fspath(url)
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).absolute()


def _fs(url: str, storage_options: dict | None):
    from dlowrank.io.matrix import filesystem

    return filesystem(url, storage_options)


def read_marker(url: str | os.PathLike, storage_options: dict | None = None) -> dict | None:
    """The ``dlowrank`` attribute of the Zarr node at ``url``, read as raw JSON, or None.

    Reads ``zarr.json`` (format 3) or ``.zattrs`` (format 2) only; never parses
    the node with zarr, so a damaged or foreign folder is simply "not ours".
    """
    url = os.fspath(url)
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        try:
            raw = json.loads(fs.cat_file(f"{path}/{name}"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
            continue
        attrs = raw.get(key, {}) if key else raw
        found = attrs.get("dlowrank") if isinstance(attrs, dict) else None
        return found if isinstance(found, dict) else None
    return None


def is_own_result(url: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """True when ``url`` holds a complete node that dlowrank wrote (safe to replace)."""
    marker = read_marker(url, storage_options)
    return bool(marker and marker.get("complete") is True)


def _unpublished_entries(url: str, storage_options: dict | None) -> list[str] | None:
    """The entries of a folder without result metadata whose entries can only be a
    first publish (version folders, pointer scratch); None for anything else."""
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    try:
        if not fs.isdir(path) or fs.exists(f"{path}/zarr.json"):
            return None
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
    except OSError:
        return None
    if not all(n.startswith((VERSION_PREFIX, ".zarr.json.tmp-")) for n in names):
        return None
    return names


def is_own_partial(url: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """True for a folder holding only version folders of a result (and pointer
    scratch), as a killed first publish leaves it: no pointer yet, every entry
    dlowrank's."""
    url = os.fspath(url)
    names = _unpublished_entries(url, storage_options)
    versions = [n for n in names or () if n.startswith(VERSION_PREFIX)]
    return bool(versions) and all(
        read_marker(f"{url.rstrip('/')}/{v}", storage_options) is not None for v in versions
    )


def is_unpublished(url: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """True for a folder with no result metadata yet whose entries can only be a
    first publish in progress: version folders and pointer scratch (or nothing)."""
    return _unpublished_entries(os.fspath(url), storage_options) is not None


def _describe_local(p: Path) -> str:
    if p.is_symlink() and not p.exists():
        return "a broken symbolic link"
    if p.is_file():
        return f"a file of {p.stat().st_size} bytes"
    if p.is_dir():
        entries = sum(1 for _ in p.iterdir())
        return f"a folder holding {entries} entr{'y' if entries == 1 else 'ies'}"
    return "something that is neither a file nor a folder"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _relation(out: str, inputs: Iterable[str | None]) -> str | None:
    """How ``out`` overlaps an input ("is", "contains", "lies inside"), or None."""
    for src in inputs:
        if not src:
            continue
        src = os.fspath(src)
        if is_local(out) != is_local(src):
            continue
        if is_local(out):
            o, i = (
                Path(os.path.realpath(_local_path(out))),
                Path(os.path.realpath(_local_path(src))),
            )
        else:
            o, i = (
                Path(out.split("://", 1)[-1].rstrip("/")),
                Path(src.split("://", 1)[-1].rstrip("/")),
            )
            if out.split("://", 1)[0] != src.split("://", 1)[0]:
                continue
        if o == i:
            return f"is the input {src}"
        if _inside(i, o):
            return f"contains the input {src}"
        if _inside(o, i):
            return f"lies inside the input {src}"
    return None


def check_output(
    url: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Iterable[str | None] = (),
    storage_options: dict | None = None,
    what: str = "output",
    flag: str = "--out",
) -> None:
    """Refuse an output path that dlowrank may not write; call before any work is done.

    Raises :class:`UnsafeOutputError` when the path is (or contains, or lies
    inside) an input, is the current folder or one of its parents, or holds
    something dlowrank did not write; :class:`OutputExistsError` when it holds a
    dlowrank result and ``overwrite`` is false. Touches nothing.
    """
    url = os.fspath(url)
    fix = f"Choose another {flag}, or move what is there yourself"
    overlap = _relation(url, inputs)
    if overlap:
        raise UnsafeOutputError(
            f"{what} {url} {overlap}; dlowrank never writes over its input. "
            f"{fix}; nothing was touched"
        )
    if is_local(url):
        p = _local_path(url)
        if _inside(Path(os.getcwd()).resolve(), Path(os.path.realpath(p))):
            raise UnsafeOutputError(
                f"{what} {url} is the current folder or one of its parents; "
                f"{fix}; nothing was touched"
            )
        exists = os.path.lexists(p)
        describe = lambda: _describe_local(p)  # noqa: E731
    else:
        fs, path = _fs(url, storage_options)
        exists = fs.exists(path)
        describe = lambda: "something dlowrank did not write"  # noqa: E731
    if not exists:
        _check_parent_writable(url, what)
        return
    if is_own_partial(url, storage_options):
        return  # versions of a result whose first publish was killed: ours to finish
    if not is_own_result(url, storage_options):
        raise UnsafeOutputError(
            f"{what} {url} is {describe()}, not a complete dlowrank result; dlowrank "
            f"replaces only results it wrote, even with --overwrite. {fix}; nothing was touched"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{what} {url} already exists; choose another path or pass "
            "--overwrite (overwrite=True) to replace it once the new one is complete"
        )
    _check_parent_writable(url, what)


def check_scratch(
    url: str | os.PathLike,
    *,
    inputs: Iterable[str | None] = (),
    storage_options: dict | None = None,
    what: str = "checkpoint",
    flag: str = "--checkpoint",
) -> None:
    """Refuse a checkpoint (or plot) path that is, holds or lies inside an input or the
    output, or is the current folder; whether a folder there is ours is the
    checkpoint's own check."""
    url = os.fspath(url)
    fix = f"Choose another {flag}; nothing was touched"
    overlap = _relation(url, inputs)
    if overlap:
        overlap = overlap.replace("the input", "the input or output")
        raise UnsafeOutputError(f"{what} {url} {overlap}; {fix}")
    if is_local(url):
        if _inside(Path(os.getcwd()).resolve(), Path(os.path.realpath(_local_path(url)))):
            raise UnsafeOutputError(
                f"{what} {url} is the current folder or one of its parents; {fix}"
            )
        _check_parent_writable(url, what)


def check_writable(
    url: str | os.PathLike,
    *,
    overwrite: bool,
    storage_options: dict | None = None,
    inputs: Iterable[str | None] = (),
) -> None:
    """Alias of :func:`check_output` for writers of matrices (generate, convert)."""
    check_output(url, overwrite=overwrite, inputs=inputs, storage_options=storage_options)


def _check_parent_writable(url: str, what: str) -> None:
    """A local output's nearest existing ancestor must be a writable folder."""
    if not is_local(url):
        return
    parent = _local_path(url).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UnsafeOutputError(
            f"{what} {url} cannot be written: the folder {parent} is not writable; "
            "choose another path or fix its permissions"
        )


def publish(
    url: str | os.PathLike,
    write: Callable[[str], None],
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    mark_complete: Callable[[str], None] | None = None,
    inputs: Iterable[str | None] = (),
) -> None:
    """Write a result so that it appears at ``url`` complete or not at all.

    ``write(tmp_url)`` writes everything on a temporary path except the
    completion marker, which ``mark_complete(url)`` sets last. On a local file
    system the temporary copy lives in a scratch folder beside ``url`` (marked as
    dlowrank's own), the marker is set there and a rename moves it into place; an
    existing result is renamed aside first and deleted once the new one is in
    place, and without ``overwrite`` the rename itself refuses an output that
    appeared meanwhile. On object stores, where a move is a copy, the marker is
    set on the final path after the copy, so readers that check it
    (``dlowrank.load``) never take a partial result. If ``write`` fails, the
    scratch is removed and ``url`` is left as it was. Leftovers of a crashed
    earlier publish at the same path are removed first, when they are marked as
    dlowrank's own.
    """
    url = os.fspath(url)
    check_output(url, overwrite=overwrite, inputs=inputs, storage_options=storage_options)
    if is_local(url):
        dest = _local_path(url)
        remove_leftovers(dest)
        _publish_local(dest, write, overwrite, mark_complete)
    else:
        _publish_remote(url, write, overwrite, storage_options or {}, mark_complete)


def _scratch_name(dest: Path, kind: str, tag: str) -> Path:
    return dest.with_name(f".{dest.name}.{kind}-{tag}")


def remove_leftovers(dest: Path) -> list[Path]:
    """Remove scratch and set-aside copies left beside ``dest`` by a crashed publish.

    Only folders named ``.NAME.tmp-*`` holding :data:`SCRATCH_MARKER`, and
    ``.NAME.old-*`` holding a complete dlowrank node, are removed.
    """
    removed = []
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.glob(f".{dest.name}.*-*"):
        rest = p.name[len(dest.name) + 2 :]
        ours = (rest.startswith("tmp-") and (p / SCRATCH_MARKER).is_file()) or (
            rest.startswith("old-") and p.is_dir() and is_own_result(str(p))
        )
        if ours and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            logger.info("removed %s, left by an interrupted publish", p)
    return removed


def _publish_local(
    dest: Path,
    write: Callable[[str], None],
    overwrite: bool,
    mark_complete: Callable[[str], None] | None,
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    scratch = _scratch_name(dest, "tmp", tag)
    scratch.mkdir()
    (scratch / SCRATCH_MARKER).write_text("dlowrank scratch: safe to delete\n")
    tmp = scratch / dest.name
    try:
        write(str(tmp))
        if mark_complete is not None:
            mark_complete(str(tmp))
        if overwrite and os.path.lexists(dest):
            if not is_own_result(str(dest)):  # something else appeared meanwhile
                raise UnsafeOutputError(
                    f"output {dest} changed while the result was written and no longer "
                    "holds a dlowrank result; nothing was touched"
                )
            old = _scratch_name(dest, "old", tag)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # refuses a non-empty directory or a file that appeared meanwhile
                os.rename(tmp, dest)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise _appeared(dest) from None
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("published %s", dest)


def _publish_remote(
    url: str,
    write: Callable[[str], None],
    overwrite: bool,
    storage_options: dict,
    mark_complete: Callable[[str], None] | None,
) -> None:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    tmp_path = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    protocol = url.split("://", 1)[0]
    try:
        write(f"{protocol}://{tmp_path}")
        if fs.exists(path):
            if not overwrite:
                raise _appeared(url)
            if not is_own_result(url, storage_options):
                raise UnsafeOutputError(
                    f"output {url} changed while the result was written and no longer "
                    "holds a dlowrank result; nothing was touched"
                )
            fs.rm(path, recursive=True)  # the replacement is complete at tmp_path
        fs.mv(tmp_path, path, recursive=True)
    finally:
        if fs.exists(tmp_path):
            fs.rm(tmp_path, recursive=True)
    if mark_complete is not None:
        mark_complete(url)
    logger.info("published %s", url)


# --- results: immutable versions inside the output, and a pointer written last ------

#: Name prefix of the immutable version folders inside a result.
VERSION_PREFIX = "v-"
#: Versions kept besides the current one, for readers that read the previous pointer.
KEEP_PREVIOUS = 1


def publish_result(
    url: str | os.PathLike,
    write_version: Callable[[str], None],
    attrs: dict,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    inputs: Iterable[str | None] = (),
) -> str:
    """Publish a result as a new immutable version inside ``url``; return its name.

    ``write_version(version_url)`` writes the result's arrays as a Zarr group at
    ``url/v-<tag>``; it may add to ``attrs`` (checksums computed while writing).
    Then the result's root metadata, ``url/zarr.json`` (a Zarr group whose
    ``dlowrank`` attribute is ``attrs`` plus ``"complete": true`` and ``"current":
    "v-<tag>"``), is written in one atomic step: an ``os.replace`` on a local file
    system, one PUT on an object store. A reader that reads the pointer first
    (``dlowrank.load``) sees the old result or the new one, whole. Versions older than
    the previous one are removed afterwards.
    Without ``overwrite`` a pointer that appeared meanwhile is never replaced.
    """
    url = os.fspath(url)
    check_output(url, overwrite=overwrite, inputs=inputs, storage_options=storage_options)
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    local = is_local(url)
    if local:
        remove_leftovers(_local_path(url))
    created = not fs.exists(path)
    tag = f"{VERSION_PREFIX}{uuid.uuid4().hex[:12]}"
    version = f"{url.rstrip('/')}/{tag}"
    try:
        write_version(version)
        pointer = {  # after the write, which may complete ``attrs`` (checksums)
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"dlowrank": {**attrs, "complete": True, "current": tag}},
        }
        _write_pointer(fs, path, json.dumps(pointer, indent=2).encode(), overwrite, tag)
    except BaseException:
        _remove_quietly(fs, f"{path}/{tag}")
        if created and fs.exists(path) and not fs.exists(f"{path}/zarr.json"):
            _remove_empty(fs, path)
        raise
    _prune_versions(fs, path, tag)
    logger.info("published %s (version %s)", url, tag)
    return tag


def _write_pointer(fs, path: str, data: bytes, overwrite: bool, tag: str) -> None:
    target = f"{path}/zarr.json"
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        tmp = f"{path}/.zarr.json.tmp-{tag}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            if overwrite:
                os.replace(tmp, target)  # atomic: readers see the old file or the new one
            else:
                try:
                    os.link(tmp, target)  # atomic create-if-absent
                except FileExistsError:
                    raise _appeared(path) from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    if not overwrite and fs.exists(target):
        raise _appeared(path)
    fs.pipe_file(target, data)  # one PUT: atomic on object stores


def _appeared(path: str) -> OutputExistsError:
    return OutputExistsError(
        f"output {path} appeared while the result was written; "
        "choose another path or pass --overwrite"
    )


def _versions(fs, path: str) -> list[str]:
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return [n for n in names if n.startswith(VERSION_PREFIX)]


def _prune_versions(fs, path: str, current: str) -> None:
    """Remove versions other than the current one and the newest previous ones."""
    older = [v for v in _versions(fs, path) if v != current]
    dated = []
    for v in older:
        try:
            stamp = fs.info(f"{path}/{v}/zarr.json").get("mtime") or 0
        except FileNotFoundError:
            stamp = 0
        dated.append((float(stamp) if not hasattr(stamp, "timestamp") else stamp.timestamp(), v))
    dated.sort(reverse=True)
    for _, v in dated[KEEP_PREVIOUS:]:
        _remove_quietly(fs, f"{path}/{v}")


def _remove_quietly(fs, target: str) -> None:
    try:
        if fs.exists(target):
            fs.rm(target, recursive=True)
    except OSError as exc:
        logger.warning("could not remove %s: %s", target, exc)


def _remove_empty(fs, path: str) -> None:
    try:
        if not fs.ls(path, detail=False):
            fs.rmdir(path)
    except OSError:
        pass
