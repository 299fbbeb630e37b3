"""scikit-learn estimators over dlowrank's streaming functions.

``TruncatedSVD``, ``NMF`` and ``MatrixCompletion`` take scikit-learn's parameter names
where they mean the same thing (``n_components``, ``random_state``, ``n_iter``,
``max_iter``, ``tol``) and dlowrank's own pass controls besides. ``fit`` takes a NumPy
array (validated as scikit-learn does), a dask array, a ``zarr.Array`` or a Zarr path
(``MatrixCompletion`` also a ratings group); the large inputs are streamed, never
loaded, and ``transform`` of one is lazy (or written to Zarr with ``out=``). Fitted
attributes follow scikit-learn's, plus ``rel_error_`` (the result's relative Frobenius
error) and ``n_passes_`` (reads of the input).

Needs scikit-learn (``pip install "dlowrank[sklearn]"``).
"""

from __future__ import annotations

import functools
import numbers
import os
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from dlowrank.algorithms.factorize import ridge_penalties


def _is_large(x: Any) -> bool:
    """A dask array, a zarr.Array or a path: streamed by dlowrank, not validated in memory."""
    import dask.array as da
    import zarr

    return isinstance(x, (da.Array, zarr.Array, str, os.PathLike))


def _seed(random_state: Any) -> int | None:
    """scikit-learn's random_state as dlowrank's seed: an int as it is, a RandomState
    draws one, None stays None (fresh entropy)."""
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _lazy(x: Any) -> Any:
    """A large input as a dask array (a path or zarr.Array opened, validated)."""
    import dask.array as da

    from dlowrank.io.matrix import open_matrix

    return x if isinstance(x, da.Array) else open_matrix(x)


def _by_rows(X: Any, fn: Any, *args: Any, width: int | None, out: Any) -> Any:
    """``fn(rows, *args)`` over a large input's row panels (its columns in one chunk,
    so each row is solved alone): lazy, one read when computed; written to Zarr at
    ``out`` when given. ``width``: the output's columns (None: the input's)."""
    x = _lazy(X)
    x = x if x.numblocks[1] == 1 else x.rechunk({1: -1})
    chunks = None if width is None else (x.chunks[0], (width,))
    y = x.map_blocks(fn, *args, chunks=chunks, dtype=np.float64)
    return _save(y, out) if out is not None else y


def _save(x: Any, out: Any) -> Any:
    """A lazy array written to Zarr at ``out`` by its own tasks (one read of what it
    depends on); returns it read back lazily from there."""
    import dask.array as da

    x.to_zarr(os.fspath(out), overwrite=False)
    return da.from_zarr(os.fspath(out))


