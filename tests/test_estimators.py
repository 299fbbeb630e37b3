"""scikit-learn estimators: the estimator checks, agreement with scikit-learn, and the
same estimators streaming Zarr and dask inputs."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import sklearn.decomposition
import zarr
from sklearn.utils.estimator_checks import parametrize_with_checks

import dlowrank
from dlowrank.estimators import NMF, MatrixCompletion, TruncatedSVD


# every check applies and passes: none is listed as an expected failure
@parametrize_with_checks(
    [
        TruncatedSVD(random_state=0),
        NMF(random_state=0, max_iter=50, tol=1e-3),
        MatrixCompletion(2, random_state=0, max_iter=20),
    ]
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _low_rank(m: int = 600, n: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, 8)) * 0.7 ** np.arange(8)) @ rng.standard_normal((8, n))


def test_truncated_svd_agrees_with_scikit_learn_and_streams_zarr_and_dask(tmp_path):
    x = _low_rank() + 1e-3 * np.random.default_rng(1).standard_normal((600, 80))
    ours = TruncatedSVD(5, random_state=0, passes=3).fit(x)
    theirs = sklearn.decomposition.TruncatedSVD(5, algorithm="arpack").fit(x)
    np.testing.assert_allclose(ours.singular_values_, theirs.singular_values_, rtol=1e-8)
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, theirs.explained_variance_ratio_, rtol=1e-6
    )
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(theirs.components_), atol=1e-6)
    assert ours.n_passes_ == 3 and ours.rel_error_ == pytest.approx(ours.result_.rel_error)
    assert list(ours.get_feature_names_out()) == [f"truncatedsvd{i}" for i in range(5)]

    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=x.shape, chunks=(100, 80), dtype="f8")[...] = x
    for given in (path, da.from_array(x, chunks=(100, 80))):
        big = TruncatedSVD(5, random_state=0, passes=3)
        xt = big.fit_transform(given)
        np.testing.assert_allclose(big.components_, ours.components_, atol=1e-10)
        np.testing.assert_allclose(big.explained_variance_ratio_, ours.explained_variance_ratio_)
        assert big.n_passes_ == 4  # the total variance of a large input costs one read
        np.testing.assert_allclose(np.asarray(xt), ours.transform(x), atol=1e-8)
    out = str(tmp_path / "xt.zarr")
    lazy = big.transform(path, out=out)  # one streaming pass, written to Zarr
    assert isinstance(lazy, da.Array) and zarr.open_array(out).shape == (600, 5)
    np.testing.assert_allclose(lazy.compute(), ours.transform(x), atol=1e-8)


def test_nmf_fits_and_transforms_a_large_input_lazily(tmp_path):
    x = np.abs(_low_rank(400, 60, seed=2))
    small = NMF(4, random_state=0, max_iter=300).fit(x)
    assert small.components_.min() >= 0 and small.n_iter_ >= 1
    w = small.transform(x)
    assert w.min() >= 0
    fit = small.result_.u @ small.components_
    assert small.reconstruction_err_ == pytest.approx(np.linalg.norm(x - fit), rel=1e-6)
    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=x.shape, chunks=(100, 30), dtype="f8")[...] = x
    big = NMF(4, random_state=0, max_iter=300).fit(path)
    np.testing.assert_allclose(big.components_, small.components_, rtol=1e-6, atol=1e-9)
    lazy = big.transform(path)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), w, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="Negative values"):
        NMF(2).fit(-x)


def test_the_estimators_are_exported_lazily():
    assert dlowrank.TruncatedSVD is TruncatedSVD and dlowrank.NMF is NMF
    assert dlowrank.MatrixCompletion is MatrixCompletion


def _ratings(m: int = 300, n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = 3.5 + rng.normal(0, 0.3, (m, 1)) + rng.normal(0, 0.3, (1, n))
    a += 0.5 * rng.standard_normal((m, 4)) @ rng.standard_normal((4, n))
    return a, rng.random((m, n)) < 0.4


def test_matrix_completion_fits_numpy_dask_and_ratings_groups_alike(tmp_path):
    from dlowrank.io.ratings import write_ratings

    a, seen = _ratings()
    x = np.where(seen, a, np.nan)
    rows, cols = np.nonzero(~seen)
    est = MatrixCompletion(4, weight_decay=1.0, max_iter=500, tol=1e-13, random_state=0).fit(x)
    assert est.n_passes_ == est.n_iter_ == est.result_.n_iter
    plain = MatrixCompletion(4, biases=False, weight_decay=1.0, max_iter=60, random_state=0)
    plain.fit(x)
    assert plain.mean_ == 0.0 and not plain.col_bias_.any()
    # the biases carry the offsets the factors would otherwise spend a rank on
    assert est.rmse(rows, cols, a[~seen]) < 0.7 * plain.rmse(rows, cols, a[~seen])
    np.testing.assert_allclose(
        est.predict(rows, cols), dlowrank.predict(est.result_, rows, cols), rtol=1e-12
    )
    # fold-in of the training rows at the fitted (converged) column side gives their factors
    np.testing.assert_allclose(est.transform(x), est.result_.u, atol=1e-5)
    full = est.predict(x)  # every entry of the rows, missing ones filled in
    np.testing.assert_allclose(full[~seen], est.predict(rows, cols), atol=1e-5)
    free = est.predict(rows, cols)
    low_high = est.set_params(clip=(3.0, 4.0)).predict(rows, cols)  # clipped when predicting
    assert low_high.min() >= 3.0 and low_high.max() <= 4.0
    np.testing.assert_allclose(low_high, np.clip(free, 3.0, 4.0))

    path = tmp_path / "ratings.zarr"
    write_ratings(path, *np.nonzero(seen), a[seen], shape=a.shape)
    short = MatrixCompletion(4, weight_decay=1.0, max_iter=20, tol=0.0, random_state=0).fit(x)
    for given in (str(path), da.from_array(x, chunks=(100, 80))):
        big = MatrixCompletion(4, weight_decay=1.0, max_iter=20, tol=0.0, random_state=0)
        big.fit(given)
        assert big.n_features_in_ == 80 and big.n_passes_ == 20
        np.testing.assert_allclose(big.components_, short.components_, rtol=1e-8, atol=1e-10)
        assert big.mean_ == pytest.approx(short.mean_, rel=1e-12)
    lazy = big.predict(da.from_array(x, chunks=(100, 80)), out=str(tmp_path / "full.zarr"))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), short.predict(x), atol=1e-8)
