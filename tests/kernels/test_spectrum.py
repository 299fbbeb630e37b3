from __future__ import annotations

import numpy as np
import pytest

import dlowrank


def test_cumulative_energy_and_rank_for_energy():
    s = np.array([3.0, 2.0, 1.0, 1.0])  # energies 9, 4, 1, 1 of 15
    np.testing.assert_allclose(dlowrank.cumulative_energy(s), [9 / 15, 13 / 15, 14 / 15, 1.0])
    assert dlowrank.rank_for_energy(s, 0.6) == 1
    assert dlowrank.rank_for_energy(s, 0.61) == 2
    assert dlowrank.rank_for_energy(s, 1.0) == 4
    # a partial spectrum with the true total energy may not reach the fraction
    assert dlowrank.rank_for_energy(s[:2], 0.9, total_energy=15.0) is None


def test_stable_rank_bounds():
    assert dlowrank.stable_rank([2.0]) == 1.0
    assert dlowrank.stable_rank(np.ones(50)) == pytest.approx(50.0)
    assert 1 < dlowrank.stable_rank(0.9 ** np.arange(50)) < 50


@pytest.mark.parametrize(
    ("s", "verdict"),
    [
        (0.5 ** np.arange(200), "fast decay"),
        (np.ones(200), "flat"),
        (1.0 / np.sqrt(np.arange(1, 201)), "flat"),  # energy ~ 1/i: 90 % needs most of it
        (0.97 ** np.arange(200), "slow decay"),
    ],
)
def test_spectrum_summary_verdicts(s, verdict):
    summary = dlowrank.spectrum_summary(s)
    assert summary.verdict == verdict, summary.message
    assert verdict in summary.message


def test_spectrum_summary_of_noise_is_flat_and_of_low_rank_plus_noise_is_a_gap():
    rng = np.random.default_rng(0)
    noise = np.linalg.svd(rng.standard_normal((400, 100)), compute_uv=False)
    assert dlowrank.spectrum_summary(noise).verdict == "flat"
    t = dlowrank.make_matrix((400, 100), 5, kind="lowrank-noise", seed=0)
    s = np.linalg.svd(t.array.compute(), compute_uv=False)
    summary = dlowrank.spectrum_summary(s)
    assert (summary.verdict, summary.gap_rank) == ("gap", 5), summary.message


@pytest.mark.parametrize(
    ("s", "match"),
    [
        ([[1.0]], "1-D"),
        ([], "non-empty"),
        ([1.0, -1.0], "non-negative"),
        ([1.0, np.nan], "finite"),
        ([1.0, 2.0], r"non-increasing; s\[0\]"),
    ],
)
def test_bad_spectra_are_refused(s, match):
    with pytest.raises(ValueError, match=match):
        dlowrank.spectrum_summary(s)


def test_bad_fraction_and_rank_are_refused():
    with pytest.raises(ValueError, match="`fraction` must be a finite number in \\(0.0, 1.0\\]"):
        dlowrank.rank_for_energy([1.0], 1.5)
    with pytest.raises(ValueError, match=r"`rank` must be an integer in \[0, 2\]; got 3"):
        dlowrank.optimal_error([2.0, 1.0], 3)