class TruncatedSVD(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Dimensionality reduction by a truncated SVD, streamed over the input (no centering:
    like scikit-learn's ``TruncatedSVD``, and suited to sparse or uncentered data).

    Parameters
    ----------
    n_components : int, default 2
        Rank of the approximation, in [1, min(n_samples, n_features)].
    passes : int, optional
        Reads of the input (see :func:`dlowrank.randomized_svd`); default 2 (one
        power iteration at three times the width), or ``n_iter`` + 1 when ``n_iter`` is
        given.
    n_iter : int, optional
        Power iterations (scikit-learn's name); give ``passes`` or ``n_iter``.
    n_oversamples : int, default 10
    random_state : int, RandomState instance or None, default None
    client : distributed.Client, optional
        Run on this cluster; default dask's current scheduler.

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
    singular_values_ : ndarray (n_components,)
    explained_variance_, explained_variance_ratio_ : ndarray (n_components,)
        Variance of each transformed column, and its share of the input's total
        (column) variance. For a large input the total costs one more read (counted in
        ``n_passes_``).
    n_features_in_ : int
    rel_error_ : float
        ||X - U S V^T||_F / ||X||_F, exact.
    n_passes_ : int
        Reads of the input by ``fit``.
    result_ : SVDResult
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        passes: int | None = None,
        n_iter: int | None = None,
        n_oversamples: int = 10,
        random_state: Any = None,
        client: Any = None,
    ) -> None:
        self.n_components = n_components
        self.passes = passes
        self.n_iter = n_iter
        self.n_oversamples = n_oversamples
        self.random_state = random_state
        self.client = client

    def fit(self, X: Any, y: Any = None) -> TruncatedSVD:
        self.fit_transform(X)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        from dlowrank.streaming import randomized_svd

        large = _is_large(X)
        if not large:
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        else:
            X = _lazy(X)
            self.n_features_in_ = X.shape[1]
        r = randomized_svd(
            X,
            self.n_components,
            passes=self.passes,
            n_power_iter=self.n_iter,
            n_oversamples=self.n_oversamples,
            seed=_seed(self.random_state),
            client=self.client,
        )
        self.result_ = r
        self.components_ = np.asarray(r.vt)
        self.singular_values_ = np.asarray(r.s)
        self.rel_error_ = float(r.rel_error)
        self.n_passes_ = int(r.passes)
        xt = r.u * r.s  # numpy, or lazy for a tall result
        if large:
            import dask

            var_t, total = dask.compute(xt.var(axis=0), X.var(axis=0).sum())
            self.n_passes_ += 1
        else:
            var_t, total = np.var(xt, axis=0), np.var(X, axis=0).sum()
        self.explained_variance_ = np.asarray(var_t)
        self.explained_variance_ratio_ = (
            self.explained_variance_ / total if total else np.zeros_like(self.explained_variance_)
        )
        return xt

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def transform(self, X: Any, out: Any = None) -> Any:
        """X V: a NumPy array, or for a large input a lazy dask array (one streaming pass
        when computed), written to Zarr at ``out`` when given."""
        check_is_fitted(self)
        if _is_large(X):
            xt = _lazy(X) @ self.components_.T.astype(np.float64)
            return _save(xt, out) if out is not None else xt
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return X @ self.components_.T

    def inverse_transform(self, X: Any) -> Any:
        check_is_fitted(self)
        return np.asarray(X) @ self.components_


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization X ~ W H, streamed over the input.

    Parameters
    ----------
    n_components : int, default 2
    init : {"nndsvd", "random"}, default "nndsvd"
    solver : {"hals", "mu"}, default "hals"
    max_iter : int, default 200
    tol : float, default 1e-4
    weight_decay : float, default 0.0
        L2 penalty on W and H (dlowrank's name; scikit-learn's alpha_W / alpha_H with
        l1_ratio 0 differ in their scaling).
    random_state : int, RandomState instance or None, default None
    client : distributed.Client, optional

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        H.
    reconstruction_err_ : float
        ||X - W H||_F.
    n_iter_ : int
    n_features_in_ : int
    rel_error_ : float
    n_passes_ : int
    result_ : FactorizationResult
    """

    def __init__(
        self,
        n_components: int = 2,
        *,
        init: str = "nndsvd",
        solver: str = "hals",
        max_iter: int = 200,
        tol: float = 1e-4,
        weight_decay: float = 0.0,
        random_state: Any = None,
        client: Any = None,
    ) -> None:
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.client = client

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def fit(self, X: Any, y: Any = None) -> NMF:
        self.fit_transform(X)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        from dlowrank.factorization import nmf

        large = _is_large(X)
        if not large:
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
            if X.min() < 0:
                raise ValueError(
                    "Negative values in data passed to NMF (input X): NMF needs a "
                    "non-negative matrix"
                )
        else:
            X = _lazy(X)
            self.n_features_in_ = X.shape[1]
        r = nmf(
            X,
            self.n_components,
            solver=self.solver,
            init=self.init,
            max_iter=self.max_iter,
            tol=self.tol,
            weight_decay=self.weight_decay,
            seed=_seed(self.random_state) or 0,
            client=self.client,
        )
        self.result_ = r
        self.components_ = np.asarray(r.v).T
        self.n_iter_ = int(r.n_iter)
        self.rel_error_ = float(r.rel_error)
        self.n_passes_ = int(r.passes)
        # ||X - W H||_F from the objective at the returned factors (its last loss entry):
        # no read of X, only of W when a penalty has to be taken out
        penalty = 0.0
        if self.weight_decay:
            u2 = float(np.asarray((r.u**2).sum()))
            penalty = 0.5 * self.weight_decay * (u2 + float(np.sum(np.asarray(r.v) ** 2)))
        self.reconstruction_err_ = float(np.sqrt(max(2.0 * (float(r.loss[-1]) - penalty), 0.0)))
        return r.u

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def transform(self, X: Any, out: Any = None) -> Any:
        """W >= 0 minimizing ||X - W H||_F with H = components_ fixed: HALS sweeps per
        row block (rows are independent), for a large input lazily, one pass."""
        check_is_fitted(self)
        h = self.components_.astype(np.float64)
        if _is_large(X):
            return _by_rows(X, _nnls_rows, h, self.max_iter, self.tol, width=len(h), out=out)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if X.min() < 0:
            raise ValueError("Negative values in data passed to NMF.transform (input X)")
        return _nnls_rows(np.asarray(X, dtype=np.float64), h, self.max_iter, self.tol)

    def inverse_transform(self, X: Any) -> Any:
        check_is_fitted(self)
        return np.asarray(X) @ self.components_


class MatrixCompletion(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Matrix completion with weight decay: ``X ~ mean + b_i + c_j + u_i . v_j`` fitted to
    the observed entries by ALS (one streaming pass per iteration); the recommender
    baseline with global, row and column biases (``biases=False``: factors only).

    Parameters
    ----------
    n_components : int, default 10
        Rank k of the factors.
    weight_decay : float, default 1.0
        L2 penalty alpha on the factors.
    biases : bool, default True
        Fit the global mean and the row and column biases.
    bias_decay : float, optional
        L2 penalty on the biases; default ``weight_decay``.
    max_iter : int, default 15
        ALS iterations (one read of the input each).
    tol : float, default 1e-4
        Stop when the objective changes less than this, relative.
    clip : (low, high), optional
        Clip predictions to this range (a rating scale); default no clipping.
    random_state : int, RandomState instance or None, default None
    client : distributed.Client, optional

    ``fit`` takes a NumPy array whose NaN entries are missing, a dask array, a Zarr
    path, or a ratings group (``dlowrank convert --ratings``: only its stored entries
    are observed, read sparse).

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        V^T, the column factors.
    mean_ : float
        The global mean (0 without biases).
    row_bias_, col_bias_ : arrays (n_samples,), (n_features,)
        The biases (without biases: ``row_bias_`` None, ``col_bias_`` zeros);
        ``row_bias_`` is lazy for a large input.
    n_iter_, n_passes_ : int
    rel_error_ : float
        ||M * (X - X_hat)||_F / ||M * X||_F on the observed entries M.
    n_features_in_ : int
    result_ : FactorizationResult
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        weight_decay: float = 1.0,
        biases: bool = True,
        bias_decay: float | None = None,
        max_iter: int = 15,
        tol: float = 1e-4,
        clip: Any = None,
        random_state: Any = None,
        client: Any = None,
    ) -> None:
        self.n_components = n_components
        self.weight_decay = weight_decay
        self.biases = biases
        self.bias_decay = bias_decay
        self.max_iter = max_iter
        self.tol = tol
        self.clip = clip
        self.random_state = random_state
        self.client = client

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X: Any, y: Any = None) -> MatrixCompletion:
        from dlowrank.factorization import factorize

        large = _is_large(X)  # a ratings group is read sparse (only stored entries observed)
        if not large:
            X = validate_data(
                self,
                X,
                dtype=[np.float64, np.float32],
                ensure_min_samples=2,
                ensure_all_finite="allow-nan",
            )
        r = factorize(
            X,
            self.n_components,
            weight_decay=self.weight_decay,
            biases=self.biases,
            bias_decay=self.bias_decay,
            missing="nan",
            max_iter=self.max_iter,
            tol=self.tol,
            seed=_seed(self.random_state) or 0,
            client=self.client,
        )
        if large:
            self.n_features_in_ = int(r.v.shape[0])
        self.result_ = r
        self.components_ = np.asarray(r.v).T
        self.mean_ = float(r.mean) if r.has_biases else 0.0
        self.row_bias_ = r.row_bias  # None without biases: nothing per row is made
        self.col_bias_ = np.asarray(r.col_bias) if r.has_biases else np.zeros(r.v.shape[0])
        self.n_iter_ = int(r.n_iter)
        self.n_passes_ = int(r.passes)
        self.rel_error_ = float(r.rel_error)
        self.loss_ = np.asarray(r.loss)
        return self

    def predict(self, rows: Any, cols: Any = None, out: Any = None) -> Any:
        """Predicted entries, clipped to ``clip``.

        ``predict(rows, cols)``: the entries (rows[t], cols[t]) of the fitted matrix.
        ``predict(X)``: every entry of new rows X (NaN: missing), each row's factors
        folded in as in :meth:`transform`; lazy by row panels for a large X (written
        to Zarr at ``out`` when given).
        """
        from dlowrank.factorization import predict

        check_is_fitted(self)
        if cols is None:
            return self._complete(rows, out)
        entries = predict(self.result_, rows, cols)
        return entries if self.clip is None else np.clip(entries, *self.clip)

    def _complete(self, X: Any, out: Any) -> Any:
        if _is_large(X):  # clipped in the tasks, before an ``out`` is written
            return _by_rows(X, self._fold_in_rows(full=True), width=None, out=out)
        return self._fold_in_rows(full=True)(self._check_rows(X))

    def _fold_in_rows(self, full: bool = False) -> Any:
        """The fold-in of rows against the fitted column side, as a function of the rows."""
        params = self.result_.params
        penalties = ridge_penalties(
            self.n_components, params["weight_decay"], params.get("bias_decay")
        )
        return functools.partial(
            _fold_in,
            v=self.components_.T,
            col_bias=self.col_bias_,
            mean=self.mean_,
            reg=penalties,
            full=full,
            clip=self.clip if full else None,
        )

    def _check_rows(self, X: Any) -> np.ndarray:
        return validate_data(
            self, X, dtype=[np.float64, np.float32], reset=False, ensure_all_finite="allow-nan"
        )

    def rmse(self, rows: Any, cols: Any, values: Any) -> float:
        """Root mean squared error of :meth:`predict` on held-out (rows, cols, values)."""
        values = np.asarray(values, dtype=np.float64)
        return float(np.sqrt(np.mean((self.predict(rows, cols) - values) ** 2)))

    def transform(self, X: Any, out: Any = None) -> Any:
        """Row factors of new rows (fold-in): each row of X (NaN: missing) solves its own
        ridge system against the fitted column factors and biases. A large input is done
        lazily by row panels (one pass), written to Zarr at ``out`` when given."""
        check_is_fitted(self)
        if _is_large(X):
            return _by_rows(X, self._fold_in_rows(), width=self.n_components, out=out)
        return self._fold_in_rows()(self._check_rows(X))

    @property
    def _n_features_out(self) -> int:
        return self.n_components


def _fold_in(
    x: Any,
    *,
    v: np.ndarray,
    col_bias: np.ndarray,
    mean: float,
    reg: np.ndarray,
    full: bool = False,
    clip: Any = None,
) -> np.ndarray:
    """The ridge solution [u_i, b_i] of each row of ``x`` over its observed (non-NaN)
    entries, given the column factors, biases and mean (the ALS row step); returns the
    u_i, or with ``full`` the predicted rows mean + b_i + c + u_i V^T, clipped to
    ``clip``."""
    from dlowrank.kernels import factor

    x = np.asarray(x, dtype=np.float64)
    k = v.shape[1]
    biased = reg.size > k
    y = np.column_stack([v, np.ones(len(v))]) if biased else v
    observed = ~np.isnan(x)
    t = np.where(observed, x - mean - col_bias, 0.0)
    rows, _, _ = factor.masked_ridge_rows(t, observed.astype(np.float64), y, reg)
    if not full:
        return rows[:, :k]
    pred = rows @ y.T + (mean + col_bias if biased else 0.0)
    return pred if clip is None else np.clip(pred, *clip)


def _nnls_rows(x: np.ndarray, h: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """argmin_{W >= 0} ||x - W h||_F row by row, by HALS sweeps (exact coordinate updates)
    from the least-squares solution clipped at 0. A row stops when a sweep changes it by
    at most ``tol`` relative, so each row's answer is independent of the others (and of
    how a large input is cut into blocks)."""
    x = np.asarray(x, dtype=np.float64)
    hht = h @ h.T
    xht = x @ h.T
    w = np.maximum(np.linalg.lstsq(h.T, x.T, rcond=None)[0].T, 0.0)
    active = np.arange(w.shape[0])
    for _ in range(max(1, max_iter)):
        if active.size == 0:
            break
        part, before = w[active], w[active].copy()
        for j in range(h.shape[0]):
            if hht[j, j] <= 0:
                part[:, j] = 0.0
                continue
            step = (xht[active, j] - part @ hht[:, j]) / hht[j, j]
            part[:, j] = np.maximum(0.0, part[:, j] + step)
        w[active] = part
        change = np.linalg.norm(part - before, axis=1)
        active = active[change > tol * np.maximum(np.linalg.norm(part, axis=1), 1e-300)]
    return w
