"""Blockwise factorizations A ≈ U V^T: ALS, gradient descent, NMF; one pass per iteration.

Tall orientation (the engine transposes a wide A; the caller swaps U and V back).
Objective, with mask M (all ones unless entries are missing):

    f(U, V) = 1/2 ||M * (U V^T - A)||_F^2 + alpha/2 (||U||_F^2 + ||V||_F^2).

For a fully observed A its minimum over rank-k factors, k >= #{sigma_i > alpha},
is the soft-thresholded SVD sum_i (sigma_i - alpha)_+ u_i v_i^T (Mazumder,
Hastie, Tibshirani 2010, Lemma 6): the oracle the tests check against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from dlowrank.algorithms import rsvd as _rsvd
from dlowrank.engine.passes import ByRows, PassEngine
from dlowrank.engine.tall import Tall, lincomb
from dlowrank.errors import InputError, ParameterError
from dlowrank.kernels import factor, passkernels, random

logger = logging.getLogger(__name__)


@dataclass
class State:
    """``u``: the row factor (m, k) as a Tall (row panels, never gathered); ``v`` (n, k)."""

    u: Tall
    v: np.ndarray
    loss: list = field(default_factory=list)
    fro2: float | None = None
    n_iter: int = 0
    converged: bool = False
    residual2: float = 0.0  # ||M * (A - U V^T)||_F^2 at the returned factors
    u2: float | None = None  # ||U||_F^2 of ``u`` when a pass summed it
    biases: Biases | None = None  # the global mean and row and column biases, if fitted


@dataclass
class Biases:
    """The bias terms of ``mean + b_i + c_j + u_i . v_j``: ``col`` = c (n,); the row
    biases b are the last column of the state's ``u`` minus ``shift`` (the mean of b,
    moved into ``mean`` after the row step without rewriting U's panels)."""

    decay: float
    mean: float = 0.0
    col: np.ndarray | None = None
    shift: float = 0.0
    b2: float = 0.0  # ||b||^2 of the shifted row biases


def _penalty(alpha: float, u2: float, v: np.ndarray) -> float:
    """alpha/2 (||U||_F^2 + ||V||_F^2), given ||U||_F^2 (summed in a pass: no extra read)."""
    return 0.5 * alpha * (float(u2) + float(np.sum(v * v)))


def _converged(loss: list, tol: float) -> bool:
    return len(loss) > 1 and abs(loss[-2] - loss[-1]) <= tol * max(abs(loss[-2]), 1e-300)


def svd_init(
    engine: PassEngine, k: int, seed: np.random.SeedSequence
) -> tuple[Tall, np.ndarray, np.ndarray]:
    """Rank-k randomized SVD (q = 1: two passes) of the tall-oriented A; U as a Tall."""
    m, n = engine.tall_shape
    f = _rsvd.range_sketch(engine, min(k + 10, min(m, n)), 1, seed)
    return f.u.columns(k).materialize("u"), f.s[:k], f.vt[:k]


def _gaussian_panel(i, span, seed, key, n_rows, k, scale):
    return random.gaussian_rows(seed[0], seed[1], key, n_rows, k, *span) * scale


def random_init(
    engine: PassEngine, k: int, seed: np.random.SeedSequence, scale: float
) -> tuple[Tall, np.ndarray]:
    """Small Gaussian factors, chunk-independent (global index) like every test matrix;
    U is made panel by panel where the engine keeps tall quantities."""
    m, n = engine.tall_shape
    key = (seed.entropy, tuple(seed.spawn_key))
    u = engine.space.make(
        _gaussian_panel, args=(key, random.Stream.INIT_U, m, k, scale), width=k, what="u"
    )
    v = random.gaussian_rows(*key, random.Stream.INIT_V, n, k, 0, n) * scale
    return u, v


def _uniform_panel(i, span, seed, key, n_rows, k, scale):
    return random.gaussian_rows(seed[0], seed[1], key, n_rows, k, *span, uniform=True) * scale


def uniform_init(
    engine: PassEngine, k: int, seed: np.random.SeedSequence, scale: float
) -> tuple[Tall, np.ndarray]:
    """Uniform [0, scale) factors by global index (nmf's random start)."""
    m, n = engine.tall_shape
    key = (seed.entropy, tuple(seed.spawn_key))
    w = engine.space.make(
        _uniform_panel, args=(key, random.Stream.NMF_W, m, k, scale), width=k, what="w"
    )
    h = random.gaussian_rows(*key, random.Stream.NMF_H, n, k, 0, n, uniform=True) * scale
    return w, h


