"""Public factorizations: weight-decay ALS / gradient descent, missing entries, NMF.

Each function validates its arguments, builds a pass engine (row panels, one pass
per iteration) and calls a body in :mod:`dlowrank.algorithms.factorize`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from dlowrank.algorithms import factorize as _fz
from dlowrank.errors import ParameterError
from dlowrank.io.ratings import RatingsSource
from dlowrank.kernels import factor
from dlowrank.params import (
    MAX_ITER,
    parse_choice,
    parse_float,
    parse_int,
    parse_rank,
    parse_seed,
    seed_record,
)
from dlowrank.results import FactorizationResult
from dlowrank.streaming import _attach_checkpoint, _engine, _input_info

logger = logging.getLogger(__name__)


def _deadline(max_seconds: float | None, start: float):
    """A monitor that stops the iterations once ``max_seconds`` have passed (None: never)."""
    if max_seconds is None:
        return None
    limit = parse_float(max_seconds, "max_seconds", low=0.0, low_open=True)
    return lambda u, v: time.perf_counter() - start >= limit


def _finish(engine, st, *, algorithm, params, seq, a, start, dtype) -> FactorizationResult:
    u, v = (st.v, st.u) if engine.transpose else (st.u, st.v)
    rel = float(np.sqrt(st.residual2 / st.fro2)) if st.fro2 else 0.0
    return FactorizationResult(
        u=u.astype(dtype),
        v=v.astype(dtype),
        loss=np.asarray(st.loss),
        n_iter=st.n_iter,
        converged=st.converged,
        rel_error=rel,
        error_kind="exact",
        passes=engine.passes,
        restored_passes=engine.restored,
        algorithm=algorithm,
        params=params,
        seed=seed_record(seq),
        input=_input_info(engine, a),
        seconds=time.perf_counter() - start,
    )


def check_nmf_source(source: Any) -> None:
    """Refuse a ratings group for NMF (the job's --dry-run calls this too)."""
    if isinstance(source, RatingsSource):
        raise ParameterError(
            "nmf needs every entry of its input; a ratings group leaves most of them "
            "unobserved (use `dlowrank factorize` for ratings, or fill the matrix first)"
        )


def factorize(
    a: Any,
    rank: int,
    *,
    weight_decay: float = 0.0,
    method: str = "als",
    max_iter: int | None = None,
    tol: float = 1e-6,
    seed: Any = None,
    init: str | None = None,
    missing: str | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    max_seconds: float | None = None,
) -> FactorizationResult:
    """Factorize ``a ≈ u @ v.T`` with weight decay, blockwise: one pass per iteration.

    Minimizes :math:`\\tfrac12\\|M \\odot (UV^T - A)\\|_F^2 + \\tfrac{\\alpha}{2}
    (\\|U\\|_F^2 + \\|V\\|_F^2)`, M the mask of observed entries (all ones unless
    ``missing="nan"``). For a fully observed A and ``rank`` at least the number of
    singular values above α, the minimum is the soft-thresholded SVD
    ``svt(a, weight_decay)`` (Mazumder, Hastie, Tibshirani 2010).

    Parameters
    ----------
    a : Zarr URL or path, zarr.Array, dask or NumPy array, shape (m, n)
    rank : int
        k in [1, min(m, n)].
    weight_decay : float, default 0
        α >= 0.
    method : {"als", "gd"}
        "als": alternating ridge solves (U from V, then V from the new U, fused in
        one read of each row panel; with missing entries every row and column
        solves its own system). "gd": gradient descent with Nesterov momentum from
        small random factors; A V and A^T U come from the same read.
    max_iter : int, optional
        Iterations (= passes) at most; default 100 for ALS, 5000 for GD.
    tol : float, default 1e-6
        Stop when the objective changes by at most tol relative between two
        iterations. The objective is quadratic near its minimum, so the factors
        are then about sqrt(tol) from it: pass 1e-10 to reach the optimum to 1e-4.
    init : {"svd", "random"}, optional
        "svd" (default for ALS on complete data): U = U_k S^{1/2}, V = V_k S^{1/2}
        from a randomized SVD (2 passes); "random" (default for GD and with missing
        entries): small Gaussian factors.
    max_seconds : float, optional
        Stop after the iteration during which this much wall time has passed
        (a time budget for batch jobs; ``converged`` is then False).
    missing : {None, "nan"}
        "nan": NaN entries are missing and left out of the loss. A ratings group
        (``dlowrank convert --ratings``) is always read sparse: only its stored
        entries are observed, and nothing is densified.

    Returns
    -------
    FactorizationResult
        ``u`` (m, k), ``v`` (n, k) in the input's float dtype, the objective after
        every iteration in ``loss``, ``passes``, ``n_iter``, ``converged``.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> a = dlowrank.make_matrix((300, 80), 10, seed=0).array.compute()
    >>> r = dlowrank.factorize(a, 8, weight_decay=0.5, tol=1e-10)  # 7 values exceed 0.5
    >>> x = dlowrank.svt(a, 0.5).to_dense()
    >>> bool(np.linalg.norm(r.to_dense() - x) <= 1e-4 * np.linalg.norm(x))
    True
    """
    start = time.perf_counter()
    engine = _engine(a, "panel", client, storage_options, progress)
    shape = engine.source.shape
    k = parse_rank(rank, shape, required=True)
    alpha = parse_float(weight_decay, "weight_decay", low=0.0)
    method = parse_choice(method, "method", ("als", "gd"))
    masked = parse_choice(missing, "missing", (None, "nan")) == "nan"
    if isinstance(engine.source, RatingsSource):  # only the stored ratings are observed
        masked, missing = True, "sparse"
    default_init = "svd" if method == "als" and not masked else "random"
    init = parse_choice(init or default_init, "init", ("svd", "random"))
    if init == "svd" and masked:
        raise ParameterError(
            "`init` = 'svd' needs complete data; use init='random' with missing='nan'"
        )
    max_iter = parse_int(
        max_iter if max_iter is not None else (100 if method == "als" else 5000),
        "max_iter",
        1,
        MAX_ITER,
    )
    tol = parse_float(tol, "tol", low=0.0)
    seq = parse_seed(seed)
    params = {
        "rank": k,
        "weight_decay": alpha,
        "method": method,
        "max_iter": max_iter,
        "tol": tol,
        "init": init,
        "missing": missing,
    }
    _attach_checkpoint(engine, checkpoint, "factorize", params, seq)
    m, n = engine.tall_shape
    if init == "svd":
        u, s, vt = _fz.svd_init(engine, k, seq)
        root = np.sqrt(s)
        st = _fz.State(u * root, vt.T * root)
    else:
        u, v = _fz.random_init((m, n), k, seq, 1e-2)
        st = _fz.State(u, v)
    monitor = _deadline(max_seconds, start)
    if method == "als":
        st = _fz.als(engine, st, alpha, masked, max_iter, tol, monitor=monitor)
    else:
        st = _fz.gradient_descent(
            engine, st, alpha, masked, max_iter, tol, monitor=monitor, rescale=init == "random"
        )
    return _finish(
        engine,
        st,
        algorithm=f"factorize_{method}",
        params=params,
        seq=seq,
        a=a,
        start=start,
        dtype=engine.source.dtype,
    )


def nmf(
    a: Any,
    rank: int,
    *,
    solver: str = "hals",
    init: str = "nndsvd",
    max_iter: int = 200,
    tol: float = 1e-4,
    weight_decay: float = 0.0,
    seed: Any = None,
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    max_seconds: float | None = None,
) -> FactorizationResult:
    """Non-negative factorization ``a ≈ u @ v.T`` with ``u, v >= 0``, blockwise.

    Minimizes :math:`\\tfrac12\\|A - WH^T\\|_F^2 + \\tfrac{\\alpha}{2}(\\|W\\|_F^2 +
    \\|H\\|_F^2)` over W, H >= 0 by HALS (Cichocki & Phan 2009: exact column-wise
    block minimization, so the objective never increases) or multiplicative updates
    (Lee & Seung 2001). Each iteration is one read of A: W's rows are updated per
    row panel and the sums for H's update accumulate in the same read.

    Parameters
    ----------
    a : Zarr URL or path, zarr.Array, dask or NumPy array, shape (m, n), entries >= 0
        A negative entry is refused with its location (found in the first pass).
    rank : int
    solver : {"hals", "mu"}
    init : {"nndsvd", "nndsvda", "random"}
        NNDSVD (Boutsidis & Gallopoulos 2008) from a streaming randomized SVD (2
        passes); "nndsvda" fills its zeros with the RMS of the rank-k approximation
        / sqrt(rank) (needed by "mu", whose zeros never move); "random": uniform
        entries in [0, 0.1).
    max_iter, tol, weight_decay, seed, max_seconds
        As in :func:`factorize` (tol relative to the objective).

    Returns
    -------
    FactorizationResult
        ``u`` (m, k) >= 0 and ``v`` (n, k) >= 0; ``loss`` never increases.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((200, 10)) @ rng.random((10, 60))
    >>> r = dlowrank.nmf(a, 10, seed=0)
    >>> bool(r.u.min() >= 0 and r.v.min() >= 0 and np.all(np.diff(r.loss) <= 1e-9 * r.loss[0]))
    True
    """
    start = time.perf_counter()
    engine = _engine(a, "panel", client, storage_options, progress)
    check_nmf_source(engine.source)
    shape = engine.source.shape
    k = parse_rank(rank, shape, required=True)
    solver = parse_choice(solver, "solver", ("hals", "mu"))
    init = parse_choice(init, "init", ("nndsvd", "nndsvda", "random"))
    max_iter = parse_int(max_iter, "max_iter", 1, MAX_ITER)
    tol = parse_float(tol, "tol", low=0.0)
    alpha = parse_float(weight_decay, "weight_decay", low=0.0)
    seq = parse_seed(seed)
    params = {
        "rank": k,
        "solver": solver,
        "init": init,
        "max_iter": max_iter,
        "tol": tol,
        "weight_decay": alpha,
    }
    _attach_checkpoint(engine, checkpoint, "nmf", params, seq)
    m, n = engine.tall_shape
    if init == "random":  # uniform in [0, 0.1)
        rng = np.random.default_rng(seq)
        w, h = 0.1 * rng.random((m, k)), 0.1 * rng.random((n, k))
    else:
        u, s, vt = _fz.svd_init(engine, k, seq)
        fill = 0.0
        if init == "nndsvda" or solver == "mu":
            fill = float(np.sqrt(np.sum(s**2) / (m * n)) / np.sqrt(k))
        w, h = factor.nndsvd(u, s, vt, fill)
    st = _fz.nmf(engine, w, h, alpha, solver, max_iter, tol, monitor=_deadline(max_seconds, start))
    return _finish(
        engine,
        st,
        algorithm=f"nmf_{solver}",
        params=params,
        seq=seq,
        a=a,
        start=start,
        dtype=engine.source.dtype,
    )


def canonicalize(u: Any, v: Any) -> tuple[np.ndarray, np.ndarray]:
    """The balanced form (U_k S^{1/2}, V_k S^{1/2}) of the factorization u v^T.

    A factorization is defined up to (u R, v R^{-T}) for invertible R; this picks
    one representative, computed from the factors (thin QRs and a k x k SVD)
    without forming u v^T. Columns are ordered by decreasing singular value and
    follow the package sign convention.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> rng = np.random.default_rng(0)
    >>> u, v = rng.standard_normal((30, 3)), rng.standard_normal((20, 3))
    >>> r = rng.standard_normal((3, 3))
    >>> a, b = dlowrank.canonicalize(u, v), dlowrank.canonicalize(u @ r, v @ np.linalg.inv(r).T)
    >>> bool(np.allclose(a[0], b[0]) and np.allclose(a[1], b[1]))
    True
    """
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise ParameterError(f"`u` (m, k) and `v` (n, k) must share k; got {u.shape}, {v.shape}")
    if u.shape[1] > min(u.shape[0], v.shape[0]):
        raise ParameterError(
            f"canonicalize needs k <= min(m, n); got k = {u.shape[1]} for "
            f"u {u.shape} and v {v.shape}"
        )
    return factor.canonical(u, v)


def predict(result: FactorizationResult, rows: Any, cols: Any) -> np.ndarray:
    """Predicted entries ``u[rows[t]] . v[cols[t]]`` for index arrays of equal length.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> a = np.outer([1.0, 2.0, 3.0], [1.0, 0.5])
    >>> r = dlowrank.factorize(a, 1)
    >>> np.round(dlowrank.predict(r, [2, 0], [1, 0]), 6).tolist()
    [1.5, 1.0]
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.shape != cols.shape:
        raise ParameterError(
            f"`rows` and `cols` must have the same shape; got {rows.shape}, {cols.shape}"
        )
    m, n = result.u.shape[0], result.v.shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= m or cols.min() < 0 or cols.max() >= n):
        raise ParameterError(f"indices must lie in [0, {m}) for rows and [0, {n}) for columns")
    return np.einsum(
        "tk,tk->t", result.u[rows].astype(np.float64), result.v[cols].astype(np.float64)
    )


def rmse(result: FactorizationResult, rows: Any, cols: Any, values: Any) -> float:
    """Root mean squared error of the predictions on held-out (rows, cols, values).

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> r = dlowrank.factorize(np.outer([1.0, 2.0], [1.0, 1.0]), 1)
    >>> round(dlowrank.rmse(r, [0, 1], [0, 1], [1.0, 2.5]), 6)
    0.353553
    """
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean((predict(result, rows, cols) - values) ** 2)))


def contributions(result: FactorizationResult, i: int, j: int) -> list[tuple[int, float]]:
    """The per-component terms u_ik v_jk of the prediction for entry (i, j), largest first.

    They sum to the prediction, so a recommendation can be explained (which topics
    carry it) and a bad one traced to the component behind it.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> rng = np.random.default_rng(0)
    >>> r = dlowrank.nmf(rng.random((40, 5)) @ rng.random((5, 30)), 5, seed=0)
    >>> terms = dlowrank.contributions(r, 3, 7)
    >>> bool(np.isclose(sum(t for _, t in terms), dlowrank.predict(r, [3], [7])[0]))
    True
    """
    m, n = result.u.shape[0], result.v.shape[0]
    i = parse_int(i, "i", 0, m - 1)
    j = parse_int(j, "j", 0, n - 1)
    terms = result.u[i].astype(np.float64) * result.v[j].astype(np.float64)
    order = np.argsort(-np.abs(terms), kind="stable")
    return [(int(c), float(terms[c])) for c in order]


__all__ = ["canonicalize", "contributions", "factorize", "nmf", "predict", "rmse"]
