"""The application on top of the library: the ``dlowrank`` command line (``cli``), batch
jobs (``jobs``), the demo, the benchmarks and the plots. The library never imports it.
"""
