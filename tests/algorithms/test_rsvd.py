"""Multi-pass randomized SVD against the exact path, its theory, and its own claims."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dlowrank
from dlowrank.errors import InputError, ParameterError, ToleranceError

CHUNKINGS = {"rows": (70, None), "cols": (None, 45), "2d": (70, 45)}


def _matrix(
    shape, kind="exponential", chunks=(70, 45), dtype="float64", noise=1e-4, rank=60, seed=0, **kw
):
    rows, cols = chunks
    chunks = (rows or shape[0], cols or shape[1])
    return dlowrank.make_matrix(
        shape,
        min(rank, min(shape)),
        kind=kind,
        noise=noise,
        chunks=chunks,
        dtype=dtype,
        seed=seed,
        **kw,
    )


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (200, 200)], ids=["tall", "wide", "sq"])
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_fast_decay_agrees_with_the_exact_path(shape, chunking):
    t = _matrix(shape, chunks=CHUNKINGS[chunking], decay=0.6, noise=1e-7)
    a = t.array.compute()
    exact = dlowrank.exact_svd(a, 8)
    r = dlowrank.randomized_svd(t.array, 8, seed=3)
    assert r.passes == 2 and r.error_kind == "exact"
    assert r.u.shape == (shape[0], 8) and r.vt.shape == (8, shape[1])
    np.testing.assert_allclose(r.s, exact.s, rtol=1e-9)
    np.testing.assert_allclose(r.to_dense(), exact.to_dense(), atol=1e-8)
    np.testing.assert_allclose(r.u, exact.u, atol=1e-7)  # same sign convention
    np.testing.assert_allclose(r.u.T @ r.u, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(r.vt @ r.vt.T, np.eye(8), atol=1e-12)
    assert np.all(np.diff(r.s) <= 0)


def _hmt_bound(s_full, k, p):
    """A bound that holds with probability >= 1 - 2 t^-p - exp(-u^2/2) = 1 - 0.013 (t = 2,
    u = 3, p = 10) for q = 0 (HMT 2011, Thm 10.8):
    ||A - QQ^T A||_F <= (1 + t sqrt(3k/(p+1))) tau + u t e sqrt(k+p)/(p+1) sigma_{k+1}.
    Truncating Q^T A to rank k adds at most tau (the singular values of Q^T A are bounded
    by A's), in quadrature."""
    t, u = 2.0, 3.0
    tau = np.sqrt(np.sum(s_full[k:] ** 2))
    proj = (1 + t * np.sqrt(3 * k / (p + 1))) * tau + u * t * np.e * np.sqrt(k + p) / (
        p + 1
    ) * s_full[k]
    return np.sqrt(proj**2 + tau**2) / np.sqrt(np.sum(s_full**2))


@pytest.mark.parametrize("kind", ["flat", "polynomial"])
def test_slow_decay_meets_the_theoretical_bound(kind):
    extra = {"decay": 0.5} if kind == "polynomial" else {}
    t = _matrix((400, 150), kind=kind, rank=150, noise=0.0, **extra)
    a = t.array.compute()
    s_full = np.linalg.svd(a, compute_uv=False)
    bound = _hmt_bound(s_full, 10, 10)
    for seed in range(3):
        for q in (0, 2):
            r = dlowrank.randomized_svd(t.array, 10, n_power_iter=q, seed=seed)
            true = np.linalg.norm(a - r.to_dense()) / np.linalg.norm(a)
            assert true <= bound
            assert true >= dlowrank.optimal_error(s_full, 10).rel_frobenius - 1e-12


def test_reported_error_is_the_true_error():
    t = _matrix((500, 200), noise=3e-3)
    a = t.array.compute()
    for q in (0, 1, 2):
        r = dlowrank.randomized_svd(t.array, 12, n_power_iter=q, seed=5)
        true = np.linalg.norm(a - r.to_dense()) / np.linalg.norm(a)
        assert r.rel_error == pytest.approx(true, rel=1e-8)


@given(
    rows=st.sampled_from([37, 64, 100, 250]),
    cols=st.sampled_from([17, 45, 120]),
    irregular=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_same_seed_same_result_for_any_chunking(rows, cols, irregular, seed):
    t = _matrix((250, 120), noise=1e-3, chunks=(250, 120))
    a = t.array.compute()
    ref = dlowrank.randomized_svd(a, 6, seed=seed)
    x = da.from_array(a, chunks=(rows, cols))
    if irregular:
        x = x.rechunk(((13, 100, 137), (60, 1, 59)))
    r = dlowrank.randomized_svd(x, 6, seed=seed)
    np.testing.assert_allclose(r.s, ref.s, rtol=1e-10)
    np.testing.assert_allclose(r.to_dense(), ref.to_dense(), atol=1e-10 * ref.s[0])


def test_float32_in_float32_out_with_float64_accuracy():
    t64 = _matrix((300, 100), noise=1e-3)
    t32 = _matrix((300, 100), noise=1e-3, dtype="float32")
    r64 = dlowrank.randomized_svd(t64.array, 5, seed=2)
    r32 = dlowrank.randomized_svd(t32.array, 5, seed=2)
    assert r32.u.dtype == r32.s.dtype == r32.vt.dtype == np.float32
    # the only difference is the input's rounding to float32 (relative 6e-8)
    np.testing.assert_allclose(r32.s, r64.s, rtol=1e-6)
    np.testing.assert_allclose(r32.u, r64.u, atol=1e-5)


def test_fixed_precision_returns_the_smallest_rank_meeting_tol():
    t = _matrix((400, 200), noise=0.0, rank=100, decay=0.8)
    s = t.singular_values
    for tol in (1e-1, 1e-2, 1e-3):
        r = dlowrank.randomized_svd(t.array, max_error=tol, seed=0)
        assert r.rel_error <= tol
        expected = next(
            k for k in range(1, 101) if dlowrank.optimal_error(s, k).rel_frobenius <= tol
        )
        assert r.rank == expected
        assert r.passes == 3  # one attempt of q + 1 passes suffices at the first width


def test_fixed_precision_unreachable_reports_the_best_error():
    t = _matrix((300, 100), kind="flat", rank=100, noise=0.0)
    with pytest.raises(
        ToleranceError,
        match=r"`max_error` = 0.01 is not reached within `max_rank` = 20: "
        r"the best relative error was 0.89\d* at rank 20",
    ):
        dlowrank.randomized_svd(t.array, max_error=0.01, max_rank=20, seed=0)


def test_symmetric_gives_the_eigen_decomposition():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((150, 150)))
    w_true = np.concatenate([[5.0, -4.0, 3.0, -2.5, 2.0], 0.01 * rng.standard_normal(145)])
    a = (q * w_true) @ q.T
    a = (a + a.T) / 2
    ref = dlowrank.exact_eigh(a, 4)
    r = dlowrank.randomized_svd(
        da.from_array(a, chunks=(50, 150)), 4, symmetric=True, passes=3, seed=1
    )
    assert isinstance(r, dlowrank.EighResult) and r.passes == 3
    np.testing.assert_allclose(r.w, ref.w, rtol=1e-8)
    np.testing.assert_allclose(r.to_dense(), ref.to_dense(), atol=1e-8)
    true = np.linalg.norm(a - r.to_dense()) / np.linalg.norm(a)
    assert r.rel_error == pytest.approx(true, rel=1e-8)


def test_symmetric_refuses_a_non_symmetric_matrix():
    t = _matrix((100, 100))
    with pytest.raises(InputError, match="`a` is not symmetric"):
        dlowrank.randomized_svd(t.array, 4, symmetric=True, seed=1)
    with pytest.raises(InputError, match="needs a square matrix; got shape \\(100, 60\\)"):
        dlowrank.randomized_svd(np.ones((100, 60)), 4, symmetric=True)


def test_nonfinite_input_is_reported_with_its_location():
    a = np.ones((200, 50))
    a[123, 7] = np.nan
    with pytest.raises(
        InputError,
        match=r"1 NaN or infinite values \(the first at row 123, column 7, in chunk \(2, 0\)\)",
    ):
        dlowrank.randomized_svd(da.from_array(a, chunks=(50, 25)), 3)
    with pytest.raises(InputError, match=r"the first at row 7, column 123, in chunk \(0, 2\)"):
        dlowrank.randomized_svd(da.from_array(a.T.copy(), chunks=(25, 50)), 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, r"`rank` must be an integer in \[1, min\(a.shape\)\] = \[1, 40\]; got 0"),
        ({"rank": 41}, r"= \[1, 40\]; got 41"),
        ({"rank": 3, "n_oversamples": -1}, r"`n_oversamples` must be .*in \[0, 10000\]; got -1"),
        ({"rank": 3, "n_power_iter": 1.5}, r"`n_power_iter` must be .*in \[0, 30\]; got 1.5"),
        ({"max_error": 0.0}, r"`max_error` must be a finite number in \(0.0, 1.0\); got 0.0"),
        ({"max_error": 1.0}, r"`max_error` must be a finite number in \(0.0, 1.0\); got 1.0"),
        ({"rank": 3, "max_error": 0.1}, "give exactly one of `rank`.*got rank=3, max_error=0.1"),
        ({}, "give exactly one of `rank`.*got rank=None, max_error=None"),
        ({"rank": 3, "max_rank": 5}, "`max_rank` applies only with `max_error`"),
        ({"rank": 3, "seed": "x"}, "`seed` must be a non-negative integer"),
        ({"rank": 3, "layout": "rows"}, "`layout` must be one of auto, panel, block"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        dlowrank.randomized_svd(np.ones((60, 40)), **kwargs)


def test_nonfinite_location_in_block_layout_and_overflow():
    a = np.ones((40, 30))
    a[5, 25] = np.inf
    a[17, 3] = np.nan
    x = da.from_array(a, chunks=(10, 10))
    for call in (
        lambda: dlowrank.sketch_svd(x, 2, seed=0),
        lambda: dlowrank.randomized_svd(x, 2, layout="block", seed=0),
    ):
        with pytest.raises(
            InputError,
            match=r"2 NaN or infinite values \(the first at row 5, "
            r"column 25, in chunk \(0, 2\)\)",
        ):
            call()
    big = np.random.default_rng(0).standard_normal((40, 30)) * 1e160
    with pytest.raises(InputError, match="squared Frobenius norm overflows float64"):
        dlowrank.randomized_svd(big, 2)


def test_an_array_rewritten_at_the_same_path_is_read_afresh(tmp_path):
    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (100, 50), 5, seed=0)
    first = dlowrank.randomized_svd(path, 2, seed=0)
    dlowrank.generate(path, (200, 50), 5, seed=1, overwrite=True)
    second = dlowrank.randomized_svd(path, 2, seed=0)
    assert first.u.shape == (100, 2) and second.u.shape == (200, 2)
