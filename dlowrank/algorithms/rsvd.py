"""Multi-pass randomized SVD with power iterations in q + 1 passes (HMT 2011).

Tall orientation (the engine transposes a wide A). With l = rank + n_oversamples:

1. X_0 = Omega (n, l), Gaussian from the seed and the global column index.
2. q power iterations, one pass each: Z = A^T (A X) summed over row panels (the
   panel is read once for both products), X = orth(Z) in float64. HMT Alg. 4.4
   orthonormalizes after every product with A or A^T; orthonormalizing after each
   A^T A pair, as here, leaves directions below about sqrt(eps) sigma_1
   unresolved, far below any error the truncation reports.
3. Final pass: Y_i = A_i X (kept), W = A^T Y. ||A||_F^2 comes from the first pass
   (the engine folds it in).
4. Y = Q R (CholeskyQR2 from the panels' Gram matrices, shifted when Y is
   ill-conditioned: no QR of an m-row array). Then B = Q^T A = R^{-T} Y^T A = R^{-T} W^T needs no
   further pass. Its rounding error is about eps * cond(R) * ||A||, so this is
   used only when cond(R) <= eps^{-1/2}. Otherwise (a sketch wider than A's
   numerical rank, or a very fast-decaying one), with R = U_R S_R V_R^T, the
   directions Q U_R whose singular values in S_R are within eps^{-1/2} of the
   largest give (Q U_R)^T A = S_R^{-1} V_R^T W^T at the same accuracy; the others
   carry less than sqrt(eps) of Y and are dropped. Only when fewer directions than
   the rank asked remain does one more pass compute B = Q^T A directly, and the
   result reports q + 2 passes.
5. B = U_B S V^T, U = Q U_B; the error is exact:
   ||A - U_k S_k V_k^T||_F^2 = ||A||_F^2 - sum_{i<k} s_i^2, since Q has
   orthonormal columns (Pythagoras).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from dlowrank.algorithms.common import orthonormalize, relative_error
from dlowrank.engine.passes import ByRows, PassEngine
from dlowrank.engine.tall import Tall
from dlowrank.kernels import exact, passkernels, qr, random

logger = logging.getLogger(__name__)

#: Largest cond(R) for which B = R^{-T} W^T replaces the extra projection pass.
SAFE_COND = np.finfo(np.float64).eps ** -0.5


@dataclass
class Factors:
    """Tall-oriented factors with the quantities their error needs; ``u`` is a Tall
    (row panels in memory or in scratch, see :mod:`dlowrank.engine.tall`)."""

    u: Tall  # (m, l) orthonormal
    s: np.ndarray  # (l,)
    vt: np.ndarray  # (l, n)
    fro2: float


def _power_iterations(engine: PassEngine, x: np.ndarray, n_power_iter: int) -> np.ndarray:
    for _ in range(n_power_iter):
        if engine.layout == "panel":
            z = engine.run(passkernels.gram_apply, x).sums["z"]
        else:  # two passes per iteration: Y = A X, then Z = A^T Y
            y = engine.run(passkernels.apply_block, x).rows["y"]  # panels, never gathered
            z = np.concatenate(engine.run(passkernels.adjoint_block, ByRows(y)).cols["z"])
        x = orthonormalize(z)
    return x


def _final_panel(engine: PassEngine, x: np.ndarray, need: int) -> tuple[Tall, np.ndarray]:
    out = engine.run(passkernels.range_and_adjoint, x)
    q, r = qr.cholesky_qr(out.rows["y"], out.sums["yty"])  # Q as row panels
    cond = np.linalg.cond(r)
    if cond <= SAFE_COND:
        return q, scipy.linalg.solve_triangular(r, out.sums["w"].T, trans="T")
    # Y rank-deficient (a sketch wider than A's numerical rank): keep the directions of
    # Q U_R whose singular values of R are within SAFE_COND of the largest, where
    # (Q U_R)^T A = S_R^-1 V_R^T W^T is as accurate as above
    ur, sr, vrt = np.linalg.svd(r)
    keep = sr >= sr[0] / SAFE_COND
    if sr[0] > 0 and int(keep.sum()) >= need:
        logger.info("cond(R) = %.3g: keeping the %d well-resolved directions", cond, keep.sum())
        b = (vrt[keep] @ out.sums["w"].T) / sr[keep, None]
        return q.times(ur[:, keep]), b
    logger.info("cond(R) = %.3g > %.3g: one more pass computes Q^T A exactly", cond, SAFE_COND)
    return q, engine.run(passkernels.project, ByRows(q)).sums["b"]


def _final_block(engine: PassEngine, x: np.ndarray) -> tuple[Tall, np.ndarray]:
    q, _ = qr.cholesky_qr(engine.run(passkernels.apply_block, x).rows["y"])
    b = np.concatenate(engine.run(passkernels.adjoint_block, ByRows(q)).cols["z"]).T
    return q, b


def range_sketch(
    engine: PassEngine,
    width: int,
    n_power_iter: int,
    seed: np.random.SeedSequence,
    need: int | None = None,
    start: np.ndarray | None = None,
) -> Factors:
    """Q (m, <= width) and B = Q^T A in q + 1 passes (q + 2, or 2q + 2 in block layout).
    ``need``: the fewest columns Q may keep when Y is rank-deficient (default width).
    ``start``: a warm start, (n0, r) with n0 <= n (a previous result's right factor, tall
    orientation): it replaces the first r columns of Omega, zero in the rows of columns
    added since (the remaining Gaussian columns reach those)."""
    m, n = engine.tall_shape
    omega = random.gaussian_rows(
        seed.entropy, tuple(seed.spawn_key), random.Stream.RSVD_OMEGA, n, width, 0, n
    )
    if start is not None:
        r0 = min(start.shape[1], width)
        omega[:, :r0] = 0.0
        omega[: start.shape[0], :r0] = start[:, :r0]
    x = _power_iterations(engine, orthonormalize(omega), n_power_iter)
    if engine.layout == "panel":
        q, b = _final_panel(engine, x, width if need is None else need)
    else:  # B from its own pass: a rank-deficient Y needs nothing more
        q, b = _final_block(engine, x)
    ub, s, vt = exact.svd(b)
    return Factors(u=q.times(ub), s=s, vt=vt, fro2=engine.fro2)  # U = Q U_B, pending


def truncate(f: Factors, rank: int) -> tuple[Tall, np.ndarray, np.ndarray, float]:
    """Keep ``rank`` terms; the exact relative error of the truncation."""
    return f.u.columns(rank), f.s[:rank], f.vt[:rank], relative_error(f.fro2, f.s[:rank])


def rank_for_tol(f: Factors, tol: float) -> int | None:
    """Smallest k whose exact error is <= tol, or None if the sketch cannot reach it."""
    captured = np.cumsum(f.s**2)
    errs = (
        np.sqrt(np.maximum(f.fro2 - captured, 0.0) / f.fro2)
        if f.fro2 > 0
        else np.zeros_like(captured)
    )
    hits = np.nonzero(errs <= tol)[0]
    return int(hits[0]) + 1 if hits.size else None
