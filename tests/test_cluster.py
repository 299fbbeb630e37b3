"""Real `dask scheduler` / `dask worker` processes on 127.0.0.1 (cluster/local scripts),
a worker killed mid-pass, a TLS-only scheduler, no workers at all, and the recipes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml
from distributed import Client

import dlowrank

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask-local")
    subprocess.run(
        ["bash", str(CLUSTER / "local" / "start.sh"), "2", "1GB", str(folder)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    try:
        with Client(scheduler_file=str(folder / "scheduler.json"), timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield folder / "scheduler.json"
    finally:
        subprocess.run(["bash", str(CLUSTER / "local" / "stop.sh"), str(folder)], timeout=60)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("m") / "a.zarr")
    dlowrank.generate(path, (20_000, 400), 60, noise=1e-3, chunks=(1_000, 400), seed=3)
    return path


def _same(a, b):
    np.testing.assert_allclose(b.to_dense(), a.to_dense(), atol=1e-10 * np.abs(a.to_dense()).max())


def test_scheduler_and_worker_processes_give_the_local_results(local_cluster, matrix):
    local = [
        dlowrank.randomized_svd(matrix, 6, seed=1),
        dlowrank.sketch_svd(matrix, 6, seed=1),
        dlowrank.factorize(matrix, 4, weight_decay=0.1, max_iter=5, seed=1),
    ]
    with Client(scheduler_file=str(local_cluster)) as client:
        remote = [
            dlowrank.randomized_svd(matrix, 6, seed=1, client=client),
            dlowrank.sketch_svd(matrix, 6, seed=1, client=client),
            dlowrank.factorize(matrix, 4, weight_decay=0.1, max_iter=5, seed=1, client=client),
        ]
    for a, b in zip(local, remote, strict=True):
        _same(a, b)


def test_a_worker_killed_mid_pass_changes_nothing(local_cluster, matrix):
    reference = dlowrank.randomized_svd(matrix, 6, n_power_iter=6, seed=2)
    with Client(scheduler_file=str(local_cluster)) as client:
        victim = next(iter(client.run(os.getpid).values()))
        killed = []

        def kill_at_pass_3(event):  # the moment pass 3's tasks are submitted
            if event.stage == "start" and event.index == 3 and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        r = dlowrank.randomized_svd(
            matrix, 6, n_power_iter=6, seed=2, client=client, progress=kill_at_pass_3
        )
        client.wait_for_workers(2, timeout=60)  # the nanny restarts it
        assert killed and victim not in client.run(os.getpid).values()
    assert r.passes == 7
    _same(reference, r)


def test_tls_only_scheduler_refuses_a_client_without_certificates(matrix):
    from distributed import LocalCluster, Security

    reference = dlowrank.randomized_svd(matrix, 4, seed=0)
    security = Security.temporary()  # a CA and certificates made for this test
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        host="127.0.0.1",
        protocol="tls://",
        security=security,
        dashboard_address=None,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        # a failed Client leaves dask's scheduler setting behind; config.set restores it
        with (
            dask.config.set(scheduler="threads"),
            pytest.raises((OSError, TimeoutError, TypeError, ValueError)),
        ):
            Client(cluster.scheduler_address, timeout=3)
        with Client(cluster, security=security) as client:
            r = dlowrank.randomized_svd(matrix, 4, seed=0, client=client)
    _same(reference, r)


def test_a_job_without_workers_fails_within_its_timeout_with_exit_4(matrix, tmp_path):
    file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "2s"}
    scheduler = subprocess.Popen(
        [
            "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.05)
        start = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dlowrank",
                "svd",
                matrix,
                "--out",
                str(tmp_path / "r.zarr"),
                "--rank",
                "3",
                "--scheduler-file",
                str(file),
                "--timeout",
                "20",
                "--no-workers-timeout",
                "5",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 4, proc.stderr
        assert time.time() - start < 30
        assert proc.stderr.startswith("error: storage or cluster failure")
        assert "no workers joined the scheduler at tcp://127.0.0.1:" in proc.stderr
        assert "within 5 s" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "r.zarr").exists()
    finally:
        scheduler.kill()
        scheduler.wait()


def test_recipes_parse_and_name_only_existing_dask_options():
    for path in CLUSTER.rglob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path
    helps = {
        cmd: subprocess.run(
            ["dask", cmd, "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        for cmd in ("scheduler", "worker")
    }
    import re

    for path in [
        *CLUSTER.rglob("*.sh"),
        *CLUSTER.rglob("*.sbatch"),
        *CLUSTER.rglob("*.yaml"),
        CLUSTER / "tls" / "README.md",
    ]:
        text = path.read_text()
        for cmd, args in re.findall(
            r"dask\"?,?\s*\"?(scheduler|worker)\b([^\n]*(?:\\\n[^\n]*)*)", text
        ):
            for flag in re.findall(r"--[a-z][a-z-]+", args):
                if flag in ("--name",) and cmd == "worker":
                    continue
                assert flag in helps[cmd], f"{path.name}: dask {cmd} has no {flag}"


def test_the_growing_matrix_recipes_run_one_valid_job_nightly_and_weekly():
    """cluster/growing: the job file is a valid update job, and every scheduler entry runs
    it with flags the run command has (the weekly one with --recompute)."""
    import re
    import shlex

    import click

    from dlowrank.app.cli import main
    from dlowrank.app.jobs import load_job_file

    folder = CLUSTER / "growing"
    job = load_job_file(str(folder / "job.yaml"))
    assert job.command == "svd" and job.options["update"] is True
    assert load_job_file(str(folder / "job.yaml"), overrides={"recompute": True}).options[
        "recompute"
    ]
    flags = {o for p in main.commands["run"].params if isinstance(p, click.Option) for o in p.opts}
    lines = []
    for name in ("crontab", "dlowrank-update.service", "dlowrank-recompute.service"):
        lines += re.findall(r"dlowrank run (\S+)([^\n]*)", (folder / name).read_text())
    for doc in yaml.safe_load_all((folder / "cronjob.yaml").read_text()):
        args = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        lines.append((args[2], " ".join(args[3:])))
    assert len(lines) == 6
    for path, rest in lines:
        assert path.endswith("job.yaml")
        given = [w for w in shlex.split(rest) if w.startswith("--")]
        assert set(given) <= flags, given
    assert sum("--recompute" in rest for _, rest in lines) == 3  # the weekly ones


def test_dashboard_is_served_on_loopback_and_its_link_said(tmp_path):
    pytest.importorskip("bokeh")
    import urllib.request

    from dlowrank.app.jobs import JobConfig, run_job

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (2000, 50), 5, chunks=(500, 50), seed=0)
    said, pages = [], []

    def check(event):  # while the job's cluster runs: its dashboard answers
        links = [s.split(": ", 1)[1] for s in said if s.startswith("dashboard: ")]
        if event.stage == "start" and links and not pages:
            with urllib.request.urlopen(links[0], timeout=30) as resp:
                pages.append(resp.status)

    job = {"command": "svd", "input": path, "out": str(tmp_path / "r.zarr"), "rank": 3}
    job.update(workers=1, memory_limit="500MB", dashboard=True)
    run_job(JobConfig.from_dict(job), progress=check, say=said.append)
    (link,) = [s for s in said if s.startswith("dashboard: ")]
    assert link.startswith("dashboard: http://127.0.0.1:") and pages == [200]
