"""Orthonormalization from Gram matrices: CholeskyQR2, shifted CholeskyQR3."""

from __future__ import annotations

import numpy as np
import pytest

import dlowrank
from dlowrank.kernels.qr import cholesky_qr


def _with_spectrum(rng, m, s):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((len(s), len(s))))
    return (u * s) @ v.T


def _cases():
    rng = np.random.default_rng(0)
    yield "gaussian", rng.standard_normal((3000, 25))
    for cond in (1e4, 1e8, 1e12, 1e16, 1e20):
        yield f"cond {cond:g}", _with_spectrum(rng, 3000, np.logspace(0, -np.log10(cond), 25))
    yield "rank 5 of 25", rng.standard_normal((3000, 5)) @ rng.standard_normal((5, 25))
    dup = rng.standard_normal((3000, 25))
    dup[:, 7] = dup[:, 3]
    yield "duplicate column", dup
    yield "square", rng.standard_normal((25, 25))
    yield "float32-like", rng.standard_normal((3000, 25)).astype(np.float32)


@pytest.mark.parametrize(("name", "y"), list(_cases()), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("n_panels", [1, 7])
def test_q_is_orthonormal_and_qr_is_y(name, y, n_panels):
    q, r = cholesky_qr(np.array_split(y, n_panels))
    assert [p.shape[0] for p in q] == [p.shape[0] for p in np.array_split(y, n_panels)]
    q = np.concatenate(q)
    assert np.linalg.norm(q.T @ q - np.eye(y.shape[1]), 2) <= 1e-12
    assert np.allclose(np.tril(r, -1), 0.0)
    scale = np.linalg.norm(y)
    assert np.linalg.norm(q @ r - y) <= 1e-12 * scale


def test_zero_and_too_few_rows():
    q, r = cholesky_qr([np.zeros((4, 3)), np.zeros((5, 3))])
    q = np.concatenate(q)
    np.testing.assert_array_equal(q.T @ q, np.eye(3))
    np.testing.assert_array_equal(r, 0.0)
    with pytest.raises(ValueError, match="at least as many rows as columns"):
        cholesky_qr([np.ones((2, 3))])


def test_no_qr_of_an_m_row_array_in_the_streaming_paths(monkeypatch):
    """Every LAPACK QR the algorithms call is of a short-side (n-row) or l x l array."""
    t = dlowrank.make_matrix((4000, 60), 10, seed=0, chunks=(500, 60))
    a = t.array.compute()
    seen = []
    real = np.linalg.qr

    def spy(x, *args, **kwargs):
        seen.append(np.shape(x)[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "qr", spy)
    dlowrank.randomized_svd(a, 5, seed=0)
    dlowrank.randomized_svd(a, 5, seed=0, layout="block")
    dlowrank.sketch_svd(a, 5, seed=0)
    dlowrank.factorize(a, 5, max_iter=3)
    dlowrank.canonicalize(a[:, :5], a[:60, :5])
    psd = a[:600].T @ a[:600]
    dlowrank.nystrom(np.kron(np.eye(10), psd)[:600, :600], 5, seed=0)
    assert seen and max(seen) <= 60


def test_an_exactly_rank_deficient_sketch_is_completed():
    """Y = A X of an exactly rank-1 A (no rounding noise): Q is still orthonormal."""
    a = np.outer([1.0, 2.0, 3.0, 4.0], [1.0, 0.5, 0.25])
    y = a @ np.array([[1.0, 2.0, -1.0], [0.5, 1.0, 3.0], [2.0, 0.0, 1.0]])
    q, r = cholesky_qr([y[:2], y[2:]])
    q = np.concatenate(q)
    assert np.linalg.norm(q.T @ q - np.eye(3), 2) <= 1e-12
    assert np.allclose(np.tril(r, -1), 0.0) and np.linalg.norm(q @ r - y) <= 1e-12 * np.linalg.norm(
        y
    )
