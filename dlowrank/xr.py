"""xarray in and out: EOF analysis (PCA over samples x space) of a labelled field.

``eof(field, n_modes, sample_dims=("time",))`` stacks every other dimension into
features (lazily, for a dask-backed field), drops feature points that are NaN (land
in an ocean field) and restores them in the patterns, applies optional weights (such
as sqrt(cos(latitude)), broadcast along the feature dimensions), removes the mean
over the samples, and runs dlowrank's streaming SVD. The result is an
``xarray.Dataset``: ``components`` (mode, *feature dims), ``scores`` (*sample dims,
mode), ``singular_values``, ``explained_variance`` and ``explained_variance_ratio``
(mode), with the input's coordinates and attributes, and the run's error and passes
in its attributes.

Needs xarray (``pip install "dlowrank[xarray]"``).
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlowrank.errors import InputError, ParameterError


def eof(
    field: Any,
    n_modes: int,
    *,
    sample_dims: Hashable | Sequence[Hashable] = ("time",),
    weights: Any = None,
    center: bool = True,
    passes: int | None = None,
    seed: Any = 0,
    single_pass: bool = False,
    client: Any = None,
) -> Any:
    """Empirical orthogonal functions of ``field`` (an ``xarray.DataArray``).

    Parameters
    ----------
    field : xarray.DataArray
        NumPy- or dask-backed (a dask-backed field, e.g. opened from Zarr with
        ``xarray.open_zarr``, is streamed, never loaded).
    n_modes : int
        Modes to compute.
    sample_dims : dim name or sequence of names, default ("time",)
        The samples; every other dimension is a feature.
    weights : "coslat", xarray.DataArray or None
        Multiply the field by these before the SVD: "coslat" is sqrt(cos(lat)) of a
        ``lat`` coordinate (area weighting); a DataArray over feature dims only is
        broadcast along the others.
    center : bool, default True
        Remove the mean over the samples (EOF analysis); one read of the field.
    passes, seed, client
        As in :func:`dlowrank.randomized_svd`.
    single_pass : bool, default False
        Use :func:`dlowrank.sketch_svd` (one read; an estimated error).

    Returns
    -------
    xarray.Dataset
        ``components`` (mode, feature dims; NaN where the field is NaN), unit norm
        over the valid points; ``scores`` (sample dims, mode) = U S;
        ``singular_values``; ``explained_variance`` = s^2 / (n_samples - 1);
        ``explained_variance_ratio`` = s^2 / the total sum of squares (of the weighted,
        centered field). Attributes: ``rel_error``, ``error_kind``, ``passes`` (reads
        of the field, the mean's included), ``algorithm``, and the input's ``attrs``.
    """
    import xarray as xr

    from dlowrank.streaming import randomized_svd, sketch_svd

    if not isinstance(field, xr.DataArray):
        raise InputError(f"`field` must be an xarray.DataArray; got {type(field).__name__}")
    samples = (sample_dims,) if isinstance(sample_dims, (str, bytes)) else tuple(sample_dims)
    missing = [d for d in samples if d not in field.dims]
    if missing or not samples:
        raise ParameterError(
            f"`sample_dims` must name dimensions of the field {tuple(field.dims)}; got {samples!r}"
        )
    features = tuple(d for d in field.dims if d not in samples)
    if not features:
        raise ParameterError(
            f"`sample_dims` = {samples!r} leaves no feature dimension of {tuple(field.dims)}"
        )
    x = field.astype(np.float64) if field.dtype.kind in "iub" else field
    if weights is not None:
        x = x * _weights(field, weights, features)
    stacked = x.stack(sample=samples, feature=features).transpose("sample", "feature")
    n = stacked.sizes["sample"]
    # one read: which points are NaN (at any sample), their mean and total sum of squares
    mean, var = _moments(stacked)
    valid = np.flatnonzero(np.isfinite(mean))
    if valid.size == 0:
        raise InputError("every feature point of the field is NaN at some sample")
    data = stacked.isel(feature=valid).data
    if center:
        data = data - mean[valid]
        total = float(n * var[valid].sum())
    else:
        total = float(n * (var[valid] + mean[valid] ** 2).sum())
    if single_pass:
        r = sketch_svd(data, n_modes, seed=seed, client=client)
    else:
        r = randomized_svd(data, n_modes, passes=passes, seed=seed, client=client)
    u, s, vt = np.asarray(r.u), np.asarray(r.s), np.asarray(r.vt)
    comps = np.full((len(s), stacked.sizes["feature"]), np.nan)
    comps[:, valid] = vt
    mode = np.arange(1, len(s) + 1)
    feature_index = stacked.indexes["feature"]
    sample_index = stacked.indexes["sample"]
    components = xr.DataArray(
        comps, dims=("mode", "feature"), coords={"mode": mode, "feature": feature_index}
    ).unstack("feature")
    scores = xr.DataArray(
        u * s, dims=("sample", "mode"), coords={"sample": sample_index, "mode": mode}
    ).unstack("sample")
    components = components.transpose("mode", *features)
    scores = scores.transpose(*samples, "mode")
    out = xr.Dataset(
        {
            "components": components,
            "scores": scores,
            "singular_values": ("mode", s),
            "explained_variance": ("mode", s**2 / max(n - 1, 1)),
            "explained_variance_ratio": ("mode", s**2 / total if total > 0 else 0 * s),
        },
        coords={"mode": mode},
        attrs={
            **field.attrs,
            "rel_error": float(r.rel_error),
            "error_kind": r.error_kind,
            "passes": int(r.passes) + 1,
            "algorithm": r.algorithm,
        },
    )
    for name, coord in field.coords.items():  # non-index coordinates, e.g. a land mask
        if name not in out.coords and set(coord.dims) <= set(features) | set(samples):
            out = out.assign_coords({name: coord})
    return out


def _weights(field: Any, weights: Any, features: tuple) -> Any:
    import xarray as xr

    if isinstance(weights, str):
        if weights != "coslat":
            raise ParameterError(f'`weights` must be "coslat" or a DataArray; got {weights!r}')
        if "lat" not in field.coords:
            raise ParameterError('`weights` = "coslat" needs a `lat` coordinate on the field')
        return np.sqrt(np.cos(np.deg2rad(field["lat"])).clip(0, None))
    if not isinstance(weights, xr.DataArray) or not set(weights.dims) <= set(features):
        raise ParameterError(
            "`weights` must be a DataArray over feature dimensions only "
            f"(of {features}); got {getattr(weights, 'dims', type(weights).__name__)}"
        )
    return weights


def _moments(stacked: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) over the samples per feature, NaN where a sample is NaN; from one
    read of a dask-backed field."""
    import dask

    mean = stacked.mean("sample", skipna=False)
    var = stacked.var("sample", skipna=False)
    mean, var = dask.compute(mean.data, var.data)
    return np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)


