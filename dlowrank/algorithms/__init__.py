"""Streaming algorithms: sequences of passes (dlowrank.passes) plus small in-memory algebra.

Bodies here trust their input; the public functions in dlowrank.api validate it.
"""
