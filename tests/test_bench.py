"""The benchmark command runs every method at a tiny size and reports honest numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import dlowrank
from dlowrank.app.bench import optimal_error, run_bench, true_error
from dlowrank.app.cli import main


def test_true_error_is_the_residual_norm(tmp_path):
    path = str(tmp_path / "a.zarr")
    t = dlowrank.generate(path, (120, 300), 20, noise=0.01, chunks=(50, 70), seed=0)
    a = t.array.compute()
    rng = np.random.default_rng(1)
    u, s, vt = rng.standard_normal((120, 3)), rng.random(3), rng.standard_normal((3, 300))
    expected = np.linalg.norm(a - (u * s) @ vt) / np.linalg.norm(a)
    assert true_error(path, u, s, vt, None) == pytest.approx(expected, rel=1e-12)


def test_optimal_error_from_the_stored_spectrum_is_exact_without_noise():
    s = 0.9 ** np.arange(30)
    attrs = {"singular_values": s.tolist(), "noise": 0.0}
    assert optimal_error(attrs, (100, 50), 5) == pytest.approx(
        dlowrank.optimal_error(s, 5).rel_frobenius, rel=1e-14
    )
    assert optimal_error({}, (100, 50), 5) is None


def test_bench_rows_on_threads():
    rows = run_bench(
        shape=(4000, 400), chunks=(1000, 400), rank=20, schedulers=("threads",), sklearn=True
    )
    by = {" ".join(r.method.split(" ")[:3]): r for r in rows}
    assert [r.scheduler for r in rows] == ["threads"] * 6
    assert by["dask svd_compressed q=2"].passes == 6
    assert by["dlowrank randomized_svd q=2"].passes == 3
    assert by["dlowrank randomized_svd (default,"].passes == 2
    assert by["dlowrank sketch_svd (1"].passes == 1
    for key in (
        "dask svd_compressed q=2",
        "scikit-learn randomized_svd q=2",
        "dlowrank randomized_svd q=2",
        "dlowrank randomized_svd (default,",
    ):
        assert 1.0 <= by[key].ratio_to_optimal <= 1.01  # near optimal (measured ~1.001)
    # two wide passes are as accurate as dask's three-read q = 2, to 0.1 %
    wide, dask_q2 = by["dlowrank randomized_svd (default,"], by["dask svd_compressed q=2"]
    assert wide.ratio_to_optimal <= dask_q2.ratio_to_optimal * 1.001
    assert 1.0 <= by["dlowrank sketch_svd (1"].ratio_to_optimal <= 1.05
    assert all(r.seconds > 0 and r.peak_mb > 0 for r in rows)
    assert by["dask svd_compressed q=2"].speedup_vs_dask == 1.0


def test_bench_command_prints_json():
    res = CliRunner().invoke(
        main,
        [
            "bench",
            "--shape",
            "2000",
            "200",
            "--chunks",
            "500",
            "200",
            "--rank",
            "5",
            "--scheduler",
            "threads",
            "--no-sklearn",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("{")][-1]
    rows = json.loads(line)["rows"]
    methods = [r["method"].split(" ")[0] for r in rows]
    assert methods == ["read", "dask", "dlowrank", "dlowrank", "dlowrank"]


def test_passes_suite_compares_each_pass_choice():
    from dlowrank.app.bench_passes import CHOICES, format_passes, run_passes_bench

    rows = run_passes_bench(rank=5, seeds=1, scale=0.02, say=lambda line: None)
    assert len(rows) == 8 and "lfw faces" in rows[2]["matrix"]
    for row in rows:
        assert all(row[label]["ratio"] >= 1 - 1e-9 for label, _ in CHOICES)  # >= optimum
        assert row["passes=2 (default)"]["passes"] == [2]
        assert row["sketch_svd (1 pass)"]["passes"] == [1]
        # the same reads, twice the width: never worse than the narrow sketch (to rounding)
        assert row["passes=2 (default)"]["ratio"] <= row["n_power_iter=1"]["ratio"] + 1e-9
    assert "passes=3 (q=2)" in format_passes(rows)


def test_factorization_bench_at_tiny_scale():
    from dlowrank.app.bench_factor import bench_completion, bench_gd_vs_als

    rows = bench_gd_vs_als(m=400, n=200, say=lambda line: None)
    assert [r["method"] for r in rows] == [
        "als from svd factors",
        "als from random factors",
        "gd from random factors",
    ]
    assert all(r["reached"] for r in rows)  # each came within 1e-4 of the SVT optimum
    assert rows[2]["passes"] > rows[1]["passes"]  # GD needs more passes than ALS
    comp = bench_completion(weight_decays=(1.0,), scale=0.01, say=lambda line: None)
    oracle, als, biased = comp
    assert oracle["rmse"] < als["rmse"] < 1.0 and als["passes"] == 10
    assert oracle["rmse"] < biased["rmse_clipped"] <= biased["rmse"] and biased["passes"] == 8


def test_throughput_of_one_pass_on_threads_and_a_worker(tmp_path):
    from dlowrank.app.bench import bench_throughput

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (4000, 300), 20, chunks=(500, 300), seed=0)
    rows = bench_throughput(path, workers=(1,), repeat=1)
    assert [r["scheduler"] for r in rows] == ["threads", "1 worker(s)"]
    for r in rows:
        assert r["mb_per_s"] == pytest.approx(4000 * 300 * 8 / 1e6 / r["seconds"])


def test_memory_suite_runs_the_cli_free_and_capped(tmp_path):
    from dlowrank.app.bench_memory import can_cap, format_memory, run_memory_bench

    some = ("svd --workers 0", "svd (cluster)", "nmf 3 it. |A| --workers 0")  # of 8
    result = run_memory_bench(
        None,
        shape=(4000, 200),
        chunks=(1000, 200),
        cap_mb=300,
        workdir=str(tmp_path),
        say=print,
        commands=some,
    )
    assert tuple(r["command"] for r in result["rows"]) == some
    for row in result["rows"]:
        assert row["free"]["rc"] == 0 and row["free"]["peak_memory_mb"] > 0
        if can_cap():  # under the cap: done, no OOM kill, the same error
            assert row["capped"]["rc"] == 0 and row["capped"]["oom_kills"] == 0
            assert row["error_diff"] <= 1e-10 * max(row["free"]["rel_error"], 1e-300)
    table = format_memory(result)
    for row in result["rows"]:  # one line per command, with its capped status
        line = next(ln for ln in table.splitlines() if ln.startswith(row["command"]))
        assert ("done" in line) == can_cap()


def test_one_method_in_its_own_process(tmp_path):
    from dlowrank.app.bench_one import run_one

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (2000, 300), 30, noise=1e-3, chunks=(500, 300), seed=0)
    default, q2 = run_one(path, "default", 5), run_one(path, "q2_dask", 5)
    assert default["passes"] == 2 and q2["passes"] == 3
    assert default["rel_error"] <= q2["rel_error"] * 1.001 and default["tree_peak_mb"] > 0
    assert run_one(path, "read")["passes"] == 1


def test_growing_suite_times_the_update_and_warm_starts(tmp_path):
    from dlowrank.app.bench_growing import (
        WARM_CHOICES,
        format_growing,
        format_warm,
        run_growing_bench,
        run_warm_bench,
    )

    res = run_growing_bench(
        shape=(3000, 200), chunks=(500, 100), rank=5, workdir=str(tmp_path), say=lambda x: None
    )
    assert [r["fraction_read"] for r in res["rows"]] == [pytest.approx(300 / 3300), 1.0]
    assert res["rel_diff"] < 1e-10 and res["equal_after_reload"] < 1e-10
    assert "faster" in format_growing(res)
    rows = run_warm_bench(rank=5, seeds=1, scale=0.02, say=lambda x: None)
    assert len(rows) == 6
    for row in rows:
        assert all(row[label]["ratio"] >= 1 - 1e-9 for label, _ in WARM_CHOICES)
        assert row["warm, 1 pass"]["passes"] == [1] and row["warm, 2 passes"]["passes"] == [2]
    assert "warm, 1 pass" in format_warm(rows)


def test_ecosystem_suite_fits_each_truncated_svd_in_its_own_process(tmp_path):
    from dlowrank.app.bench_ecosystem import METHODS, format_ecosystem, run_ecosystem_bench

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (3000, 200), 10, decay=0.7, noise=1e-4, chunks=(500, 200), seed=0)
    res = run_ecosystem_bench(path, rank=5, say=lambda line: None, methods=METHODS[::3])
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["dlowrank", "sklearn"]  # dask-ml's: the same code, if installed
    ours, theirs = rows["dlowrank"], rows["sklearn"]
    assert ours["passes"] == 3 and ours["tree_peak_mb"] > 0  # 2 for the SVD, 1 for the variance
    assert ours["rel_error"] == pytest.approx(theirs["rel_error"], rel=1e-6)
    assert "dlowrank TruncatedSVD" in format_ecosystem(res)
