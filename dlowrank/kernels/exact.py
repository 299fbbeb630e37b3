"""Exact in-memory SVD, eigh, soft-thresholding and Eckart-Young errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg

logger = logging.getLogger(__name__)


def sign_flip(u: np.ndarray, vt: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply dlowrank's sign convention to singular (or eigen) vectors.

    The convention, shared by every SVD path in the package: in each column of
    ``u`` the entry of largest magnitude is positive (the first such entry on a
    tie). The matching row of ``vt`` is flipped with it, so ``u * s @ vt`` is
    unchanged. This is scikit-learn's ``svd_flip(u_based_decision=True)`` rule.

    Returns new arrays; the inputs are not modified.
    """
    if u.shape[1] == 0:
        return u.copy(), None if vt is None else vt.copy()
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1
    signs = signs.astype(u.dtype)
    return u * signs, None if vt is None else vt * signs[:, None]


def svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD by LAPACK gesdd, falling back to gesvd if gesdd does not converge.

    Returns ``u`` (m, p), ``s`` (p,) non-increasing and ``vt`` (p, n), p = min(m, n),
    in the package sign convention (:func:`sign_flip`).
    """
    try:
        u, s, vt = scipy.linalg.svd(
            a, full_matrices=False, lapack_driver="gesdd", check_finite=False
        )
    except np.linalg.LinAlgError:
        # gesdd's divide and conquer can fail to converge where the slower QR
        # iteration of gesvd succeeds (LAPACK Working Note 88).
        logger.warning("gesdd did not converge; retrying with gesvd")
        u, s, vt = scipy.linalg.svd(
            a, full_matrices=False, lapack_driver="gesvd", check_finite=False
        )
    u, vt = sign_flip(u, vt)
    return u, s, vt


def eigh_by_magnitude(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix, ordered by decreasing ``|w|``.

    Returns ``w`` (n,) and ``v`` (n, n) with ``a = v @ diag(w) @ v.T``; columns of
    ``v`` follow the package sign convention.
    """
    w, v = scipy.linalg.eigh(a, check_finite=False)
    order = np.argsort(-np.abs(w), kind="stable")
    v, _ = sign_flip(v[:, order])
    return w[order], v


def asymmetry(a: np.ndarray) -> float:
    """Relative asymmetry ``||a - a.T||_F / ||a||_F`` (0 for the zero matrix)."""
    norm = np.linalg.norm(a)
    return 0.0 if norm == 0 else float(np.linalg.norm(a - a.T) / norm)


@dataclass(frozen=True)
class OptimalError:
    """Eckart-Young error of the best rank-k approximation.

    ``frobenius`` = sqrt(sum_{i>=k} s_i^2), ``spectral`` = s_k (0 past the end),
    ``rel_frobenius`` and ``rel_spectral`` divide by ||A||_F and ||A||_2.
    """

    rank: int
    frobenius: float
    spectral: float
    rel_frobenius: float
    rel_spectral: float

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "frobenius": self.frobenius,
            "spectral": self.spectral,
            "rel_frobenius": self.rel_frobenius,
            "rel_spectral": self.rel_spectral,
        }


def optimal_error(s: np.ndarray, rank: int) -> OptimalError:
    """Eckart-Young errors of truncating the full spectrum ``s`` to ``rank`` terms."""
    s = np.asarray(s, dtype=np.float64)
    tail = s[rank:]
    frob = float(np.sqrt(np.sum(tail**2)))
    spec = float(tail[0]) if tail.size else 0.0
    total = float(np.sqrt(np.sum(s**2)))
    top = float(s[0]) if s.size else 0.0
    return OptimalError(
        rank=int(rank),
        frobenius=frob,
        spectral=spec,
        rel_frobenius=frob / total if total > 0 else 0.0,
        rel_spectral=spec / top if top > 0 else 0.0,
    )


def soft_threshold(s: np.ndarray, threshold: float) -> np.ndarray:
    """``(s - threshold)_+`` elementwise: the prox of ``threshold * ||.||_*`` on a spectrum."""
    return np.maximum(np.asarray(s) - threshold, 0)


def svt_error(s: np.ndarray, threshold: float, kept: int) -> float:
    """Frobenius norm of ``A - X`` where X keeps the first ``kept`` shrunk terms.

    Kept terms leave ``min(s_i, threshold)`` behind; dropped terms leave ``s_i``.
    """
    s = np.asarray(s, dtype=np.float64)
    left = np.concatenate([np.minimum(s[:kept], threshold), s[kept:]])
    return float(np.sqrt(np.sum(left**2)))
