"""Factorizations: the SVT oracle, the gauge, missing entries, NMF, explanations, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dlowrank
from dlowrank.errors import InputError, ParameterError


@pytest.fixture(scope="module")
def decaying():
    # 7 singular values above the weight decay 0.5 (s_i = 0.9^i), rank 8 >= 7
    return dlowrank.make_matrix((300, 80), 10, seed=0).array.compute()


@pytest.mark.parametrize("solver", ["als", "gd"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_decay_reaches_the_soft_thresholded_svd(decaying, solver, dtype):
    a = decaying.astype(dtype)
    oracle = dlowrank.svt(decaying, 0.5)
    x = oracle.to_dense()
    # tol 1e-10: the optimum to 1e-4 in the factors needs a tighter stop than the
    # default 1e-8 (the objective is quadratic near its minimum)
    r = dlowrank.factorize(a, 8, weight_decay=0.5, solver=solver, seed=0, tol=1e-10)
    assert r.u.dtype == r.v.dtype == dtype and r.u.shape == (300, 8) and r.v.shape == (80, 8)
    # SVD init: 2 passes, plus the explicit projection pass on this exactly low-rank A
    assert r.converged and r.passes - r.n_iter == (3 if solver == "als" else 0)
    assert np.linalg.norm(r.to_dense() - x) <= 1e-4 * np.linalg.norm(x)
    nuclear = np.linalg.svd(r.to_dense().astype(np.float64), compute_uv=False).sum()
    assert nuclear == pytest.approx(oracle.s.sum(), rel=1e-4)
    assert np.all(np.diff(r.loss) <= 1e-12 * r.loss[0])  # the objective never increases
    true = np.linalg.norm(a - r.to_dense()) / np.linalg.norm(a)
    assert r.rel_error == pytest.approx(true, rel=1e-4)


def test_wide_input_keeps_u_for_rows_and_v_for_columns(decaying):
    r = dlowrank.factorize(decaying.T, 8, weight_decay=0.5, seed=0, tol=1e-10)
    assert r.u.shape == (80, 8) and r.v.shape == (300, 8)
    x = dlowrank.svt(decaying.T, 0.5).to_dense()
    assert np.linalg.norm(r.to_dense() - x) <= 1e-4 * np.linalg.norm(x)


@given(seed=st.integers(0, 2**31), k=st.integers(1, 4))
def test_canonicalize_is_gauge_invariant(seed, k):
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((12, k)), rng.standard_normal((9, k))
    r = rng.standard_normal((k, k)) + 3 * np.eye(k)  # invertible
    cu, cv = dlowrank.canonicalize(u, v)
    gu, gv = dlowrank.canonicalize(u @ r, v @ np.linalg.inv(r).T)
    np.testing.assert_allclose(gu, cu, atol=1e-8)
    np.testing.assert_allclose(gv, cv, atol=1e-8)
    np.testing.assert_allclose(cu @ cv.T, u @ v.T, atol=1e-10)
    np.testing.assert_allclose(cu.T @ cu, cv.T @ cv, atol=1e-10)  # balanced: both S


def test_missing_entries_recover_a_low_rank_matrix_from_30_percent(tmp_path):
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((400, 5)), rng.standard_normal((200, 5))
    clean = u @ v.T
    mask = rng.random(clean.shape) < 0.3
    a = np.where(mask, clean + 0.1 * rng.standard_normal(clean.shape), np.nan)
    r = dlowrank.factorize(
        da.from_array(a, chunks=(100, 200)),
        5,
        weight_decay=1.0,
        missing="nan",
        seed=0,
        max_iter=300,
    )
    rmse = np.sqrt(np.mean((r.to_dense() - clean) ** 2))
    assert rmse < 0.1  # below the noise sd: the noise is averaged out (measured 0.049)
    held_out = ~mask
    rows, cols = np.nonzero(held_out)
    assert dlowrank.rmse(r, rows, cols, clean[held_out]) == pytest.approx(
        np.sqrt(np.mean((r.to_dense()[held_out] - clean[held_out]) ** 2))
    )
    g = dlowrank.factorize(
        a, 5, weight_decay=1.0, missing="nan", solver="gd", seed=0, max_iter=3000, tol=1e-12
    )
    assert g.loss[-1] == pytest.approx(r.loss[-1], rel=1e-4)  # same optimum by either method
    path = tmp_path / "f.zarr"
    r.save(path)
    back = dlowrank.load(path)
    np.testing.assert_array_equal(back.u, r.u)
    assert back.n_iter == r.n_iter and back.params["missing"] == "nan"


def test_nmf_is_non_negative_monotone_and_as_good_as_scikit_learn():
    from sklearn.decomposition import NMF

    rng = np.random.default_rng(0)
    a = rng.random((500, 10)) @ rng.random((10, 120)) + 0.01 * rng.random((500, 120))
    sk = NMF(10, solver="cd", init="nndsvda", random_state=0, max_iter=500).fit(a)
    sk_err = np.linalg.norm(a - sk.transform(a) @ sk.components_) / np.linalg.norm(a)
    for solver in ("hals", "mu"):
        r = dlowrank.nmf(da.from_array(a, chunks=(100, 120)), 10, solver=solver, seed=0)
        assert r.u.min() >= 0 and r.v.min() >= 0
        assert np.all(np.diff(r.loss) <= 1e-12 * r.loss[0])
        err = np.linalg.norm(a - r.to_dense()) / np.linalg.norm(a)
        assert r.rel_error == pytest.approx(err, rel=1e-6)
        if solver == "hals":
            assert err <= 1.02 * sk_err  # measured: well below scikit-learn's cd error


def test_contributions_sum_to_the_prediction():
    rng = np.random.default_rng(1)
    r = dlowrank.nmf(rng.random((60, 4)) @ rng.random((4, 30)), 4, seed=0)
    terms = dlowrank.contributions(r, 5, 9)
    assert sorted(c for c, _ in terms) == [0, 1, 2, 3]
    assert [abs(t) for _, t in terms] == sorted((abs(t) for _, t in terms), reverse=True)
    assert sum(t for _, t in terms) == pytest.approx(dlowrank.predict(r, [5], [9])[0])


def test_bad_input_is_refused_with_clear_messages():
    a = np.abs(np.random.default_rng(0).standard_normal((50, 20)))
    neg = a.copy()
    neg[31, 7] = -0.25
    with pytest.raises(InputError, match=r"non-negative for nmf; a\[31, 7\] = -0.25"):
        dlowrank.nmf(neg, 3, seed=0)
    with pytest.raises(InputError, match=r"non-negative for nmf; a\[7, 31\] = -0.25"):
        dlowrank.nmf(neg.T.copy(), 3, seed=0)
    holes = a.copy()
    holes[12] = np.nan
    with pytest.raises(InputError, match="row 12 of `a` has no observed entry"):
        dlowrank.factorize(holes, 3, missing="nan", seed=0)
    holes = a.copy()
    holes[:, 4] = np.nan
    with pytest.raises(InputError, match="column 4 of `a` has no observed entry"):
        dlowrank.factorize(holes, 3, missing="nan", seed=0)
    with pytest.raises(
        ParameterError,
        match=r"`rank` must be an integer in \[1, min\(a.shape\)\] = \[1, 20\]; got 21",
    ):
        dlowrank.factorize(a, 21)
    with pytest.raises(
        ParameterError, match=r"`weight_decay` must be a finite number in \[0.0, inf; got -1"
    ):
        dlowrank.factorize(a, 3, weight_decay=-1.0)
    with pytest.raises(ParameterError, match="`solver` must be one of als, gd"):
        dlowrank.factorize(a, 3, solver="sgd")
    with pytest.raises(ParameterError, match="init='random' with missing='nan'"):
        dlowrank.factorize(a, 3, missing="nan", init="svd")
    with pytest.raises(InputError, match="NaN or infinite"):
        dlowrank.factorize(holes, 3)  # NaN without missing="nan" is not missing data


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_gradient_descent_does_not_depend_on_the_units_of_a(scale):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 50))
    r = dlowrank.factorize(a * scale, 3, solver="gd", max_iter=2000, seed=0)
    assert r.converged and r.rel_error < 1e-6


def test_gradient_descent_refuses_unobserved_rows_and_canonicalize_checks_k():
    a = np.random.default_rng(0).standard_normal((30, 10))
    a[12] = np.nan
    with pytest.raises(InputError, match="row 12 of `a` has no observed entry"):
        dlowrank.factorize(a, 3, solver="gd", missing="nan", seed=0)
    with pytest.raises(ParameterError, match="canonicalize needs k <= min"):
        dlowrank.canonicalize(np.ones((5, 6)), np.ones((8, 6)))
