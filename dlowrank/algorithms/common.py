"""Steps shared by the streaming algorithms."""

from __future__ import annotations

import numpy as np

from dlowrank.errors import InputError
from dlowrank.kernels import passkernels
from dlowrank.passes import PassEngine


def orthonormalize(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of a small (n, l) sketch (Householder QR)."""
    q, _ = np.linalg.qr(z)
    return q


def check_finite(engine: PassEngine, fro2: float, name: str = "a") -> None:
    """``||A||_F^2`` is NaN or inf iff A has a non-finite entry: then find the first one.

    The check costs nothing in the normal case (||A||_F^2 is accumulated anyway);
    the extra locating pass runs only on the error path.
    """
    if np.isfinite(fro2):
        return
    found = [p for p in engine.run_pieces(passkernels.nonfinite) if p["count"]]
    if not found:
        raise InputError(
            f"`{name}` is finite but its squared Frobenius norm overflows float64 "
            "(entries of magnitude 1e154 or more); rescale it first"
        )
    count = sum(p["count"] for p in found)
    i, j = min(p["first"] for p in found)
    if engine.transpose:
        i, j = j, i
    chunks = engine.source.chunks
    ci = int(np.searchsorted(np.cumsum(chunks[0]), i, side="right"))
    cj = int(np.searchsorted(np.cumsum(chunks[1]), j, side="right"))
    raise InputError(
        f"`{name}` holds {count} NaN or infinite values (the first at row {i}, "
        f"column {j}, in chunk ({ci}, {cj})); dlowrank needs finite input"
    )


def relative_error(fro2: float, captured: np.ndarray) -> float:
    """sqrt(||A||_F^2 - captured energy) / ||A||_F, clipped at 0 (rounding)."""
    if fro2 <= 0:
        return 0.0
    return float(np.sqrt(max(fro2 - float(np.sum(captured**2)), 0.0) / fro2))
