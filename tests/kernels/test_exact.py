"""Exact paths against NumPy, Eckart-Young, the sign convention, svt."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

import dlowrank
from dlowrank.kernels import exact
from tests.conftest import known_spectrum

SHAPES = [(60, 25), (25, 60), (40, 40)]


@pytest.mark.parametrize("shape", SHAPES, ids=["tall", "wide", "square"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_svd_matches_numpy_on_known_spectrum(shape, dtype, rng):
    s_true = 2.0 ** -np.arange(min(shape))  # distinct values: vectors are unique up to sign
    a = known_spectrum(*shape, s_true, rng, dtype)
    r = dlowrank.exact_svd(a, 10)
    assert r.u.dtype == r.s.dtype == r.vt.dtype == dtype
    assert r.u.shape == (shape[0], 10) and r.vt.shape == (10, shape[1])
    tol = 50 * np.finfo(dtype).eps
    np.testing.assert_allclose(r.s, s_true[:10], atol=tol)
    u_np, s_np, vt_np = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(r.s, s_np[:10], atol=tol)
    # sign-free comparison: the rank-10 reconstructions agree
    np.testing.assert_allclose(r.to_dense(), (u_np[:, :10] * s_np[:10]) @ vt_np[:10], atol=tol)
    np.testing.assert_allclose(r.u.T @ r.u, np.eye(10), atol=tol)
    np.testing.assert_allclose(r.vt @ r.vt.T, np.eye(10), atol=tol)
    assert r.error_kind == "exact" and r.passes == 1
    assert r.rel_error == pytest.approx(dlowrank.optimal_error(s_np, 10).rel_frobenius, rel=1e-4)


def test_sign_convention_largest_entry_of_each_u_column_is_positive(rng):
    a = rng.standard_normal((50, 30))
    r = dlowrank.exact_svd(a, 30)
    idx = np.argmax(np.abs(r.u), axis=0)
    assert np.all(r.u[idx, np.arange(30)] > 0)


def test_sign_convention_is_deterministic_across_dtypes_and_input_signs(rng):
    a = known_spectrum(70, 30, 1.5 ** -np.arange(30), rng)
    r64 = dlowrank.exact_svd(a, 5)
    r32 = dlowrank.exact_svd(a.astype(np.float32), 5)
    rneg = dlowrank.exact_svd(-a, 5)
    np.testing.assert_allclose(r32.u, r64.u, atol=1e-5)
    np.testing.assert_array_equal(rneg.u, r64.u)  # same u, the sign moves into vt
    np.testing.assert_array_equal(rneg.vt, -r64.vt)


def test_exact_svd_falls_back_to_gesvd_when_gesdd_fails(monkeypatch, rng):
    real_svd = scipy.linalg.svd
    drivers = []

    def flaky(a, **kw):
        drivers.append(kw["lapack_driver"])
        if kw["lapack_driver"] == "gesdd":
            raise np.linalg.LinAlgError("SVD did not converge")
        return real_svd(a, **kw)

    monkeypatch.setattr(scipy.linalg, "svd", flaky)
    a = rng.standard_normal((20, 10))
    r = dlowrank.exact_svd(a, 3)
    assert drivers == ["gesdd", "gesvd"]
    np.testing.assert_allclose(r.s, np.linalg.svd(a, compute_uv=False)[:3])


def test_rank_defaults_to_full_and_reconstructs_exactly(rng):
    a = rng.standard_normal((12, 7))
    r = dlowrank.exact_svd(a)
    assert r.rank == 7 and r.rel_error == 0.0
    np.testing.assert_allclose(r.to_dense(), a, atol=1e-13)


@given(
    m=st.integers(2, 12),
    n=st.integers(2, 12),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    eps=st.floats(1e-6, 1.0),
)
def test_eckart_young_no_rank_k_matrix_beats_the_truncation(m, n, data, seed, eps):
    k = data.draw(st.integers(1, min(m, n)))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, n))
    r = dlowrank.exact_svd(a, k)
    best = np.linalg.norm(a - r.to_dense())
    s_full = np.linalg.svd(a, compute_uv=False)
    opt = dlowrank.optimal_error(s_full, k)
    assert best == pytest.approx(opt.frobenius, rel=1e-9, abs=1e-12)
    assert np.linalg.norm(a - r.to_dense(), 2) == pytest.approx(opt.spectral, rel=1e-9, abs=1e-12)
    # competitors: arbitrary random factors, and the optimum perturbed by eps
    x, y = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    assert np.linalg.norm(a - x @ y.T) >= best - 1e-12
    x = r.u * r.s + eps * rng.standard_normal((m, k))
    y = r.vt.T + eps * rng.standard_normal((n, k))
    assert np.linalg.norm(a - x @ y.T) >= best - 1e-12


def test_best_rank_one_of_minus_three_a_is_minus_three_times_that_of_a(rng):
    a = known_spectrum(30, 20, np.array([5.0, 2.0, 1.0]), rng)
    r1 = dlowrank.exact_svd(a, 1).to_dense()
    r3 = dlowrank.exact_svd(-3 * a, 1).to_dense()
    np.testing.assert_allclose(r3, -3 * r1, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_eigh_and_exact_svd_agree_on_symmetric_input(dtype, rng):
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    w_true = np.array([6.0, -4.0, 3.0, -2.0, 1.0] + [0.0] * 25)
    a = ((q * w_true) @ q.T).astype(dtype)
    a = (a + a.T) / 2
    e = dlowrank.exact_eigh(a, 4)
    s = dlowrank.exact_svd(a, 4)
    tol = 100 * np.finfo(dtype).eps * 6
    assert e.w.dtype == dtype
    np.testing.assert_allclose(e.w, w_true[:4], atol=tol)  # ordered by |w|, signs kept
    np.testing.assert_allclose(np.abs(e.w), s.s, atol=tol)
    np.testing.assert_allclose(e.to_dense(), s.to_dense(), atol=tol)
    as_svd = e.to_svd()
    np.testing.assert_allclose(as_svd.u, s.u, atol=100 * tol)
    np.testing.assert_allclose(as_svd.vt, s.vt, atol=100 * tol)
    assert e.rel_error == pytest.approx(np.sqrt(1 / np.sum(w_true**2)), rel=1e-4)


def test_svt_shrinks_every_singular_value_and_zeroes_those_below(rng):
    s_true = np.array([5.0, 3.0, 1.5, 0.8, 0.2])
    a = known_spectrum(40, 20, s_true, rng)
    tau = 1.0
    r = dlowrank.svt(a, tau)
    np.testing.assert_allclose(r.s, [4.0, 2.0, 0.5], atol=1e-12)
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    expected = (u * np.maximum(s - tau, 0)) @ vt
    np.testing.assert_allclose(r.to_dense(), expected, atol=1e-12)
    assert r.rel_error == pytest.approx(np.linalg.norm(a - expected) / np.linalg.norm(a), rel=1e-10)
    assert dlowrank.svt(a, tau, rank=2).s.tolist() == pytest.approx([4.0, 2.0])
    assert dlowrank.svt(a, 10.0).rank == 0


@given(seed=st.integers(0, 2**32 - 1), tau=st.floats(0.0, 3.0))
def test_svt_is_the_prox_of_the_nuclear_norm(seed, tau):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((8, 6))

    def objective(x):
        return 0.5 * np.linalg.norm(x - a) ** 2 + tau * np.linalg.svd(x, compute_uv=False).sum()

    x_star = dlowrank.svt(a, tau).to_dense() if tau < np.linalg.norm(a, 2) else np.zeros_like(a)
    f_star = objective(x_star)
    for _ in range(5):  # strongly convex: every other point is worse
        assert objective(x_star + 1e-3 * rng.standard_normal(a.shape)) >= f_star - 1e-10


def test_optimal_error_values():
    s = np.array([4.0, 3.0, 0.0])
    e = dlowrank.optimal_error(s, 1)
    assert (e.frobenius, e.spectral) == (3.0, 3.0)
    assert e.rel_frobenius == pytest.approx(3 / 5) and e.rel_spectral == pytest.approx(3 / 4)
    assert dlowrank.optimal_error(s, 3).frobenius == 0.0
    assert dlowrank.optimal_error(s, 0).rel_frobenius == 1.0


def test_sign_flip_keeps_the_product():
    rng = np.random.default_rng(0)
    u, vt = rng.standard_normal((6, 3)), rng.standard_normal((3, 4))
    u2, vt2 = exact.sign_flip(u, vt)
    np.testing.assert_allclose(u2 @ vt2, u @ vt)
