"""Pictures (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import numpy as np

from dlowrank.errors import ParameterError
from dlowrank.kernels.spectrum import cumulative_energy, rank_for_energy

MARKED = (0.90, 0.95, 0.99)


def plot_spectrum(s: np.ndarray, total_energy: float, path: str, *, title: str = "") -> str:
    """Scree plot and cumulative energy, with the ranks for 90, 95 and 99 % marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ParameterError("plotting needs matplotlib: pip install 'dlowrank[plot]'") from None
    k = np.arange(1, len(s) + 1)
    cum = cumulative_energy(s, total_energy)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.semilogy(k, s, "o-", ms=3)
    ax1.set(xlabel="index i", ylabel="singular value $\\sigma_i$", title=f"scree {title}".strip())
    ax2.plot(k, cum, "-", lw=2)
    ax2.set(
        xlabel="rank k",
        ylabel="fraction of $\\|A\\|_F^2$",
        ylim=(0, 1.02),
        title="cumulative energy",
    )
    for frac in MARKED:
        r = rank_for_energy(s, frac, total_energy)
        if r is not None:
            ax2.axhline(frac, color="gray", lw=0.5, ls="--")
            ax2.axvline(r, color="gray", lw=0.5, ls="--")
            ax2.annotate(
                f"{frac:.0%}: rank {r}",
                (r, frac),
                textcoords="offset points",
                xytext=(5, -12),
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
