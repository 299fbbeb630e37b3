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

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.stats

from dlowrank.algorithms.common import orthonormalize
from dlowrank.algorithms.rsvd import SAFE_COND
from dlowrank.engine.passes import PassEngine
from dlowrank.engine.tall import Tall
from dlowrank.errors import DlowrankWarning
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
    shrink: float = 1.0  # the scaling of s that kept the result no worse than zero
    state: SketchState | None = None  # the sketches it came from


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


@dataclass
class SketchState:
    """The sketches of one pass (tall orientation), from which :func:`finish` makes the
    factors; kept with a result, they absorb appended rows and columns (an update)."""

    y: Tall  # Y = A Omega (m, k), row panels
    x: np.ndarray  # X = Upsilon A (k, n)
    z: np.ndarray  # Z = Phi A Psi^T (s, s)
    e: np.ndarray  # E = Theta A (d, n)
    fro2: float


def right_tests(key: tuple, n: int, k: int, s: int) -> np.ndarray:
    """[Omega | Psi^T] (n, k + s): the n-sized test matrices, shared by every task."""
    return np.hstack(
        [
            random.gaussian_rows(key[0], key[1], random.Stream.SKETCH_OMEGA, n, k, 0, n),
            random.gaussian_rows(key[0], key[1], random.Stream.SKETCH_PSI, n, s, 0, n),
        ]
    )


def seed_key(seed: np.random.SeedSequence) -> tuple:
    return (seed.entropy, tuple(seed.spawn_key))


def sketch(
    engine: PassEngine, rank: int, k: int, s: int, d: int, seed: np.random.SeedSequence
) -> SketchFactors:
    """One pass; rank-``rank`` factors with an estimated error and its interval (and
    the sketches, ``state``)."""
    m, n = engine.tall_shape
    key = seed_key(seed)
    out = engine.run(passkernels.three_sketch, key, m, right_tests(key, n, k, s), k, d)
    state = SketchState(
        out.rows["y"],
        np.concatenate(out.cols["x"], axis=1),
        out.sums["z"],
        np.concatenate(out.cols["e"], axis=1),
        engine.fro2,
    )
    folded = None
    if "phi_y" in out.sums and (d == 0 or "theta_y" in out.sums):
        folded = np.vstack([out.sums["phi_y"], out.sums.get("theta_y", np.zeros((0, k)))])
    return finish(state, rank, k, s, d, key, folded)


def finish(
    state: SketchState,
    rank: int,
    k: int,
    s: int,
    d: int,
    key: tuple,
    folded: np.ndarray | None = None,
) -> SketchFactors:
    """Rank-``rank`` factors from the sketches (Tropp et al. 2019, Alg. 2), with the
    error estimate and its interval, the result never worse than zero. ``folded``:
    [Phi Y; Theta Y] (s + d, k) when the pass summed them."""
    m, n = state.y.shape[0], state.x.shape[1]
    fro2 = state.fro2
    q, r = qr.cholesky_qr(state.y)  # row panels, never gathered
    p = orthonormalize(state.x.T)
    both = _test_q(q, r, folded, key, m, k, s, d)
    phi_q, theta_q = both[:s], both[s:]
    psi = random.gaussian_rows(key[0], key[1], random.Stream.SKETCH_PSI, n, s, 0, n)
    psi_p = psi.T @ p
    core = np.linalg.lstsq(phi_q, state.z, rcond=None)[0]
    core = np.linalg.lstsq(psi_p, core.T, rcond=None)[0].T  # (k, k)
    uc, sc, vct = exact.svd(core)
    u, sv, vt = q.times(uc[:, :rank]), sc[:rank], (p @ vct[:rank].T).T  # u pending
    e = state.e
    theta_hat = theta_q @ (uc[:, :rank] * sv) @ vt  # Theta A_hat (d, n)
    est = _estimate(e - theta_hat, d, fro2)
    sv, est, shrink = _no_worse_than_zero(e, theta_hat, sv, est, d, fro2)
    reach = reachable(sc, rank, fro2)
    if shrink < 1 or est > slow_factor(d) * reach + SLOW_MARGIN:
        warnings.warn(_slow_message(est, reach, shrink, rank), DlowrankWarning, stacklevel=4)
    return SketchFactors(u, sv, vt, est, error_interval(est, d), fro2, shrink, state)


