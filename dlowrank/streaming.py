"""Public streaming SVDs: multi-pass randomized SVD, the single-pass sketch, Nyström.

Each function is a declaration (:class:`dlowrank.params.Spec`: its parameters, and
the rules that need the input) and a body: a :class:`dlowrank.engine.runner.Run`
checks everything and builds the engine, an algorithm in :mod:`dlowrank.algorithms`
makes the passes, and the run makes the result. The job schema and the CLI flags
derive from the same declarations.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import numpy as np

from dlowrank.algorithms import nystrom as _nystrom
from dlowrank.algorithms import rsvd as _rsvd
from dlowrank.algorithms import sketch as _sketch
from dlowrank.algorithms.common import check_symmetric, relative_error
from dlowrank.engine.runner import ENGINE, LAYOUT, SEED, Run
from dlowrank.errors import InputError, ParameterError, ToleranceError
from dlowrank.kernels import exact
from dlowrank.params import (
    MAX_OVERSAMPLES,
    MAX_POWER_ITER,
    Param,
    Spec,
    parse_int,
    parse_rank,
)
from dlowrank.results import EighResult, SVDResult

logger = logging.getLogger(__name__)

#: Default largest rank tried in fixed-precision mode.
MAX_RANK_DEFAULT = 512

# --- declarations -------------------------------------------------------------------------

RANK = Param(
    "rank",
    int,
    None,
    "Number of singular triplets, in [1, min(m, n)] (or give max_error).",
    hint=" in [1, min(a.shape)]",
)
#: Reads of A a randomized SVD makes when neither ``passes`` nor ``n_power_iter`` is given.
DEFAULT_PASSES = 2
PASSES = Param(
    "passes",
    int,
    None,
    "Reads of A: 2 (default) power-iterates once with a sketch three times as wide as "
    "rank + n_oversamples (up to 256 columns, at least twice), as accurate as 3 passes at "
    "rank + n_oversamples or better (measured: README, choosing passes); k >= 3: k - 1 "
    "power iterations at rank + n_oversamples.",
    low=1,
    high=MAX_POWER_ITER + 1,
)
N_POWER_ITER = Param(
    "n_power_iter",
    int,
    None,
    "Power iterations q (q + 1 passes) at width rank + n_oversamples; instead of passes.",
    low=0,
    high=MAX_POWER_ITER,
    hint=" (each one is another read of A; past a few, widen the sketch with n_oversamples)",
)
N_OVERSAMPLES = Param(
    "n_oversamples", int, 10, "Extra sketch columns p.", low=0, high=MAX_OVERSAMPLES
)
MAX_ERROR = Param(
    "max_error",
    float,
    None,
    "Fixed precision: the smallest rank whose relative Frobenius error is at most this, "
    "in (0, 1) (instead of a rank).",
    low=0.0,
    high=1.0,
    low_open=True,
    high_open=True,
    aliases=("tol",),
)
MAX_RANK = Param(
    "max_rank", int, None, "Largest rank tried with max_error.", hint=" in [1, min(a.shape)]"
)
START = Param(
    "start",
    "object",
    None,
    "A warm start: a previous SVDResult of this matrix before it grew (or its path). Its "
    "right factor replaces the first columns of the random test matrix, so fewer passes "
    "reach the same error; passes=1 is then allowed (one read: Y = A X and A^T Y).",
    role="api",
)
SYMMETRIC = Param("symmetric", bool, False, "Symmetric input: eigen-decomposition form.")
SKETCH_SIZE = Param(
    "sketch_size",
    "sketch_size",
    None,
    "Single pass: range sketch width k >= rank, or k,s with core size s >= k "
    "(default k = 4 rank + 1, s = 2k + 1).",
)
N_ERROR_SKETCH = Param(
    "n_error_sketch",
    int,
    20,
    "Single pass: rows d of the independent error sketch.",
    low=1,
    high=MAX_OVERSAMPLES,
)


def _check_rsvd(v: dict, source: Any) -> dict:
    shape = source.shape
    rank, max_error, max_rank = v["rank"], v["max_error"], v["max_rank"]
    if (rank is None) == (max_error is None):
        raise ParameterError(
            "give exactly one of `rank` (a fixed rank) and `max_error` (a relative "
            f"Frobenius error); got rank={rank!r}, max_error={max_error!r}"
        )
    if rank is not None:
        if max_rank is not None:
            raise ParameterError(
                "`max_rank` applies only with `max_error`; drop it or pass max_error"
            )
        rank = parse_rank(rank, shape)
    else:
        max_rank = (
            min(min(shape), MAX_RANK_DEFAULT)
            if max_rank is None
            else parse_rank(max_rank, shape, "max_rank")
        )
    if v["symmetric"] and shape[0] != shape[1]:
        raise InputError(f"`symmetric=True` needs a square matrix; got shape {tuple(shape)}")
    start = v.get("start")
    if start is not None and max_error is not None:
        raise ParameterError(
            "`start` warm-starts a fixed-rank run; with `max_error` the sketch widens "
            "until the error is met: give rank instead, or drop start"
        )
    if start is not None:
        start = {k: w for k, w in _start_factor(start, shape).items() if k != "factor"}
    q, widen = _power_and_width(v["passes"], v["n_power_iter"], warm=start is not None)
    return {
        "rank": rank,
        "n_power_iter": q,
        "n_oversamples": v["n_oversamples"],
        "widen": widen,
        "max_error": max_error,
        "max_rank": max_rank,
        "symmetric": v["symmetric"],
        **({"start": start} if start is not None else {}),
    }


def _start_factor(start: Any, shape: tuple[int, int]) -> dict:
    """A warm start's right factor in A's orientation: (n0, r) for the columns of A
    when A is tall, (m0, r) for its rows when wide; with where it came from."""
    from dlowrank.results import SVDResult, load

    where = None
    if isinstance(start, (str, os.PathLike)):
        where = os.fspath(start)
        start = load(where)
    if not isinstance(start, SVDResult):
        raise ParameterError(
            "`start` must be an SVDResult or a saved one's path (a previous result of this "
            f"matrix, before it grew); got {type(start).__name__}"
        )
    m0, n0 = start.u.shape[0], start.vt.shape[1]
    if m0 > shape[0] or n0 > shape[1]:
        raise ParameterError(
            f"`start` is a result of a {m0} x {n0} matrix, larger than this {shape[0]} x "
            f"{shape[1]} one: a warm start comes from the matrix before it grew"
        )
    wide = shape[1] > shape[0]
    factor = np.asarray(start.u) if wide else np.asarray(start.vt).T
    return {"factor": factor.astype(np.float64), "from": where, "shape": [m0, n0]}


def _power_and_width(
    passes: int | None, n_power_iter: int | None, warm: bool = False
) -> tuple[int, int]:
    """(power iterations, width factor) from ``passes`` or ``n_power_iter``.

    Two passes get a sketch three times as wide (:func:`sketch_width`): a pass costs a
    read of A, while widening it costs GEMM time beside the read. Measured (``dlowrank
    bench --suite passes``, README "choosing passes"), rank 20: q = 1 at 3 (k + p)
    matches or beats q = 2 at k + p on every matrix there (real images, eigenfaces, 1/i,
    1/sqrt(i), flat and scikit-learn's spectra), with one read less; at 2 (k + p) it
    trailed on 1/sqrt(i) and flat spectra.
    """
    if passes == 1 and warm and n_power_iter in (None, 0):
        return 0, 1  # a warm start's one pass: Y = A X and A^T Y in one read
    if passes == 1:
        raise ParameterError(
            "`passes` = 1 is the single-pass sketch: call dlowrank.sketch_svd(a, rank) "
            "(CLI: svd --passes 1), or give passes >= 2"
        )
    if passes is not None and n_power_iter is not None and n_power_iter != passes - 1:
        raise ParameterError(
            f"`passes` = {passes} and `n_power_iter` = {n_power_iter} disagree (passes is "
            "n_power_iter + 1); give one of them"
        )
    if n_power_iter is not None:
        return n_power_iter, 1
    q = (passes or DEFAULT_PASSES) - 1
    return q, 3 if q == 1 else 1


#: The default two passes' sketch: three times rank + n_oversamples up to this many
#: columns (never less than twice). Per 10,000 x 2,000 float64 chunk on one core, a
#: pass's two products cost about 2 ms per sketch column and reading the chunk 0.35-0.5 s
#: (measured): up to about 256 columns a pass stays near the cost of a read.
WIDE_COLUMNS = 256


def sketch_width(widen: int, rank: int, oversamples: int, short: int) -> int:
    """The sketch width for ``widen`` (1, or 3 for the default two passes: see
    :data:`WIDE_COLUMNS`) at ``rank`` + ``oversamples``, at most ``short`` = min(m, n)."""
    base = rank + oversamples
    width = widen * base
    if widen > 2:
        width = min(width, max(2 * base, WIDE_COLUMNS))
    return min(width, short)


def _check_sketch(v: dict, source: Any) -> dict:
    shape = source.shape
    rank = parse_rank(v["rank"], shape, required=True)
    cap = min(shape)
    size = v["sketch_size"]
    if size is None:
        k = min(4 * rank + 1, cap)
        if 2 * k >= cap:  # a narrow matrix: sketching all of its short side is exact
            k = cap
        s = min(2 * k + 1, cap)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        k = parse_int(size[0], "sketch_size[0] (k)", rank, cap)
        s = parse_int(size[1], "sketch_size[1] (s)", k, cap)
    else:
        size = size[0] if isinstance(size, (tuple, list)) else size
        k = parse_int(size, "sketch_size", rank, cap)
        s = min(2 * k + 1, cap)
    out = {"rank": rank, "sketch_size": [k, s], "n_error_sketch": v["n_error_sketch"]}
    if v.get("keep_sketch"):
        out["keep_sketch"] = True
    return out


def _check_nystrom(v: dict, source: Any) -> dict:
    shape = source.shape
    if shape[0] != shape[1]:
        raise InputError(f"nystrom needs a square matrix; got shape {tuple(shape)}")
    rank = parse_rank(v["rank"], shape, required=True)
    k = v["sketch_size"]
    k = min(2 * rank + 10, shape[0]) if k is None else parse_int(k, "sketch_size", rank, shape[0])
    return {"rank": rank, "sketch_size": k, "n_error_sketch": v["n_error_sketch"]}


RANDOMIZED_SVD = Spec(
    "randomized_svd",
    (
        RANK,
        PASSES,
        N_POWER_ITER,
        N_OVERSAMPLES,
        SEED,
        MAX_ERROR,
        MAX_RANK,
        SYMMETRIC,
        START,
        LAYOUT,
        *ENGINE,
    ),
    _check_rsvd,
    tiles=True,
)
KEEP_SKETCH = Param(
    "keep_sketch",
    bool,
    False,
    "Keep the sketches with the result (Y, of one row per row of A, in Zarr beside U) "
    "so that dlowrank.update can extend it to appended rows and columns by reading "
    "those only.",
)
SKETCH_SVD = Spec(
    "sketch_svd",
    (
        RANK,
        SEED,
        SKETCH_SIZE,
        N_ERROR_SKETCH,
        KEEP_SKETCH,
        replace(LAYOUT, default="block"),
        *ENGINE,
    ),
    _check_sketch,
)
NYSTROM = Spec(
    "nystrom",
    (
        RANK,
        SEED,
        replace(
            SKETCH_SIZE,
            kind=int,
            help="Sketch width k in [rank, n] (default 2 rank + 10).",
            low=1,
        ),
        N_ERROR_SKETCH,
        replace(LAYOUT, default="block"),
        *ENGINE,
    ),
    _check_nystrom,
)

# --- public functions ---------------------------------------------------------------------


def randomized_svd(
    a: Any,
    rank: int | None = None,
    *,
    passes: int | None = None,
    n_power_iter: int | None = None,
    n_oversamples: int = 10,
    seed: Any = 0,
    max_error: float | None = None,
    max_rank: int | None = None,
    symmetric: bool = False,
    start: Any = None,
    layout: str = "auto",
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    timeout: float | None = None,
    memory: Any = None,
    out: Any = None,
    overwrite: bool = False,
    tol: float | None = None,
) -> SVDResult | EighResult:
    """Randomized SVD with power iterations, in q + 1 passes over ``a`` (default 2).

    Parameters
    ----------
    a : Zarr URL or path, ratings group, zarr.Array, dask or NumPy array, shape (m, n)
        Zarr input is read by the pass tasks themselves, chunk by chunk; nothing
        holds all of ``a``. A ratings group is read sparse (unstored entries are
        zeros).
    rank : int, optional
        Number of singular triplets, in [1, min(m, n)]. Give ``rank`` or ``max_error``.
    passes : int, optional
        Reads of ``a``, >= 2 (default 2; one read is :func:`sketch_svd`). Two passes
        power-iterate once with a sketch three times as wide, 3 (rank + p) up to 256
        columns and at least 2 (rank + p), at most min(m, n): a pass costs a read of
        A, a wider sketch only GEMM time. Measured at rank 20, this matches or beats
        3 passes at rank + p on real images, eigenfaces, 1/i, 1/sqrt(i), flat and
        scikit-learn's spectra (README, "choosing passes"). k >= 3 passes make k - 1
        power iterations at width rank + p.
    n_power_iter : int, optional
        q >= 0 power iterations (q + 1 passes, A^T A applied per row panel) at width
        min(rank + p, min(m, n)), the classic HMT sketch; instead of ``passes``.
    n_oversamples : int, default 10
        Extra sketch columns p >= 0 (see ``passes`` for the width).
    seed : int, SeedSequence or None, default 0
        The random test matrix depends on the seed and the global column index
        only: the same seed gives the same result for any chunking or scheduler.
        None draws fresh entropy (recorded in the result's ``seed``).
    max_error : float, optional
        Fixed precision: the smallest rank whose exact relative Frobenius error is
        <= max_error, in (0, 1). The sketch widens (doubling, from 64 + p) up to
        ``max_rank``; each attempt costs q + 1 passes. (Formerly ``tol``, still
        accepted with a DeprecationWarning.)
    max_rank : int, optional
        Largest rank tried with ``max_error`` (default min(m, n, 512)).
    symmetric : bool, default False
        ``a`` is symmetric: return an :class:`EighResult` (eigenvalues by
        decreasing magnitude) from the Rayleigh-Ritz projection Q^T A Q.
    start : SVDResult or path, optional
        A warm start: a previous result of this matrix before rows or columns were
        appended. Its right factor (``vt.T``; ``u`` for a wide matrix) replaces the
        first columns of the test matrix (zero for the new columns, which the other,
        Gaussian, columns reach). ``passes=1`` is then allowed: one read gives Y = A X
        and A^T Y, and an exact error (README, "growing matrices", measures it).
    client : distributed.Client, optional
        Default: dask's current scheduler (an active distributed client is used).
    storage_options : dict, optional
        fsspec options for a Zarr URL (object stores).
    layout : {"auto", "panel", "block"}
        "panel" reads whole row panels (q + 1 passes); "block" reads chunk by chunk
        (2q + 2 passes), chosen automatically when a panel exceeds 1 GiB.
    checkpoint : str or Checkpoint, optional
        A folder (path or URL) where each pass's output is saved. Run again with
        the same input and parameters, the computation restores the completed
        passes instead of reading A again (a killed job resumes); a checkpoint of
        another input or other parameters is refused. Not removed on success.
    progress : callable, optional
        Receives a :class:`dlowrank.engine.passes.PassEvent` as passes start,
        progress and end.
    timeout : float, optional
        Seconds one pass may take before it fails (PassTimeoutError); default on a
        cluster 20 times the first pass, at least 600 s; none on threads.
    memory : int or str, optional
        Memory the run may use (bytes, or a size such as "600MB"). On dask's threads
        it is the whole process's budget, measured by default from the cgroup limit,
        RLIMIT_AS or the available memory, minus what the process already holds
        (:mod:`dlowrank.runtime.budget`); the threads share it, as many running at once
        as can each hold a chunk (about 3x its float64 bytes). On a cluster it stands
        for each worker's memory limit (default: the workers' ``memory_limit``). Row
        panels are grouped up to a sixth of a task's share (at most 128 MB); layout
        "auto" reads chunk by chunk when a chunk row does not fit. A budget that cannot
        hold one chunk is refused before any pass, with a rechunk command.
    out : str or os.PathLike, optional
        A Zarr group (path or URL) where the result is saved when it is made, as
        :meth:`SVDResult.save` does: atomically for readers, refused before any pass
        when it exists (unless ``overwrite``) or is the input. A factor above the
        in-memory limit is written there by tasks, chunk by chunk in the input's row
        chunking, and the returned result reads it lazily from there.
    overwrite : bool, default False
        Replace an existing result at ``out`` once the new one is complete.

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
    (2, True)
    """
    run = Run(RANDOMIZED_SVD, **locals())
    p, engine = run.params, run.engine
    q, over, widen = p["n_power_iter"], p["n_oversamples"], p["widen"]
    if p["max_error"] is None:
        rank = p["rank"]
        width = sketch_width(widen, rank, over, min(engine.tall_shape))
        warm = None if start is None else _start_factor(start, engine.source.shape)["factor"]
        factors = _rsvd.range_sketch(engine, width, q, run.seed, need=rank, start=warm)
    else:
        factors, rank = _fixed_precision(
            engine, p["max_error"], p["max_rank"], q, over, widen, run.seed
        )
    if p["symmetric"]:
        w, v = _rayleigh_ritz(factors, rank, run.dtype)
        rel = relative_error(factors.fro2, w)
        return run.eigh(w, v, rel, algorithm="randomized_eigh", params={"rank": rank})
    u, s, vt, rel = _rsvd.truncate(factors, rank)
    return run.svd(u, s, vt, rel, params={"rank": rank})


def _fixed_precision(engine, max_error, max_rank, q, p, widen, seq):
    width = min(max_rank, 64)
    while True:
        sketch = sketch_width(widen, width, p, min(engine.tall_shape))
        factors = _rsvd.range_sketch(engine, sketch, q, seq)
        rank = _rsvd.rank_for_tol(factors, max_error)
        if rank is not None and rank <= max_rank:
            return factors, rank
        if width >= max_rank:
            best = _rsvd.truncate(factors, max_rank)[3]
            raise ToleranceError(
                f"`max_error` = {max_error:g} is not reached within `max_rank` = {max_rank}: "
                f"the best relative error was {best:.4g} at rank {max_rank} "
                f"({engine.passes} passes); raise max_rank or max_error"
            )
        width = min(2 * width, max_rank)
        logger.info("max_error %g not reached; widening the sketch to %d", max_error, width)


def _rayleigh_ritz(factors, rank: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs from the sketch's range: with U = Q U_B, T = U^T A U = S V^T U, from
    quantities at hand (no pass). ||A - U T U^T||_F^2 = ||A||_F^2 - ||T||_F^2."""
    basis = factors.u.to_numpy()  # n rows: A is square, the short side is as long
    t = (factors.s[:, None] * factors.vt) @ basis
    t = check_symmetric(t, dtype, "U^T A U on its sketch", "use symmetric=False")
    w, v = exact.eigh_by_magnitude(t)
    return w[:rank], basis @ v[:, :rank]


def sketch_svd(
    a: Any,
    rank: int,
    *,
    seed: Any = 0,
    sketch_size: Any = None,
    n_error_sketch: int = 20,
    keep_sketch: bool = False,
    layout: str = "block",
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    timeout: float | None = None,
    memory: Any = None,
    out: Any = None,
    overwrite: bool = False,
) -> SVDResult:
    """Single-pass SVD from three sketches, with an estimated error and its confidence.

    Parameters
    ----------
    a : Zarr URL or path, ratings group, zarr.Array, dask or NumPy array, shape (m, n)
        Any 2-D chunking; each chunk is read exactly once. A ratings group is read
        sparse (unstored entries are zeros).
    rank : int
        In [1, min(m, n)].
    seed : int, SeedSequence or None, default 0
        Test matrices depend on the seed and the global index only.
    sketch_size : int or (int, int), optional
        (k, s): range sketch width k >= rank and core sketch size s >= k; default
        k = 4 rank + 1, s = 2k + 1 (Tropp et al. 2019, §5.4), both capped at
        min(m, n); when 2k reaches min(m, n), k = s = min(m, n): the sketch then spans
        the whole short side, so the result is exact up to rounding (on an
        8,000,000 x 64 matrix at rank 10 the default k = 41 measured 1.15 x the optimal
        error).
    n_error_sketch : int, default 20
        d >= 1 rows of the independent error sketch Theta A.
    keep_sketch : bool, default False
        Keep the sketches with the result (``sketch_y``, one row per row of A, is a
        lazy Zarr-backed factor when large, like ``u``) and what an update checks:
        :func:`dlowrank.update` then extends the result to appended rows and columns
        by reading only those.
    layout : {"block", "panel", "auto"}
        "block" (default): one task per chunk, the least memory, since every
        sketch is a sum of per-chunk terms; "panel" groups chunk rows.
    client, storage_options, checkpoint, progress, timeout, memory, out, overwrite
        As in :func:`randomized_svd`.

    Returns
    -------
    SVDResult
        ``passes`` = 1; ``rel_error`` is the unbiased estimate from the error
        sketch (``error_kind`` "estimated"); ``params["rel_error_interval"]`` is
        a 90 % confidence interval for the true relative error. Never worse than the
        zero matrix: when the estimate is >= 1, ``s`` is scaled by the best factor c
        in [0, 1] (estimated from the error sketch; ``params["shrink"]``, else 1).
        A DlowrankWarning says when the estimated error is far above what the
        sketch's own singular values say a rank-``rank`` truncation reaches (a slowly
        decaying spectrum: use two passes).

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
    run = Run(SKETCH_SVD, **locals())
    p = run.params
    k, s = p["sketch_size"]
    d = p["n_error_sketch"]
    stamps = None
    if p.get("keep_sketch"):
        from dlowrank.updates import take_stamps

        stamps = take_stamps(run)
    f = _sketch.sketch(run.engine, p["rank"], k, s, d, run.seed)
    interval = {
        "rel_error_interval": [float(x) for x in f.rel_error_interval],
        "confidence": _sketch.CONFIDENCE,
        "shrink": f.shrink,
    }
    extra = None
    if p.get("keep_sketch"):
        from dlowrank.updates import keep_record

        interval["sketch"] = keep_record(run, p["rank"], k, s, d, f.fro2, stamps)
        extra = run.keep_sketch(f.state)
    return run.svd(
        f.u, f.s, f.vt, f.rel_error, error_kind="estimated", params=interval, extra=extra
    )


def nystrom(
    a: Any,
    rank: int,
    *,
    seed: Any = 0,
    sketch_size: int | None = None,
    n_error_sketch: int = 20,
    layout: str = "block",
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    timeout: float | None = None,
    memory: Any = None,
    out: Any = None,
    overwrite: bool = False,
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
    client, storage_options, checkpoint, progress, timeout, memory, out, overwrite
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
    run = Run(NYSTROM, **locals())
    p = run.params
    f = _nystrom.nystrom(
        run.engine, p["rank"], p["sketch_size"], p["n_error_sketch"], run.seed, run.dtype
    )
    interval = {
        "rel_error_interval": [float(x) for x in f.rel_error_interval],
        "confidence": _sketch.CONFIDENCE,
    }
    return run.eigh(f.w, f.v, f.rel_error, error_kind="estimated", params=interval)


#: Each public function with its declaration (the job schema, the CLI and a test use it).
FUNCTIONS = {
    "randomized_svd": (randomized_svd, RANDOMIZED_SVD),
    "sketch_svd": (sketch_svd, SKETCH_SVD),
    "nystrom": (nystrom, NYSTROM),
}

__all__ = ["nystrom", "randomized_svd", "sketch_svd"]
