"""Open and validate input matrices; write results atomically.

Knows nothing of the algorithms.
"""

_HOME = {
    "as_dask_matrix": "dlowrank.io.matrix",
    "compute_dtype": "dlowrank.io.matrix",
    "open_matrix": "dlowrank.io.matrix",
    "is_local": "dlowrank.io.store",
    "publish": "dlowrank.io.store",
}


def __getattr__(name: str):
    """Names imported on first use: the tasks import ``dlowrank.io.source`` without
    dask.array."""
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'dlowrank.io' has no attribute {name!r}")


__all__ = ["as_dask_matrix", "compute_dtype", "is_local", "open_matrix", "publish"]
