"""Sparse ratings: converted from CSV, read by row panels, same results as dense with NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main
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


@pytest.mark.parametrize("solver", ["als", "gd"])
def test_sparse_and_dense_with_nan_give_the_same_result(tmp_path, triplets, solver):
    rows, cols, vals = triplets
    path = tmp_path / "r.zarr"
    write_ratings(path, rows, cols, vals, shape=(1500, 300))
    dense = np.full((1500, 300), np.nan)
    dense[rows, cols] = vals
    kw = {"weight_decay": 1.0, "seed": 0, "solver": solver, "max_iter": 25}
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
    rows, cols, vals = triplets
    write_ratings(tmp_path / "r.zarr", rows, cols, np.abs(vals), shape=(1500, 300))
    with pytest.raises(InputError, match="nmf needs every entry"):
        dlowrank.nmf(str(tmp_path / "r.zarr"), 3)


# --- one opener: a ratings group works in every streaming function, or is refused ------------


@pytest.fixture(scope="module")
def ratings_store(tmp_path_factory, triplets):
    rows, cols, vals = triplets
    path = tmp_path_factory.mktemp("ratings") / "r.zarr"
    write_ratings(path, rows, cols, vals, shape=(1500, 300))
    dense = np.zeros((1500, 300))
    dense[rows, cols] = vals
    return str(path), dense


def test_streaming_svds_read_ratings_sparse_with_zeros(ratings_store):
    path, dense = ratings_store
    for fn, kw in ((dlowrank.randomized_svd, {"n_power_iter": 2}), (dlowrank.sketch_svd, {})):
        sparse = fn(path, 4, seed=3, **kw)
        full = fn(dense, 4, seed=3, **kw)
        assert sparse.passes == full.passes and sparse.input["source"] == path
        np.testing.assert_allclose(sparse.s, full.s, rtol=1e-10)
        np.testing.assert_allclose(sparse.to_dense(), full.to_dense(), atol=1e-9 * full.s[0])
        np.testing.assert_allclose(sparse.rel_error, full.rel_error, rtol=1e-8)


def test_nystrom_reads_a_symmetric_ratings_group(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    a = x @ x.T
    a[np.abs(a) < 2.0] = 0.0  # sparse, symmetric ...
    a += np.eye(200) * (np.abs(np.linalg.eigvalsh(a)).max() + 1)  # ... and PSD
    rows, cols = np.nonzero(a)
    path = tmp_path / "k.zarr"
    write_ratings(path, rows, cols, a[rows, cols], shape=a.shape)
    sparse = dlowrank.nystrom(str(path), 5, seed=0)
    full = dlowrank.nystrom(a, 5, seed=0)
    np.testing.assert_allclose(sparse.w, full.w, rtol=1e-10)


def test_spectrum_command_on_ratings(ratings_store):
    path, dense = ratings_store
    res = CliRunner().invoke(
        main, ["spectrum", path, "--rank", "5", "--workers", "0", "--json", "-q"]
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    s = np.linalg.svd(dense, compute_uv=False)
    assert got["passes"] == 2 and got["n_values"] == 5
    np.testing.assert_allclose(got["total_energy"], np.sum(dense**2), rtol=1e-8)
    optimal = np.sqrt(np.sum(s[5:] ** 2) / np.sum(s**2))
    assert optimal <= got["rel_error"] <= 1.01 * optimal


def test_functions_that_need_dense_input_refuse_ratings_by_name(ratings_store):
    path, _ = ratings_store
    for call in (
        lambda: dlowrank.exact_svd(path, 3),
        lambda: dlowrank.svt(path, 1.0),
        lambda: dlowrank.exact_eigh(path, 3),
    ):
        with pytest.raises(InputError, match="needs a dense matrix, and `a` is a ratings group"):
            call()
    with pytest.raises(InputError, match="nmf needs every entry.*ratings group.*factorize"):
        dlowrank.nmf(path, 3)
    res = CliRunner().invoke(main, ["nmf", path, "--out", "x.zarr", "--rank", "3", "--dry-run"])
    assert res.exit_code == 2 and "use factorize for ratings" in res.output


def test_an_unrated_row_is_named_as_such(tmp_path, triplets):
    rows, cols, vals = triplets
    keep = rows != 7
    path = tmp_path / "gap.zarr"
    write_ratings(path, rows[keep], cols[keep], vals[keep], shape=(1500, 300))
    with pytest.raises(
        InputError, match="row 7 of `a` has no observed entry \\(no stored rating\\)"
    ):
        dlowrank.factorize(str(path), 3, max_iter=3)
