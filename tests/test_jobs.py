"""Batch jobs through the real entry point: job files, exit codes, publish, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main
from dlowrank.app.jobs import COMMANDS, JobConfig, load_job_file
from tests.conftest import paused_cli


def cli(*args, env=None, timeout=300):
    """Run ``python -m dlowrank`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dlowrank", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("jobs") / "a.zarr")
    dlowrank.generate(path, (6000, 300), 60, noise=1e-3, chunks=(500, 300), seed=1)
    return path


def test_svd_command_writes_a_result_and_prints_json(matrix, tmp_path):
    out = tmp_path / "r.zarr"
    proc = cli("svd", matrix, "--out", out, "--rank", 8, "--workers", 0, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["passes"] == 2 and summary["rank"] == 8
    assert summary["peak_memory_mb"] > 0 and summary["output"] == str(out)
    r = dlowrank.load(out)
    expected = dlowrank.randomized_svd(matrix, 8, seed=0)
    np.testing.assert_allclose(r.s, expected.s, rtol=1e-12)
    assert r.params["job"]["rank"] == 8 and len(r.input["fingerprint"]) == 32
    assert not Path(f"{out}.checkpoint").exists()  # removed once the result is published


def test_rerun_is_a_no_op_and_overwrite_replaces(matrix, tmp_path):
    out = tmp_path / "r.zarr"
    args = ("svd", matrix, "--out", out, "--rank", 4, "--passes", 1, "--workers", 0)
    assert CliRunner().invoke(main, list(map(str, args))).exit_code == 0
    stamp = dlowrank.load(out).created
    again = CliRunner().invoke(main, list(map(str, args)))
    assert again.exit_code == 0 and "already done" in again.output
    assert dlowrank.load(out).created == stamp
    other = CliRunner().invoke(main, list(map(str, args[:5])) + ["5", "--workers", "0"])
    assert other.exit_code == 2 and "pass --overwrite" in other.output
    replaced = CliRunner().invoke(
        main, list(map(str, args[:5])) + ["5", "--workers", "0", "--overwrite"]
    )
    assert replaced.exit_code == 0 and dlowrank.load(out).rank == 5


def test_killed_job_resumes_from_its_last_pass_and_matches(matrix, tmp_path):
    reference = dlowrank.randomized_svd(matrix, 6, n_power_iter=4, seed=0)
    out = tmp_path / "r.zarr"
    ckpt = Path(f"{out}.checkpoint")
    args = [
        "svd",
        matrix,
        "--out",
        str(out),
        "--rank",
        "6",
        "--n-power-iter",
        "4",
        "--workers",
        "0",
    ]
    # a pause after each pass (on its PassEvent) gives a window to kill the job between passes
    proc = subprocess.Popen(
        paused_cli(30, *args, "-q"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while len(list(ckpt.glob("pass-*.npz"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the job never reached pass 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing published by the killed job
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "pass 1: restored from the checkpoint (resumed)" in resumed.stderr
    assert "pass 2: restored from the checkpoint (resumed)" in resumed.stderr
    assert "pass 3 done" in resumed.stderr
    r = dlowrank.load(out)
    assert r.passes == 5 and r.restored_passes == 2
    np.testing.assert_allclose(r.s, reference.s, rtol=1e-12)
    np.testing.assert_allclose(r.to_dense(), reference.to_dense(), atol=1e-12 * reference.s[0])


def test_a_checkpoint_of_other_parameters_is_refused(matrix, tmp_path):
    from dlowrank.app.jobs import preflight
    from dlowrank.io.checkpoint import Checkpoint

    ckpt = tmp_path / "ck"
    job3 = JobConfig.from_dict(
        {"command": "svd", "input": matrix, "out": str(tmp_path / "r.zarr"), "rank": 3}
    )
    plan = preflight(job3)  # the checkpoint a rank-3 job would keep, with one pass saved
    Checkpoint(ckpt, plan.checkpoint_meta).open()
    dlowrank.randomized_svd(matrix, 3, seed=0, checkpoint=Checkpoint(ckpt, plan.checkpoint_meta))
    res = CliRunner().invoke(
        main,
        [
            "svd",
            matrix,
            "--out",
            str(tmp_path / "r.zarr"),
            "--rank",
            "4",
            "--workers",
            "0",
            "--checkpoint",
            str(ckpt),
        ],
    )
    assert res.exit_code == 2
    assert "job.rank: checkpoint 3, now 4" in res.output and "--restart" in res.output
    res = CliRunner().invoke(
        main,
        [
            "svd",
            matrix,
            "--out",
            str(tmp_path / "r.zarr"),
            "--rank",
            "4",
            "--workers",
            "0",
            "--checkpoint",
            str(ckpt),
            "--restart",
        ],
    )
    assert res.exit_code == 0, res.output


def _bad_stores(tmp_path):
    nan = str(tmp_path / "nan.zarr")
    arr = zarr.create_array(nan, shape=(40, 30), chunks=(10, 30), dtype="f8")
    data = np.ones((40, 30))
    data[23, 4] = np.nan
    arr[...] = data
    obj = tmp_path / "obj.zarr"
    obj.mkdir()
    (obj / ".zarray").write_text(
        json.dumps(
            {
                "zarr_format": 2,
                "shape": [2, 2],
                "chunks": [2, 2],
                "dtype": "|O",
                "fill_value": None,
                "order": "C",
                "filters": [{"id": "pickle"}],
                "compressor": None,
            }
        )
    )
    return nan, str(obj)


def test_bad_input_exits_2_with_one_line(matrix, tmp_path):
    nan, obj = _bad_stores(tmp_path)
    out = str(tmp_path / "r.zarr")
    cases = [
        (["svd", nan, "--out", out, "--rank", "2"], r"chunk \(2, 0\)"),
        (["svd", obj, "--out", out, "--rank", "2"], "pickle"),
        (["svd", str(tmp_path / "missing.zarr"), "--out", out, "--rank", "2"], "does not exist"),
        (["svd", matrix, "--out", out, "--rank", "0"], r"`rank` must be an integer in \[1, "),
        (["svd", matrix, "--out", out, "--rank", "301"], r"= \[1, 300\]; got 301"),
        (["svd", matrix, "--out", out], r"give exactly one of `rank` .*and `max_error`"),
    ]
    for args, pattern in cases:
        res = CliRunner().invoke(main, args + ["--workers", "0", "-q"])
        assert res.exit_code == 2, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
        assert __import__("re").search(pattern, lines[0]), lines[0]
    assert not Path(out).exists()


def test_job_files_unknown_key_and_malformed_yaml_exit_2(matrix, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"command: svd\ninput: {matrix}\nout: {tmp_path / 'r.zarr'}\nrnak: 5\n")
    res = cli("run", job)
    assert (
        res.returncode == 2
        and "unknown key `rnak` for command svd; did you mean `rank`?" in res.stderr
    )
    job.write_text("command: svd\ninput: [unclosed\n")
    res = cli("run", job)
    assert res.returncode == 2 and "not valid YAML" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_yaml_and_toml_job_files_run_and_dry_run(matrix, tmp_path):
    out = tmp_path / "r.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "command": "svd",
                "input": matrix,
                "out": str(out),
                "rank": 5,
                "n_power_iter": 1,
                "workers": 0,
            }
        )
    )
    dry = CliRunner().invoke(main, ["run", str(job), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("valid: svd") and not out.exists()
    done = CliRunner().invoke(main, ["run", str(job), "--json", "-q"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["passes"] == 2
    toml = tmp_path / "job.toml"
    toml.write_text(
        f'command = "svd"\ninput = "{matrix}"\nout = "{tmp_path / "t.zarr"}"\n'
        "rank = 5\nn_power_iter = 1\nworkers = 0\n"
    )
    assert CliRunner().invoke(main, ["run", str(toml), "-q"]).exit_code == 0
    np.testing.assert_allclose(dlowrank.load(tmp_path / "t.zarr").s, dlowrank.load(out).s)


def test_every_cli_option_is_a_job_key_and_round_trips(tmp_path):
    for name, options in COMMANDS.items():
        command = main.commands[name]
        flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
        for o in options:
            assert o.flag in flags, (name, o.flag)
        data = {"command": name, "input": "/data/a.zarr", "out": "/data/r.zarr"}
        data.update({o.name: o.default for o in options})
        cfg = JobConfig.from_dict(data)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict()))
        assert load_job_file(path) == cfg


def test_tolerance_not_met_exits_3(matrix, tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "svd",
            matrix,
            "--out",
            str(tmp_path / "r.zarr"),
            "--max-error",
            "1e-6",
            "--max-rank",
            "5",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert res.exit_code == 3 and "not reached within `max_rank` = 5" in res.output


def test_unreachable_scheduler_exits_4(matrix, tmp_path):
    res = cli(
        "svd",
        matrix,
        "--out",
        tmp_path / "r.zarr",
        "--rank",
        2,
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--connect-timeout",
        2,
    )
    assert res.returncode == 4, res.stderr
    assert res.stderr.startswith("error: storage or cluster failure")
    assert "within 2 s" in res.stderr


def test_spectrum_prints_the_decay_and_draws_the_plot(matrix, tmp_path):
    png = tmp_path / "spectrum.png"
    res = CliRunner().invoke(
        main,
        ["spectrum", matrix, "--rank", "30", "--plot", str(png), "--workers", "0", "--json", "-q"],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["verdict"] in ("fast decay", "slow decay", "gap") and summary["passes"] == 2
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_default_local_cluster_runs_the_job(matrix, tmp_path):
    out = tmp_path / "r.zarr"
    proc = cli(
        "svd",
        matrix,
        "--out",
        out,
        "--rank",
        4,
        "--workers",
        2,
        "--memory-limit",
        "1GB",
        "--json",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(
        dlowrank.load(out).s, dlowrank.randomized_svd(matrix, 4, seed=0).s, rtol=1e-10
    )


def test_overwrite_keeps_the_old_result_readable_until_the_new_one_is_complete(matrix, tmp_path):
    out = tmp_path / "r.zarr"
    dlowrank.randomized_svd(matrix, 3, seed=0).save(out)
    args = ["svd", matrix, "--out", str(out), "--rank", "5", "--n-power-iter", "1"]
    proc = subprocess.Popen(
        paused_cli(1, *args, "--workers", "0", "--overwrite", "-q"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = set()
    while proc.poll() is None:
        seen.add(dlowrank.load(out).rank)  # never fails: always a complete result
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert seen <= {3, 5} and 3 in seen
    assert dlowrank.load(out).rank == 5


def test_factorize_and_nmf_commands(matrix, tmp_path):
    out = tmp_path / "f.zarr"
    res = CliRunner().invoke(
        main,
        [
            "factorize",
            matrix,
            "--out",
            str(out),
            "--rank",
            "6",
            "--weight-decay",
            "0.1",
            "--workers",
            "0",
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    r = dlowrank.load(out)
    assert isinstance(r, dlowrank.FactorizationResult) and r.u.shape == (6000, 6)
    assert summary["passes"] == r.passes and summary["converged"] is True
    neg = tmp_path / "neg.npy"
    data = np.abs(np.random.default_rng(0).standard_normal((300, 40)))
    data[17, 5] = -1.0
    np.save(neg, data)
    assert (
        CliRunner()
        .invoke(main, ["convert", str(neg), "--out", str(tmp_path / "neg.zarr")])
        .exit_code
        == 0
    )
    bad = CliRunner().invoke(
        main,
        [
            "nmf",
            str(tmp_path / "neg.zarr"),
            "--out",
            str(tmp_path / "n.zarr"),
            "--rank",
            "3",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert bad.exit_code == 2
    assert bad.output.strip() == (
        "error: `a` must be non-negative for nmf; a[17, 5] = -1 (shift or "
        "clip the data, or use factorize)"
    )
    assert not (tmp_path / "n.zarr").exists()


def test_dry_run_catches_every_invalid_option(matrix, tmp_path):
    out = str(tmp_path / "r.zarr")
    cases = [
        (["factorize", "--rank", "3", "--solver", "sgd"], "`solver` must be one of als, gd"),
        (["factorize", "--rank", "3", "--method", "gd", "--solver", "x"], "not both"),
        (["factorize", "--rank", "3", "--weight-decay", "-1"], "`weight_decay` must be"),
        (["factorize", "--rank", "3", "--missing", "zero"], "`missing` must be one of"),
        (["nmf", "--rank", "3", "--solver", "x"], "`solver` must be one of hals, mu"),
        (["nmf", "--rank", "3", "--max-iter", "0"], "`max_iter` must be an integer in [1, 100000]"),
        (["svd", "--rank", "3", "--n-oversamples", "-2"], "`n_oversamples` must be"),
    ]
    for args, pattern in cases:
        res = CliRunner().invoke(main, [args[0], matrix, "--out", out, *args[1:], "--dry-run"])
        assert res.exit_code == 2 and pattern in res.output, (args, res.output)


def test_yaml_float_without_a_dot_is_a_float(matrix, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        f"command: factorize\ninput: {matrix}\nout: {tmp_path / 'f.zarr'}\nrank: 3\ntol: 1e-10\n"
    )
    assert load_job_file(job).options["tol"] == 1e-10


def test_convert_refuses_complex_even_with_a_dtype(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((3, 3), dtype=complex))
    res = CliRunner().invoke(
        main,
        [
            "convert",
            str(tmp_path / "c.npy"),
            "--out",
            str(tmp_path / "c.zarr"),
            "--dtype",
            "float64",
        ],
    )
    assert res.exit_code == 2 and "complex" in res.output
