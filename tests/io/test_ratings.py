"""Sparse ratings: converted from CSV, read by row panels, same results as dense with NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import dlowrank
from dlowrank.cli import main
from dlowrank.errors import InputError
from dlowrank.io.ratings import write_ratings


@pytest.fixture(scope="module")
def triplets():
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((1500, 4)), rng.standard_normal((300, 4))
    mask = rng.random((1500, 300)) < 0.15
    rows, cols = np.nonzero(mask)
    vals = np.einsum("tk,tk->t", u[rows], v[cols]) + 0.1 * rng.standard_normal(rows.size)
    return rows, cols, vals


@pytest.mark.parametrize("method", ["als", "gd"])
def test_sparse_and_dense_with_nan_give_the_same_result(tmp_path, triplets, method):
    rows, cols, vals = triplets
    path = tmp_path / "r.zarr"
    write_ratings(path, rows, cols, vals, shape=(1500, 300))
    dense = np.full((1500, 300), np.nan)
    dense[rows, cols] = vals
    kw = {"weight_decay": 1.0, "seed": 0, "method": method, "max_iter": 25}
    sparse = dlowrank.factorize(str(path), 4, **kw)
    masked = dlowrank.factorize(dense, 4, missing="nan", **kw)
    assert sparse.passes == masked.passes == 25 and sparse.params["missing"] == "sparse"
    np.testing.assert_allclose(sparse.u, masked.u, atol=1e-10)
    np.testing.assert_allclose(sparse.loss, masked.loss, rtol=1e-12)


def test_convert_ratings_csv_and_fit(tmp_path, triplets):
    rows, cols, vals = triplets
    csv = tmp_path / "ratings.csv"
    with open(csv, "w") as f:
        f.write("user,item,rating\n")
        for r, c, v in zip(rows, cols, vals, strict=True):
            f.write(f"{r},{c},{float(v)!r}\n")
    out = tmp_path / "r.zarr"
    res = CliRunner().invoke(main, ["convert", str(csv), "--out", str(out), "--ratings", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["nnz"] == rows.size
    test = np.arange(rows.size) % 10 == 0  # hold out 10 %
    train = tmp_path / "train.zarr"
    write_ratings(train, rows[~test], cols[~test], vals[~test], shape=(1500, 300))
    r = dlowrank.factorize(str(train), 4, weight_decay=2.0, seed=0, max_iter=50)
    held = dlowrank.rmse(r, rows[test], cols[test], vals[test])
    assert held < 0.15  # noise sd 0.1: near the noise level on unseen entries


def test_bad_ratings_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"entry \(row 1, column 2\) appears more than once"):
        write_ratings(tmp_path / "d.zarr", [1, 1], [2, 2], [1.0, 2.0])
    with pytest.raises(InputError, match="not finite"):
        write_ratings(tmp_path / "n.zarr", [0, 1], [0, 1], [1.0, np.nan])
    write_ratings(tmp_path / "gap.zarr", [0, 2], [0, 1], [1.0, 2.0])  # row 1 has no rating
    with pytest.raises(InputError, match="row 1 of `a` has no observed entry"):
        dlowrank.factorize(str(tmp_path / "gap.zarr"), 1, seed=0)


def test_ratings_csv_parsing_is_strict(tmp_path):
    from dlowrank.io.ratings import read_table

    nan_first = tmp_path / "nan.csv"
    nan_first.write_text("0,1,nan\n1,0,2.0\n")
    rows, cols, vals = read_table(str(nan_first))
    assert rows.size == 2  # the first line is data, not a header
    with pytest.raises(InputError, match="not finite"):
        write_ratings(tmp_path / "x.zarr", rows, cols, vals)
    with pytest.raises(InputError, match="column index 1.7 .* not a whole number"):
        write_ratings(tmp_path / "y.zarr", [0, 1], [1.7, 0], [1.0, 2.0])


def test_nmf_refuses_ratings(tmp_path, triplets):
    from dlowrank.errors import ParameterError

    rows, cols, vals = triplets
    write_ratings(tmp_path / "r.zarr", rows, cols, np.abs(vals), shape=(1500, 300))
    with pytest.raises(ParameterError, match="nmf needs every entry"):
        dlowrank.nmf(str(tmp_path / "r.zarr"), 3)
