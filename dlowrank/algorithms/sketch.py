"""Single-pass SVD from three sketches (Tropp, Yurtsever, Udell, Cevher 2019).

One pass accumulates, chunk by chunk (any 2-D chunking),

    Y = A Omega (m, k),  X = Upsilon A (k, n),  Z = Phi A Psi^T (s, s),
    E = Theta A (d, n),  ||A||_F^2,

with Gaussian test matrices made from the seed and the global index. Then
Q = orth(Y), P = orth(X^T), C = (Phi Q)^+ Z ((Psi P)^+)^T and A ≈ Q C P^T
(Tropp et al. 2019, Alg. 2, doi:10.1137/18M1201068); the rank-r truncation comes
from the SVD of C. The error sketch E gives an unbiased estimate of
||A - Â||_F^2, namely ||E - (Theta Q) C P^T||_F^2 / d (ibid., §6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats

from dlowrank.algorithms.common import orthonormalize
from dlowrank.engine.passes import PassEngine
from dlowrank.engine.tall import Tall
from dlowrank.kernels import exact, passkernels, qr, random

#: Two-sided confidence of the stated error interval.
CONFIDENCE = 0.9


@dataclass
class SketchFactors:
    u: Tall  # (m, r), row panels
    s: np.ndarray
    vt: np.ndarray  # (r, n)
    rel_error: float
    rel_error_interval: tuple[float, float]
    fro2: float


def _test_panel(i: int, span: tuple[int, int], p: np.ndarray, seed, n_rows, tests):
    return np.vstack(
        [
            random.gaussian_rows(seed[0], seed[1], key, n_rows, width, *span)[:, first:].T @ p
            for key, width, first in tests
        ]
    )


def _test_times(seed: tuple, key: int, n_rows: int, width: int, basis: Tall) -> np.ndarray:
    """T^T basis for the (n_rows, width) test matrix T named by ``key``, generated panel
    by panel beside the basis's panels (by their global rows), so that neither is ever
    whole in memory; shape (width, basis columns)."""
    return _tests_times(seed, n_rows, [(key, width, 0)], basis)


def _tests_times(seed: tuple, n_rows: int, tests: list, basis: Tall) -> np.ndarray:
    """T_j[:, first_j:]^T basis for several test matrices ``tests`` = [(key, width,
    first)], stacked, from one read of the basis."""
    return basis.reduce(_test_panel, args=(seed, n_rows, tests))


def error_interval(estimate: float, d: int) -> tuple[float, float]:
    """A CONFIDENCE interval for the true error given the estimate from d error sketches.

    ||Theta M||_F^2 / d is a mixture of chi^2_d / d variables weighted by the
    squared singular values of M; the widest case is a single one, so the
    chi^2_d quantiles bound the ratio estimate^2 / truth^2 (Tropp et al. 2019, §6.2).
    """
    lo_q, hi_q = scipy.stats.chi2.ppf([(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], d) / d
    return estimate / np.sqrt(hi_q), estimate / np.sqrt(lo_q)


def sketch(
    engine: PassEngine, rank: int, k: int, s: int, d: int, seed: np.random.SeedSequence
) -> SketchFactors:
    """One pass; rank-``rank`` factors with an estimated error and its interval."""
    m, n = engine.tall_shape
    key = (seed.entropy, tuple(seed.spawn_key))
    right = np.hstack(
        [
            random.gaussian_rows(key[0], key[1], random.Stream.SKETCH_OMEGA, n, k, 0, n),
            random.gaussian_rows(key[0], key[1], random.Stream.SKETCH_PSI, n, s, 0, n),
        ]
    )
    out = engine.run(passkernels.three_sketch, key, m, right, k, d)
    fro2 = engine.fro2
    q, _ = qr.cholesky_qr(out.rows["y"])  # row panels, never gathered
    x = np.concatenate(out.cols["x"], axis=1)
    p = orthonormalize(x.T)
    # Phi^T Q (s, k) and Theta^T Q (d, k: the last d columns of the Upsilon stream) from
    # one read of Q's panels
    tests = [(random.Stream.SKETCH_PHI, s, 0), (random.Stream.SKETCH_UPSILON, k + d, k)]
    both = _tests_times(key, m, tests, q)
    phi_q, theta_q = both[:s], both[s:]
    psi_p = right[:, k:].T @ p
    core = np.linalg.lstsq(phi_q, out.sums["z"], rcond=None)[0]
    core = np.linalg.lstsq(psi_p, core.T, rcond=None)[0].T  # (k, k)
    uc, sc, vct = exact.svd(core)
    u, sv, vt = q.times(uc[:, :rank]), sc[:rank], (p @ vct[:rank].T).T  # u pending
    e = np.concatenate(out.cols["e"], axis=1)
    resid = e - theta_q @ (uc[:, :rank] * sv) @ vt
    est = float(np.sqrt(np.sum(resid**2) / d / fro2)) if fro2 > 0 else 0.0
    return SketchFactors(u, sv, vt, est, error_interval(est, d), fro2)
