"""Synthetic matrices with a known spectrum, lazily or written blockwise to Zarr.

The numbers come from :mod:`dlowrank.kernels.testmatrix`: every entry depends on
the seed and its global index only, so the same seed gives the same matrix for
any chunking, and no step ever holds the whole matrix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from dask.base import tokenize

from dlowrank.errors import ParameterError
from dlowrank.io.store import check_writable, publish
from dlowrank.kernels import testmatrix

if TYPE_CHECKING:  # imported where used: ``import dlowrank`` stays without dask.array
    import dask.array as da

from dlowrank.params import (
    parse_choice,
    parse_dtype,
    parse_float,
    parse_int,
    parse_rank,
    parse_seed,
)

logger = logging.getLogger(__name__)

KINDS = testmatrix.KINDS
_DEFAULT_DECAY = {"exponential": 0.9, "psd": 0.9, "polynomial": 1.0}


@dataclass(frozen=True)
class TestMatrix:
    """A generated matrix: the lazy Dask ``array`` and the ``spec`` that defines it."""

    __test__ = False

    array: da.Array
    spec: testmatrix.TestMatrixSpec

    @property
    def singular_values(self) -> np.ndarray:
        """Singular values of the signal part (exact when ``noise`` is 0)."""
        return self.spec.singular_values()

    def to_dict(self) -> dict:
        """The attributes stored with a generated matrix."""
        from dlowrank import __version__

        s = self.spec
        return {
            "kind": "test_matrix",
            "spectrum": s.kind,
            "shape": list(s.shape),
            "rank": s.rank,
            "decay": s.decay,
            "scale": s.scale,
            "noise": s.noise,
            "seed": s.entropy if isinstance(s.entropy, int) else list(s.entropy),
            "spawn_key": list(s.spawn_key),
            "dtype": str(self.array.dtype),
            "singular_values": self.singular_values.tolist(),
            "noise_free": s.noise == 0,
            "version": __version__,
        }


def _parse_spec(
    shape: Any, rank: Any, kind: Any, decay: Any, scale: Any, noise: Any, seed: Any
) -> testmatrix.TestMatrixSpec:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ParameterError(f"`shape` must be two positive integers (m, n); got {shape!r}")
    m, n = (parse_int(d, "shape", 1) for d in shape)
    k = parse_rank(rank, (m, n))
    kind = parse_choice(kind, "kind", KINDS)
    if kind == "psd" and m != n:
        raise ParameterError(f"`kind` psd needs a square `shape`; got ({m}, {n})")
    if kind in _DEFAULT_DECAY:
        decay = _DEFAULT_DECAY[kind] if decay is None else decay
        if kind == "polynomial":
            decay = parse_float(decay, "decay", low=0.0, low_open=True)
        else:
            decay = parse_float(decay, "decay", low=0.0, high=1.0, low_open=True)
    elif decay is not None:
        raise ParameterError(
            f"`decay` does not apply to kind {kind} (its spectrum is flat); got {decay!r}"
        )
    else:
        decay = 0.0
    scale = parse_float(scale, "scale", low=0.0, low_open=True)
    if noise is None:
        # A clean gap: the noise block's top singular value is about
        # noise * (sqrt(m) + sqrt(n)) <= 0.2 * scale (Davidson & Szarek 2001).
        noise = 0.1 * scale / np.sqrt(max(m, n)) if kind == "lowrank-noise" else 0.0
    noise = parse_float(noise, "noise", low=0.0)
    if kind == "psd" and noise > 0:
        raise ParameterError(
            f"`noise` must be 0 for kind psd (noise breaks definiteness); got {noise}"
        )
    if kind == "lowrank-noise" and noise == 0:
        raise ParameterError("`noise` must be > 0 for kind lowrank-noise (or use kind flat)")
    seq = parse_seed(seed)
    return testmatrix.TestMatrixSpec(
        (m, n), k, kind, decay, scale, noise, _entropy(seq), tuple(seq.spawn_key)
    )


def _entropy(seq: np.random.SeedSequence) -> int | tuple[int, ...]:
    e = seq.entropy
    return int(e) if isinstance(e, (int, np.integer)) else tuple(int(v) for v in e)


def _parse_chunks(chunks: Any, shape: tuple[int, int], dtype: np.dtype) -> tuple:
    if chunks == "auto":
        from dask.array.core import normalize_chunks

        return normalize_chunks("auto", shape, dtype=dtype)
    if not isinstance(chunks, (tuple, list)) or len(chunks) != 2:
        raise ParameterError(f"`chunks` must be 'auto' or two positive integers; got {chunks!r}")
    sizes = tuple(min(parse_int(c, "chunks", 1), d) for c, d in zip(chunks, shape, strict=True))
    from dask.array.core import normalize_chunks

    return normalize_chunks(sizes, shape)


def _make_block(spec, rinv_u, rinv_v, dtype, block_info=None):
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return testmatrix.block(spec, rinv_u, rinv_v, (r0, r1), (c0, c1), dtype)


def _lazy(spec: testmatrix.TestMatrixSpec, chunks: tuple, dtype: np.dtype) -> da.Array:
    rinv_u, rinv_v = testmatrix.rinvs(spec)
    import dask.array as da

    return da.map_blocks(
        _make_block,
        spec,
        rinv_u,
        rinv_v,
        dtype,
        chunks=chunks,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        # the name must identify every input of the numbers, or dask would mix matrices
        name="dlowrank-testmatrix-" + tokenize(spec, chunks, str(dtype)),
    )


def make_matrix(
    shape: tuple[int, int],
    rank: int,
    *,
    kind: str = "exponential",
    decay: float | None = None,
    scale: float = 1.0,
    noise: float | None = None,
    chunks: Any = "auto",
    dtype: Any = "float64",
    seed: Any = None,
) -> TestMatrix:
    """A lazy test matrix ``A = U diag(s) V^T + noise * G`` with a known spectrum.

    Parameters
    ----------
    shape : (int, int)
        (m, n).
    rank : int
        Number of non-zero signal singular values, in [1, min(m, n)].
    kind : {'exponential', 'polynomial', 'flat', 'lowrank-noise', 'psd'}
        s_i = scale * decay**i (exponential, default decay 0.9), scale * (i+1)**-decay
        (polynomial, default 1), scale (flat), scale plus Gaussian noise
        (lowrank-noise, default noise 0.1 * scale / sqrt(max(m, n))), or the
        symmetric PSD ``U diag(s) U^T`` with exponential s (psd, square only).
    noise : float, optional
        Standard deviation of the iid Gaussian noise added to every entry (default 0).
    chunks : 'auto' or (int, int)
    dtype : float32 or float64
        Entries are computed in float64 and rounded to ``dtype``.
    seed : int, SeedSequence or None
        The matrix depends on the seed only, never on ``chunks``.

    Returns
    -------
    TestMatrix
        ``array`` (lazy Dask array) and ``spec``; ``singular_values`` is the
        signal's spectrum, exact when ``noise`` is 0.

    Examples
    --------
    >>> import numpy as np, dlowrank
    >>> t = dlowrank.make_matrix((60, 40), 5, seed=0, chunks=(25, 15))
    >>> s = np.linalg.svd(t.array.compute(), compute_uv=False)
    >>> bool(np.allclose(s[:5], t.singular_values))
    True
    """
    spec = _parse_spec(shape, rank, kind, decay, scale, noise, seed)
    dtype = parse_dtype(dtype)
    return TestMatrix(_lazy(spec, _parse_chunks(chunks, spec.shape, dtype), dtype), spec)


def generate(
    url: str | os.PathLike,
    shape: tuple[int, int],
    rank: int,
    *,
    kind: str = "exponential",
    decay: float | None = None,
    scale: float = 1.0,
    noise: float | None = None,
    chunks: Any = "auto",
    dtype: Any = "float64",
    seed: Any = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> TestMatrix:
    """Write :func:`make_matrix` to a Zarr array at ``url``, blockwise and atomically.

    The spec and the signal's singular values go into the array's ``dlowrank``
    attribute. Returns a :class:`TestMatrix` whose ``array`` reads the stored
    matrix. Parameters as :func:`make_matrix`, plus ``overwrite`` (replace an
    existing array once the new one is complete) and fsspec ``storage_options``.

    Examples
    --------
    >>> import tempfile, os, numpy as np, dlowrank
    >>> path = os.path.join(tempfile.mkdtemp(), "a.zarr")
    >>> t = dlowrank.generate(path, (300, 40), 5, chunks=(100, 40), seed=0)
    >>> s = np.linalg.svd(dlowrank.open_matrix(path).compute(), compute_uv=False)
    >>> bool(np.allclose(s[:5], t.singular_values))
    True
    """
    url = os.fspath(url)
    check_writable(url, overwrite=overwrite, storage_options=storage_options)
    made = make_matrix(
        shape,
        rank,
        kind=kind,
        decay=decay,
        scale=scale,
        noise=noise,
        chunks=chunks,
        dtype=dtype,
        seed=seed,
    )
    attrs = {**made.to_dict(), "complete": True}
    kwargs = {"storage_options": storage_options} if storage_options else {}

    def write(tmp: str) -> None:
        made.array.to_zarr(tmp, **kwargs)

    def mark_complete(final: str) -> None:
        zarr.open_array(final, mode="r+", **kwargs).attrs["dlowrank"] = attrs

    publish(
        url,
        write,
        overwrite=overwrite,
        storage_options=storage_options,
        mark_complete=mark_complete,
    )
    logger.info("generated %s: %s %s", url, made.spec.shape, made.array.dtype)
    from dlowrank.io.matrix import open_matrix

    return TestMatrix(open_matrix(url, storage_options=storage_options), made.spec)
