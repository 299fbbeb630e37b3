"""Test matrices with a known spectrum, generated block by block.

A = U diag(s) V^T + noise * G, with U (m, r) and V (n, r) orthonormal (V = U for
the symmetric PSD kind) and G iid N(0, 1). Every random number depends only on
the seed and its *global* index: U and V are drawn in canonical row panels of
``FACTOR_PANEL`` rows and G in canonical ``NOISE_TILE`` square tiles, each from its
own ``SeedSequence`` child addressed by a spawn key. Any block of A can therefore
be made alone, and the same seed gives the same matrix for any chunking.

U = G_u R^{-1}, where R is the R factor of the Gaussian G_u: Householder QR in
memory when G_u is small, CholeskyQR2 over the canonical panels otherwise
(tall Gaussian matrices are well conditioned, so two Cholesky QR sweeps reach
orthogonality to working precision; Fukaya et al. 2014, doi:10.1109/ScalA.2014.11).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from dlowrank.kernels import random

FACTOR_PANEL = 4096
NOISE_TILE = 1024
#: Factors with at most this many entries are orthonormalized by Householder QR.
SMALL_FACTOR = 1 << 22

KINDS = ("exponential", "polynomial", "flat", "lowrank-noise", "psd")


@dataclass(frozen=True)
class TestMatrixSpec:
    """Everything that defines a generated matrix (trusted: validated by the caller)."""

    __test__ = False  # not a pytest test class

    shape: tuple[int, int]
    rank: int
    kind: str
    decay: float
    scale: float
    noise: float
    entropy: int | tuple[int, ...]
    spawn_key: tuple[int, ...] = ()

    def singular_values(self) -> np.ndarray:
        """The signal's singular values s_0 >= s_1 >= ... (length ``rank``)."""
        i = np.arange(self.rank, dtype=np.float64)
        if self.kind in ("exponential", "psd"):
            return self.scale * self.decay**i
        if self.kind == "polynomial":
            return self.scale * (i + 1) ** (-self.decay)
        return np.full(self.rank, float(self.scale))

    def child(self, *key: int) -> np.random.Generator:
        return random.child_rng(self.entropy, self.spawn_key, *key)


def _factor_panel(spec: TestMatrixSpec, which: int, n_rows: int, panel: int) -> np.ndarray:
    return random.gaussian_panel(
        spec.entropy, spec.spawn_key, which, n_rows, spec.rank, panel, FACTOR_PANEL
    )


def gaussian_rows(
    spec: TestMatrixSpec, which: int, n_rows: int, start: int, stop: int
) -> np.ndarray:
    """Rows ``start:stop`` of the (n_rows, rank) Gaussian behind factor ``which``."""
    return random.gaussian_rows(
        spec.entropy, spec.spawn_key, which, n_rows, spec.rank, start, stop, FACTOR_PANEL
    )


def _gram(spec: TestMatrixSpec, which: int, n_rows: int, right: np.ndarray | None) -> np.ndarray:
    gram = np.zeros((spec.rank, spec.rank))
    for p in range(-(-n_rows // FACTOR_PANEL)):
        g = _factor_panel(spec, which, n_rows, p)
        if right is not None:
            g = g @ right
        gram += g.T @ g
    return gram


def factor_rinv(spec: TestMatrixSpec, which: int, n_rows: int) -> np.ndarray:
    """R^{-1} (rank, rank) such that ``G R^{-1}`` has orthonormal columns."""
    eye = np.eye(spec.rank)
    if n_rows * spec.rank <= SMALL_FACTOR:
        r = np.linalg.qr(gaussian_rows(spec, which, n_rows, 0, n_rows), mode="r")
        r = r * np.sign(np.diag(r))[:, None]  # positive diagonal: the Q of Cholesky QR
        return scipy.linalg.solve_triangular(r, eye)
    r1 = scipy.linalg.cholesky(_gram(spec, which, n_rows, None))
    r1inv = scipy.linalg.solve_triangular(r1, eye)
    r2 = scipy.linalg.cholesky(_gram(spec, which, n_rows, r1inv))
    return r1inv @ scipy.linalg.solve_triangular(r2, eye)


def factor_rows(
    spec: TestMatrixSpec, which: int, n_rows: int, rinv: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Rows ``start:stop`` of the orthonormal factor U (which=0) or V (which=1)."""
    return gaussian_rows(spec, which, n_rows, start, stop) @ rinv


def noise_block(spec: TestMatrixSpec, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Block of the iid N(0, 1) matrix G, assembled from canonical tiles."""
    (r0, r1), (c0, c1) = rows, cols
    m, n = spec.shape
    out = np.empty((r1 - r0, c1 - c0))
    for ti in range(r0 // NOISE_TILE, (r1 - 1) // NOISE_TILE + 1):
        for tj in range(c0 // NOISE_TILE, (c1 - 1) // NOISE_TILE + 1):
            t0, u0 = ti * NOISE_TILE, tj * NOISE_TILE
            shape = (min(NOISE_TILE, m - t0), min(NOISE_TILE, n - u0))
            tile = spec.child(random.MatrixStream.NOISE, ti, tj).standard_normal(shape)
            a0, a1 = max(r0, t0), min(r1, t0 + shape[0])
            b0, b1 = max(c0, u0), min(c1, u0 + shape[1])
            out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = tile[a0 - t0 : a1 - t0, b0 - u0 : b1 - u0]
    return out


def rinvs(spec: TestMatrixSpec) -> tuple[np.ndarray, np.ndarray]:
    """The two R^{-1} factors a block needs (the same one twice for ``psd``)."""
    m, n = spec.shape
    rinv_u = factor_rinv(spec, random.MatrixStream.U, m)
    rinv_v = rinv_u if spec.kind == "psd" else factor_rinv(spec, random.MatrixStream.V, n)
    return rinv_u, rinv_v


def block(
    spec: TestMatrixSpec,
    rinv_u: np.ndarray,
    rinv_v: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    dtype=np.float64,
) -> np.ndarray:
    """Block ``A[rows[0]:rows[1], cols[0]:cols[1]]`` in float64, cast to ``dtype``."""
    m, n = spec.shape
    key_v = random.MatrixStream.U if spec.kind == "psd" else random.MatrixStream.V
    u = factor_rows(spec, random.MatrixStream.U, m, rinv_u, *rows)
    v = factor_rows(spec, key_v, n, rinv_v, *cols)
    out = (u * spec.singular_values()) @ v.T
    if spec.noise:
        out += spec.noise * noise_block(spec, rows, cols)
    return out.astype(dtype, copy=False)


def dense(spec: TestMatrixSpec, dtype=np.float64) -> np.ndarray:
    """The whole matrix in memory (for tests and small examples)."""
    m, n = spec.shape
    return block(spec, *rinvs(spec), (0, m), (0, n), dtype)
