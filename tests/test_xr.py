"""EOF analysis of labelled fields (dlowrank.xr.eof) against xeofs."""

from __future__ import annotations

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
xeofs = pytest.importorskip("xeofs")

from dlowrank.errors import InputError, ParameterError  # noqa: E402
from dlowrank.xr import eof  # noqa: E402


def field(nt: int = 120, nlat: int = 24, nlon: int = 36, seed: int = 0):
    """A (time, lat, lon) field with three known modes, noise, a mean, and land (NaN)."""
    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-70, 70, nlat), np.linspace(0, 350, nlon)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    patterns = [
        np.cos(la) * np.sin(lo),
        np.sin(2 * la) * np.cos(lo),
        np.cos(3 * la) * np.sin(2 * lo),
    ]
    data = sum(
        a * rng.standard_normal(nt)[:, None, None] * p[None]
        for a, p in zip((5.0, 3.0, 1.5), patterns, strict=True)
    )
    data = data + 0.05 * rng.standard_normal((nt, nlat, nlon)) + 280.0
    data[:, 8:12, 5:12] = np.nan  # land
    return xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={"time": np.arange(nt), "lat": lat, "lon": lon},
        attrs={"units": "K", "long_name": "temperature"},
        name="t",
    )


def _aligned(ours, theirs):
    """Our components with each mode's sign matched to xeofs's."""
    sign = np.sign((ours * theirs).sum(("lat", "lon")))
    return ours * sign, sign


def test_eofs_and_explained_variance_agree_with_xeofs_at_the_same_weights():
    f = field()
    ours = eof(f, 3, weights="coslat", passes=3)
    model = xeofs.single.EOF(n_modes=3, use_coslat=True, solver="full").fit(f, dim="time")
    theirs = model.components()
    mine, sign = _aligned(ours.components, theirs)
    np.testing.assert_allclose(mine.values, theirs.transpose(*mine.dims).values, atol=1e-6)
    assert np.isnan(ours.components.sel(lat=f.lat[9], lon=f.lon[6])).all()  # land restored
    for name in ("explained_variance", "explained_variance_ratio", "singular_values"):
        np.testing.assert_allclose(ours[name].values, getattr(model, name)().values, rtol=1e-6)
    scores = (ours.scores * sign).transpose("mode", "time")
    np.testing.assert_allclose(scores.values, model.scores().values, rtol=1e-6, atol=1e-6)
    assert ours.components.dims == ("mode", "lat", "lon") and ours.scores.dims == ("time", "mode")
    np.testing.assert_array_equal(ours.lat, f.lat)
    assert ours.attrs["units"] == "K" and ours.attrs["passes"] == 4  # 3 + the mean's read


def test_a_dask_backed_field_with_weights_streams_to_the_same_eofs():
    f = field(nt=90, seed=1)
    w = np.sqrt(np.cos(np.deg2rad(f.lat)))
    in_memory = eof(f, 2, weights=w, passes=3)
    lazy = eof(f.chunk({"time": 30, "lat": 12}), 2, weights=w, passes=3)
    np.testing.assert_allclose(lazy.components.values, in_memory.components.values, atol=1e-10)
    np.testing.assert_allclose(lazy.explained_variance_ratio, in_memory.explained_variance_ratio)
    coslat = eof(f, 2, weights="coslat", passes=3)
    np.testing.assert_allclose(coslat.singular_values, in_memory.singular_values, rtol=1e-12)
    one = eof(f, 2, weights="coslat", single_pass=True)
    assert one.attrs["error_kind"] == "estimated" and one.attrs["passes"] == 2


def test_bad_eof_arguments_are_refused_by_name():
    f = field(nt=20)
    with pytest.raises(ParameterError, match="`sample_dims`"):
        eof(f, 2, sample_dims="depth")
    with pytest.raises(ParameterError, match="`weights`"):
        eof(f, 2, weights=xr.DataArray(np.ones(20), dims="time"))
    with pytest.raises(InputError, match="xarray.DataArray"):
        eof(f.values, 2)


def test_public_functions_take_a_dataarray_and_results_carry_its_coordinates(tmp_path):
    import pandas as pd

    import dlowrank

    rng = np.random.default_rng(0)
    values = rng.standard_normal((300, 40)) * 0.8 ** np.arange(40)
    a = xr.DataArray(
        values,
        dims=("time", "station"),
        coords={
            "time": pd.date_range("2000-01-01", periods=300),
            "station": [f"s{i}" for i in range(40)],
            "height": ("station", np.arange(40.0)),
        },
        name="temp",
        attrs={"units": "K"},
    )
    plain = dlowrank.randomized_svd(values, 5, seed=0)
    r = dlowrank.randomized_svd(a.chunk({"time": 100}), 5, seed=0, out=tmp_path / "r.zarr")
    np.testing.assert_allclose(r.s, plain.s, rtol=1e-12)
    ds = r.to_xarray()
    assert ds.u.dims == ("time", "component") and ds.v.dims == ("station", "component")
    assert (ds.time == a.time).all() and list(ds.station.values) == list(a.station.values)
    np.testing.assert_array_equal(ds.height, a.height)  # a non-index coordinate too
    np.testing.assert_allclose(ds.v.values, np.asarray(r.vt).T)
    assert ds.attrs["units"] == "K" and ds.attrs["passes"] == r.passes == 2
    assert dlowrank.load(tmp_path / "r.zarr").to_xarray().u.dims == ("row", "component")

    f = dlowrank.factorize(a, 3, biases=True, weight_decay=0.1, max_iter=5)
    fs = f.to_xarray()
    assert fs.row_bias.dims == ("time",) and fs.col_bias.dims == ("station",)
    assert fs.attrs["mean"] == f.mean
    for call in (dlowrank.sketch_svd, dlowrank.exact_svd):
        assert call(a, 3).to_xarray().u.dims == ("time", "component")

    # a stacked field: the MultiIndex comes back, so the patterns unstack onto the map
    field = xr.DataArray(
        rng.standard_normal((50, 4, 6)),
        dims=("time", "lat", "lon"),
        coords={"lat": np.arange(4.0), "lon": np.arange(6.0) * 10},
    )
    stacked = field.stack(point=("lat", "lon"))
    result = dlowrank.randomized_svd(stacked, 2)
    patterns = result.to_xarray().v  # unstacked: the patterns are on the map
    assert patterns.dims == ("component", "lat", "lon") and patterns.lon.values[-1] == 50.0
    np.testing.assert_allclose(patterns.values.reshape(2, -1), np.asarray(result.vt))
    assert result.to_xarray(unstack=False).v.dims == ("point", "component")
    with pytest.raises(InputError, match=r"DataArray with dims \('time', 'lat', 'lon'\).*stack"):
        dlowrank.randomized_svd(field, 2)
    # a 2-D coordinate belongs to neither side alone: it is left out, not cut at one row
    grid = field.isel(lat=0).assign_coords(weight=(("time", "lon"), np.ones((50, 6))))
    assert "weight" not in dlowrank.randomized_svd(grid, 2).to_xarray().coords
