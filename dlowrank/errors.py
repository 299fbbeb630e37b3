"""Exception and warning classes of dlowrank.

Every class subclasses the builtin that fits, so callers may catch either
``dlowrank.errors.InputError`` or plain ``ValueError``.
"""

from __future__ import annotations


class DlowrankError(Exception):
    """Base class of every error dlowrank raises on purpose."""


class ParameterError(DlowrankError, ValueError):
    """A parameter (rank, seed, tol, ...) breaks its rule."""


class InputError(DlowrankError, ValueError):
    """The input matrix cannot be used: shape, dtype, codecs or values."""


class UnsafeInputError(InputError):
    """The input store asks for a codec that can run code when a chunk is decoded."""


class StoreNotFoundError(DlowrankError, FileNotFoundError):
    """A path or URL that should hold a Zarr array or result holds nothing."""


class OutputExistsError(DlowrankError, FileExistsError):
    """The output path already holds something and overwriting was not asked for."""


class ResultError(DlowrankError, OSError):
    """A stored result is incomplete or not a dlowrank result."""


class DlowrankWarning(UserWarning):
    """Base class of dlowrank's warnings."""


class ToleranceError(DlowrankError, ValueError):
    """The requested precision cannot be reached within the allowed rank."""


class CheckpointError(DlowrankError, ValueError):
    """A checkpoint belongs to another input or other parameters."""


class UnsafeOutputError(OutputExistsError):
    """The output path holds something dlowrank did not write, or overlaps the input."""


class BackendError(DlowrankError, ImportError):
    """A URL's storage protocol needs a package that is not installed, or is unknown."""


class PassTimeoutError(DlowrankError, TimeoutError):
    """A pass took longer than its limit (``--timeout``)."""


class StorageError(DlowrankError, OSError):
    """The input's storage is damaged or changed: absent or undecodable chunks, or a
    matrix rewritten while a run reads it."""


class ClusterError(DlowrankError, OSError):
    """A Dask cluster could not be reached, has no workers, or lost them all."""


class OutOfSpaceError(DlowrankError, OSError):
    """The disk of the output or checkpoint lacks room for what a run would write."""
