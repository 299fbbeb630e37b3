"""Small in-memory algebra of the factorizations: ridge solves, HALS, NNDSVD, gauge."""

from __future__ import annotations

import numpy as np

from dlowrank.kernels.exact import sign_flip

_TINY = np.finfo(np.float64).tiny


def ridge_inverse(gram: np.ndarray, alpha: float) -> np.ndarray:
    """(G + alpha I)^{-1} for a small symmetric PSD G (pseudo-inverse if singular)."""
    k = gram.shape[0]
    return np.linalg.pinv(gram + alpha * np.eye(k), hermitian=True)


def batched_ridge(grams: np.ndarray, rhs: np.ndarray, alpha: float) -> np.ndarray:
    """Solve (G_r + alpha I) x_r = b_r for a stack of small systems (r, k, k), (r, k).

    A row with no observations and alpha = 0 has G_r = 0; least squares gives x_r = 0.
    """
    k = grams.shape[-1]
    systems = grams + alpha * np.eye(k)
    try:
        return np.linalg.solve(systems, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("rkl,rl->rk", np.linalg.pinv(systems, hermitian=True), rhs)


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


def nndsvd(
    u: np.ndarray, s: np.ndarray, vt: np.ndarray, fill: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """NNDSVD (Boutsidis & Gallopoulos 2008): non-negative W, H from a truncated SVD.

    Each term u_k s_k v_k^T keeps the sign pattern (positive or negative parts of
    u_k and v_k) with the larger norm product. Zeros are replaced by ``fill``
    (the "nndsvda" variant uses the mean of A).
    """
    m, k = u.shape
    n = vt.shape[1]
    w, h = np.zeros((m, k)), np.zeros((n, k))
    for j in range(k):
        x, y = u[:, j], vt[j]
        xp, xn, yp, yn = np.maximum(x, 0), np.maximum(-x, 0), np.maximum(y, 0), np.maximum(-y, 0)
        pos = np.linalg.norm(xp) * np.linalg.norm(yp)
        neg = np.linalg.norm(xn) * np.linalg.norm(yn)
        if pos >= neg:
            a, b, sigma = xp, yp, pos
        else:
            a, b, sigma = xn, yn, neg
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na > 0 and nb > 0:
            scale = np.sqrt(s[j] * sigma)
            w[:, j] = scale * a / na
            h[:, j] = scale * b / nb
    if fill:
        w[w == 0] = fill
        h[h == 0] = fill
    return w, h


def _thin_qr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR of a tall factor by CholeskyQR2 (no LAPACK QR of an m-row array)."""
    from dlowrank.kernels.qr import cholesky_qr

    q, r = cholesky_qr([x])
    return q[0], r


def canonical(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The balanced factors (U_k S^{1/2}, V_k S^{1/2}) of u v^T, without forming u v^T.

    With u = Q_u R_u and v = Q_v R_v (thin QR), u v^T = Q_u (R_u R_v^T) Q_v^T, so the
    SVD of the small k x k core gives the SVD of u v^T; signs follow the package
    convention. Any (u R, v R^{-T}) gives the same result.
    """
    qu, ru = _thin_qr(u)
    qv, rv = _thin_qr(v)
    p, s, qt = np.linalg.svd(ru @ rv.T)
    left, right = sign_flip(qu @ p, qt @ qv.T)
    root = np.sqrt(s)
    return left * root, right.T * root
