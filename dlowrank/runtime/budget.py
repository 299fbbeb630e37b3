"""How much memory a run may use, measured from where it runs.

The budget of a run on dask's threads is the smallest of:

- the memory cgroup limit of this process (cgroup v2 ``memory.max``, or v1
  ``memory.limit_in_bytes``; the cgroup's own and its ancestors'), read through
  ``/proc/self/cgroup``, so a job under a container, a SLURM allocation or a
  ``capped.sh`` cgroup sees its own limit, not the machine's;
- ``RLIMIT_AS`` (address space), minus what this process has mapped;
- the memory available on the machine now;

minus what the process already holds (its resident set), since that is not free for
the run. distributed's ``system.memory_limit`` reads only the root cgroup files, which
misses a nested cgroup (measured: under ``capped.sh`` it reported the machine's
memory), hence this module. An explicit ``memory=`` / ``--memory`` overrides it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from dataclasses import dataclass
from typing import Any

import psutil

#: A cgroup limit at or above this is "no limit" (v1 writes 2^63 rounded to pages).
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Budget:
    """``total`` bytes the run may use beyond what the process holds, and why."""

    total: int
    source: str

    def __str__(self) -> str:
        from dask.utils import format_bytes

        return f"{format_bytes(self.total)} ({self.source})"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text in ("max", ""):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _ancestors(path: str) -> list[str]:
    """``path`` and each folder above it up to the cgroup root, own first; and the same
    for each tail of ``path`` (in a container the cgroup file system is mounted at the
    container's own cgroup, while /proc/self/cgroup may show the host's whole path)."""
    parts = [p for p in path.split("/") if p]
    out: list[str] = []
    for start in range(len(parts) + 1):
        tail = parts[start:]
        out += ["/".join(tail[:i]) for i in range(len(tail), -1, -1)]
    return list(dict.fromkeys(out))


def cgroup_limit(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> tuple[int, str] | None:
    """The tightest memory limit of this process's cgroups (v2 or v1), with its file."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found: list[tuple[int, str]] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            for base in (root, os.path.join(root, "unified")):
                for sub in _ancestors(path):
                    file = os.path.join(base, sub, "memory.max")
                    limit = _read_int(file)
                    if limit is not None:
                        found.append((limit, file))
        elif "memory" in controllers.split(","):  # cgroup v1
            for sub in _ancestors(path):
                file = os.path.join(root, "memory", sub, "memory.limit_in_bytes")
                limit = _read_int(file)
                if limit is not None:
                    found.append((limit, file))
    return min(found) if found else None


#: Allocations at least this large are mapped and unmapped on their own (glibc).
MMAP_THRESHOLD = 1 << 20


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks (decoded chunks, panels) back to the system.

    glibc raises its mmap threshold each time a large mapped block is freed (up to 32
    MiB), after which chunk-sized buffers come from per-thread heaps that keep their
    memory. Measured on a 20,000 x 1,000 matrix with 20 MB chunks, one task at a time:
    randomized_svd grew the process by 200 MiB with the dynamic threshold and by 70 MiB
    with a fixed 1 MiB one. Fixing it (``mallopt(M_MMAP_THRESHOLD)``, what the
    ``MALLOC_MMAP_THRESHOLD_`` variable does at start-up) keeps a run within its budget.
    Returns False where there is no glibc.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def measure(memory: int | None = None) -> Budget:
    """The run's memory budget (see the module's docstring); ``memory`` overrides it."""
    if memory is not None:
        return Budget(int(memory), "--memory")
    me = psutil.Process()
    rss = me.memory_info().rss
    bounds = [(psutil.virtual_memory().available + rss, "available memory")]
    cg = cgroup_limit()
    if cg is not None:
        bounds.append((cg[0], f"cgroup limit {cg[0] / 2**20:.0f} MiB in {cg[1]}"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
        mapped = me.memory_info().vms
        bounds.append((soft - mapped + rss, f"RLIMIT_AS {soft / 2**20:.0f} MiB"))
    limit, source = min(bounds)
    return Budget(max(limit - rss, 0), f"{source}, minus {rss / 2**20:.0f} MiB held")


class PeakMemory:
    """The peak resident memory of this process and all its descendants (a cluster's
    workers) together, sampled every ``interval`` seconds: the process tree's peak,
    where ``ru_maxrss`` gives only each process's own."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