def _test_q(q: Tall, r: np.ndarray, folded, key: tuple, m: int, k: int, s: int, d: int):
    """[Phi Q; Theta Q] (s + d, k). From the pass's [Phi Y; Theta Y] as (.) R^{-1} when R
    is well conditioned (Q = Y R^{-1}; the rounding is about eps cond(R), as in
    :data:`~dlowrank.algorithms.rsvd.SAFE_COND`), which spares generating Phi and Theta
    over all m rows again (0.75 s of a 1.3 s finish on 100,000 rows, measured); else from
    one read of Q's panels."""
    if folded is not None and np.all(np.isfinite(r)) and np.linalg.cond(r) <= SAFE_COND:
        return scipy.linalg.solve_triangular(r, folded.T, trans="T").T
    # Phi^T Q (s, k) and Theta^T Q (d, k: the last d columns of the Upsilon stream)
    tests = [(random.Stream.SKETCH_PHI, s, 0), (random.Stream.SKETCH_UPSILON, k + d, k)]
    return _tests_times(key, m, tests, q)


def _estimate(resid: np.ndarray, d: int, fro2: float) -> float:
    """The unbiased relative error estimate from the error sketch's residual."""
    return float(np.sqrt(np.sum(resid**2) / d / fro2)) if fro2 > 0 else 0.0


#: The single pass may be this much above the optimum before it counts as far from it
#: (measured 1.00-1.15x on the test spectra that suit one pass).
SLOW_EXCESS = 1.25
#: ... plus this much, in relative error units (near-exact results are never flagged).
SLOW_MARGIN = 0.02


def slow_factor(d: int) -> float:
    """How far above the reachable error the estimate must be to warn: SLOW_EXCESS times
    the estimate's 99.9 % upper quantile over the truth (chi^2_d / d, see
    :func:`error_interval`): 1.88 at d = 20, so a good sketch is flagged by chance less
    than once in a thousand runs."""
    return SLOW_EXCESS * float(np.sqrt(scipy.stats.chi2.ppf(0.999, d) / d))


def reachable(core_s: np.ndarray, rank: int, fro2: float) -> float:
    """The relative error a rank-``rank`` truncation would reach if the top singular
    values of A were the core's (sqrt(||A||^2 - sum of the first squared) / ||A||).
    On a slowly decaying spectrum the single pass overestimates them, and this falls
    far below its estimated error: the sign that more passes are needed."""
    if fro2 <= 0:
        return 0.0
    return float(np.sqrt(max(fro2 - np.sum(core_s[:rank] ** 2), 0.0) / fro2))


def _no_worse_than_zero(
    e: np.ndarray, theta_hat: np.ndarray, sv: np.ndarray, est: float, d: int, fro2: float
) -> tuple[np.ndarray, float, float]:
    """Singular values scaled by c in [0, 1] when the estimate says A_hat is worse than
    the zero matrix (est >= 1): c = <A, A_hat> / ||A_hat||^2 is the best multiple of
    A_hat, ||A - c A_hat||^2 = ||A||^2 - <A, A_hat>^2 / ||A_hat||^2 <= ||A||^2, with
    <A, A_hat> estimated without bias from the independent error sketch:
    <Theta A, Theta A_hat> / d. Returns (s, estimate, c); c = 1 when nothing changed (a
    good sketch keeps its singular values: the estimate of c is noisy, by about
    ||A - A_hat|| / (||A_hat|| sqrt(d)), so it is used only where it can only help)."""
    norm2 = float(np.sum(sv**2))
    if est < 1.0 or norm2 == 0.0:
        return sv, est, 1.0
    c = float(np.clip(np.sum(e * theta_hat) / d / norm2, 0.0, 1.0))
    return sv * c, _estimate(e - c * theta_hat, d, fro2), c


def _slow_message(est: float, reach: float, shrink: float, rank: int) -> str:
    scaled = (
        f"; its singular values were scaled by {shrink:.3g} so that it is no worse than "
        "the zero matrix"
        if shrink < 1
        else ""
    )
    return (
        f"the single pass reached an estimated relative error of {est:.4g}, where its "
        f"own sketch says a rank-{rank} truncation reaches about {reach:.4g}: the "
        f"spectrum decays too slowly for one pass{scaled}. Use two passes instead: "
        "randomized_svd(a, rank, passes=2), or on the command line "
        "svd --passes 2"
    )