def _unobserved(engine: PassEngine) -> str:
    return "no stored rating" if engine.source.sparse else "all NaN"


def _check_observed(engine: PassEngine, out, masked: bool) -> None:
    if not masked:
        return
    empty = [int(r) for r in out.rows["empty_row"] if r >= 0]
    if empty:
        i = empty[0]
        side = "column" if engine.transpose else "row"
        raise InputError(
            f"{side} {i} of `a` has no observed entry ({_unobserved(engine)}); drop it, "
            "or factorize without it"
        )
    col_obs = out.sums["col_obs"]
    if np.any(col_obs == 0):
        j = int(np.argmin(col_obs))
        side = "row" if engine.transpose else "column"
        raise InputError(
            f"{side} {j} of `a` has no observed entry ({_unobserved(engine)}); drop it, "
            "or factorize without it"
        )


def als(
    engine: PassEngine,
    st: State,
    alpha: float,
    masked: bool,
    max_iter: int,
    tol: float,
    monitor=None,
) -> State:
    """Alternating ridge solves; each iteration is one fused pass (U from V, then V-sums)."""
    n, k = st.v.shape
    for _ in range(max_iter):
        inv_v = factor.ridge_inverse(st.v.T @ st.v, alpha)
        first = st.n_iter == 0
        out = engine.run(passkernels.als_step, st.v, inv_v, alpha, masked)
        st.fro2 = engine.fro2
        if first:
            _check_observed(engine, out, masked)
        u, u2 = out.rows["u"], float(np.trace(out.sums["utu"]))
        st.loss.append(0.5 * (st.fro2 + float(out.sums["fit"])) + _penalty(alpha, u2, st.v))
        atu = out.sums["atu"]
        if masked:
            cgram = out.sums["cgram"].reshape(n, k, k)
            v = factor.batched_ridge(cgram, atu, alpha)
            fit = -2 * np.sum(v * atu) + np.einsum("jk,jkl,jl->", v, cgram, v)
        else:
            v = atu @ factor.ridge_inverse(out.sums["utu"], alpha)
            fit = -2 * np.sum(v * atu) + np.sum(out.sums["utu"] * (v.T @ v))
        st.u, st.v, st.u2, st.n_iter = u, v, u2, st.n_iter + 1
        st.residual2 = max(st.fro2 + float(fit), 0.0)  # exact at (U_t, V_t): no extra pass
        if monitor is not None and monitor(st.u, st.v):  # a benchmark's own stopping rule
            break
        if _converged(st.loss, tol):
            st.converged = True
            break
    # the loss history ends with the objective at the returned factors (U_T, V_T)
    st.loss.append(0.5 * st.residual2 + _penalty(alpha, st.u2, st.v))
    return st


