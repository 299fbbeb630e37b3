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
from dlowrank.engine.runner import ENGINE, SEED, Run
from dlowrank.errors import InputError, ParameterError
from dlowrank.kernels import factor
from dlowrank.params import MAX_ITER, Param, Spec, parse_int, parse_rank
from dlowrank.results import FactorizationResult

logger = logging.getLogger(__name__)


def _deadline(max_seconds: float | None, start: float):
    """A monitor that stops the iterations once ``max_seconds`` have passed (None: never)."""
    if max_seconds is None:
        return None
    return lambda u, v: time.perf_counter() - start >= max_seconds


# --- declarations -------------------------------------------------------------------------

RANK = Param(
    "rank", int, None, "Number of factors k, in [1, min(m, n)].", hint=" in [1, min(a.shape)]"
)
WEIGHT_DECAY = Param("weight_decay", float, 0.0, "L2 weight decay alpha on both factors.", low=0.0)
MAX_SECONDS = Param(
    "max_seconds",
    float,
    None,
    "Stop after the iteration during which this much wall time has passed.",
    low=0.0,
    low_open=True,
)


def _max_iter(default: int | None) -> Param:
    return Param(
        "max_iter", int, default, "Iterations (one pass each) at most.", low=1, high=MAX_ITER
    )


def _tol(default: float) -> Param:
    return Param("tol", float, default, "Stop when the objective changes less (relative).", low=0.0)


def _check_factorize(v: dict, source: Any) -> dict:
    k = parse_rank(v["rank"], source.shape, required=True)
    solver, missing = v["solver"], v["missing"]
    if source.sparse:  # only the stored ratings are observed
        missing = "sparse"
    masked = missing is not None
    init = v["init"] or ("svd" if solver == "als" and not masked else "random")
    if init == "svd" and masked:
        raise ParameterError(
            "`init` = 'svd' needs complete data; use init='random' with missing='nan' "
            "or a ratings group"
        )
    max_iter = v["max_iter"] if v["max_iter"] is not None else (100 if solver == "als" else 5000)
    if v["biases"] and solver != "als":
        raise ParameterError(
            f"`biases` = True needs solver='als' (got solver={solver!r}); drop biases or use ALS"
        )
    decay = v["bias_decay"] if v["bias_decay"] is not None else v["weight_decay"]
    return {
        "biases": v["biases"],
        "bias_decay": decay if v["biases"] else None,
        "rank": k,
        "weight_decay": v["weight_decay"],
        "solver": solver,
        "max_iter": max_iter,
        "tol": v["tol"],
        "init": init,
        "missing": missing,
    }


def _check_nmf(v: dict, source: Any) -> dict:
    if source.sparse:
        raise InputError(
            "nmf needs every entry of its input, and `a` is a ratings group (sparse: its "
            "unstored entries are unobserved); use factorize for ratings, or fill the "
            "matrix first"
        )
    return {
        "rank": parse_rank(v["rank"], source.shape, required=True),
        "solver": v["solver"],
        "init": v["init"],
        "max_iter": v["max_iter"],
        "tol": v["tol"],
        "weight_decay": v["weight_decay"],
    }


FACTORIZE = Spec(
    "factorize",
    (
        RANK,
        WEIGHT_DECAY,
        Param(
            "solver",
            ("als", "gd"),
            "als",
            "als (alternating least squares) or gd (gradient descent).",
            aliases=("method",),
        ),
        _max_iter(None),
        _tol(1e-6),
        SEED,
        Param(
            "init", (None, "svd", "random"), None, "svd or random (default: svd for complete data)."
        ),
        Param("missing", (None, "nan"), None, "nan: NaN entries are missing."),
        Param(
            "biases",
            bool,
            False,
            "Fit a global mean and row and column biases besides the factors (ALS).",
        ),
        Param(
            "bias_decay",
            float,
            None,
            "L2 penalty on the biases (default: weight_decay).",
            low=0.0,
        ),
        MAX_SECONDS,
        *ENGINE,
    ),
    _check_factorize,
)
NMF = Spec(
    "nmf",
    (
        RANK,
        Param("solver", ("hals", "mu"), "hals", "hals or mu (multiplicative updates)."),
        Param("init", ("nndsvd", "nndsvda", "random"), "nndsvd", "nndsvd, nndsvda or random."),
        _max_iter(200),
        _tol(1e-4),
        WEIGHT_DECAY,
        SEED,
        MAX_SECONDS,
        *ENGINE,
    ),
    _check_nmf,
)


