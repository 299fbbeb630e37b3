from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis: a fixed, modest budget keeps the suite fast and CI deterministic.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def known_spectrum(
    m: int, n: int, s: np.ndarray, rng: np.random.Generator, dtype=np.float64
) -> np.ndarray:
    """A = U diag(s) V^T with random orthonormal U, V (in memory, for small tests)."""
    k = len(s)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return ((u * s) @ v.T).astype(dtype)
