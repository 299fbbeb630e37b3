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

# Every name is imported on first use (PEP 562): a worker process that unpickles a
# kernel imports ``dlowrank`` without dask.array (which pulls in xarray, pandas and
# pyarrow wherever they are installed: about 70 MB a worker).
_EXPORTS = {
    "dlowrank.exact": ("exact_eigh", "exact_svd", "svt"),
    "dlowrank.factorization": (
        "canonicalize",
        "contributions",
        "factorize",
        "nmf",
        "predict",
        "rmse",
    ),
    "dlowrank.io.matrix": ("open_matrix",),
    "dlowrank.results": ("EighResult", "FactorizationResult", "SVDResult", "load"),
    "dlowrank.spectrum": (
        "cumulative_energy",
        "optimal_error",
        "rank_for_energy",
        "spectrum_summary",
        "stable_rank",
    ),
    "dlowrank.streaming": ("nystrom", "randomized_svd", "sketch_svd"),
    "dlowrank.updates": ("append", "update"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

# ``generate`` is also a submodule's name: importing the submodule would rebind it, so
# it is imported now (dlowrank.generate imports dask.array only where it uses it).
from dlowrank.generate import TestMatrix, generate, make_matrix  # noqa: E402

__all__ = [
    "EighResult",
    "NMF",
    "TruncatedSVD",
    "FactorizationResult",
    "MatrixCompletion",
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


#: Submodules reachable as attributes, as they were when the package imported them all.
_SUBMODULES = (
    "algorithms",
    "engine",
    "errors",
    "exact",
    "factorization",
    "io",
    "kernels",
    "params",
    "results",
    "runtime",
    "spectrum",
    "streaming",
    "updates",
)

#: scikit-learn estimators, imported on first use (scikit-learn is an optional extra).
_ESTIMATORS = ("MatrixCompletion", "NMF", "TruncatedSVD")


def __getattr__(name: str):
    if name in _HOME:
        import importlib

        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:  # ``dlowrank.results`` etc. without importing them first
        import importlib

        return importlib.import_module(f"dlowrank.{name}")
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


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
