"""Spectrum tools: energy, stable rank and a decay verdict, from singular values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Energy fractions reported by :func:`summarize`.
ENERGY_LEVELS = (0.5, 0.9, 0.99, 0.999)
#: A drop s_k / s_{k-1} below this marks a gap between a signal and a noise floor.
GAP_RATIO = 0.25


def cumulative_energy(s: np.ndarray, total_energy: float | None = None) -> np.ndarray:
    """Fraction of ``||A||_F^2`` captured by the first k singular values, k = 1..len(s).

    ``total_energy`` is ``||A||_F^2`` when ``s`` is only the top of the spectrum;
    by default ``sum(s**2)`` (``s`` is the whole spectrum).
    """
    s = np.asarray(s, dtype=np.float64)
    energy = np.cumsum(s**2)
    total = float(energy[-1]) if total_energy is None else float(total_energy)
    if total <= 0:
        return np.ones_like(energy)
    return energy / total


def rank_for_energy(
    s: np.ndarray, fraction: float, total_energy: float | None = None
) -> int | None:
    """Smallest k whose first k singular values hold ``fraction`` of the energy.

    Returns None when the given (partial) spectrum never reaches it.
    """
    cum = cumulative_energy(s, total_energy)
    # Guard the comparison with a few ulps: cumsum rounding must not push an
    # exact fraction (e.g. 1.0 of a full spectrum) out of reach.
    hits = np.nonzero(cum >= fraction - 4 * np.finfo(np.float64).eps)[0]
    return int(hits[0]) + 1 if hits.size else None


def stable_rank(s: np.ndarray, total_energy: float | None = None) -> float:
    """``||A||_F^2 / ||A||_2^2``: between 1 (rank one) and min(m, n) (flat spectrum)."""
    s = np.asarray(s, dtype=np.float64)
    total = float(np.sum(s**2)) if total_energy is None else float(total_energy)
    return total / float(s[0]) ** 2 if s.size and s[0] > 0 else 0.0


@dataclass(frozen=True)
class SpectrumSummary:
    """How compressible a matrix is, read off its singular values.

    ``verdict`` is ``"fast decay"`` (approximable: 90 % of the energy in at most
    10 % of the spectrum); else ``"gap"`` (low rank plus noise: within the first
    10 % of the spectrum some s_k / s_{k-1} < 0.25, so rank ``gap_rank`` stands
    out of a noise floor that holds much energy but little of any direction);
    else ``"flat"`` (noise-like: 90 % of the energy needs at least half of the
    spectrum) or ``"slow decay"`` in between (also when a partial spectrum cannot
    tell the two apart; the message says so).
    """

    n_values: int
    full_rank: int
    stable_rank: float
    ranks_for_energy: dict
    gap_rank: int | None
    verdict: str
    message: str

    def to_dict(self) -> dict:
        return {
            "n_values": self.n_values,
            "full_rank": self.full_rank,
            "stable_rank": self.stable_rank,
            "ranks_for_energy": dict(self.ranks_for_energy),
            "gap_rank": self.gap_rank,
            "verdict": self.verdict,
            "message": self.message,
        }


def summarize(
    s: np.ndarray, full_rank: int | None = None, total_energy: float | None = None
) -> SpectrumSummary:
    """Decay summary of a spectrum; see :class:`SpectrumSummary` for the verdict rule.

    ``full_rank`` is min(m, n) when ``s`` holds only the top values (default len(s)).
    """
    s = np.asarray(s, dtype=np.float64)
    p = len(s) if full_rank is None else int(full_rank)
    ranks = {str(f): rank_for_energy(s, f, total_energy) for f in ENERGY_LEVELS}
    r90 = ranks["0.9"]
    gap = _gap_rank(s, p)
    if r90 is not None and r90 <= max(1, 0.1 * p):
        verdict = "fast decay"
        advice = "approximable: a low rank captures most of the energy"
    elif gap is not None:
        verdict = "gap"
        advice = f"low rank plus noise: rank {gap} stands out of a noise floor"
    elif r90 is None and len(s) < 0.5 * p:
        verdict = "slow decay"
        advice = (
            f"the top {len(s)} values hold less than 90 % of the energy; compute more "
            "of them to tell slow decay from flat"
        )
    elif r90 is None or r90 >= 0.5 * p:
        verdict = "flat"
        advice = "noise-like: no low rank captures most of the energy"
    else:
        verdict = "slow decay"
        advice = "compressible only at a sizeable rank; use power iterations"
    shown = r90 if r90 is not None else f"> {len(s)}"
    if total_energy is None and len(s) < p:  # energy of the computed values, not of A
        message = (
            f"{verdict} ({advice}); 90 % of the energy of the {len(s)} computed values "
            f"needs rank {shown} (energy relative to those values only: pass "
            "total_energy = ||A||_F^2 for the matrix's own)"
        )
    else:
        message = f"{verdict} ({advice}); 90 % of the energy needs rank {shown} of {p}"
    return SpectrumSummary(
        n_values=len(s),
        full_rank=p,
        stable_rank=stable_rank(s, total_energy),
        ranks_for_energy=ranks,
        gap_rank=gap,
        verdict=verdict,
        message=message,
    )


def _gap_rank(s: np.ndarray, p: int) -> int | None:
    """The k <= 10 % of ``p`` after the largest drop s_k / s_{k-1}, if below GAP_RATIO."""
    head = s[: max(2, int(0.1 * p) + 1)]
    if head.size < 2 or head[0] == 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(head[:-1] > 0, head[1:] / head[:-1], 1.0)
    k = int(np.argmin(ratios))
    return k + 1 if ratios[k] < GAP_RATIO else None
