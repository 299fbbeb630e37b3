"""Small in-memory algebra of the factorizations: ridge solves, HALS, NNDSVD, gauge."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

from dlowrank.kernels.exact import sign_flip

_TINY = np.finfo(np.float64).tiny


def _penalty(alpha: Any, k: int) -> np.ndarray:
    """alpha I, for a scalar alpha or one value per unknown (a diagonal penalty)."""
    return np.diag(np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,)))


def ridge_inverse(gram: np.ndarray, alpha: Any) -> np.ndarray:
    """(G + alpha I)^{-1} for a small symmetric PSD G (pseudo-inverse if singular);
    ``alpha`` a scalar or one value per unknown."""
    return np.linalg.pinv(gram + _penalty(alpha, gram.shape[0]), hermitian=True)


def masked_ridge_rows(t: Any, mask: Any, y: np.ndarray, alpha: Any) -> tuple:
    """Each row's ridge solution over its observed entries: x_r = argmin ||t_r - Y x||^2
    over the columns where ``mask`` (0/1, rows x n, dense or sparse) is 1, plus
    alpha ||x||^2 (``t`` zero, or not stored, where unobserved). The rows' Grams are
    summed as upper triangles. Returns (x, the Grams, the right-hand sides t Y)."""
    grams = unpack_grams(np.asarray(mask @ outer_rows_packed(y)), y.shape[1])
    rhs = np.asarray(t @ y)
    return batched_ridge(grams, rhs, alpha), grams, rhs


def batched_ridge(grams: np.ndarray, rhs: np.ndarray, alpha: float) -> np.ndarray:
    """Solve (G_r + alpha I) x_r = b_r for a stack of small systems (r, k, k), (r, k);
    ``alpha`` a scalar or one value per unknown (a diagonal penalty).

    A row with no observations and alpha = 0 has G_r = 0; least squares gives x_r = 0.
    """
    systems = grams + _penalty(alpha, grams.shape[-1])
    try:
        return np.linalg.solve(systems, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("rkl,rl->rk", np.linalg.pinv(systems, hermitian=True), rhs)


def outer_rows_packed(x: np.ndarray) -> np.ndarray:
    """Rows of x (r, k) as the upper triangles of their outer products (r, k(k+1)/2):
    half the work of :func:`outer_rows` for sums of symmetric Grams."""
    i, j = np.triu_indices(x.shape[1])
    return x[:, i] * x[:, j]


def unpack_grams(packed: np.ndarray, k: int) -> np.ndarray:
    """(r, k(k+1)/2) upper triangles back to symmetric (r, k, k) matrices."""
    i, j = np.triu_indices(k)
    out = np.empty((packed.shape[0], k, k))
    out[:, i, j] = packed
    out[:, j, i] = packed
    return out


def outer_rows(x: np.ndarray) -> np.ndarray:
    """Rows of x (r, k) as flattened outer products (r, k*k): vec(x_r x_r^T)."""
    return (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)


def hals_update(w: np.ndarray, ah: np.ndarray, hth: np.ndarray, alpha: float) -> np.ndarray:
    """One HALS sweep over the columns of W >= 0 for min ||A - W H^T||^2 + alpha ||W||^2.

    Column k is the exact non-negative minimizer with the other columns fixed
    (Cichocki & Phan 2009), so the objective never increases.
    """
    w = w.copy()
    for k in range(w.shape[1]):
        num = ah[:, k] - w @ hth[:, k] + w[:, k] * hth[k, k]
        w[:, k] = np.maximum(num / max(hth[k, k] + alpha, _TINY), 0.0)
    return w


def mu_update(w: np.ndarray, ah: np.ndarray, hth: np.ndarray, alpha: float) -> np.ndarray:
    """One multiplicative update (Lee & Seung 2001) with L2 weight decay."""
    return w * ah / np.maximum(w @ hth + alpha * w, 1e-12)


def signed_norms(i: int, span: tuple, x: np.ndarray) -> np.ndarray:
    """Squared norms of the positive and negative parts of each column of a panel (2, k)."""
    return np.stack([np.sum(np.maximum(x, 0) ** 2, axis=0), np.sum(np.minimum(x, 0) ** 2, axis=0)])


def nndsvd_choice(u_norms2: np.ndarray, s: np.ndarray, vt: np.ndarray, fill: float):
    """NNDSVD's per-term choice (Boutsidis & Gallopoulos 2008) from the squared norms of
    the positive and negative parts of u's columns (``signed_norms`` summed over
    panels): (sign of the kept part of each u_k, the scale applied to it, H)."""
    k, n = vt.shape
    sign, scale, h = np.ones(k), np.zeros(k), np.zeros((n, k))
    for j in range(k):
        y = vt[j]
        yp, yn = np.maximum(y, 0), np.maximum(-y, 0)
        nxp, nxn = np.sqrt(u_norms2[0, j]), np.sqrt(u_norms2[1, j])
        pos, neg = nxp * np.linalg.norm(yp), nxn * np.linalg.norm(yn)
        na, b, sigma = (nxp, yp, pos) if pos >= neg else (nxn, yn, neg)
        sign[j] = 1.0 if pos >= neg else -1.0
        nb = np.linalg.norm(b)
        if na > 0 and nb > 0:
            root = np.sqrt(s[j] * sigma)
            scale[j] = root / na
            h[:, j] = root * b / nb
    if fill:
        h[h == 0] = fill
    return sign, scale, h


def nndsvd_rows(i: int, span: tuple, x: np.ndarray, sign, scale, fill: float) -> np.ndarray:
    """W's rows from u's rows: the kept part of each column, scaled; zeros filled."""
    w = np.maximum(x * sign, 0.0) * scale
    if fill:
        w[w == 0] = fill
    return w


def nndsvd(
    u: np.ndarray, s: np.ndarray, vt: np.ndarray, fill: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD (Boutsidis & Gallopoulos 2008): non-negative W, H from a truncated SVD.

    Each term u_k s_k v_k^T keeps the sign pattern (positive or negative parts of
    u_k and v_k) with the larger norm product. Zeros are replaced by ``fill``
    (the "nndsvda" variant uses the mean of A). The streaming path applies the same
    two steps to u's row panels (:func:`nndsvd_choice`, :func:`nndsvd_rows`).
    """
    span = (0, u.shape[0])
    sign, scale, h = nndsvd_choice(signed_norms(0, span, u), s, vt, fill)
    return nndsvd_rows(0, span, u, sign, scale, fill), h


