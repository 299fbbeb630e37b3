"""Pure NumPy/SciPy kernels on in-memory blocks.

This layer imports no dask, zarr or distributed: it is the exact in-memory twin of
every streaming algorithm and the oracle the tests compare against.
"""
