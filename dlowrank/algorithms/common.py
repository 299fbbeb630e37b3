"""Steps shared by the streaming algorithms."""

from __future__ import annotations

import numpy as np

from dlowrank.errors import InputError
from dlowrank.kernels import exact, qr


def orthonormalize(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of a small (n, l) sketch of the short side
    (Householder QR: n is the short dimension)."""
    q, _ = np.linalg.qr(z)
    return q


def tall_qr(panels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Q (m, l) in memory and R of a sketch given as row panels (n-sized sketches only),
    from their Gram matrices (CholeskyQR2, shifted when ill-conditioned:
    :mod:`dlowrank.kernels.qr`); never a LAPACK QR of an m-row array."""
    q, r = qr.cholesky_qr(panels)
    return q.to_numpy(), r


def relative_error(fro2: float, captured: np.ndarray) -> float:
    """sqrt(||A||_F^2 - captured energy) / ||A||_F, clipped at 0 (rounding)."""
    if fro2 <= 0:
        return 0.0
    return float(np.sqrt(max(fro2 - float(np.sum(captured**2)), 0.0) / fro2))


def check_symmetric(matrix: np.ndarray, dtype: np.dtype, what: str, fix: str) -> np.ndarray:
    """``matrix`` symmetrized, after checking that its relative asymmetry is within
    1000 eps of ``dtype``; else InputError naming ``what`` was measured and the ``fix``."""
    tol = 1e3 * float(np.finfo(dtype).eps)
    asym = exact.asymmetry(matrix)
    if asym > tol:
        raise InputError(
            f"`a` is not symmetric: the relative asymmetry of {what} is {asym:.3g} "
            f"> {tol:.3g}; {fix}"
        )
    return (matrix + matrix.T) / 2
