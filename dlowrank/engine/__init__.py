"""The pass engine and the runner under every public computation.

:mod:`dlowrank.engine.passes` streams over A's chunks and reduces per-piece
sketches; :mod:`dlowrank.engine.runner` holds what one public call needs around
it (source, engine, checkpoint, seed, timer, provenance).
"""
