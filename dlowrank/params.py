"""Small ``parse_*`` helpers that validate public parameters once, at the boundary.

Each message names the parameter, the rule, the value seen and, where it helps, the fix.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlowrank.errors import ParameterError

#: Upper bounds of the numeric options: beyond them a value is a typo, not a plan.
MAX_POWER_ITER = 30  # each iteration is one more read of A; past a few, widen the sketch
MAX_OVERSAMPLES = 10_000
MAX_ITER = 100_000
MAX_WORKERS = 4096
MAX_TIMEOUT = 10**7  # seconds (about 115 days)


def parse_int(value: Any, name: str, low: int, high: int | None = None, hint: str = "") -> int:
    """An integer in [low, high] (high None: no upper bound); bools are refused."""
    rule = f"in [{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"`{name}` must be an integer {rule}; got {value!r}{hint}")
    if value < low or (high is not None and value > high):
        raise ParameterError(f"`{name}` must be an integer {rule}; got {value}{hint}")
    return int(value)


def parse_memory(value: Any, name: str = "memory_limit", *, auto: bool = True) -> int | str:
    """A memory size: bytes, or a string such as "2GB", "512 MiB"; or "auto" if ``auto``."""
    from dask.utils import parse_bytes

    if auto and value == "auto":
        return value
    try:
        nbytes = parse_bytes(value)
    except (ValueError, TypeError, KeyError):
        nbytes = None
    if not isinstance(nbytes, int) or nbytes < 2**24:
        raise ParameterError(
            f"`{name}` must be a memory size of at least 16 MiB, such as 2GB or 512MiB"
            f"{', or auto' if auto else ''}; got {value!r}"
        )
    return nbytes


def parse_rank(
    rank: Any, shape: tuple[int, int], name: str = "rank", *, required: bool = False
) -> int:
    """``rank`` in [1, min(shape)]; None means min(shape) unless ``required``."""
    high = int(min(shape))
    if rank is None:
        if required:
            raise ParameterError(f"`{name}` is required: an integer in [1, {high}]")
        return high
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool) and not 1 <= rank <= high:
        raise ParameterError(
            f"`{name}` must be an integer in [1, min(a.shape)] = [1, {high}]; got {rank}"
        )
    return parse_int(rank, name, 1, high)


def parse_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number within the given (open or closed) bounds."""
    lo = "-inf" if low is None else f"{'(' if low_open else '['}{low}"
    hi = "inf" if high is None else f"{high}{')' if high_open else ']'}"
    rule = f"a finite number in {lo}, {hi}" if low is not None or high is not None else "finite"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ParameterError(f"`{name}` must be {rule}; got {value!r}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        raise ParameterError(f"`{name}` must be {rule}; got {value}")
    return float(value)


def parse_seed(seed: Any) -> np.random.SeedSequence:
    """``seed`` as a SeedSequence: an int >= 0, a SeedSequence, None (fresh entropy), or
    the dict :func:`seed_record` stores with a result (to replay it)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, dict) and "entropy" in seed:
        return np.random.SeedSequence(seed["entropy"], spawn_key=tuple(seed.get("spawn_key", ())))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ParameterError(
            "`seed` must be a non-negative integer, a numpy.random.SeedSequence "
            f"or None; got {seed!r}"
        )
    return np.random.SeedSequence(int(seed))


def parse_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; the message lists them."""
    if value not in choices:
        raise ParameterError(
            f"`{name}` must be one of {', '.join(map(str, choices))}; got {value!r}"
        )
    return value


def parse_dtype(value: Any, name: str = "dtype") -> np.dtype:
    """float32 or float64."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ParameterError(f"`{name}` must be float32 or float64; got {value!r}")
    return dtype


def seed_record(seq: np.random.SeedSequence) -> int | dict:
    """What a result stores to replay its randomness: the int seed when that is all
    there is, else ``{"entropy": ..., "spawn_key": [...]}`` (accepted by parse_seed)."""
    entropy = seq.entropy
    entropy = (
        [int(e) for e in entropy]
        if isinstance(entropy, (list, tuple, np.ndarray))
        else int(entropy)
    )
    if isinstance(entropy, int) and not seq.spawn_key:
        return entropy
    return {"entropy": entropy, "spawn_key": [int(k) for k in seq.spawn_key]}


# --- declarations: each option is declared once, here or beside its function ----------------

#: How a parameter is used. "result": it decides the result (recorded in its provenance and
#: in a job's identity); "run": how or where the computation runs (a job key and a flag, not
#: provenance); "api": library callers only (Python objects: a client, a callback).
ROLES = ("result", "run", "api")


@dataclass(frozen=True)
class Param:
    """One parameter of a public function: its name, kind, default, bounds and help.

    The function validates with :meth:`parse`; the job schema and the CLI flags are
    derived from the same declaration (the flag is ``--`` + the name with dashes).
    ``kind`` is a type (int, float, bool, str, dict), a tuple of choices, or one of
    "seed", "sketch_size", "memory", "memory_or_auto", "checkpoint", "url", "object".
    """

    name: str
    kind: Any
    default: Any = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    hint: str = ""
    role: str = "result"
    path: bool = False  # a local file or folder (relative in a job file: to the job file)
    aliases: tuple[str, ...] = ()  # deprecated names, still accepted with a warning

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The validated value; None only where the declaration allows it."""
        kind, name = self.kind, self.name
        if value is None:
            if self.default is None or kind == "seed" or (isinstance(kind, tuple) and None in kind):
                return None
            raise ParameterError(f"`{name}` is required; it defaults to {self.default!r}")
        if isinstance(kind, tuple):
            return parse_choice(value, name, kind)
        if kind is int:
            if self.low is None:  # bounds that need the input (a rank): checked with it
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ParameterError(f"`{name}` must be an integer{self.hint}; got {value!r}")
                return int(value)
            high = None if self.high is None else int(self.high)
            return parse_int(value, name, int(self.low), high, self.hint)
        if kind is float:
            return parse_float(
                value,
                name,
                low=self.low,
                high=self.high,
                low_open=self.low_open,
                high_open=self.high_open,
            )
        if kind is bool and isinstance(value, np.bool_):
            value = bool(value)
        if kind in (bool, str, dict) and not (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ):
            raise ParameterError(f"`{name}` must be of type {kind.__name__}; got {value!r}")
        if kind == "seed":
            parse_seed(value)
        elif kind == "sketch_size":
            parts = value if isinstance(value, (tuple, list)) else [value]
            if len(parts) not in (1, 2):
                raise ParameterError(f"`{name}` must be an integer or a pair (k, s); got {value!r}")
            for part in parts:
                parse_int(part, name, 1)
        elif kind in ("memory", "memory_or_auto"):
            return parse_memory(value, name, auto=kind == "memory_or_auto")
        elif kind == "url" and not isinstance(value, (str, os.PathLike)):
            raise ParameterError(
                f"`{name}` must be a path or URL (str or os.PathLike); got {value!r}"
            )
        elif kind == "checkpoint" and not (
            isinstance(value, (str, os.PathLike)) or hasattr(value, "open")
        ):
            raise ParameterError(
                f"`{name}` must be a folder (path or URL) or a Checkpoint; got {value!r}"
            )
        return value


@dataclass(frozen=True)
class Spec:
    """The declaration of one public function: its parameters, and ``check``, the rules
    that need the input (shape, kind) and turn the parsed values into the parameters the
    result records: ``check(values, source) -> dict``."""

    name: str
    params: tuple[Param, ...]
    check: Any = None
    tiles: bool = False  # its panel kernels take a panel as tiles (never assembled)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def parse(self, values: dict) -> dict:
        """Every declared parameter parsed (missing ones take their default); deprecated
        aliases are accepted with a DeprecationWarning; unknown names are refused."""
        values = dict(values)
        for p in self.params:
            for old in p.aliases:
                if values.get(old) is None:
                    values.pop(old, None)
                    continue
                if values.get(p.name, p.default) not in (None, p.default):
                    raise ParameterError(f"give `{p.name}` or its old name `{old}`, not both")
                warnings.warn(
                    f"`{old}` is deprecated; use `{p.name}`", DeprecationWarning, stacklevel=4
                )
                values[p.name] = values.pop(old)
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise ParameterError(
                f"{self.name} got unknown parameter(s) {', '.join(unknown)}; "
                f"valid: {', '.join(self.names)}"
            )
        return {p.name: p.parse(values.get(p.name, p.default)) for p in self.params}

    def validate(self, values: dict, source: Any) -> dict:
        """Parse, then the input-dependent rules: the parameters the result will record."""
        parsed = self.parse(values)
        return self.check(parsed, source) if self.check is not None else parsed
