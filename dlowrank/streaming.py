"""Public streaming SVDs: multi-pass randomized SVD and the single-pass sketch.

Each validates its arguments, builds a pass engine over the input and calls an
algorithm body in :mod:`dlowrank.algorithms`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from dlowrank.algorithms import nystrom as _nystrom
from dlowrank.algorithms import rsvd as _rsvd
from dlowrank.algorithms import sketch as _sketch
from dlowrank.algorithms.common import relative_error
from dlowrank.errors import InputError, ParameterError, ToleranceError
from dlowrank.io.checkpoint import Checkpoint, fingerprint
from dlowrank.io.source import as_source, input_info
from dlowrank.kernels import exact
from dlowrank.params import (
    MAX_OVERSAMPLES,
    MAX_POWER_ITER,
    parse_choice,
    parse_float,
    parse_int,
    parse_rank,
    parse_seed,
    seed_record,
)
from dlowrank.passes import PassEngine
from dlowrank.results import EighResult, SVDResult

logger = logging.getLogger(__name__)

#: Default largest rank tried in fixed-precision mode.
MAX_RANK_DEFAULT = 512


def _engine(
    a: Any, layout: str, client: Any, storage_options: dict | None, progress: Any = None
) -> PassEngine:
    layout = parse_choice(layout, "layout", ("auto", "panel", "block"))
    return PassEngine(
        as_source(a, storage_options=storage_options),
        layout=layout,
        client=client,
        progress=progress,
    )


def _version() -> str:
    from dlowrank import __version__

    return __version__


def _attach_checkpoint(
    engine: PassEngine, checkpoint: Any, algorithm: str, params: dict, seed: np.random.SeedSequence
) -> None:
    """Resume from (and save to) ``checkpoint``: a URL, a Checkpoint, or None."""
    if checkpoint is None:
        return
    if not isinstance(checkpoint, Checkpoint):
        meta = {
            "algorithm": algorithm,
            "version": _version(),  # passes saved by other code are not mixed in
            "input_fingerprint": fingerprint(engine.source),
            "params": params,
            "seed": seed_record(seed),
        }
        checkpoint = Checkpoint(checkpoint, meta)
    done = checkpoint.open()
    if done:
        logger.info("resuming from %s: %d completed pass(es)", checkpoint.url, done)
    engine.checkpoint = checkpoint


def _input_info(engine: PassEngine, a: Any) -> dict:
    return input_info(engine.source, a)


def _orient(engine: PassEngine, u: np.ndarray, s: np.ndarray, vt: np.ndarray, dtype: np.dtype):
    """Undo the engine's transposition, apply the sign convention, cast to A's dtype."""
    if engine.transpose:
        u, vt = vt.T, u.T
    u, vt = exact.sign_flip(u, vt)
    return u.astype(dtype), s.astype(dtype), vt.astype(dtype)


def _parse_rank_or_tol(rank: Any, tol: Any, max_rank: Any, shape: tuple[int, int]):
    if (rank is None) == (tol is None):
        raise ParameterError(
            "give exactly one of `rank` (a fixed rank) and `tol` (a relative "
            f"Frobenius error); got rank={rank!r}, tol={tol!r}"
        )
    if rank is not None:
        if max_rank is not None:
            raise ParameterError("`max_rank` applies only with `tol`; drop it or pass tol")
        return parse_rank(rank, shape), None, None
    tol = parse_float(tol, "tol", low=0.0, high=1.0, low_open=True, high_open=True)
    high = min(shape)
    max_rank = (
        min(high, MAX_RANK_DEFAULT) if max_rank is None else parse_rank(max_rank, shape, "max_rank")
    )
    return None, tol, max_rank


def randomized_svd(
    a: Any,
    rank: int | None = None,
    *,
    n_power_iter: int = 2,
    n_oversamples: int = 10,
    seed: Any = None,
    tol: float | None = None,
    max_rank: int | None = None,
    symmetric: bool = False,
    client: Any = None,
    layout: str = "auto",
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
) -> SVDResult | EighResult:
    """Randomized SVD with power iterations, in q + 1 passes over ``a``.

    Parameters
    ----------
    a : Zarr URL or path, zarr.Array, dask or NumPy array, shape (m, n)
        Zarr input is read by the pass tasks themselves, chunk by chunk; nothing
        holds all of ``a``.
    rank : int, optional
        Number of singular triplets, in [1, min(m, n)]. Give ``rank`` or ``tol``.
    n_power_iter : int, default 2
        q >= 0 power iterations; each is one pass (A^T A applied per row panel).
    n_oversamples : int, default 10
        Extra sketch columns p >= 0; the sketch width is min(rank + p, min(m, n)).
    seed : int, SeedSequence or None
        The random test matrix depends on the seed and the global column index
        only: the same seed gives the same result for any chunking or scheduler.
    tol : float, optional
        Fixed precision: the smallest rank whose exact relative Frobenius error is
        <= tol, in (0, 1). The sketch widens (doubling, from 64 + p) up to
        ``max_rank``; each attempt costs q + 1 passes.
    max_rank : int, optional
        Largest rank tried with ``tol`` (default min(m, n, 512)).
    symmetric : bool, default False
        ``a`` is symmetric: return an :class:`EighResult` (eigenvalues by
        decreasing magnitude) from the Rayleigh-Ritz projection Q^T A Q.
    client : distributed.Client, optional
        Default: dask's current scheduler (an active distributed client is used).
    layout : {"auto", "panel", "block"}
        "panel" reads whole row panels (q + 1 passes); "block" reads chunk by chunk
        (2q + 2 passes), chosen automatically when a panel exceeds 1 GiB.
    checkpoint : str or Checkpoint, optional
        A folder (path or URL) where each pass's output is saved. Run again with
        the same input and parameters, the computation restores the completed
        passes instead of reading A again (a killed job resumes); a checkpoint of
        another input or other parameters is refused. Not removed on success.
    progress : callable, optional
        Receives a :class:`dlowrank.passes.PassEvent` as passes start, progress and end.

    Returns
    -------
    SVDResult or EighResult
        ``u`` (m, k) and ``vt`` (k, n) orthonormal, ``s`` non-increasing, in the
        input's float dtype (accumulated in float64), in the package sign
        convention. ``rel_error`` is exact: ||A||_F^2 - sum s_i^2 from quantities
        of the passes (Pythagoras, Q orthonormal), accurate to about
        sqrt(eps) relative to ||A||_F. ``passes`` counts full reads of ``a``.

    Notes
    -----
    Halko, Martinsson, Tropp 2011, *Finding structure with randomness*,
    doi:10.1137/090771806: randomized subspace iteration with the A^T A product
    fused per row panel and orthonormalized after each A^T A (between Alg. 4.3 and
    4.4: directions below about sqrt(eps) sigma_1 are not resolved, which does not
    matter for the error).
    The last pass also accumulates W = A^T Y; with Y = QR, Q^T A = R^{-T} W^T
    (no extra pass). That product amplifies rounding by cond(R), so it is used
    only when cond(R) <= eps^{-1/2} ~ 6.7e7 (error <= 1.5e-8 ||A||); otherwise
    one extra pass computes Q^T A and ``passes`` is q + 2.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> t = dlowrank.make_matrix((2000, 300), 20, seed=0, chunks=(500, 300))
    >>> r = dlowrank.randomized_svd(t.array, 5, seed=1)
    >>> r.passes, bool(np.allclose(r.s, t.singular_values[:5]))
    (3, True)
    """
    start = time.perf_counter()
    engine = _engine(a, layout, client, storage_options, progress)
    shape = engine.source.shape
    rank, tol, max_rank = _parse_rank_or_tol(rank, tol, max_rank, shape)
    q = parse_int(
        n_power_iter,
        "n_power_iter",
        0,
        MAX_POWER_ITER,
        " (each one is another read of A; past a few, widen the sketch with n_oversamples)",
    )
    p = parse_int(n_oversamples, "n_oversamples", 0, MAX_OVERSAMPLES)
    if symmetric and shape[0] != shape[1]:
        raise InputError(f"`symmetric=True` needs a square matrix; got shape {tuple(shape)}")
    seq = parse_seed(seed)
    _attach_checkpoint(
        engine,
        checkpoint,
        "randomized_svd",
        {
            "rank": rank,
            "tol": tol,
            "max_rank": max_rank,
            "n_power_iter": q,
            "n_oversamples": p,
            "symmetric": bool(symmetric),
            "layout": engine.layout,
        },
        seq,
    )
    if tol is None:
        factors = _rsvd.range_sketch(engine, min(rank + p, min(shape)), q, seq)
    else:
        factors, rank = _fixed_precision(engine, tol, max_rank, q, p, seq)
    params = {
        "rank": rank,
        "n_power_iter": q,
        "n_oversamples": p,
        "tol": tol,
        "max_rank": max_rank,
        "symmetric": bool(symmetric),
        "layout": engine.layout,
    }
    prov = {
        "passes": engine.passes,
        "restored_passes": engine.restored,
        "params": params,
        "seed": seed_record(seq),
        "input": _input_info(engine, a),
        "error_kind": "exact",
    }
    if symmetric:
        return _eigh_result(factors, rank, engine, start, prov)
    u, s, vt, rel = _rsvd.truncate(factors, rank)
    u, s, vt = _orient(engine, u, s, vt, engine.source.dtype)
    return SVDResult(
        u=u,
        s=s,
        vt=vt,
        rel_error=rel,
        algorithm="randomized_svd",
        seconds=time.perf_counter() - start,
        **prov,
    )


def _fixed_precision(engine, tol, max_rank, q, p, seq):
    width = min(max_rank, 64)
    while True:
        factors = _rsvd.range_sketch(engine, min(width + p, min(engine.tall_shape)), q, seq)
        rank = _rsvd.rank_for_tol(factors, tol)
        if rank is not None and rank <= max_rank:
            return factors, rank
        if width >= max_rank:
            best = _rsvd.truncate(factors, max_rank)[3]
            raise ToleranceError(
                f"`tol` = {tol:g} is not reached within `max_rank` = {max_rank}: the best "
                f"relative error was {best:.4g} at rank {max_rank} ({engine.passes} passes); "
                "raise max_rank or tol"
            )
        width = min(2 * width, max_rank)
        logger.info("tol %g not reached; widening the sketch to %d", tol, width)


def _eigh_result(factors, rank, engine, start, prov) -> EighResult:
    # Rayleigh-Ritz on the sketch's range: with U = Q U_B, T = U^T A U = S V^T U,
    # from quantities at hand (no pass). ||A - U T U^T||_F^2 = ||A||_F^2 - ||T||_F^2.
    basis = factors.u
    t = (factors.s[:, None] * factors.vt) @ basis
    asym = float(np.linalg.norm(t - t.T) / max(np.linalg.norm(t), np.finfo(float).tiny))
    dtype = engine.source.dtype
    if asym > 1e3 * np.finfo(dtype).eps:
        raise InputError(
            f"`a` is not symmetric: the relative asymmetry of U^T A U on its sketch "
            f"is {asym:.3g}; use symmetric=False"
        )
    w, v = exact.eigh_by_magnitude((t + t.T) / 2)
    w, v = w[:rank], basis @ v[:, :rank]
    v, _ = exact.sign_flip(v)
    return EighResult(
        w=w.astype(dtype),
        v=v.astype(dtype),
        rel_error=relative_error(factors.fro2, w),
        algorithm="randomized_eigh",
        seconds=time.perf_counter() - start,
        **prov,
    )


def sketch_svd(
    a: Any,
    rank: int,
    *,
    seed: Any = None,
    sketch_size: Any = None,
    n_error_sketch: int = 20,
    client: Any = None,
    layout: str = "block",
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
) -> SVDResult:
    """Single-pass SVD from three sketches, with an estimated error and its confidence.

    Parameters
    ----------
    a : Zarr URL or path, zarr.Array, dask or NumPy array, shape (m, n)
        Any 2-D chunking; each chunk is read exactly once.
    rank : int
        In [1, min(m, n)].
    seed : int, SeedSequence or None
        Test matrices depend on the seed and the global index only.
    sketch_size : int or (int, int), optional
        (k, s): range sketch width k >= rank and core sketch size s >= k; default
        k = 4 rank + 1, s = 2k + 1 (Tropp et al. 2019, §5.4), both capped at
        min(m, n).
    n_error_sketch : int, default 20
        d >= 1 rows of the independent error sketch Theta A.
    layout : {"block", "panel", "auto"}
        "block" (default): one task per chunk, the least memory, since every
        sketch is a sum of per-chunk terms; "panel" groups chunk rows.
    checkpoint, progress
        As in :func:`randomized_svd`.

    Returns
    -------
    SVDResult
        ``passes`` = 1; ``rel_error`` is the unbiased estimate from the error
        sketch (``error_kind`` "estimated"); ``params["rel_error_interval"]`` is
        a 90 % confidence interval for the true relative error.

    Notes
    -----
    Tropp, Yurtsever, Udell, Cevher 2019, *Streaming low-rank matrix
    approximation with an application to scientific simulation*, SISC,
    doi:10.1137/18M1201068, Alg. 2 and §6 (error estimation).

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> t = dlowrank.make_matrix((2000, 300), 20, seed=0, chunks=(500, 100))
    >>> r = dlowrank.sketch_svd(t.array, 5, seed=1)
    >>> r.passes, bool(np.allclose(r.s, t.singular_values[:5], rtol=1e-6))
    (1, True)
    """
    start = time.perf_counter()
    engine = _engine(a, layout, client, storage_options, progress)
    shape = engine.source.shape
    rank = parse_rank(rank, shape, required=True)
    k, s = _parse_sketch_size(sketch_size, rank, min(shape))
    d = parse_int(n_error_sketch, "n_error_sketch", 1)
    seq = parse_seed(seed)
    _attach_checkpoint(
        engine,
        checkpoint,
        "sketch_svd",
        {"rank": rank, "sketch_size": [k, s], "n_error_sketch": d, "layout": engine.layout},
        seq,
    )
    f = _sketch.sketch(engine, rank, k, s, d, seq)
    u, sv, vt = _orient(engine, f.u, f.s, f.vt, engine.source.dtype)
    params = {
        "rank": rank,
        "sketch_size": [k, s],
        "n_error_sketch": d,
        "rel_error_interval": [float(x) for x in f.rel_error_interval],
        "confidence": _sketch.CONFIDENCE,
        "layout": engine.layout,
    }
    return SVDResult(
        u=u,
        s=sv,
        vt=vt,
        rel_error=f.rel_error,
        error_kind="estimated",
        passes=engine.passes,
        restored_passes=engine.restored,
        algorithm="sketch_svd",
        params=params,
        seed=seed_record(seq),
        input=_input_info(engine, a),
        seconds=time.perf_counter() - start,
    )


def _parse_sketch_size(sketch_size: Any, rank: int, cap: int) -> tuple[int, int]:
    if sketch_size is None:
        k = min(4 * rank + 1, cap)
        return k, min(2 * k + 1, cap)
    if isinstance(sketch_size, (tuple, list)) and len(sketch_size) == 2:
        k = parse_int(sketch_size[0], "sketch_size[0] (k)", rank, cap)
        s = parse_int(sketch_size[1], "sketch_size[1] (s)", k, cap)
        return k, s
    k = parse_int(sketch_size, "sketch_size", rank, cap)
    return k, min(2 * k + 1, cap)


def nystrom(
    a: Any,
    rank: int,
    *,
    seed: Any = None,
    sketch_size: int | None = None,
    n_error_sketch: int = 20,
    client: Any = None,
    layout: str = "block",
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
) -> EighResult:
    """Single-pass Nyström eigen-decomposition of a symmetric positive semidefinite matrix.

    Parameters
    ----------
    a : Zarr URL or path, zarr.Array, dask or NumPy array, shape (n, n)
        Symmetric positive semidefinite (a kernel or covariance matrix). Both are
        checked for free on the sketch Omega^T A Omega; a violation is refused.
    rank : int
        In [1, n].
    sketch_size : int, optional
        k in [rank, n]; default min(2 rank + 10, n).
    n_error_sketch : int, default 20
        Rows d of the error sketch.
    layout : {"block", "panel", "auto"}
        One task per chunk by default (see :func:`sketch_svd`).
    checkpoint, progress
        As in :func:`randomized_svd`.

    Returns
    -------
    EighResult
        ``w`` >= 0 non-increasing, ``v`` orthonormal; ``passes`` = 1, ``rel_error``
        estimated (``params["rel_error_interval"]``: 90 % confidence).

    Notes
    -----
    Tropp, Yurtsever, Udell, Cevher 2017, *Fixed-rank approximation of a
    positive-semidefinite matrix from streaming data*, NeurIPS, Alg. 3
    (arXiv:1706.05736), with the shift nu = sqrt(n) eps ||Y||_2.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> t = dlowrank.make_matrix((400, 400), 10, kind="psd", decay=0.5, seed=0)
    >>> r = dlowrank.nystrom(t.array, 5, seed=1)
    >>> r.passes, bool(np.allclose(r.w, t.singular_values[:5]))
    (1, True)
    """
    start = time.perf_counter()
    engine = _engine(a, layout, client, storage_options, progress)
    shape = engine.source.shape
    if shape[0] != shape[1]:
        raise InputError(f"nystrom needs a square matrix; got shape {tuple(shape)}")
    rank = parse_rank(rank, shape, required=True)
    k = (
        min(2 * rank + 10, shape[0])
        if sketch_size is None
        else parse_int(sketch_size, "sketch_size", rank, shape[0])
    )
    d = parse_int(n_error_sketch, "n_error_sketch", 1)
    seq = parse_seed(seed)
    _attach_checkpoint(
        engine,
        checkpoint,
        "nystrom",
        {"rank": rank, "sketch_size": k, "n_error_sketch": d, "layout": engine.layout},
        seq,
    )
    dtype = engine.source.dtype
    f = _nystrom.nystrom(engine, rank, k, d, seq, 1e3 * float(np.finfo(dtype).eps))
    v, _ = exact.sign_flip(f.v)
    params = {
        "rank": rank,
        "sketch_size": k,
        "n_error_sketch": d,
        "rel_error_interval": [float(x) for x in f.rel_error_interval],
        "confidence": _sketch.CONFIDENCE,
        "layout": engine.layout,
    }
    return EighResult(
        w=f.w.astype(dtype),
        v=v.astype(dtype),
        rel_error=f.rel_error,
        error_kind="estimated",
        passes=engine.passes,
        restored_passes=engine.restored,
        algorithm="nystrom",
        params=params,
        seed=seed_record(seq),
        input=_input_info(engine, a),
        seconds=time.perf_counter() - start,
    )
