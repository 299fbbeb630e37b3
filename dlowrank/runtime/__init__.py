"""Where dlowrank computes: dask's threads, a local cluster, or any Dask scheduler."""

from dlowrank.runtime.client import connect, local_cluster

__all__ = ["connect", "local_cluster"]
