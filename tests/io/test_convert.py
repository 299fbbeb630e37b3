"""dlowrank convert: each format to Zarr, with the data intact and bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main


@pytest.fixture
def data():
    return np.random.default_rng(0).standard_normal((230, 17))


@pytest.mark.parametrize("ext", ["npy", "csv", "tsv", "npz", "mtx"])
def test_convert_each_format(tmp_path, data, ext):
    src = tmp_path / f"m.{ext}"
    if ext == "npy":
        np.save(src, data)
    elif ext == "csv":
        np.savetxt(src, data, delimiter=",")
    elif ext == "tsv":
        np.savetxt(src, data, delimiter="\t")
    elif ext == "npz":
        np.savez(src, x=data)
    else:
        scipy.io.mmwrite(src, data)
    out = tmp_path / "m.zarr"
    res = CliRunner().invoke(
        main, ["convert", str(src), "--out", str(out), "--chunks", "50", "17", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["chunks"] == [50, 17]
    x = dlowrank.open_matrix(out)
    assert x.chunks[0] == (50, 50, 50, 50, 30)
    exact = ext in ("npy", "npz")  # text formats round-trip to %.18e, i.e. exactly too
    np.testing.assert_allclose(x.compute(), data, rtol=0 if exact else 1e-15)


def test_convert_refuses_bad_input_with_exit_2(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((3, 3), dtype=complex))
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    np.save(tmp_path / "v.npy", np.ones(5))
    for name, pattern in [
        ("c.npy", "complex"),
        ("ragged.csv", "number of columns|row 2"),
        ("v.npy", "1 dimensions"),
        ("nope.npy", "does not exist"),
        ("x.parquetx", "cannot tell the format"),
    ]:
        (tmp_path / "x.parquetx").write_text("")
        res = CliRunner().invoke(
            main, ["convert", str(tmp_path / name), "--out", str(tmp_path / f"{name}.zarr")]
        )
        assert res.exit_code == 2, (name, res.output)
        assert __import__("re").search(pattern, res.output), res.output
        assert not (tmp_path / f"{name}.zarr").exists()


def test_verify_prints_exact_and_streaming_side_by_side(tmp_path):
    path = tmp_path / "a.zarr"
    dlowrank.generate(path, (400, 60), 30, noise=1e-3, seed=0)
    res = CliRunner().invoke(main, ["verify", str(path), "--rank", "5", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(res.output)["rows"]}
    assert rows["exact_svd"]["ratio_to_optimal"] == pytest.approx(1.0, rel=1e-12)
    for q in (0, 1, 2):
        row = rows[f"randomized_svd q={q}"]
        assert row["passes"] == q + 1 and row["reported_error"] == pytest.approx(row["true_error"])
    assert rows["sketch_svd"]["passes"] == 1
