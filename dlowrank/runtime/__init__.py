"""Where dlowrank computes: dask's threads, a local cluster, or any Dask scheduler."""

from dlowrank.runtime.client import connect

__all__ = ["connect"]
