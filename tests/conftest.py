from __future__ import annotations

import collections
import os
import threading

import numpy as np
import pytest
import zarr
import zarr.storage
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


class CountingStore(zarr.storage.WrapperStore):
    """A real Zarr store that counts reads of each chunk key (metadata keys excluded)."""

    def __init__(self, store):
        super().__init__(store)
        self.reads = collections.Counter()
        self._lock = threading.Lock()

    def _with_store(self, store):
        clone = type(self)(store)
        clone.reads, clone._lock = self.reads, self._lock
        return clone

    async def get(self, key, prototype, byte_range=None):
        if not key.endswith((".json", ".zarray", ".zattrs", ".zgroup")):
            with self._lock:
                self.reads[key] += 1
        return await self._store.get(key, prototype, byte_range)


def counted_array(path: str) -> tuple[zarr.Array, CountingStore]:
    """Open a stored array through a :class:`CountingStore`."""
    store = CountingStore(zarr.storage.LocalStore(path, read_only=True))
    return zarr.open_array(store=store, mode="r"), store


#: Runs the dlowrank CLI with a pause after every completed pass, acting on the pass
#: events the CLI's progress reporter receives: a window to kill a job between passes.
_PAUSED_CLI = """
import sys, time
from dlowrank.app import cli
delay = float(sys.argv.pop(1))
report = cli._Reporter.__call__
def paused(self, event):
    report(self, event)
    if event.stage == "done" and not event.restored:
        time.sleep(delay)
cli._Reporter.__call__ = paused
cli.main(sys.argv[1:], prog_name="dlowrank")
"""


def paused_cli(delay: float, *args: str) -> list[str]:
    """The command line of a CLI run that pauses ``delay`` seconds after each pass."""
    import sys

    return [sys.executable, "-c", _PAUSED_CLI, str(delay), *args]