def als_biased(
    engine: PassEngine,
    st: State,
    alpha: float,
    masked: bool,
    max_iter: int,
    tol: float,
    monitor=None,
) -> State:
    """ALS for ``mean + b_i + c_j + u_i . v_j`` with penalties alpha on U, V and
    ``st.biases.decay`` (beta) on b, c; each iteration is one fused pass.

    Each row solves for [u_i, b_i], each column for [v_j, c_j] (ridge systems of size
    k + 1). After each half step the mean of the new biases moves into ``mean``: the
    predictions stay, the penalty can only drop, and at the optimum the biases have
    mean zero (the mean's own optimality), so no pass is spent on the mean.
    """
    bias = st.biases
    m, n = engine.tall_shape
    k = st.v.shape[1]
    reg = ridge_penalties(k, alpha, bias.decay)
    if bias.col is None:
        bias.col = np.zeros(n)
    for _ in range(max_iter):
        y = np.column_stack([st.v, np.ones(n)])
        inv_y = None if masked else factor.ridge_inverse(y.T @ y, reg)
        first = st.n_iter == 0
        out = engine.run(
            passkernels.als_step, y, inv_y, reg, masked, (bias.mean + bias.col, bias.mean)
        )
        st.fro2 = engine.fro2
        if first:
            _check_observed(engine, out, masked)
        sums = out.sums
        shift = float(sums["bsum"]) / m
        b2 = float(sums["b2"]) - m * shift * shift
        c2 = float(bias.col @ bias.col)
        penalty = _penalty(alpha, float(sums["u2"]), st.v) + 0.5 * bias.decay * (b2 + c2)
        st.loss.append(0.5 * float(sums["res2"]) + penalty)
        # the column-side sums used mean + b_i; the same as (mean + shift) + (b_i - shift)
        bias.mean, bias.shift, bias.b2 = bias.mean + shift, shift, b2
        atu = sums["atu"]
        if masked:
            cgram = factor.unpack_grams(sums["cgram"], k + 1)  # summed as upper triangles
            z = factor.batched_ridge(cgram, atu, reg)
            fit = -2 * np.sum(z * atu) + np.einsum("jk,jkl,jl->", z, cgram, z)
        else:
            z = atu @ factor.ridge_inverse(sums["utu"], reg)
            fit = -2 * np.sum(z * atu) + np.sum(sums["utu"] * (z.T @ z))
        col_shift = float(z[:, k].mean())
        bias.mean, bias.col = bias.mean + col_shift, z[:, k] - col_shift
        st.u, st.v, st.u2, st.n_iter = out.rows["u"], z[:, :k], float(sums["u2"]), st.n_iter + 1
        st.residual2 = max(float(sums["target2"]) + float(fit), 0.0)  # at (U_t, V_t)
        if monitor is not None and monitor(st.u, st.v):
            break
        if _converged(st.loss, tol):
            st.converged = True
            break
    c2 = float(bias.col @ bias.col)
    st.loss.append(
        0.5 * st.residual2 + _penalty(alpha, st.u2, st.v) + 0.5 * bias.decay * (bias.b2 + c2)
    )
    return st


def ridge_penalties(k: int, alpha: float, bias_decay: float | None) -> np.ndarray:
    """The diagonal penalty of a row's (or column's) ridge system: alpha on the k factor
    entries, and ``bias_decay`` on the bias when the model has biases (not None)."""
    alphas = np.full(k, float(alpha))
    return alphas if bias_decay is None else np.r_[alphas, float(bias_decay)]


def gradient_descent(
    engine: PassEngine,
    st: State,
    alpha: float,
    masked: bool,
    max_iter: int,
    tol: float,
    monitor=None,
    rescale: bool = False,
) -> State:
    """Gradient descent with Nesterov momentum; A V and A^T U come from one read per step.

    Step sizes are the blockwise Lipschitz constants 1 / (||V^T V||_2 + alpha) and
    1 / (||U^T U||_2 + alpha). The loss at each point comes from the same pass. If it
    went up after a momentum step, the momentum restarts (O'Donoghue & Candès 2015)
    with a plain gradient step from the best point; only if a plain step fails too
    do the steps halve (for good: letting them grow back measured 5x more passes on
    the benchmark's problem). The returned loss sequence never increases. With
    ``rescale`` (random starts) the first pass only measures ||A||_F and scales the
    start to A, so the iterations do not depend on A's units.

    U's updates are linear combinations of row panels (the point, R V, the previous
    point): in memory they are computed at once; in scratch each pass's tasks combine
    their own panels, and only the next point is written (one write of U per step).
    """
    best = None  # (loss, u, v, rv, grad_v, residual2, utu): the gradient is rv + alpha u
    y_u, y_v = st.u, st.v
    x_u, x_v, t, shrink, plain = st.u, st.v, 1.0, 1.0, False

    def step(u, v, rv, gv, utu):
        su = shrink / (np.linalg.norm(v.T @ v, 2) + alpha + 1e-300)
        sv = shrink / (np.linalg.norm(utu, 2) + alpha + 1e-300)
        return lincomb([(1.0 - su * alpha, u), (-su, rv)]), v - sv * gv

    for _ in range(max_iter):
        first = st.n_iter == 0
        out = engine.run(passkernels.residual_step, ByRows(y_u), y_v, masked, first)
        st.n_iter += 1
        st.fro2 = engine.fro2
        utu = out.sums["utu"]
        if first:
            _check_observed(engine, out, masked)
            if rescale:  # small random factors scaled to A: U V^T at a tenth of A's RMS
                m, n = engine.tall_shape
                rms = np.sqrt(st.fro2 / (m * n))
                c = np.sqrt(0.1 * rms / y_u.width) / max(
                    _std(y_u, out.sums["usum"], np.trace(utu)), 1e-300
                )
                y_u, y_v = (c * y_u).materialize("u"), y_v * c
                x_u, x_v = y_u, y_v
                continue
        loss = 0.5 * float(out.sums["res2"]) + _penalty(alpha, np.trace(utu), y_v)
        rv = out.rows["rv"]
        grad_v = out.sums["rtu"] + alpha * y_v
        if best is not None and loss > best[0]:
            if plain:  # even a plain gradient step failed: smaller steps
                shrink *= 0.5
            t, plain = 1.0, True  # restart the momentum from the best point
            x_u, x_v = best[1], best[2]
            y_u, y_v = step(*best[1:5], best[6])
            y_u = y_u.materialize("u")
            continue
        plain = False
        best = (loss, y_u, y_v, rv, grad_v, float(out.sums["res2"]), utu)
        st.loss.append(loss)
        if monitor is not None and monitor(y_u, y_v):
            break
        # momentum makes single steps uneven: ask for a small change over 10 steps
        if len(st.loss) > 10 and st.loss[-11] - st.loss[-1] <= 10 * tol * abs(st.loss[-11]):
            st.converged = True
            break
        u_new, v_new = step(y_u, y_v, rv, grad_v, utu)  # pending: y_u and rv combined
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        beta = (t - 1) / t_new
        y_u = lincomb([(1 + beta, u_new), (-beta, x_u)]).materialize("u")
        y_v = v_new + beta * (v_new - x_v)
        x_u, x_v, t = u_new, v_new, t_new
    if best is None:  # max_iter = 1 with a rescaled start: nothing evaluated yet
        raise ParameterError(
            "`max_iter` must be at least 2 for gradient descent from random "
            "factors (the first pass measures A to scale the start)"
        )
    _, st.u, st.v, _, _, st.residual2, utu = best
    st.u2 = float(np.trace(utu))
    return st


