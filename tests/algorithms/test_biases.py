"""Factorization with a global mean and row and column biases (recommender baseline).

The oracle is the objective's own gradient: at the returned point every block of it
(mean, row biases, column biases, U, V) vanishes, and the reported loss is the
objective computed directly from the result.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import dlowrank
from dlowrank.errors import ParameterError

ALPHA, BETA = 0.5, 0.2


def _problem(seed: int = 0, m: int = 120, n: int = 40, k: int = 3):
    rng = np.random.default_rng(seed)
    a = (
        3.0
        + rng.normal(0, 0.3, (m, 1))
        + rng.normal(0, 0.3, (1, n))
        + 0.5 * rng.normal(size=(m, k)) @ rng.normal(size=(k, n))
        + rng.normal(0, 0.1, (m, n))
    )
    return a, rng.random((m, n)) < 0.5


def _objective_and_gradient(r, a, mask):
    res = mask * (r.to_dense() - a)
    obj = 0.5 * np.sum(res**2) + ALPHA / 2 * (np.sum(r.u**2) + np.sum(r.v**2))
    obj += BETA / 2 * (np.sum(r.row_bias**2) + np.sum(r.col_bias**2))
    grad = [
        np.array([res.sum()]),
        res.sum(axis=1) + BETA * r.row_bias,
        res.sum(axis=0) + BETA * r.col_bias,
        res @ r.v + ALPHA * r.u,
        res.T @ r.u + ALPHA * r.v,
    ]
    return obj, grad


@pytest.mark.parametrize(("missing", "wide"), [(None, False), ("nan", True)])
def test_biased_als_reaches_a_stationary_point_of_its_objective(missing, wide):
    a, mask = _problem()
    mask = mask if missing else np.ones_like(mask)
    x = np.where(mask, a, np.nan)
    if wide:
        a, mask, x = a.T.copy(), mask.T.copy(), x.T.copy()
    r = dlowrank.factorize(
        x,
        3,
        weight_decay=ALPHA,
        bias_decay=BETA,
        biases=True,
        missing=missing,
        init="random",
        max_iter=3000,
        tol=1e-15,
    )
    assert r.has_biases and r.row_bias.shape == (a.shape[0],) and r.col_bias.shape == (a.shape[1],)
    obj, grad = _objective_and_gradient(r, a, mask)
    assert r.loss[-1] == pytest.approx(obj, rel=1e-10)  # the loss is the objective, exactly
    scale = np.abs(a).max() * np.sqrt(mask.sum())
    for g in grad:  # measured: at most 2e-7 at this tolerance
        assert np.abs(g).max() <= 1e-6 * scale
    assert np.all(np.diff(r.loss[:-1]) <= 1e-9 * r.loss[0])  # block descent never goes up
    assert abs(float(np.mean(r.row_bias))) < 1e-9 and abs(float(np.mean(r.col_bias))) < 1e-9


def test_biases_beat_plain_factors_on_held_out_entries_and_survive_save(tmp_path):
    a, mask = _problem(seed=1, m=400, n=120)
    rows, cols = np.nonzero(~mask)
    kw = dict(weight_decay=1.0, missing="nan", max_iter=40, seed=0)
    x = da.from_array(np.where(mask, a, np.nan), chunks=(100, 60))
    plain = dlowrank.factorize(x, 3, **kw)
    biased = dlowrank.factorize(x, 3, biases=True, **kw)
    e_plain = dlowrank.rmse(plain, rows, cols, a[~mask])
    e_biased = dlowrank.rmse(biased, rows, cols, a[~mask])
    assert e_biased < 0.8 * e_plain, (e_biased, e_plain)  # measured 0.136 vs 0.292
    assert biased.mean == pytest.approx(float(np.mean(a[mask])), abs=0.1)
    path = tmp_path / "r.zarr"
    biased.save(path)
    back = dlowrank.load(path)
    assert back.mean == biased.mean
    np.testing.assert_array_equal(back.row_bias, biased.row_bias)
    np.testing.assert_array_equal(
        dlowrank.predict(back, rows, cols), dlowrank.predict(biased, rows, cols)
    )


def test_biases_on_a_ratings_group_match_the_nan_matrix(tmp_path):
    from dlowrank.io.ratings import write_ratings

    a, mask = _problem(seed=2, m=150, n=50)
    rows, cols = np.nonzero(mask)
    path = tmp_path / "ratings.zarr"
    write_ratings(path, rows, cols, a[mask], shape=a.shape)
    kw = dict(weight_decay=ALPHA, bias_decay=BETA, biases=True, max_iter=20, init="random")
    sparse = dlowrank.factorize(path, 3, **kw)
    dense = dlowrank.factorize(np.where(mask, a, np.nan), 3, missing="nan", **kw)
    np.testing.assert_allclose(sparse.loss, dense.loss, rtol=1e-10)
    np.testing.assert_allclose(sparse.to_dense(), dense.to_dense(), rtol=1e-8, atol=1e-8)


def test_biases_need_als():
    with pytest.raises(ParameterError, match="`biases` = True needs solver='als'"):
        dlowrank.factorize(np.ones((20, 10)), 2, biases=True, solver="gd")
    with pytest.raises(ParameterError, match="bias_decay"):
        dlowrank.factorize(np.ones((20, 10)), 2, biases=True, bias_decay=-1.0)
