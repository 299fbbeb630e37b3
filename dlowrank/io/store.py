"""Write results so that they appear at their path complete or not at all."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec

from dlowrank.errors import OutputExistsError

logger = logging.getLogger(__name__)


def is_local(url: str | os.PathLike) -> bool:
    """True for a plain path or a ``file://`` URL."""
    url = os.fspath(url)
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://")).absolute()


def check_writable(
    url: str | os.PathLike, *, overwrite: bool, storage_options: dict | None = None
) -> None:
    """Refuse an existing output unless ``overwrite``; call before any work is done."""
    url = os.fspath(url)
    if is_local(url):
        exists = _local_path(url).exists()
    else:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        exists = fs.exists(path)
    if exists and not overwrite:
        raise OutputExistsError(
            f"output {url} already exists; choose another path or pass "
            "overwrite=True (--overwrite) to replace it once the new one "
            "is complete"
        )


def publish(
    url: str | os.PathLike,
    write: Callable[[str], None],
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    mark_complete: Callable[[str], None] | None = None,
) -> None:
    """Write a result so that it appears at ``url`` complete or not at all.

    ``write(tmp_url)`` writes everything on a temporary sibling path except the
    completion marker, which ``mark_complete(url)`` sets last. On a local file
    system the marker is set on the temporary copy and a rename moves it into
    place (atomic); an existing result is renamed aside first and deleted only
    after the new one is in place, and without ``overwrite`` the rename itself
    refuses an output that appeared meanwhile. On object stores, where a move is
    a copy, the marker is set on the final path after the copy, so readers that
    check it (``dlowrank.load``) never take a partial result. If ``write`` fails,
    the temporary output is removed and ``url`` is left as it was.
    """
    url = os.fspath(url)
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    if is_local(url):
        _publish_local(_local_path(url), write, overwrite, mark_complete)
    else:
        _publish_remote(url, write, overwrite, storage_options or {}, mark_complete)


def _exists_error(url: Any) -> OutputExistsError:
    return OutputExistsError(
        f"output {url} already exists; choose another path or pass "
        "overwrite=True (--overwrite) to replace it once the new one "
        "is complete"
    )


def _publish_local(
    dest: Path,
    write: Callable[[str], None],
    overwrite: bool,
    mark_complete: Callable[[str], None] | None,
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
    try:
        write(str(tmp))
        if mark_complete is not None:
            mark_complete(str(tmp))
        if overwrite and dest.exists():
            old = dest.with_name(f".{dest.name}.old-{tag}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # refuses a non-empty directory or a file that appeared meanwhile
                os.rename(tmp, dest)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise _exists_error(dest) from None
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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
                raise _exists_error(url)
            fs.rm(path, recursive=True)  # the replacement is complete at tmp_path
        fs.mv(tmp_path, path, recursive=True)
    finally:
        if fs.exists(tmp_path):
            fs.rm(tmp_path, recursive=True)
    if mark_complete is not None:
        mark_complete(url)
    logger.info("published %s", url)