def _thin_qr(x: Any) -> tuple[Any, np.ndarray]:
    """Thin QR of a tall factor by CholeskyQR2 (no LAPACK QR of an m-row array). A lazy
    (dask) factor stays lazy: its Grams are sums over its chunks (two reads), and Q is
    the pending product x R^{-1}."""
    from dlowrank.kernels.qr import cholesky_qr

    if isinstance(x, np.ndarray):
        q, r = cholesky_qr([x])
        return q[0], r
    r1 = scipy.linalg.cholesky(np.asarray((x.T @ x).compute()), lower=False)
    inv1 = scipy.linalg.solve_triangular(r1, np.eye(r1.shape[0]))
    q1 = x @ inv1
    r2 = scipy.linalg.cholesky(np.asarray((q1.T @ q1).compute()), lower=False)
    inv2 = scipy.linalg.solve_triangular(r2, np.eye(r2.shape[0]))
    return q1 @ inv2, r2 @ r1


def _sign_flip_lazy(u: Any, vt: np.ndarray | Any) -> tuple[Any, Any]:
    """:func:`sign_flip` for a lazy u: the column signs from one read (its k largest)."""
    import dask.array as da

    k = u.shape[1]
    idx = np.asarray(da.argmax(abs(u), axis=0).compute())
    signs = np.sign(np.asarray(u.vindex[idx, np.arange(k)].compute()))
    signs[signs == 0] = 1
    return u * signs, vt * signs[:, None]


def canonical(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The balanced factors (U_k S^{1/2}, V_k S^{1/2}) of u v^T, without forming u v^T.

    With u = Q_u R_u and v = Q_v R_v (thin QR), u v^T = Q_u (R_u R_v^T) Q_v^T, so the
    SVD of the small k x k core gives the SVD of u v^T; signs follow the package
    convention. Any (u R, v R^{-T}) gives the same result.
    """
    qu, ru = _thin_qr(u)
    qv, rv = _thin_qr(v)
    p, s, qt = np.linalg.svd(ru @ rv.T)
    flip = sign_flip if isinstance(qu, np.ndarray) else _sign_flip_lazy
    left, right = flip(qu @ p, qt @ qv.T)
    root = np.sqrt(s)
    return left * root, right.T * root
