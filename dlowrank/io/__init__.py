"""Open and validate input matrices; write results atomically.

Knows nothing of the algorithms.
"""

from dlowrank.io.matrix import as_dask_matrix, compute_dtype, open_matrix
from dlowrank.io.store import is_local, publish

__all__ = ["as_dask_matrix", "compute_dtype", "is_local", "open_matrix", "publish"]
