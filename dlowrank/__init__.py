"""dlowrank: low-rank approximation of matrices larger than memory.

Matrices live in Zarr and are read as chunked Dask arrays; every algorithm touches
them only through passes, and every result reports its error and its passes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dlowrank")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from dlowrank.exact import exact_eigh, exact_svd, svt  # noqa: E402
from dlowrank.factorization import (  # noqa: E402
    canonicalize,
    contributions,
    factorize,
    nmf,
    predict,
    rmse,
)
from dlowrank.generate import TestMatrix, generate, make_matrix  # noqa: E402
from dlowrank.io.matrix import open_matrix  # noqa: E402
from dlowrank.results import EighResult, FactorizationResult, SVDResult, load  # noqa: E402
from dlowrank.spectrum import (  # noqa: E402
    cumulative_energy,
    optimal_error,
    rank_for_energy,
    spectrum_summary,
    stable_rank,
)
from dlowrank.streaming import nystrom, randomized_svd, sketch_svd  # noqa: E402
from dlowrank.updates import append, update  # noqa: E402

__all__ = [
    "EighResult",
    "NMF",
    "TruncatedSVD",
    "FactorizationResult",
    "SVDResult",
    "TestMatrix",
    "__version__",
    "append",
    "canonicalize",
    "contributions",
    "cumulative_energy",
    "exact_eigh",
    "exact_svd",
    "factorize",
    "generate",
    "load",
    "make_matrix",
    "nmf",
    "nystrom",
    "open_matrix",
    "optimal_error",
    "predict",
    "randomized_svd",
    "rank_for_energy",
    "rmse",
    "spectrum_summary",
    "stable_rank",
    "sketch_svd",
    "svt",
    "update",
]


#: scikit-learn estimators, imported on first use (scikit-learn is an optional extra).
_ESTIMATORS = ("NMF", "TruncatedSVD")


def __getattr__(name: str):
    if name in _ESTIMATORS:
        try:
            from dlowrank import estimators
        except ImportError as exc:
            from dlowrank.errors import BackendError

            raise BackendError(
                f"dlowrank.{name} is a scikit-learn estimator and needs scikit-learn: "
                'pip install "dlowrank[sklearn]"'
            ) from exc
        return getattr(estimators, name)
    raise AttributeError(f"module 'dlowrank' has no attribute {name!r}")
