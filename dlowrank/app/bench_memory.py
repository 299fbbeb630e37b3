"""``dlowrank bench --suite memory``: the CLI under a memory cap on its whole process tree.

Each command runs twice as a subprocess: uncapped, and inside a fresh cgroup v1 memory
cgroup capped at ``cap_mb`` (the page cache dropped first where this process may), as
``shared/bench/capped.sh`` does. A row reports the exit status, seconds, the run's own
process-tree peak (its JSON ``peak_memory_mb``), the cgroup's peak usage (page cache
included) and OOM kills, and whether the capped result's error equals the uncapped
one's. Without a writable cgroup v1 controller only the uncapped runs are made, and
the table says so. The first row is the floor: a bare read pass (dask's
``from_zarr(...).sum()``), warm uncapped (as every pass after the first of an uncapped
run reads A from the page cache) and cold capped (a cap below A's size keeps A out of
the page cache, so every capped pass reads it from disk).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

CGROUP = "/sys/fs/cgroup/memory"
#: The commands of the table (as in issue "a memory budget that fits the machine"), each
#: on dask's threads (``--workers 0``) and on the default LocalCluster; nmf runs on |A|.
COMMANDS = tuple(
    (f"{name}{label}", [*args, *extra])
    for name, args in (
        ("svd", ["svd", "--rank", "10"]),
        ("svd --passes 1", ["svd", "--rank", "10", "--passes", "1"]),
        ("factorize 3 it.", ["factorize", "--rank", "10", "--max-iter", "3"]),
        ("nmf 3 it. |A|", ["nmf", "--rank", "10", "--max-iter", "3"]),
    )
    for label, extra in ((" --workers 0", ["--workers", "0"]), (" (cluster)", []))
)


def can_cap() -> bool:
    return os.access(CGROUP, os.W_OK)


def _run(args: list[str], cap_mb: int | None, command: list[str] | None = None) -> dict:
    """The CLI with ``args`` (or ``command``, any program printing a JSON line last) in a
    subprocess, capped at ``cap_mb`` in a fresh cgroup when given: its JSON line, exit
    status, and under a cap the cgroup's peak and OOM kills."""
    cmd = command or [sys.executable, "-m", "dlowrank", *args, "--json", "-q"]
    group = None
    if cap_mb is not None:
        group = os.path.join(CGROUP, f"dlowrank-bench-{uuid.uuid4().hex[:8]}")
        os.mkdir(group)
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(cap_mb << 20))
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")  # cold, as capped.sh: A is read from disk
        except OSError:
            pass
        cmd = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        row: dict[str, Any] = {"rc": proc.returncode}
        try:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        if group is not None:
            with open(os.path.join(group, "memory.max_usage_in_bytes")) as f:
                row["cgroup_peak_mb"] = int(f.read()) / 2**20
            with open(os.path.join(group, "memory.oom_control")) as f:
                kills = [ln.split()[1] for ln in f if ln.startswith("oom_kill ")]
            row["oom_kills"] = int(kills[0]) if kills else None
        return row
    finally:
        if group is not None:
            os.rmdir(group)


_READ = (
    "import sys, time, dask, dask.array as da\n"
    "t = time.perf_counter()\n"
    "da.from_zarr(sys.argv[1]).sum().compute(scheduler='threads')\n"
    "print('{\"seconds\": %.4f}' % (time.perf_counter() - t))\n"
)


def _read_pass(path: str, cap_mb: int | None) -> dict:
    """A bare read pass as its own (capped, cold) subprocess: the floor a pass cannot beat."""
    return _run([], cap_mb, command=[sys.executable, "-c", _READ, path])


def run_memory_bench(
    input: str | None,
    *,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    cap_mb: int,
    workdir: str | None = None,
    say: Callable[[str], None] = print,
    commands: tuple[str, ...] | None = None,
) -> dict:
    """The rows of the memory table (see the module's docstring); ``commands``: only
    these names of :data:`COMMANDS`."""
    import dlowrank

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if input is None:
            input = os.path.join(tmp, "a.zarr")
            say(f"generating {shape[0]} x {shape[1]} float64 in {input}")
            dlowrank.generate(input, shape, 20, chunks=chunks, noise=0.01, seed=0)
        x = dlowrank.open_matrix(input)
        positive = None
        rows = []
        if commands is None:  # the floor: warm uncapped (as the free runs read), cold capped
            say("bare read pass: free (warm: read twice), capped (cold)")
            _read_pass(input, None)
            read = {"command": "bare read pass (floor)", "free": _read_pass(input, None)}
            if can_cap():
                read["capped"] = _read_pass(input, cap_mb)
                read["time_ratio"] = read["capped"]["seconds"] / read["free"]["seconds"]
            rows.append(read)
        for name, args in COMMANDS:
            if commands is not None and name not in commands:
                continue
            source = input
            if args[0] == "nmf":
                if positive is None:
                    import dask.array as da

                    positive = os.path.join(tmp, "abs.zarr")
                    abs(da.from_zarr(input)).to_zarr(positive)
                source = positive
            row = {"command": name}
            for label, cap in (("free", None), ("capped", cap_mb if can_cap() else None)):
                if label == "capped" and cap is None:
                    continue
                say(f"{name}: {label}")
                out = os.path.join(tmp, f"{uuid.uuid4().hex[:8]}.zarr")
                row[label] = _run([args[0], source, "--out", out, *args[1:]], cap)
            free, capped = row.get("free", {}), row.get("capped", {})
            if "rel_error" in free and "rel_error" in capped:
                row["error_diff"] = abs(free["rel_error"] - capped["rel_error"])
                row["time_ratio"] = capped["seconds"] / free["seconds"]
            rows.append(row)
    return {
        "shape": list(x.shape),
        "chunks": [c[0] for c in x.chunks],
        "matrix_mb": x.nbytes / 2**20,
        "cap_mb": cap_mb if can_cap() else None,
        "rows": rows,
    }


def format_memory(result: dict) -> str:
    cap = result["cap_mb"]
    lines = [
        f"matrix {result['shape'][0]} x {result['shape'][1]}, chunks "
        f"{result['chunks'][0]} x {result['chunks'][1]}, {result['matrix_mb']:.0f} MiB; "
        + (f"cap {cap} MiB on the whole process tree" if cap else "no cgroup v1: uncapped only"),
        f"{'command':28} {'free s':>7} {'free MB':>8} {'capped':>8} {'cap s':>7} "
        f"{'tree MB':>8} {'cg MB':>7} {'ooms':>5} {'x time':>7} {'d error':>8}",
    ]
    for r in result["rows"]:
        f, c = r.get("free", {}), r.get("capped", {})
        status = "-" if not c else ("done" if c.get("rc") == 0 else f"rc {c.get('rc')}")
        lines.append(
            f"{r['command']:28} {f.get('seconds', float('nan')):7.1f} "
            f"{f.get('peak_memory_mb', float('nan')):8.0f} {status:>8} "
            f"{c.get('seconds', float('nan')):7.1f} {c.get('peak_memory_mb', float('nan')):8.0f} "
            f"{c.get('cgroup_peak_mb', float('nan')):7.0f} {str(c.get('oom_kills', '-')):>5} "
            f"{r.get('time_ratio', float('nan')):7.2f} {r.get('error_diff', float('nan')):8.1e}"
        )
    return "\n".join(lines)
