"""Chunk-independent random matrices: Gaussian rows addressed by their global index.

A random matrix with ``n_rows`` rows is cut into canonical panels of ``PANEL``
rows; panel p is drawn from its own ``SeedSequence`` child with spawn key
``spawn_key + (key, p)``. Any row range can therefore be made alone, on any
worker, and the same seed gives the same numbers for any chunking of the data
(ARCHITECTURE.md, "chunk-independent randomness").
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict

import numpy as np


class Stream(enum.IntEnum):
    """Every random stream of a computation, by its key under the computation's seed: the
    one registry. A key is part of what a seed means (a result replays from its seed),
    so keys are never renumbered; a new stream takes a new number."""

    RSVD_OMEGA = 0  # randomized_svd's test matrix Omega (n, width)
    SKETCH_OMEGA = 1  # the single-pass sketch's Omega (n, k); also Nystrom's
    SKETCH_UPSILON = 2  # [Upsilon^T | Theta^T] (m, k + d) of the single-pass sketch
    SKETCH_PHI = 3  # Phi^T (m, s)
    SKETCH_PSI = 4  # Psi^T (n, s)
    SKETCH_THETA = 5  # Nystrom's error sketch Theta^T (n, d)
    INIT_U = 10  # random starts of the factorizations
    INIT_V = 11
    NMF_W = 12  # nmf's uniform random start
    NMF_H = 13
    QR_FILL = 20  # directions completing a rank-deficient tall QR (under seed 0)


class MatrixStream(enum.IntEnum):
    """The random streams of a generated test matrix, under the matrix's own seed."""

    U = 0
    V = 1
    NOISE = 2


PANEL = 4096


def child_rng(entropy: int, spawn_key: tuple[int, ...], *key: int) -> np.random.Generator:
    """The generator addressed by ``spawn_key + key`` under ``entropy``."""
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=spawn_key + key))


def gaussian_panel(
    entropy: int,
    spawn_key: tuple[int, ...],
    key: int,
    n_rows: int,
    cols: int,
    panel: int,
    panel_rows: int = PANEL,
    uniform: bool = False,
) -> np.ndarray:
    """Canonical panel ``panel`` (at most ``panel_rows`` x ``cols``) of N(0, 1) numbers
    (``uniform``: of U[0, 1) numbers). Read-only: recent panels are kept
    (:class:`_KeptPanels`), since the row slabs of a piece and the pieces of one chunk row
    each ask for the panels they overlap (measured: a 10,000 x 2,000 chunk's single-pass
    kernel took 0.52 s in 16 MB slabs, 0.40 s whole)."""
    if not isinstance(entropy, int):  # a sequence of ints: hashable as a tuple
        entropy = tuple(int(e) for e in np.atleast_1d(entropy))
    key_ = (entropy, tuple(spawn_key), key, n_rows, cols, panel, panel_rows, uniform)
    out = _KEPT.get(key_)
    if out is None:
        rows = min(panel_rows, n_rows - panel * panel_rows)
        rng = child_rng(entropy, tuple(spawn_key), key, panel)
        out = rng.random((rows, cols)) if uniform else rng.standard_normal((rows, cols))
        out.flags.writeable = False
        _KEPT.put(key_, out)
    return out


#: Bytes of recent panels kept per process: a chunk row of 10,000 rows overlaps 3 or 4
#: panels of each of the single pass's two m-side test matrices (4096 x 101 and 4096 x
#: 163 float64 at rank 20: 35 MB for 4 of each).
KEPT_BYTES = 48 << 20


class _KeptPanels:
    """The most recently used panels, at most :data:`KEPT_BYTES` in all (thread-safe)."""

    def __init__(self) -> None:
        self.items: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self.lock:
            out = self.items.get(key)
            if out is not None:
                self.items.move_to_end(key)
            return out

    def put(self, key: tuple, value: np.ndarray) -> None:
        if value.nbytes > KEPT_BYTES // 4:  # a large panel would push out all others
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > KEPT_BYTES:
                _, old = self.items.popitem(last=False)
                self.nbytes -= old.nbytes


_KEPT = _KeptPanels()


def gaussian_rows(
    entropy: int,
    spawn_key: tuple[int, ...],
    key: int,
    n_rows: int,
    cols: int,
    start: int,
    stop: int,
    panel_rows: int = PANEL,
    uniform: bool = False,
) -> np.ndarray:
    """Rows ``start:stop`` of the (n_rows, cols) Gaussian (``uniform``: U[0, 1)) matrix
    named by ``key``."""
    first, last = start // panel_rows, (stop - 1) // panel_rows
    parts = [
        gaussian_panel(entropy, spawn_key, key, n_rows, cols, p, panel_rows, uniform)[
            max(start - p * panel_rows, 0) : stop - p * panel_rows
        ]
        for p in range(first, last + 1)
    ]
    return parts[0].copy() if len(parts) == 1 else np.concatenate(parts, axis=0)
