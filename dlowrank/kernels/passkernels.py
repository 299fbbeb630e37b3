"""Per-piece kernels of the passes: pure NumPy on one block of the tall-oriented A.

Each takes ``(block, rows, cols, *args)`` -- a block of A in tall orientation
with its global row and column ranges -- and returns ``{"sums": ..., "rows": ...,
"cols": ...}``: arrays the pass engine sums over all pieces, per row range, or
per column range. Sketches are accumulated in float64 whatever A's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse

from dlowrank.kernels import factor, random

_EMPTY: dict = {}


#: Row slabs of at most this many float64 bytes: a separable kernel's piece (the engine
#: cuts it) and a tile converted for a float64 product, so the copies stay small.
SLAB_BYTES = 16 << 20


class Tiles:
    """A dense piece of the tall-oriented A as column tiles, each in memory of its own
    (decoded straight from the store: the piece is never assembled). ``parts`` =
    [(lo, hi, tile)], the tiles' column ranges within the piece."""

    def __init__(self, parts: list[tuple[int, int, np.ndarray]]) -> None:
        self.parts = parts
        self.shape = (parts[0][2].shape[0], parts[-1][1])
        self.dtype = parts[0][2].dtype

    def times(self, x: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
        """A x in ``dtype`` (x: the piece's rows of the operand)."""
        out = None
        for lo, hi, t in self.parts:
            xs = x[lo:hi].astype(dtype, copy=False)
            part = np.vstack([slab @ xs for _, slab in _slabs(t, dtype)])
            out = part if out is None else out + part
        return out

    def adjoint(self, y: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
        """A^T y in ``dtype`` (y: the piece's rows)."""
        y = y.astype(dtype, copy=False)
        return np.vstack(
            [
                sum(slab.T @ y[s : s + len(slab)] for s, slab in _slabs(t, dtype))
                for _, _, t in self.parts
            ]
        )

    def fro2(self) -> np.ndarray:
        return sum(
            (fro2(slab) for _, _, t in self.parts for _, slab in _slabs(t, np.float64)),
            np.asarray(0.0),
        )


def _slabs(t: np.ndarray, dtype: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of ``t`` in ``dtype``: ``t`` itself when it is of that dtype, else
    converted a row slab of at most SLAB_BYTES at a time."""
    if t.dtype == dtype:
        yield 0, t
        return
    step = max(1, SLAB_BYTES // max(1, 8 * t.shape[1]))
    for s in range(0, t.shape[0], step):
        yield s, t[s : s + step].astype(dtype)


def power_dtype(block: Any) -> Any:
    """The precision of a power iteration's products: float32 for float32 data (the
    iteration only finds a subspace, which the last pass measures in float64), else
    float64."""
    return np.float32 if getattr(block, "dtype", None) == np.float32 else np.float64


def _f64(block: Any) -> Any:
    """``block`` in float64: a NumPy array, or a CSR matrix for a sparse block."""
    if scipy.sparse.issparse(block):
        block = scipy.sparse.csr_matrix(block)
    return block if block.dtype == np.float64 else block.astype(np.float64)


def _left(m: np.ndarray, a: Any) -> np.ndarray:
    """``m @ a`` as a NumPy array, for a dense or sparse ``a`` (computed as (a^T m^T)^T)."""
    return np.asarray(a.T @ m.T).T


def fro2(block: np.ndarray) -> np.ndarray:
    """||block||_F^2 in float64 (NaN or inf if the block has a non-finite entry)."""
    flat = block.ravel()
    with np.errstate(over="ignore"):  # an overflow is reported by the engine
        return np.asarray(flat @ flat)


def block_fro2(block: Any, missing: bool = False) -> np.ndarray:
    """||block||_F^2 of a dense or sparse block; with ``missing``, NaN entries are
    missing values and left out (an infinite entry still makes it infinite)."""
    if isinstance(block, Tiles):
        return block.fro2()
    values = block.data if scipy.sparse.issparse(block) else block
    values = np.asarray(values, dtype=np.float64).ravel()
    if missing:
        values = values[~np.isnan(values)]
    return fro2(values)


def nonfinite(block, rows, cols, missing=False) -> dict:
    """Count and first (row, column) of the non-finite entries of one piece (error path);
    with ``missing``, NaN entries are missing values and only infinities count."""
    if scipy.sparse.issparse(block):
        block = scipy.sparse.coo_matrix(block)
        bad = ~np.isfinite(block.data) & ~(missing & np.isnan(block.data))
        r, c = block.row[bad], block.col[bad]
        count = int(bad.sum())
        at = np.lexsort((c, r))[0] if count else None  # the first in row-major order
        where = (int(r[at]), int(c[at])) if count else None
    else:
        bad = np.isinf(block) if missing else ~np.isfinite(block)
        count = int(bad.sum())
        where = tuple(int(v) for v in np.argwhere(bad)[0]) if count else None  # row-major
    first = None if where is None else (where[0] + rows[0], where[1] + cols[0])
    return {"count": count, "first": first}


def gram_apply(block, rows, cols, x) -> dict:
    """Panel kernel of a power iteration: Z += A_i^T (A_i X), one read (HMT §4.5), in
    :func:`power_dtype`; summed over panels in float64."""
    z = _gram_apply(block, x, power_dtype(block))
    if z.dtype != np.float64 and not np.all(np.isfinite(z)):  # float32 overflowed
        z = _gram_apply(block, x, np.float64)
    return {"sums": {"z": z.astype(np.float64)}, "rows": _EMPTY, "cols": _EMPTY}


def _gram_apply(block, x: np.ndarray, dtype) -> np.ndarray:
    if isinstance(block, Tiles):
        return block.adjoint(block.times(x, dtype), dtype)
    a = block if dtype == np.float32 and isinstance(block, np.ndarray) else _f64(block)
    return np.asarray(a.T @ (a @ x.astype(a.dtype, copy=False)))


def range_and_adjoint(block, rows, cols, x) -> dict:
    """Final panel kernel: Y_i = A_i X (kept), W += A_i^T Y_i, and Y's Gram Y_i^T Y_i
    (CholeskyQR's first step then needs no read of Y). In float64: the exact error
    comes from these sums."""
    if isinstance(block, Tiles):
        y = block.times(x)
        w = block.adjoint(y)
    else:
        a = _f64(block)
        y = np.asarray(a @ x)
        w = np.asarray(a.T @ y)
    return {
        "sums": {"w": w, "yty": y.T @ y},
        "rows": {"y": y},
        "cols": _EMPTY,
    }


def project(block, rows, cols, q) -> dict:
    """B += Q_i^T A_i: the explicit projection, when W = A^T Y cannot be used safely
    (``q``: the piece's rows Q_i only)."""
    b = block.adjoint(q).T if isinstance(block, Tiles) else _left(q.T, _f64(block))
    return {
        "sums": {"b": b},
        "rows": _EMPTY,
        "cols": _EMPTY,
    }


def apply_block(block, rows, cols, x) -> dict:
    """Block kernel: Y_i += A_ij X_j (per row range)."""
    y = np.asarray(_f64(block) @ x[cols[0] : cols[1]])
    return {"sums": {}, "rows": {"y": y}, "cols": _EMPTY}


def adjoint_block(block, rows, cols, y) -> dict:
    """Block kernel: Z_j += A_ij^T Y_i (per column range; ``y``: the piece's rows Y_i)."""
    z = np.asarray(_f64(block).T @ y)
    return {"sums": {}, "rows": _EMPTY, "cols": {"z": z}}


# --- single-pass sketch (Tropp, Yurtsever, Udell, Cevher 2019) -----------------------


def _test_rows(seed: tuple, key: int, n_rows: int, width: int, span: tuple[int, int]) -> np.ndarray:
    entropy, spawn_key = seed
    return random.gaussian_rows(entropy, spawn_key, key, n_rows, width, *span)


def three_sketch(block, rows, cols, seed, m, right, k, d) -> dict:
    """One chunk's share of the sketches Y = A Omega, X = Upsilon A, Z = Phi A Psi^T
    and the error sketch E = Theta A; and of Phi Y and Theta Y (every sketch is linear
    in A, so these sum over chunks too).

    ``right`` = [Omega | Psi^T] (n, k + s) is shared by all tasks; the m-sized test
    matrices Upsilon, Phi, Theta are generated here from the seed and the chunk's
    global row range. Either way the numbers depend on the global index only, so
    the result does not depend on the chunking, and nothing but sketches travels.
    """
    a = _f64(block)
    s = right.shape[1] - k
    left = _test_rows(
        seed, random.Stream.SKETCH_UPSILON, m, k + d, rows
    )  # [Upsilon^T | Theta^T] rows
    phi = _test_rows(seed, random.Stream.SKETCH_PHI, m, s, rows)
    ar = np.asarray(a @ right[cols[0] : cols[1]])  # one GEMM for Y and A Psi^T
    la = _left(left.T, a)  # one GEMM for X and E
    pz = phi.T @ ar  # [Phi Y | Z]: Phi Y (s, k) spares the finish a read of Y's panels
    sums = {"z": pz[:, k:], "phi_y": pz[:, :k]}
    if d:
        sums["theta_y"] = left[:, k:].T @ ar[:, :k]  # Theta Y (d, k)
    out_cols = {"x": la[:k]}
    if d:
        out_cols["e"] = la[k:]
    return {"sums": sums, "rows": {"y": ar[:, :k]}, "cols": out_cols}


def grown_sketch(block, rows, cols, seed, m, right, k, d, old, check) -> dict:
    """One chunk's share of the sketches of the entries outside the covered part
    ``old`` = (m0, n0) of a grown matrix (that part's entries count as zeros: every
    sketch is linear in A, so the grown matrix's sketches are the covered part's,
    zero-padded, plus these). With ``check`` the covered entries of the piece are
    projected too, as the stored sketches saw them: ``y0`` = A[rows, :n0] Omega[:n0]
    for rows below m0, and ``x0`` = Upsilon[:, :m0] A[:m0, cols] for columns below n0;
    an update compares them with the stored rows of Y and columns of X, so a chunk
    rewritten by an append is still checked to hold the old entries unchanged
    (``check`` = (rows, columns)). ``f2`` sums ||.||_F^2 of the new entries."""
    a = _f64(block)
    m0, n0 = old
    rr = max(0, min(rows[1], m0) - rows[0])  # rows of the piece inside the covered part
    cc = max(0, min(cols[1], n0) - cols[0])
    out: dict = {"sums": {}, "rows": {}, "cols": {}}
    if check[0]:
        y0 = np.zeros((a.shape[0], k))
        if rr and cc:
            y0[:rr] = a[:rr, :cc] @ right[cols[0] : cols[0] + cc, :k]
        out["rows"]["y0"] = y0
    if check[1]:
        x0 = np.zeros((k, a.shape[1]))
        if rr and cc:
            up = _test_rows(seed, random.Stream.SKETCH_UPSILON, m, k + d, (rows[0], rows[0] + rr))
            x0[:, :cc] = up[:, :k].T @ a[:rr, :cc]
        out["cols"]["x0"] = x0
    if rr and cc:
        a = a.copy() if a is block else a
        a[:rr, :cc] = 0.0
    new = three_sketch(a, rows, cols, seed, m, right, k, d)
    for part in ("sums", "rows", "cols"):
        out[part].update(new[part])
    out["sums"]["f2"] = fro2(a)  # ||A||_F^2 of the new entries only
    return out


def nystrom_sketch(block, rows, cols, seed, n, k, d) -> dict:
    """One chunk's share of Y = A Omega (n, k) and the error sketch Theta A."""
    a = _f64(block)
    omega = _test_rows(seed, random.Stream.SKETCH_OMEGA, n, k, cols)
    theta = _test_rows(seed, random.Stream.SKETCH_THETA, n, d, rows)
    return {"sums": {}, "rows": {"y": np.asarray(a @ omega)}, "cols": {"e": _left(theta.T, a)}}


def residual(block, rows, cols, u, s, vt) -> dict:
    """||A_i - U_i S V^T||_F^2 for the row panel (exact: no cancellation) and ||A_i||_F^2
    (``u``: the panel's rows U_i)."""
    a = _f64(block)
    if scipy.sparse.issparse(a):
        a = a.toarray()
    r = a - (u * s) @ vt[:, cols[0] : cols[1]]
    return {"sums": {"res2": fro2(r), "fro2": fro2(a)}, "rows": _EMPTY, "cols": _EMPTY}


# --- factorizations: one pass per iteration, fused per row panel -----------------------


def _observed(block: np.ndarray, masked: bool) -> tuple[np.ndarray, np.ndarray | None]:
    a = _f64(block)
    if not masked:
        return a, None
    mask = ~np.isnan(a)  # NaN means missing; an infinite entry stays and is reported
    return np.where(mask, a, 0.0), mask.astype(np.float64)


def _sparse_parts(block):
    """(csr, indicator, row index of every entry) of a sparse panel (tall orientation)."""
    s = scipy.sparse.csr_matrix(block)
    ind = s.copy()
    ind.data = np.ones_like(ind.data)
    rowidx = np.repeat(np.arange(s.shape[0]), np.diff(s.indptr))
    return s, ind, rowidx


def _als_sparse(s, rows, v, alpha) -> dict:
    """als_step for a sparse panel: only the stored entries are observed."""
    s, ind, _ = _sparse_parts(s)
    u, grams, rhs = factor.masked_ridge_rows(s, ind, v, alpha)
    # ||res||^2 - ||s||^2 from the row systems: no (entries x k) temporaries
    fit = -2 * np.sum(u * rhs) + np.einsum("rk,rkl,rl->", u, grams, u)
    sums = {
        "atu": np.asarray(s.T @ u),
        "cgram": np.asarray(ind.T @ factor.outer_rows(u)),
        "utu": u.T @ u,
        "fit": np.asarray(fit),
        "col_obs": np.asarray(ind.sum(axis=0)).ravel(),
    }
    empty = np.nonzero(np.diff(s.indptr) == 0)[0]
    return {
        "sums": sums,
        "rows": {"u": u, "empty_row": np.asarray(empty[0] + rows[0] if empty.size else -1)},
        "cols": _EMPTY,
    }


def _residual_sparse(s, rows, u, v, first) -> dict:
    s, _, rowidx = _sparse_parts(s)
    ui = u
    r = s.copy()
    r.data = np.einsum("tk,tk->t", ui[rowidx], v[s.indices]) - s.data
    sums = {"rtu": np.asarray(r.T @ ui), "res2": np.asarray(np.sum(r.data * r.data))}
    sums.update(_u_sums(ui))
    rows_out = {"rv": np.asarray(r @ v)}
    if first:
        sums["col_obs"] = np.bincount(s.indices, minlength=s.shape[1]).astype(np.float64)
        empty = np.nonzero(np.diff(s.indptr) == 0)[0]
        rows_out["empty_row"] = np.asarray(empty[0] + rows[0] if empty.size else -1)
    return {"sums": sums, "rows": rows_out, "cols": _EMPTY}


def _als_biased(block, rows, y, inv_y, reg, masked, offset, mean) -> dict:
    """als_step with a global mean and row and column biases (see :func:`als_step`).

    ``y`` = [V, 1] (n, k+1), ``offset`` = mean + c (the column biases), ``reg`` the
    diagonal penalty (alpha for the factors, beta for the bias). Each row solves for
    x_i = [u_i, b_i] against r_ij - offset_j; the column-side sums are those of
    w_i = [u_i, 1] against r_ij - mean - b_i, so the driver solves z_j = [v_j, c_j].
    """
    if scipy.sparse.issparse(block):
        s, ind, rowidx = _sparse_parts(block)
        t = s.copy()
        t.data = s.data - offset[s.indices]
        x, grams, rhs = factor.masked_ridge_rows(t, ind, y, reg)
        # sum of squared residuals from the row systems: no (entries x k) temporaries
        res2 = t.data @ t.data - 2 * np.sum(x * rhs) + np.einsum("rk,rkl,rl->", x, grams, x)
        w = np.column_stack([x[:, :-1], np.ones(len(x))])
        t.data = s.data - mean - x[rowidx, -1]
        sums = {
            "atu": np.asarray(t.T @ w),
            "cgram": np.asarray(ind.T @ factor.outer_rows_packed(w)),  # upper triangles
        }
        target2, observed = t.data @ t.data, np.diff(s.indptr)
        sums["col_obs"] = np.asarray(ind.sum(axis=0)).ravel()
    else:
        a, mask = _observed(block, masked)
        t = a - offset
        if mask is None:
            x = (t @ y) @ inv_y
            r = t - x @ y.T
        else:
            t *= mask
            x, _, _ = factor.masked_ridge_rows(t, mask, y, reg)
            r = t - mask * (x @ y.T)
        res2 = np.sum(r * r)
        w = np.column_stack([x[:, :-1], np.ones(len(x))])
        t = a - mean - x[:, -1:]
        if mask is None:
            sums = {"utu": w.T @ w}
        else:
            t *= mask
            sums = {"cgram": mask.T @ factor.outer_rows_packed(w), "col_obs": mask.sum(axis=0)}
            observed = mask.sum(axis=1)
        sums["atu"] = t.T @ w
        target2 = np.sum(t * t)
    u, b = x[:, :-1], x[:, -1]
    sums.update(
        {
            "res2": np.asarray(max(float(res2), 0.0)),
            "u2": np.asarray(np.sum(u * u)),
            "bsum": np.asarray(b.sum()),
            "b2": np.asarray(b @ b),
            "target2": np.asarray(target2),
        }
    )
    rows_out = {"u": x}
    if masked or scipy.sparse.issparse(block):  # the first row without any observation, or -1
        empty = np.nonzero(observed == 0)[0]
        rows_out["empty_row"] = np.asarray(empty[0] + rows[0] if empty.size else -1)
    return {"sums": sums, "rows": rows_out, "cols": _EMPTY}


def als_step(block, rows, cols, v, inv_v, alpha, masked, bias=None) -> dict:
    """Fused ALS iteration on a row panel: U_i from V (ridge), then the V-side sums.

    Dense: U_i = A_i V (V^T V + alpha I)^{-1}; sums A_i^T U_i, U_i^T U_i. Masked
    (NaN = missing): each row solves its own ridge system over its observed
    columns; the sums are per-column Grams sum_i m_ij u_i u_i^T and A^T U.
    The loss terms are those of (U_i, V) -- the new U with the old V. A sparse
    panel (ratings) is masked by its stored entries. With ``bias`` = (offset, mean)
    the model has a global mean and row and column biases (:func:`_als_biased`).
    """
    if bias is not None:
        return _als_biased(block, rows, v, inv_v, alpha, masked, *bias)
    if scipy.sparse.issparse(block):
        return _als_sparse(block, rows, v, alpha)
    a, mask = _observed(block, masked)
    if mask is None:
        av = a @ v
        u = av @ inv_v
        fit = -2 * np.sum(u * av) + np.sum((u.T @ u) * (v.T @ v))
        sums = {"atu": a.T @ u, "utu": u.T @ u, "fit": np.asarray(fit)}
    else:
        u, _, _ = factor.masked_ridge_rows(a, mask, v, alpha)
        r = mask * (a - u @ v.T)
        sums = {
            "atu": a.T @ u,
            "cgram": mask.T @ factor.outer_rows(u),
            "utu": u.T @ u,
            "fit": np.asarray(np.sum(r * r) - np.sum(a * a)),
            "col_obs": mask.sum(axis=0),
        }
    rows_out = {"u": u}
    if mask is not None:  # the first row without any observation, or -1
        empty = np.nonzero(mask.sum(axis=1) == 0)[0]
        rows_out["empty_row"] = np.asarray(empty[0] + rows[0] if empty.size else -1)
    return {"sums": sums, "rows": rows_out, "cols": _EMPTY}


def _u_sums(u: np.ndarray) -> dict:
    """U_i^T U_i and the sum of U_i's entries: step sizes, the penalty and the scale of a
    random start, without another read of U."""
    return {"utu": u.T @ u, "usum": np.asarray(u.sum())}


def residual_step(block, rows, cols, u, v, masked, first) -> dict:
    """Gradient terms at (U, V): R_i = m * (U_i V^T - A_i); rows R_i V, sums R_i^T U_i,
    ||R||^2 (``u``: the panel's rows U_i)."""
    if scipy.sparse.issparse(block):
        return _residual_sparse(block, rows, u, v, first)
    a, mask = _observed(block, masked)
    ui = u
    r = ui @ v.T - a
    if mask is not None:
        r *= mask
    sums = {"rtu": r.T @ ui, "res2": fro2(r), **_u_sums(ui)}
    rows_out = {"rv": r @ v}
    if first and mask is not None:  # unobserved rows and columns are refused after pass 1
        sums["col_obs"] = mask.sum(axis=0)
        empty = np.nonzero(mask.sum(axis=1) == 0)[0]
        rows_out["empty_row"] = np.asarray(empty[0] + rows[0] if empty.size else -1)
    return {"sums": sums, "rows": rows_out, "cols": _EMPTY}


def nmf_step(block, rows, cols, w, h, alpha, solver) -> dict:
    """Fused NMF iteration on a row panel (``w``: its rows W_i): update W_i (HALS or MU)
    from H, then the
    H-side sums A_i^T W_i, W_i^T W_i, with the loss terms of (W_i, H) and the
    smallest entry of the panel (negative input is refused after the first pass)."""
    a = _f64(block)
    ah = a @ h
    hth = h.T @ h
    wi = w
    wi = (
        factor.hals_update(wi, ah, hth, alpha)
        if solver == "hals"
        else factor.mu_update(wi, ah, hth, alpha)
    )
    fit = -2 * np.sum(wi * ah) + np.sum((wi.T @ wi) * hth)
    low = np.unravel_index(np.argmin(a), a.shape)
    sums = {"atw": a.T @ wi, "wtw": wi.T @ wi, "fit": np.asarray(fit)}
    return {
        "sums": sums,
        "rows": {"w": wi, "low": np.array([a[low], low[0] + rows[0], low[1] + cols[0]])},
        "cols": _EMPTY,
    }


# Kernels whose output over a piece is their outputs over its row slabs summed (sums,
# column sums) or stacked (row outputs): the engine may run them slab by slab.
for _kernel in (
    gram_apply,
    range_and_adjoint,
    project,
    apply_block,
    adjoint_block,
    three_sketch,
    grown_sketch,
    nystrom_sketch,
    residual,
):
    _kernel.separable = True

# Kernels that take a panel as :class:`Tiles` (the engine then never assembles it).
for _kernel in (gram_apply, range_and_adjoint, project):
    _kernel.tiles = True
