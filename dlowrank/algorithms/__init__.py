"""Streaming algorithms: sequences of passes (dlowrank.engine.passes) plus small in-memory algebra.

Bodies here trust their input; the public functions (dlowrank.streaming,
dlowrank.factorization) validate it.
"""
