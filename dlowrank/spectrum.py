"""Public spectrum tools: Eckart-Young errors, energy, stable rank, decay summaries.

They take singular values (any result's ``s``), never the matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlowrank.errors import ParameterError
from dlowrank.kernels import exact, spectrum
from dlowrank.params import parse_float, parse_int


def _parse_spectrum(s: Any) -> np.ndarray:
    arr = np.asarray(s, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ParameterError(
            f"`s` must be a non-empty 1-D array of singular values; got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ParameterError("`s` must hold finite non-negative singular values")
    if np.any(np.diff(arr) > 0):
        i = int(np.argmax(np.diff(arr) > 0))
        raise ParameterError(
            f"`s` must be non-increasing; s[{i}] = {arr[i]:.6g} < "
            f"s[{i + 1}] = {arr[i + 1]:.6g} (sort it in descending order)"
        )
    return arr


def optimal_error(s: Any, rank: int) -> exact.OptimalError:
    """Eckart-Young: the error of the best rank-``rank`` approximation.

    Parameters
    ----------
    s : array-like, shape (p,)
        The *whole* spectrum, non-increasing (p = min(m, n)).
    rank : int
        In [0, p].

    Returns
    -------
    OptimalError
        ``frobenius`` = sqrt(sum_{i>=rank} s_i^2), ``spectral`` = s_rank, and both
        relative to ||A||_F and ||A||_2. No rank-``rank`` matrix does better in
        either norm (Eckart & Young 1936; Mirsky 1960).

    Examples
    --------
    >>> import dlowrank
    >>> dlowrank.optimal_error([4.0, 3.0], 1).frobenius
    3.0
    """
    arr = _parse_spectrum(s)
    return exact.optimal_error(arr, parse_int(rank, "rank", 0, arr.size))


def cumulative_energy(s: Any, *, total_energy: float | None = None) -> np.ndarray:
    """Fraction of ``||A||_F^2`` in the first k singular values, k = 1..len(s).

    ``total_energy`` is ``||A||_F^2`` when ``s`` is only the top of the spectrum.

    Examples
    --------
    >>> import dlowrank
    >>> dlowrank.cumulative_energy([3.0, 1.0]).tolist()
    [0.9, 1.0]
    """
    arr = _parse_spectrum(s)
    if total_energy is not None:
        total_energy = parse_float(
            total_energy, "total_energy", low=float(np.sum(arr**2)) * (1 - 1e-12)
        )
    return spectrum.cumulative_energy(arr, total_energy)


def rank_for_energy(s: Any, fraction: float, *, total_energy: float | None = None) -> int | None:
    """Smallest rank whose singular values hold ``fraction`` of ``||A||_F^2``.

    Returns None if the given (partial) spectrum does not reach it.

    Examples
    --------
    >>> import dlowrank
    >>> dlowrank.rank_for_energy([3.0, 2.0, 1.0, 1.0], 0.9)
    3
    """
    arr = _parse_spectrum(s)
    fraction = parse_float(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    return spectrum.rank_for_energy(arr, fraction, total_energy)


def stable_rank(s: Any, *, total_energy: float | None = None) -> float:
    """Stable rank ``||A||_F^2 / ||A||_2^2``, a robust count of significant directions.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> float(dlowrank.stable_rank(np.ones(7)))
    7.0
    """
    return spectrum.stable_rank(_parse_spectrum(s), total_energy)


def spectrum_summary(
    s: Any, *, full_rank: int | None = None, total_energy: float | None = None
) -> spectrum.SpectrumSummary:
    """Whether a spectrum decays fast (approximable), slowly, or is flat (noise-like).

    Parameters
    ----------
    s : array-like
        Singular values, non-increasing: the whole spectrum, or its top together
        with ``total_energy`` = ||A||_F^2 and ``full_rank`` = min(m, n).

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> dlowrank.spectrum_summary(0.5 ** np.arange(100)).verdict
    'fast decay'
    >>> dlowrank.spectrum_summary(np.ones(100)).verdict
    'flat'
    """
    arr = _parse_spectrum(s)
    if full_rank is not None:
        full_rank = parse_int(full_rank, "full_rank", arr.size)
    return spectrum.summarize(arr, full_rank, total_energy)
