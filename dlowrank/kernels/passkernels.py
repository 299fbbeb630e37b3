"""Per-piece kernels of the passes: pure NumPy on one block of the tall-oriented A.

Each takes ``(block, rows, cols, *args)`` -- a block of A in tall orientation
with its global row and column ranges -- and returns ``{"sums": ..., "rows": ...,
"cols": ...}``: arrays the pass engine sums over all pieces, per row range, or
per column range. Sketches are accumulated in float64 whatever A's dtype.
"""

from __future__ import annotations

import numpy as np

from dlowrank.kernels import random

_EMPTY: dict = {}


def _f64(block: np.ndarray) -> np.ndarray:
    return block if block.dtype == np.float64 else block.astype(np.float64)


def fro2(block: np.ndarray) -> np.ndarray:
    """||block||_F^2 in float64 (NaN or inf if the block has a non-finite entry)."""
    flat = block.ravel()
    with np.errstate(over="ignore"):  # an overflow is reported by the caller (check_finite)
        return np.asarray(flat @ flat)


def nonfinite(block, rows, cols) -> dict:
    """Count and first (row, column) of the non-finite entries of one piece (error path)."""
    bad = ~np.isfinite(block)
    count = int(bad.sum())
    first = tuple(int(v) for v in np.argwhere(bad)[0] + (rows[0], cols[0])) if count else None
    return {"count": count, "first": first}


def gram_apply(block, rows, cols, x, with_fro2) -> dict:
    """Panel kernel of a power iteration: Z += A_i^T (A_i X), one read (HMT §4.5)."""
    a = _f64(block)
    out = {"z": a.T @ (a @ x)}
    if with_fro2:
        out["fro2"] = fro2(a)
    return {"sums": out, "rows": _EMPTY, "cols": _EMPTY}


def range_and_adjoint(block, rows, cols, x, with_fro2) -> dict:
    """Final panel kernel: Y_i = A_i X (kept), W += A_i^T Y_i, ||A||_F^2 if asked."""
    a = _f64(block)
    y = a @ x
    sums = {"w": a.T @ y}
    if with_fro2:
        sums["fro2"] = fro2(a)
    return {"sums": sums, "rows": {"y": y}, "cols": _EMPTY}


def rayleigh(block, rows, cols, x, with_fro2) -> dict:
    """Final panel kernel of a symmetric A: T += X_i^T (A_i X) = X^T A X."""
    a = _f64(block)
    sums = {"t": x[rows[0] : rows[1]].T @ (a @ x)}
    if with_fro2:
        sums["fro2"] = fro2(a)
    return {"sums": sums, "rows": _EMPTY, "cols": _EMPTY}


def project(block, rows, cols, q) -> dict:
    """B += Q_i^T A_i: the explicit projection, when W = A^T Y cannot be used safely."""
    return {"sums": {"b": q[rows[0] : rows[1]].T @ _f64(block)}, "rows": _EMPTY, "cols": _EMPTY}


def apply_block(block, rows, cols, x, with_fro2) -> dict:
    """Block kernel: Y_i += A_ij X_j (per row range)."""
    a = _f64(block)
    sums = {"fro2": fro2(a)} if with_fro2 else {}
    return {"sums": sums, "rows": {"y": a @ x[cols[0] : cols[1]]}, "cols": _EMPTY}


def adjoint_block(block, rows, cols, y) -> dict:
    """Block kernel: Z_j += A_ij^T Y_i (per column range)."""
    return {"sums": {}, "rows": _EMPTY, "cols": {"z": _f64(block).T @ y[rows[0] : rows[1]]}}


# --- single-pass sketch (Tropp, Yurtsever, Udell, Cevher 2019) -----------------------

KEY_OMEGA, KEY_UPSILON, KEY_PHI, KEY_PSI, KEY_THETA = 1, 2, 3, 4, 5


def _test_rows(seed: tuple, key: int, n_rows: int, width: int, span: tuple[int, int]) -> np.ndarray:
    entropy, spawn_key = seed
    return random.gaussian_rows(entropy, spawn_key, key, n_rows, width, *span)


def three_sketch(block, rows, cols, seed, m, right, k, d) -> dict:
    """One chunk's share of the sketches Y = A Omega, X = Upsilon A, Z = Phi A Psi^T,
    the error sketch E = Theta A, and ||A||_F^2.

    ``right`` = [Omega | Psi^T] (n, k + s) is shared by all tasks; the m-sized test
    matrices Upsilon, Phi, Theta are generated here from the seed and the chunk's
    global row range. Either way the numbers depend on the global index only, so
    the result does not depend on the chunking, and nothing but sketches travels.
    """
    a = _f64(block)
    s = right.shape[1] - k
    left = _test_rows(seed, KEY_UPSILON, m, k + d, rows)  # [Upsilon^T | Theta^T] rows
    phi = _test_rows(seed, KEY_PHI, m, s, rows)
    ar = a @ right[cols[0] : cols[1]]  # one GEMM for Y and A Psi^T
    la = left.T @ a  # one GEMM for X and E
    sums = {"z": phi.T @ ar[:, k:], "fro2": fro2(a)}
    out_cols = {"x": la[:k]}
    if d:
        out_cols["e"] = la[k:]
    return {"sums": sums, "rows": {"y": ar[:, :k]}, "cols": out_cols}


def nystrom_sketch(block, rows, cols, seed, n, k, d) -> dict:
    """One chunk's share of Y = A Omega (n, k), the error sketch Theta A, and ||A||_F^2."""
    a = _f64(block)
    omega = _test_rows(seed, KEY_OMEGA, n, k, cols)
    theta = _test_rows(seed, KEY_THETA, n, d, rows)
    return {"sums": {"fro2": fro2(a)}, "rows": {"y": a @ omega}, "cols": {"e": theta.T @ a}}


def residual(block, rows, cols, u, s, vt) -> dict:
    """||A_i - U_i S V^T||_F^2 for the row panel (exact: no cancellation) and ||A_i||_F^2."""
    a = _f64(block)
    r = a - (u[rows[0] : rows[1]] * s) @ vt[:, cols[0] : cols[1]]
    return {"sums": {"res2": fro2(r), "fro2": fro2(a)}, "rows": _EMPTY, "cols": _EMPTY}