def factorize(
    a: Any,
    rank: int,
    *,
    weight_decay: float = 0.0,
    solver: str = "als",
    max_iter: int | None = None,
    tol: float = 1e-6,
    seed: Any = 0,
    init: str | None = None,
    missing: str | None = None,
    biases: bool = False,
    bias_decay: float | None = None,
    max_seconds: float | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    timeout: float | None = None,
    memory: Any = None,
    out: Any = None,
    overwrite: bool = False,
    method: str | None = None,
) -> FactorizationResult:
    """Factorize ``a ≈ u @ v.T`` with weight decay, blockwise: one pass per iteration.

    Minimizes :math:`\\tfrac12\\|M \\odot (UV^T - A)\\|_F^2 + \\tfrac{\\alpha}{2}
    (\\|U\\|_F^2 + \\|V\\|_F^2)`, M the mask of observed entries (all ones unless
    ``missing="nan"``). For a fully observed A and ``rank`` at least the number of
    singular values above α, the minimum is the soft-thresholded SVD
    ``svt(a, weight_decay)`` (Mazumder, Hastie, Tibshirani 2010).

    Parameters
    ----------
    a : Zarr URL or path, ratings group, zarr.Array, dask or NumPy array, shape (m, n)
    rank : int
        k in [1, min(m, n)].
    weight_decay : float, default 0
        α >= 0.
    solver : {"als", "gd"}
        (Formerly ``method``, still accepted with a DeprecationWarning.)
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
    biases : bool, default False
        Fit ``a ≈ mean + b_i + c_j + u_i . v_j``: a global mean and row and column
        biases besides the factors, the standard baseline of recommender models (ALS
        only). The penalty adds ``bias_decay``/2 (||b||² + ||c||²); the mean is not
        penalized. Each ALS row and column then solves a system of size k + 1, in the
        same one pass per iteration. The result has ``mean``, ``row_bias`` (m,) and
        ``col_bias`` (n,), and :func:`predict` adds them.
    bias_decay : float, optional
        β >= 0, the penalty on the biases; default ``weight_decay``.

    seed : int, SeedSequence or None, default 0
        Seed of the random start and of the SVD start's test matrix.
    client, storage_options, checkpoint, progress, timeout, memory, out, overwrite
        As in :func:`dlowrank.randomized_svd`.

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
    run = Run(FACTORIZE, **locals())
    p, engine = run.params, run.engine
    k, alpha, solver = p["rank"], p["weight_decay"], p["solver"]
    masked = p["missing"] is not None
    if p["init"] == "svd":
        u, s, vt = _fz.svd_init(engine, k, run.seed)
        root = np.sqrt(s)
        st = _fz.State(u.times(np.diag(root)), vt.T * root)
    else:  # with biases the factors start larger: measured on the ratings recipe (rank
        # 16, 8 passes), sd 0.1 reached held-out RMSE 0.438 where sd 0.01 needed 10 passes
        # for 0.454 and sd 1 reached 0.503
        st = _fz.State(*_fz.random_init(engine, k, run.seed, 0.1 if p["biases"] else 1e-2))
    monitor = _deadline(run.values["max_seconds"], run.start)
    if p["biases"]:
        st.biases = _fz.Biases(p["bias_decay"])
        st = _fz.als_biased(engine, st, alpha, masked, p["max_iter"], p["tol"], monitor=monitor)
    elif solver == "als":
        st = _fz.als(engine, st, alpha, masked, p["max_iter"], p["tol"], monitor=monitor)
    else:
        st = _fz.gradient_descent(
            engine,
            st,
            alpha,
            masked,
            p["max_iter"],
            p["tol"],
            monitor=monitor,
            rescale=p["init"] == "random",
        )
    return run.factorization(st, algorithm=f"factorize_{solver}")


def nmf(
    a: Any,
    rank: int,
    *,
    solver: str = "hals",
    init: str = "nndsvd",
    max_iter: int = 200,
    tol: float = 1e-4,
    weight_decay: float = 0.0,
    seed: Any = 0,
    max_seconds: float | None = None,
    client: Any = None,
    storage_options: dict | None = None,
    checkpoint: Any = None,
    progress: Any = None,
    timeout: float | None = None,
    memory: Any = None,
    out: Any = None,
    overwrite: bool = False,
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

    client, storage_options, checkpoint, progress, timeout, memory, out, overwrite
        As in :func:`dlowrank.randomized_svd`.

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
    run = Run(NMF, **locals())
    p, engine = run.params, run.engine
    k, solver = p["rank"], p["solver"]
    m, n = engine.tall_shape
    if p["init"] == "random":  # uniform in [0, 0.1), by global index (any chunking)
        w, h = _fz.uniform_init(engine, k, run.seed, 0.1)
    else:
        u, s, vt = _fz.svd_init(engine, k, run.seed)
        fill = 0.0
        if p["init"] == "nndsvda" or solver == "mu":
            fill = float(np.sqrt(np.sum(s**2) / (m * n)) / np.sqrt(k))
        sign, scale, h = factor.nndsvd_choice(u.reduce(factor.signed_norms), s, vt, fill)
        w = u.map(factor.nndsvd_rows, args=(sign, scale, fill), width=k, what="w")
    monitor = _deadline(run.values["max_seconds"], run.start)
    st = _fz.nmf(engine, w, h, p["weight_decay"], solver, p["max_iter"], p["tol"], monitor=monitor)
    return run.factorization(st, algorithm=f"nmf_{solver}")


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
    if _lazy(u) or _lazy(v):  # a factor larger than memory: Grams in passes over it
        u, v = _as_float(u), _as_float(v)
    else:
        u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise ParameterError(f"`u` (m, k) and `v` (n, k) must share k; got {u.shape}, {v.shape}")
    if u.shape[1] > min(u.shape[0], v.shape[0]):
        raise ParameterError(
            f"canonicalize needs k <= min(m, n); got k = {u.shape[1]} for "
            f"u {u.shape} and v {v.shape}"
        )
    return factor.canonical(u, v)


def _lazy(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "dask")


def _as_float(x: Any) -> Any:
    return x.astype(np.float64) if _lazy(x) else np.asarray(x, dtype=np.float64)


def _take(x: Any, index: Any) -> np.ndarray:
    """Rows ``index`` of a factor as float64 NumPy (a lazy factor reads only their chunks)."""
    return np.asarray(x[index], dtype=np.float64)


def predict(result: FactorizationResult, rows: Any, cols: Any) -> np.ndarray:
    """Predicted entries ``u[rows[t]] . v[cols[t]]`` for index arrays of equal length
    (plus ``mean + row_bias[rows[t]] + col_bias[cols[t]]`` for a result with biases).

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
    out = np.einsum("tk,tk->t", _take(result.u, rows), _take(result.v, cols))
    if result.has_biases:
        out += result.mean + _take(result.row_bias, rows) + _take(result.col_bias, cols)
    return out


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
    terms = _take(result.u, i) * _take(result.v, j)
    order = np.argsort(-np.abs(terms), kind="stable")
    return [(int(c), float(terms[c])) for c in order]


#: Each public function with its declaration (the job schema, the CLI and a test use it).
FUNCTIONS = {"factorize": (factorize, FACTORIZE), "nmf": (nmf, NMF)}

__all__ = ["canonicalize", "contributions", "factorize", "nmf", "predict", "rmse"]