def _std(u: Tall, total: float, squares: float) -> float:
    """The standard deviation of U's entries, from their sum and sum of squares (both
    summed in the pass: no read of U)."""
    count = u.shape[0] * u.shape[1]
    mean = total / count
    return float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def nmf(
    engine: PassEngine,
    w: np.ndarray,
    h: np.ndarray,
    alpha: float,
    solver: str,
    max_iter: int,
    tol: float,
    name: str = "a",
    monitor=None,
) -> State:
    """Blockwise HALS or multiplicative updates; each iteration is one fused pass; W is a
    Tall (each task updates its own rows)."""
    st = State(w, h)
    for _ in range(max_iter):
        first = st.n_iter == 0
        out = engine.run(passkernels.nmf_step, ByRows(st.u), st.v, alpha, solver)
        st.fro2 = engine.fro2
        if first:
            _check_nonnegative(engine, out, name)
        w = out.rows["w"]
        atw, wtw = out.sums["atw"], out.sums["wtw"]
        w2 = float(np.trace(wtw))
        st.loss.append(0.5 * (st.fro2 + float(out.sums["fit"])) + _penalty(alpha, w2, st.v))
        update = factor.hals_update if solver == "hals" else factor.mu_update
        h = update(st.v, atw, wtw, alpha)
        st.u, st.v, st.u2, st.n_iter = w, h, w2, st.n_iter + 1
        st.residual2 = max(
            st.fro2 - 2 * float(np.sum(h * atw)) + float(np.sum(wtw * (h.T @ h))), 0.0
        )
        if monitor is not None and monitor(st.u, st.v):
            break
        if _converged(st.loss, tol):
            st.converged = True
            break
    st.loss.append(0.5 * st.residual2 + _penalty(alpha, st.u2, st.v))  # at the returned factors
    return st


def _check_nonnegative(engine: PassEngine, out, name: str) -> None:
    lows = np.stack(out.rows["low"])
    worst = lows[np.argmin(lows[:, 0])]
    if worst[0] < 0:
        i, j = int(worst[1]), int(worst[2])
        if engine.transpose:
            i, j = j, i
        raise InputError(
            f"`{name}` must be non-negative for nmf; a[{i}, {j}] = {worst[0]:.6g} "
            "(shift or clip the data, or use factorize)"
        )
