"""How much memory a run may use, measured from where it runs.

The budget of a run on dask's threads is the smallest of:

- the memory cgroup limit of this process (cgroup v2 ``memory.max``, or v1
  ``memory.limit_in_bytes``; the cgroup's own and its ancestors'), read through
  ``/proc/self/cgroup``, so a job under a container, a SLURM allocation or a
  ``capped.sh`` cgroup sees its own limit, not the machine's;
- ``RLIMIT_AS`` (address space), minus what this process has mapped and what the
  threads still to start will reserve (see :func:`thread_reserve`);
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


#: Address space glibc reserves for one thread's malloc arena on 64-bit (HEAP_MAX_SIZE).
ARENA_BYTES = 64 << 20
#: Address space OpenBLAS maps for the work buffers of one calling thread (numpy's and
#: scipy's libraries each map their own on first use).
BLAS_BUFFER_BYTES = 32 << 20


#: MALLOC_ARENA_MAX the command line runs with under RLIMIT_AS (see :func:`few_arenas`).
ARENA_MAX = 2


def few_arenas() -> None:
    """Under RLIMIT_AS, run this command again with ``MALLOC_ARENA_MAX=ARENA_MAX`` unless
    it is set: glibc reads it only at start-up (``mallopt`` later does not lower the
    limit once threads have arenas), and without it each thread may reserve a 64 MiB
    arena of the capped address space (see :func:`thread_reserve`). With allocations of a
    MiB and more mapped on their own (:func:`return_freed_memory`), arenas hold only small
    objects, so two cost little. For the command line only: it replaces the process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft in (resource.RLIM_INFINITY, -1) or not sys.platform.startswith("linux"):
        return
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    env = dict(os.environ, MALLOC_ARENA_MAX=str(ARENA_MAX))
    os.execve(sys.executable, sys.orig_argv, env)


def arena_max() -> int:
    """The most malloc arenas glibc gives this process: ``MALLOC_ARENA_MAX`` when set at
    start-up, else 8 per core (glibc's default on 64-bit)."""
    from dask.system import CPU_COUNT

    with contextlib.suppress(ValueError):
        value = int(os.environ.get("MALLOC_ARENA_MAX", ""))
        if value > 0:
            return value
    return 8 * CPU_COUNT


def thread_reserve() -> int:
    """Address space the threads a run starts after measuring may still reserve: dask's
    pool (``num_workers``, default one per core), each a stack (RLIMIT_STACK, 8 MiB if
    unlimited) and BLAS work buffers; two more threads without BLAS (the peak-memory
    sampler, a progress or connection thread); and a malloc arena for each thread alive
    then, up to :func:`arena_max`.

    Counted only against RLIMIT_AS, which caps reserved address space rather than
    memory. glibc gives threads new arenas, each reserving 64 MiB it never returns:
    measured on this machine, a 56 MB-budget svd reserved eight more arenas (506 MiB)
    after its budget was measured; with ``MALLOC_ARENA_MAX=2`` in its environment it
    reserved one (60 MiB) and its address space grew by 97 MiB in all. A run whose budget
    left these out failed to allocate a 19 MiB chunk, and one whose BLAS buffer could not
    be mapped spun forever inside OpenBLAS (it retries the mmap), both with resident
    memory to spare.
    """
    import dask
    from dask.system import CPU_COUNT

    stack, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if stack in (resource.RLIM_INFINITY, -1) or stack <= 0:
        stack = 8 << 20
    pool = int(dask.config.get("num_workers", None) or CPU_COUNT)
    threads = threading.active_count() + pool + 2
    arenas = min(arena_max() - 1, threads)
    return pool * (stack + BLAS_BUFFER_BYTES) + 2 * stack + arenas * ARENA_BYTES


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
        reserve = thread_reserve()
        note = f"RLIMIT_AS {soft / 2**20:.0f} MiB, {reserve / 2**20:.0f} MiB kept for threads"
        if "MALLOC_ARENA_MAX" not in os.environ:
            note += f" (MALLOC_ARENA_MAX={ARENA_MAX} keeps less)"
        bounds.append((soft - me.memory_info().vms - reserve + rss, note))
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
        fast = _tree_rss(os.getpid())
        if fast is not None:
            return fast
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


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _tree_rss(pid: int) -> int | None:
    """Resident bytes of ``pid`` and its descendants from /proc (each thread's
    ``children`` list, then ``statm``), or None where Linux does not offer them. psutil
    finds children by reading every process's stat file: sampled every 0.1 s during a run,
    that took about a tenth of a core (measured with py-spy on the single pass: 2.5 s of
    CPU in 13 s)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):  # a child gone meanwhile is skipped
            if p == pid:
                return None  # no /proc, or no children lists: psutil's way
    return total
