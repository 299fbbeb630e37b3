"""Every example runs at a tiny size, writes the figure it promises and prints what it claims."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, out: Path | None) -> str:
    where = ["--out", str(out)] if out is not None else []
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--tiny", *where],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLES,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def figure(out: Path, name: str) -> None:
    data = (out / name).read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 5_000


def test_image_compression_streaming_matches_the_optimum(tmp_path):
    text = run("image_compression", tmp_path)
    rows = re.findall(r"exact ([\d.]+), streaming ([\d.]+) \(2 passes\), optimum ([\d.]+)", text)
    assert len(rows) == 6
    for exact, streaming, optimum in rows:
        assert float(exact) == pytest.approx(float(optimum), abs=1e-5)
        assert float(optimum) <= float(streaming) <= 1.02 * float(optimum)
    figure(tmp_path, "image_compression.png")


def test_eigenfaces_energy_ranks_increase(tmp_path):
    text = run("eigenfaces", tmp_path)
    ranks = [int(r) for r in re.findall(r"of the variance: rank (\d+)", text)]
    assert len(ranks) == 3 and ranks == sorted(ranks)
    error, optimum = map(float, re.search(r"error ([\d.]+) vs optimum ([\d.]+)", text).groups())
    assert optimum <= error <= 1.02 * optimum
    figure(tmp_path, "eigenfaces.png")


def test_digits_parts_nmf_is_non_negative_and_svd_is_optimal(tmp_path):
    text = run("digits_parts", tmp_path)
    svd, nmf = map(
        float, re.search(r"SVD error ([\d.]+) \(optimal\), NMF error ([\d.]+)", text).groups()
    )
    assert svd <= nmf < 1.5 * svd
    assert "NMF components: 0% negative" in text
    figure(tmp_path, "digits_parts.png")


def test_recommender_explains_its_predictions(tmp_path):
    text = run("recommender", tmp_path)
    rmses = [float(x) for x in re.findall(r"held-out RMSE ([\d.]+)", text)]
    oracle, mean = map(
        float,
        re.search(
            r"oracle \(true signal\): ([\d.]+); predicting the mean: ([\d.]+)", text
        ).groups(),
    )
    assert len(rmses) == 3 and oracle < min(rmses) < mean
    assert re.search(r"good recommendation: .* carried by topic \d+: [+-]", text)
    assert re.search(r"bad recommendation: .* carried by topic \d+: [+-]", text)
    figure(tmp_path, "recommender.png")


def test_nuclear_norm_gradient_descent_reaches_the_svt(tmp_path):
    text = run("nuclear_norm", tmp_path)
    dist = float(re.search(r"\|\|X\*\|\| = ([\d.e+-]+)", text).group(1))
    assert dist <= 1e-4
    figure(tmp_path, "nuclear_norm.png")


def test_spectrum_decay_tells_fast_from_flat(tmp_path):
    text = run("spectrum_decay", tmp_path)
    assert re.search(r"fast decay 0.8\^i\s*: fast decay", text)
    assert re.search(r"noise \(flat\)\s*: flat", text)
    figure(tmp_path, "spectrum_decay.png")


def test_out_of_core_runs_on_capped_workers():
    text = run("out_of_core", None)  # prints only: it has no --out
    assert "randomized_svd    : 2 pass(es)" in text and "sketch_svd        : 1 pass(es)" in text
    assert "workers restarted: none" in text


def test_an_example_offers_out_only_when_it_writes_a_figure():
    for script in sorted(EXAMPLES.glob("*.py")):
        if script.name.startswith("_"):
            continue
        text = script.read_text()
        writes = "save_figure(" in text or "savefig" in text
        helped = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=EXAMPLES
        )
        assert helped.returncode == 0
        assert ("--out" in helped.stdout) == writes, script.name


def test_sklearn_pipeline_grid_search_picks_a_rank():
    text = run("sklearn_pipeline", None)
    scores = [float(s) for s in re.findall(r"cross-validated accuracy ([\d.]+)", text)]
    assert len(scores) == 2 and scores[1] > scores[0] > 0.5
    best = re.search(r"best n_components (\d+): test accuracy ([\d.]+)", text)
    assert best and int(best.group(1)) == 16 and float(best.group(2)) > 0.85


def test_eof_patterns_on_a_map_grid(tmp_path):
    pytest.importorskip("xarray")
    text = run("eof_patterns", tmp_path)
    shares = [float(s) for s in re.findall(r"EOF \d: ([\d.]+)% of the variance", text)]
    assert len(shares) == 3 and shares == sorted(shares, reverse=True) and sum(shares) > 90
    assert "4 passes over the field" in text
    figure(tmp_path, "eof_patterns.png")
