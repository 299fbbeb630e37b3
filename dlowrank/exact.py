"""Public exact in-memory paths: SVD, symmetric eigen-decomposition, SVT.

For small matrices, and the oracle the streaming results are verified against
(Eckart-Young). Each opens its input with the one opener (:func:`open_source`),
loads it whole (refusing sparse ratings and inputs above ``max_bytes``), and
calls a kernel.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import dask.array as da
import numpy as np

from dlowrank.algorithms.common import check_symmetric
from dlowrank.errors import InputError
from dlowrank.io.source import dense, input_info, open_source
from dlowrank.kernels import exact, passkernels
from dlowrank.params import parse_float, parse_int, parse_rank
from dlowrank.results import EighResult, SVDResult
from dlowrank.xr import unlabel

logger = logging.getLogger(__name__)

#: Largest input (bytes, in its compute dtype) the exact paths load by default.
EXACT_MAX_BYTES = 2 << 30


def _open_small(a: Any, what: str) -> da.Array:
    """``a`` through the one opener, as a dense Dask array (ratings are refused)."""
    return dense(open_source(a), what)


def _load_small(
    x: da.Array, source: Any, max_bytes: int, name: str = "a"
) -> tuple[np.ndarray, dict]:
    """Refuse a validated ``x`` if too large for memory, else load it as float64."""
    max_bytes = parse_int(max_bytes, "max_bytes", 1)
    if x.nbytes > max_bytes:
        raise InputError(
            f"`{name}` is {x.nbytes / 2**30:.2f} GiB, above the exact path's "
            f"max_bytes = {max_bytes / 2**30:.2f} GiB; use randomized_svd or "
            "sketch_svd for large matrices, or raise max_bytes"
        )
    arr = np.asarray(x.compute(), dtype=np.float64)
    found = passkernels.nonfinite(arr, (0, arr.shape[0]), (0, arr.shape[1]))
    if found["count"]:
        count, (i, j) = found["count"], found["first"]
        raise InputError(
            f"`{name}` holds {count} NaN or infinite values (the first at row {i}, "
            f"column {j}); dlowrank needs finite input"
        )
    return arr, input_info(x, source)


def _svd(u, s, vt, err: float, algorithm: str, params: dict, info: dict, start: float):
    """An exact path's SVDResult, in the input's dtype: one read of A, an exact error."""
    dtype = np.dtype(info["dtype"])
    return SVDResult(
        u=u.astype(dtype),
        s=s.astype(dtype),
        vt=vt.astype(dtype),
        rel_error=err,
        error_kind="exact",
        passes=1,
        algorithm=algorithm,
        params=params,
        input=info,
        seconds=time.perf_counter() - start,
    )


def exact_svd(a: Any, rank: int | None = None, *, max_bytes: int = EXACT_MAX_BYTES) -> SVDResult:
    """Exact truncated SVD in memory (LAPACK gesdd, gesvd if gesdd fails to converge).

    Parameters
    ----------
    a : array-like, dask array, zarr array or URL, shape (m, n)
        The matrix; loaded whole, so it must fit in memory.
    rank : int, optional
        Number of singular triplets kept, in [1, min(m, n)]; default min(m, n).
    max_bytes : int, default 2 GiB
        Refuse inputs larger than this instead of running out of memory.

    Returns
    -------
    SVDResult
        ``u`` (m, k), ``s`` (k,), ``vt`` (k, n) in the input's float dtype (computed
        in float64). ``rel_error`` is exact: the Eckart-Young optimum
        ``sqrt(sum_{i>=k} s_i^2) / ||a||_F``. ``passes`` is 1.

    Raises
    ------
    InputError
        Not 2-D, a zero-length dimension, a non-real dtype, non-finite values, or
        larger than ``max_bytes``.
    ParameterError
        ``rank`` outside [1, min(m, n)].

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> a = np.random.default_rng(0).standard_normal((30, 20))
    >>> r = dlowrank.exact_svd(a, 5)
    >>> bool(np.allclose(r.u.T @ r.u, np.eye(5)))
    True
    """
    start = time.perf_counter()
    a, labels = unlabel(a)
    x = _open_small(a, "exact_svd")
    k = parse_rank(rank, x.shape)
    arr, info = _load_small(x, a, max_bytes)
    u, s, vt = exact.svd(arr)
    err = exact.optimal_error(s, k).rel_frobenius
    r = _svd(u[:, :k], s[:k], vt[:k], err, "exact_svd", {"rank": k}, info, start)
    return r if labels is None else dataclasses.replace(r, labels=labels)


def exact_eigh(a: Any, rank: int | None = None, *, max_bytes: int = EXACT_MAX_BYTES) -> EighResult:
    """Exact truncated eigen-decomposition of a symmetric matrix, largest ``|λ|`` first.

    Parameters
    ----------
    a : array-like, dask array, zarr array or URL, shape (n, n)
        A symmetric matrix: ``||a - a.T||_F <= 1000 eps ||a||_F`` for its dtype.
    rank : int, optional
        Number of eigenpairs kept, in [1, n]; default n.
    max_bytes : int, default 2 GiB
        Refuse inputs larger than this.

    Returns
    -------
    EighResult
        ``w`` (k,) ordered by decreasing ``|w|``, ``v`` (n, k) orthonormal;
        ``rel_error`` = ``sqrt(sum of dropped w^2) / ||a||_F`` (exact).

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> b = np.random.default_rng(0).standard_normal((10, 10)); a = b + b.T
    >>> r = dlowrank.exact_eigh(a)
    >>> bool(np.allclose(r.to_dense(), a))
    True
    """
    start = time.perf_counter()
    a, labels = unlabel(a)
    x = _open_small(a, "exact_eigh")
    if x.shape[0] != x.shape[1]:
        raise InputError(
            f"`a` must be square for exact_eigh; got shape {x.shape} "
            "(use exact_svd for rectangular matrices)"
        )
    k = parse_rank(rank, x.shape)
    arr, info = _load_small(x, a, max_bytes)
    sym = check_symmetric(
        arr,
        np.dtype(info["dtype"]),
        "a (||a - a.T||_F / ||a||_F)",
        "use exact_svd, or symmetrize with (a + a.T) / 2",
    )
    w, v = exact.eigh_by_magnitude(sym)
    total = float(np.sum(w**2))
    err = float(np.sqrt(np.sum(w[k:] ** 2) / total)) if total > 0 else 0.0
    dtype = np.dtype(info["dtype"])
    r = EighResult(
        w=w[:k].astype(dtype),
        v=v[:, :k].astype(dtype),
        rel_error=err,
        error_kind="exact",
        passes=1,
        algorithm="exact_eigh",
        params={"rank": k},
        input=info,
        seconds=time.perf_counter() - start,
    )
    return r if labels is None else dataclasses.replace(r, labels=labels)


def svt(
    a: Any, threshold: float, rank: int | None = None, *, max_bytes: int = EXACT_MAX_BYTES
) -> SVDResult:
    """Singular value thresholding: the proximal operator of ``threshold * ||.||_*``.

    Returns :math:`X^* = \\sum_i (\\sigma_i - \\tau)_+ u_i v_i^T`, the minimizer of
    :math:`\\tfrac12 \\|X - A\\|_F^2 + \\tau \\|X\\|_*` (Cai, Candès, Shen 2010,
    doi:10.1137/080738970); it is also the optimum of the weight-decay
    factorization :math:`\\tfrac12\\|UV^T - A\\|_F^2 + \\tfrac{\\tau}{2}(\\|U\\|_F^2 +
    \\|V\\|_F^2)` (Mazumder, Hastie, Tibshirani 2010).

    Parameters
    ----------
    a : array-like, dask array, zarr array or URL, shape (m, n)
    threshold : float
        τ >= 0.
    rank : int, optional
        Keep at most this many terms (default: every σ_i > τ).

    Returns
    -------
    SVDResult
        Only the terms with σ_i > τ (possibly none: then ``u`` is (m, 0));
        ``s`` holds the shrunk values σ_i − τ. ``rel_error`` is the exact
        ``||a - X||_F / ||a||_F``.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> a = np.diag([3.0, 2.0, 0.5])
    >>> dlowrank.svt(a, 1.0).s.tolist()
    [2.0, 1.0]
    """
    start = time.perf_counter()
    x = _open_small(a, "svt")
    tau = parse_float(threshold, "threshold", low=0.0)
    k = parse_rank(rank, x.shape)
    arr, info = _load_small(x, a, max_bytes)
    u, s, vt = exact.svd(arr)
    shrunk = exact.soft_threshold(s, tau)
    kept = min(k, int(np.count_nonzero(shrunk)))
    total = float(np.sqrt(np.sum(s**2)))
    err = exact.svt_error(s, tau, kept) / total if total > 0 else 0.0
    params = {"threshold": tau, "rank": k}
    return _svd(u[:, :kept], shrunk[:kept], vt[:kept], err, "svt", params, info, start)
