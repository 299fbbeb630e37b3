"""The command line: help, version, generate, info, demo, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_the_commands():
    out = run("--help")
    assert out.exit_code == 0
    for command in ("generate", "info", "demo"):
        assert command in out.output


def test_python_dash_m_prints_the_version():
    proc = subprocess.run(
        [sys.executable, "-m", "dlowrank", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == f"dlowrank, version {dlowrank.__version__}"


def test_generate_then_info(tmp_path):
    out = tmp_path / "a.zarr"
    res = run(
        "generate",
        out,
        "--shape",
        120,
        60,
        "--rank",
        5,
        "--chunks",
        25,
        60,
        "--seed",
        9,
        "--dtype",
        "float32",
        "--json",
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["shape"] == [120, 60] and summary["chunks"] == [25, 60]
    x = dlowrank.open_matrix(out)
    assert x.dtype == np.float32
    expected = dlowrank.make_matrix((120, 60), 5, seed=9, dtype="float32").array.compute()
    np.testing.assert_array_equal(x.compute(), expected)
    info = json.loads(run("info", out, "--json").output)
    assert info["type"] == "array" and info["shape"] == [120, 60]
    assert info["dlowrank"]["seed"] == 9 and len(info["dlowrank"]["singular_values"]) == 5
    assert info["spectrum"]["verdict"] == "fast decay"
    text = run("info", out).output
    assert "shape: [120, 60]" in text and "verdict: fast decay" in text


def test_info_on_a_saved_result_shows_provenance(tmp_path):
    r = dlowrank.exact_svd(np.random.default_rng(0).standard_normal((20, 10)), 3)
    r.save(tmp_path / "r.zarr")
    info = json.loads(run("info", tmp_path / "r.zarr", "--json").output)
    assert info["type"] == "result"
    assert info["dlowrank"]["algorithm"] == "exact_svd" and info["dlowrank"]["rank"] == 3
    assert info["arrays"]["u"]["shape"] == [20, 3]


def test_user_errors_exit_2_with_one_line():
    res = CliRunner().invoke(main, ["info", "/nonexistent/x.zarr"])
    assert res.exit_code == 2
    assert res.output.strip() == "error: input /nonexistent/x.zarr does not exist"
    res = CliRunner().invoke(
        main, ["generate", "/tmp/never.zarr", "--shape", "5", "5", "--rank", "9"]
    )
    assert (
        res.exit_code == 2
        and "`rank` must be an integer in [1, min(a.shape)] = [1, 5]" in res.output
    )


def test_demo_prints_a_verified_result():
    res = run("demo", "--shape", 3000, 200, "--rank", 10, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["verified"] is True
    assert summary["algorithm"] == "randomized_svd" and summary["passes"] == 2
    assert abs(summary["rel_error"] - summary["optimal_rel_error"]) < 1e-5
    text = run("demo", "--shape", 2000, 100, "--rank", 5).output
    assert text.strip().endswith("verified")


def test_passes_conflicts_are_refused_before_any_pass(tmp_path):
    path = tmp_path / "a.zarr"
    dlowrank.generate(path, (400, 60), 10, chunks=(100, 60), seed=0)
    out = tmp_path / "r.zarr"
    for extra, message in (
        (["--passes", "1", "--n-power-iter", "2"], "`n_power_iter` needs the multi-pass"),
        (["--passes", "1", "--max-error", "0.5"], "`max_error` needs the multi-pass"),
        (["--passes", "3", "--n-power-iter", "1"], "`passes` = 3 and `n_power_iter` = 1"),
    ):
        res = run("svd", path, "--out", out, "--rank", 3, "--workers", 0, *extra)
        assert res.exit_code == 2 and message in res.output, res.output
        assert not out.exists()
    res = run("svd", path, "--out", out, "--rank", 3, "--workers", 0, "--passes", 4, "--json")
    line = [ln for ln in res.output.splitlines() if ln.startswith("{")][-1]
    assert res.exit_code == 0 and json.loads(line)["passes"] == 4, res.output


def test_log_json_writes_one_json_event_per_line(tmp_path):
    """--log-json: stderr is all JSON events (passes, pieces, the result, or the error)."""
    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (2000, 100), 10, chunks=(500, 100), seed=0)
    cli = [sys.executable, "-m", "dlowrank", "--log-json"]
    out = ["--out", str(tmp_path / "r.zarr"), "--workers", "0", "--layout", "block"]
    run = [*cli, "svd", path, "--rank", "4", *out]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    passes = [e for e in events if e["event"] == "pass"]
    first = [e for e in passes if e["index"] == 1]
    total = first[0]["total"]
    assert [e["stage"] for e in first] == ["start"] + ["piece"] * total + ["done"]
    result = events[-1]  # block layout: 2 passes per power iteration, 4 in all
    assert result["event"] == "result" and result["passes"] == 4 and result["rank"] == 4
    assert max(e["index"] for e in passes) == 4
    bad = subprocess.run([*cli, "svd", path, "--rank", "0", "--out", str(tmp_path / "x.zarr")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    (error,) = [json.loads(line) for line in bad.stderr.splitlines()]
    assert error["event"] == "error" and error["exit_code"] == 2 and "`rank`" in error["message"]