@dataclass(frozen=True)
class Labels:
    """What a 2-D DataArray input brings besides its data: the row and column dims,
    the coordinates along each (index and non-index, a stacked MultiIndex included),
    its name and attributes."""

    dims: tuple[Hashable, Hashable]
    rows: Any  # xarray.Coordinates along dims[0]
    cols: Any  # xarray.Coordinates along dims[1]
    name: Hashable | None
    attrs: dict


def unlabel(a: Any) -> tuple[Any, Labels | None]:
    """``a``'s data and :class:`Labels` when ``a`` is an xarray.DataArray, else ``(a,
    None)``; a DataArray of other than 2 dims is refused with how to stack it."""
    xr = sys.modules.get("xarray")  # not imported: ``a`` cannot be a DataArray
    if xr is None or not isinstance(a, xr.DataArray):
        return a, None
    if a.ndim != 2:
        raise InputError(
            f"`a` is a DataArray with dims {tuple(a.dims)}; the matrix functions take a 2-D "
            "one. Stack the dims first, e.g. field.stack(sample=('time',), "
            "feature=('lat', 'lon')).transpose('sample', 'feature'), or use "
            "dlowrank.xr.eof for an EOF analysis"
        )
    row, col = a.dims
    if row == col:
        raise InputError(
            f"`a` is a DataArray with the dim {row!r} twice, which xarray does not support; "
            f"give its dims two names, e.g. xarray.DataArray(a.data, dims=({row!r}, "
            f"'{row}_2'))"
        )

    def along(dim: Hashable, other: Hashable) -> Any:  # the coordinates on ``dim`` alone
        two_d = [name for name, c in a.coords.items() if other in c.dims]
        return a.drop_vars(two_d).isel({other: 0}, drop=True).coords  # no data is read

    rows, cols = along(row, col), along(col, row)
    return a.data, Labels((row, col), rows, cols, a.name, dict(a.attrs))


def result_dataset(result: Any, unstack: bool = True) -> Any:
    """``result.to_xarray()`` (see :meth:`dlowrank.results._Provenance.to_xarray`)."""
    import pandas as pd
    import xarray as xr

    labels = result.labels
    row, col = labels.dims if labels is not None else ("row", "col")
    dims = {"row": row, "col": col}
    named = result._named()
    used = {axis for axes, _ in named.values() for axis in axes}
    data = {
        name: xr.Variable(tuple(dims.get(axis, axis) for axis in axes), value)
        for name, (axes, value) in named.items()
    }
    attrs = dict(labels.attrs) if labels is not None else {}
    attrs.update(
        {
            "rel_error": float(result.rel_error),
            "error_kind": result.error_kind,
            "passes": int(result.passes),
            "algorithm": result.algorithm,
        }
    )
    if getattr(result, "mean", None) is not None:  # a factorization with biases
        attrs["mean"] = float(result.mean)
    if labels is not None and labels.name is not None:
        attrs["input_name"] = str(labels.name)
    out = xr.Dataset(data, coords={"component": np.arange(1, result.rank + 1)}, attrs=attrs)
    if labels is not None:
        for axis, coords in (("row", labels.rows), ("col", labels.cols)):
            if axis in used and len(coords):
                out = out.assign_coords(coords)
    if unstack:  # a stacked input: factors back on the dims it was stacked from
        for dim in dims.values():
            if dim in out.indexes and isinstance(out.indexes[dim], pd.MultiIndex):
                out = out.unstack(dim)
    return out
