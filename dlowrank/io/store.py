"""Write results so that they appear at their path complete or not at all."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

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
) -> None:
    """Run ``write(tmp_url)`` on a temporary sibling path, then move it to ``url``.

    On a local file system the final step is a rename, which is atomic; an
    existing result is renamed aside first and deleted only after the new one
    is in place. On object stores a move is a copy, so readers must also check
    the completion marker that the writer sets last. If ``write`` fails, the
    temporary output is removed and ``url`` is left as it was.
    """
    url = os.fspath(url)
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    if is_local(url):
        _publish_local(_local_path(url), write)
    else:
        _publish_remote(url, write, storage_options or {})


def _publish_local(dest: Path, write: Callable[[str], None]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
    try:
        write(str(tmp))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{tag}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("published %s", dest)


def _publish_remote(url: str, write: Callable[[str], None], storage_options: dict) -> None:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    tmp_path = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    protocol = url.split("://", 1)[0]
    try:
        write(f"{protocol}://{tmp_path}")
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.mv(tmp_path, path, recursive=True)
    finally:
        if fs.exists(tmp_path):
            fs.rm(tmp_path, recursive=True)
    logger.info("published %s", url)
