"""The memory budget: measured from where the run is (cgroup, RLIMIT_AS, available
memory), shared by the tasks, refused up front when one chunk cannot fit, and a matrix
three times a cgroup's cap runs under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main
from dlowrank.runtime.budget import cgroup_limit, measure


def _tree(root, files: dict) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_cgroup_limit_is_the_tightest_of_the_process_cgroups(tmp_path):
    v1 = tmp_path / "v1"
    _tree(
        v1,
        {
            "memory/memory.limit_in_bytes": str(2**63 - 4096),  # the root: no limit
            "memory/jobs/memory.limit_in_bytes": str(8 << 30),
            "memory/jobs/run7/memory.limit_in_bytes": str(600 << 20),
        },
    )
    proc = tmp_path / "cgroup"
    proc.write_text("12:pids:/jobs\n4:memory:/jobs/run7\n0::/\n")
    limit, file = cgroup_limit(str(proc), str(v1))
    assert limit == 600 << 20 and file.endswith("jobs/run7/memory.limit_in_bytes")
    # in a container the file system starts at the container's own cgroup
    proc.write_text("4:memory:/host/slice/run7\n")
    _tree(v1, {"memory/run7/memory.limit_in_bytes": str(300 << 20)})
    assert cgroup_limit(str(proc), str(v1))[0] == 300 << 20
    v2 = tmp_path / "v2"
    _tree(v2, {"memory.max": "max", "job/memory.max": str(1 << 30), "job/step/memory.max": "max"})
    proc.write_text("0::/job/step\n")
    assert cgroup_limit(str(proc), str(v2)) == (1 << 30, str(v2 / "job" / "memory.max"))
    proc.write_text("0::/\n")
    assert cgroup_limit(str(proc), str(v2)) is None


def test_measure_states_its_source():
    assert str(measure(600 << 20)) == "600.00 MiB (--memory)"
    here = measure()
    assert here.total > 0 and "minus" in here.source


def test_a_chunk_larger_than_the_budget_is_refused_before_any_pass(tmp_path):
    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (8000, 1000), 5, chunks=(4000, 1000), seed=0)  # 32 MB chunks
    out = str(tmp_path / "r.zarr")
    res = CliRunner().invoke(
        main, ["svd", path, "--out", out, "--rank", "3", "--memory", "64MB", "--workers", "0"]
    )
    assert res.exit_code == 2, res.output
    assert "cannot hold one chunk of 4000 x 1000" in res.output and "--chunks" in res.output
    assert not os.path.exists(out)
    rows = res.output.split("--chunks ")[1].split()[0]
    smaller = str(tmp_path / "small.zarr")  # the advice works as given
    done = CliRunner().invoke(main, ["convert", path, "--out", smaller, "--chunks", rows, "1000"])
    assert done.exit_code == 0, done.output
    res = CliRunner().invoke(
        main, ["svd", smaller, "--out", out, "--rank", "3", "--memory", "64MB", "--workers", "0"]
    )
    assert res.exit_code == 0, res.output


CGROUP = "/sys/fs/cgroup/memory"


@pytest.mark.skipif(
    not os.access(CGROUP, os.W_OK), reason="needs a writable cgroup v1 memory controller"
)
def test_a_matrix_three_times_a_cgroup_cap_runs_under_it(tmp_path):
    cap = 300 << 20
    path = str(tmp_path / "a.zarr")
    # chunks of 20 MB: the CLI holds about 175 MiB before its first pass where xarray is
    # installed (dask.array imports it, and pandas), which leaves 125 MiB of the cap
    dlowrank.generate(path, (112_500, 1000), 10, chunks=(2500, 1000), noise=0.01, seed=0)
    cg = os.path.join(CGROUP, f"dlowrank-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(cg)
    try:
        with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
            f.write(str(cap))
        enter = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
        for extra in ([], ["--passes", "1"]):
            out = str(tmp_path / f"r{len(extra)}.zarr")
            cmd = ["sh", "-c", enter, "sh", sys.executable, "-m", "dlowrank", "svd", path]
            cmd += ["--out", out, "--rank", "5", "--json", "-q", *extra]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["status"] == "done"
        with open(os.path.join(cg, "memory.max_usage_in_bytes")) as f:
            assert int(f.read()) <= cap
        with open(os.path.join(cg, "memory.oom_control")) as f:
            assert "oom_kill 0" in f.read()
    finally:
        os.rmdir(cg)
    free = dlowrank.randomized_svd(path, 5, seed=0)  # uncapped, in this process
    capped = dlowrank.load(tmp_path / "r0.zarr")
    np.testing.assert_allclose(capped.rel_error, free.rel_error, rtol=1e-10)
    np.testing.assert_allclose(capped.s, free.s, rtol=1e-10)


def test_a_matrix_over_three_times_an_rlimit_as_budget_runs_under_it(tmp_path):
    """Where no cgroup can be made, RLIMIT_AS caps a process. The limit is set above the
    command line's own address space after its imports (probed in a child), since that
    differs between machines. The command starts itself again with MALLOC_ARENA_MAX (no
    hint about it in the budget line), keeps room for its threads' stacks, arenas and
    BLAS buffers, runs within what is left (under 1/3 of the matrix) and returns the
    uncapped result. Without the room for threads the same run failed to allocate a
    19 MiB chunk; without MALLOC_ARENA_MAX, its threads' arenas took 506 MiB more."""
    import resource

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (100_000, 400), 10, chunks=(2500, 400), noise=0.01, seed=0)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    # what the svd command holds when it sets its budget: its imports (dlowrank imports
    # its parts on first use) and the input opened, with zarr's threads
    probe = (
        "import dlowrank.app.cli, dlowrank.streaming, dlowrank.io.matrix, psutil; "
        "from dlowrank.io.source import open_source; "
        f"open_source({path!r}).reads_in_place(); "
        "print(psutil.Process().memory_info().vms)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**env, "MALLOC_ARENA_MAX": "2"},
    )
    limit = int(done.stdout) + (280 << 20)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out = str(tmp_path / "r.zarr")
    cmd = [sys.executable, "-m", "dlowrank", "-v", "svd", path, "--out", out, "--rank", "5"]
    cmd += ["--workers", "0", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=cap, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    budget = next(ln for ln in proc.stderr.splitlines() if "memory budget" in ln)
    assert f"(RLIMIT_AS {limit / 2**20:.0f} MiB" in budget and "kept for threads" in budget
    assert "MALLOC_ARENA_MAX" not in budget, budget  # it started again with it set
    mib = float(budget.split("memory budget ")[1].split(" MiB")[0])
    assert 100_000 * 400 * 8 / 2**20 >= 3 * mib, budget
    free = dlowrank.randomized_svd(path, 5, seed=0)  # uncapped, in this process
    capped = dlowrank.load(out)
    np.testing.assert_allclose(capped.s, free.s, rtol=1e-10)
    np.testing.assert_allclose(capped.rel_error, free.rel_error, rtol=1e-10)


def test_threads_keep_less_of_an_rlimit_as_with_few_malloc_arenas(monkeypatch):
    from dlowrank.runtime.budget import ARENA_BYTES, arena_max, thread_reserve

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert arena_max() == 2
    few = thread_reserve()
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert arena_max() >= 8
    assert thread_reserve() - few >= 3 * ARENA_BYTES  # one arena a thread, at least 4 threads


def test_peak_memory_counts_the_whole_process_tree():
    from dlowrank.runtime.budget import PeakMemory

    child = "import numpy as np, time; a = np.ones(25_000_000); time.sleep(2)"  # 200 MB
    with PeakMemory(interval=0.05) as tree:
        own = tree.peak
        subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    assert tree.peak >= own + 180e6
