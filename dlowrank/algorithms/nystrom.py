"""Single-pass Nyström approximation of a positive semidefinite matrix.

One pass accumulates Y = A Omega (n, k), an error sketch Theta A and ||A||_F^2.
Then, with a tiny shift nu for stability (Tropp, Yurtsever, Udell, Cevher 2017,
*Fixed-rank approximation of a positive-semidefinite matrix from streaming
data*, NeurIPS, Alg. 3): Y_nu = Y + nu Omega, B = Omega^T Y_nu = C^T C
(Cholesky), F = Y_nu C^{-1} = U S V^T, and A ≈ U max(S^2 - nu, 0) U^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from dlowrank.algorithms.common import check_symmetric, tall_qr
from dlowrank.algorithms.sketch import _test_times, error_interval
from dlowrank.engine.passes import PassEngine
from dlowrank.engine.tall import memory_tall
from dlowrank.errors import InputError
from dlowrank.kernels import passkernels, random


@dataclass
class NystromFactors:
    w: np.ndarray  # (rank,) non-negative, non-increasing
    v: np.ndarray  # (n, rank) orthonormal
    rel_error: float
    rel_error_interval: tuple[float, float]


def _core(omega: np.ndarray, y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """B = Omega^T Y, checked symmetric and positive semidefinite (a free test of A)."""
    b = check_symmetric(
        omega.T @ y,
        dtype,
        "Omega^T A Omega",
        "Nyström needs a symmetric positive semidefinite matrix",
    )
    norm = max(np.linalg.norm(b), np.finfo(float).tiny)
    tol = 1e3 * float(np.finfo(dtype).eps)
    lowest = float(np.linalg.eigvalsh(b)[0])
    if lowest < -tol * norm:
        raise InputError(
            f"`a` is not positive semidefinite: Omega^T A Omega has the eigenvalue "
            f"{lowest:.3g}; use randomized_svd(..., symmetric=True)"
        )
    return b


def _shifted_nystrom(y: np.ndarray, omega: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of Y (Omega^T Y)^+ Y^T, stabilized by the shift nu (Tropp et al. 2017).

    nu = sqrt(n) eps ||Y||_2 (float64 eps); if Omega^T Y_nu is still not numerically
    positive definite (float32 input carries rounding far above that), nu grows
    tenfold, at most 8 times, before the matrix is declared not PSD.
    """
    n = y.shape[0]
    ynorm = float(np.sqrt(max(np.linalg.eigvalsh(y.T @ y)[-1], 0.0)))  # ||Y||_2, from k x k
    if ynorm == 0:  # A Omega = 0: A vanishes on the sketch
        q, _ = tall_qr([omega])
        return np.zeros(rank), q[:, :rank]
    nu = np.sqrt(n) * np.finfo(np.float64).eps * ynorm
    for _ in range(8):
        y_nu = y + nu * omega
        b = omega.T @ y_nu
        try:
            c = scipy.linalg.cholesky((b + b.T) / 2)
            break
        except np.linalg.LinAlgError:
            nu *= 10
    else:
        raise InputError(
            "`a` is not positive semidefinite to working precision: "
            "Omega^T A Omega stays indefinite after shifting; use "
            "randomized_svd(..., symmetric=True)"
        )
    f = scipy.linalg.solve_triangular(c, y_nu.T, trans="T").T  # Y_nu C^{-1}
    qf, rf = tall_qr([f])  # SVD of the tall f through its k x k triangular factor
    uf, s, _ = np.linalg.svd(rf)
    u = qf @ uf
    return np.maximum(s[:rank] ** 2 - nu, 0.0), u[:, :rank]


def nystrom(
    engine: PassEngine,
    rank: int,
    k: int,
    d: int,
    seed: np.random.SeedSequence,
    dtype: np.dtype,
) -> NystromFactors:
    """One pass; a rank-``rank`` PSD approximation with an estimated error."""
    n = engine.tall_shape[0]
    key = (seed.entropy, tuple(seed.spawn_key))
    out = engine.run(passkernels.nystrom_sketch, key, n, k, d)
    fro2 = engine.fro2
    y = np.concatenate(list(out.rows["y"]))  # n rows: the short side of a square A
    omega = random.gaussian_rows(key[0], key[1], random.Stream.SKETCH_OMEGA, n, k, 0, n)
    _core(omega, y, dtype)  # A symmetric and PSD on the sketch, or refused
    w, v = _shifted_nystrom(y, omega, rank)
    e = np.concatenate(out.cols["e"], axis=1)
    theta_v = _test_times(key, random.Stream.SKETCH_THETA, n, d, memory_tall([v]))  # Theta V
    resid = e - (theta_v * w) @ v.T
    est = float(np.sqrt(np.sum(resid**2) / d / fro2)) if fro2 > 0 else 0.0
    return NystromFactors(w, v, est, error_interval(est, d))
