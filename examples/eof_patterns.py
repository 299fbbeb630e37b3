"""EOF analysis of a gridded field with xarray: the leading patterns on a map grid.

A synthetic monthly temperature field (time, lat, lon) built from three planetary-
scale modes, noise, a mean climate and a land mask (NaN). ``dlowrank.xr.eof``
stacks lat x lon into features, weights them by sqrt(cos lat), drops the land points,
removes the time mean and returns the patterns back on (lat, lon) with land restored
and the principal components on time. The figure shows the three patterns and their
time series; the printed explained variances are those xeofs computes at the same
weights (the tests check it to 1e-6).

    python examples/eof_patterns.py [--out figures] [--tiny]
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from _common import parser, pyplot, save_figure

from dlowrank.xr import eof


def make_field(nt: int, nlat: int, nlon: int) -> xr.DataArray:
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-80, 80, nlat), np.linspace(0, 360, nlon, endpoint=False)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    modes = [
        (4.0, np.cos(la) ** 2 * np.sin(lo)),  # a wave-1 dipole
        (2.5, np.sin(2 * la)),  # hemispheric see-saw
        (1.2, np.cos(la) * np.cos(3 * lo)),  # wave-3
    ]
    t = np.arange(nt)
    seasonal = np.sin(2 * np.pi * t / 12)
    series = [seasonal + 0.3 * rng.standard_normal(nt), rng.standard_normal(nt).cumsum() / 8,
              rng.standard_normal(nt)]  # fmt: skip
    data = (
        288.0
        - 30 * np.sin(la) ** 2
        + sum(a * s[:, None, None] * p[None] for (a, p), s in zip(modes, series, strict=True))
    )
    data = data + 0.2 * rng.standard_normal(data.shape)
    land = (np.abs(lat[:, None] - 30) < 15) & (np.abs(lon[None, :] - 100) < 40)
    data[:, land] = np.nan
    return xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={"time": t, "lat": lat, "lon": lon},
        attrs={"units": "K", "long_name": "surface temperature (synthetic)"},
    )


def main() -> None:
    args = parser(__doc__).parse_args()
    nt, nlat, nlon = (60, 18, 36) if args.tiny else (600, 90, 180)
    field = make_field(nt, nlat, nlon)
    result = eof(field.chunk({"time": max(nt // 4, 1)}), 3, weights="coslat", passes=3)
    for k, (ratio, var) in enumerate(
        zip(result.explained_variance_ratio.values, result.explained_variance.values, strict=True)
    ):
        print(f"EOF {k + 1}: {ratio:.1%} of the variance ({var:.3g} K^2 summed over the grid)")
    passes, error = result.attrs["passes"], result.attrs["rel_error"]
    print(f"{passes} passes over the field, relative error {error:.4f}")
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 6), gridspec_kw={"height_ratios": [2, 1]})
    for k in range(3):
        pattern = result.components.isel(mode=k)
        limit = float(np.nanmax(np.abs(pattern)))
        axes[0, k].pcolormesh(field.lon, field.lat, pattern, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0, k].set_title(f"EOF {k + 1} ({float(result.explained_variance_ratio[k]):.0%})")
        axes[0, k].set_xlabel("longitude")
        axes[0, k].set_ylabel("latitude")
        axes[1, k].plot(result.time, result.scores.isel(mode=k), lw=0.8)
        axes[1, k].set_xlabel("month")
    save_figure(fig, args.out, "eof_patterns.png", dpi=90)


if __name__ == "__main__":
    main()
