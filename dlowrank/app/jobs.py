"""Batch jobs: one schema for job files and command-line flags; validate, run, publish.

A job is ``command`` plus options whose names are the CLI flags with underscores
for dashes (``n_power_iter`` is ``--n-power-iter``). It is validated completely
(keys, types, the input's metadata) before any cluster starts. Its result is
published atomically at ``out`` with the input's fingerprint and the job's
parameters, so a rerun of a finished job does nothing, and a killed job resumes
from the checkpoint of its last completed pass.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import numpy as np

from dlowrank.engine.runner import CHECKPOINT, MEMORY, OVERWRITE, STORAGE_OPTIONS, TIMEOUT
from dlowrank.errors import (
    DlowrankWarning,
    OutOfSpaceError,
    ParameterError,
    ResultError,
    StoreNotFoundError,
)
from dlowrank.factorization import FACTORIZE, NMF
from dlowrank.io.inventory import VERIFY_MODES
from dlowrank.params import MAX_TIMEOUT, MAX_WORKERS, Param, Spec
from dlowrank.streaming import PASSES as _PASSES
from dlowrank.streaming import RANDOMIZED_SVD, SKETCH_SVD

logger = logging.getLogger(__name__)


def _run_param(name: str, kind: Any, default: Any, help: str, **kw: Any) -> Param:
    return Param(name, kind, default, help, role="run", **kw)


def _seconds(name: str, default: float | None, help: str) -> Param:
    return _run_param(name, float, default, help, low=0.0, high=MAX_TIMEOUT, low_open=True)


#: Where and how a job runs (every command has these; ``run`` can override them).
RUNTIME = [
    _run_param("scheduler", str, None, "Dask scheduler address (else DASK_SCHEDULER_ADDRESS)."),
    _run_param("scheduler_file", str, None, "Dask scheduler file.", path=True),
    _run_param(
        "workers",
        int,
        None,
        "LocalCluster worker processes (0: dask threads, no cluster).",
        low=0,
        high=MAX_WORKERS,
    ),
    _run_param(
        "threads_per_worker", int, None, "Threads per LocalCluster worker.", low=1, high=MAX_WORKERS
    ),
    _run_param(
        "memory_limit", "memory_or_auto", None, "Memory limit per LocalCluster worker, e.g. 2GB."
    ),
    _run_param(
        "dashboard",
        bool,
        False,
        "Serve distributed's dashboard from the LocalCluster on 127.0.0.1 and print its "
        'link (needs bokeh: pip install "dlowrank[dashboard]").',
    ),
    TIMEOUT,
    MEMORY,
    _seconds("connect_timeout", 30.0, "Seconds to wait for a scheduler to answer."),
    _seconds(
        "no_workers_timeout",
        60.0,
        "Seconds to wait for a first worker, or without any worker during a pass.",
    ),
    _run_param("tls_ca_file", str, None, "CA certificate (PEM) for a TLS cluster.", path=True),
    _run_param("tls_cert", str, None, "Client certificate (PEM) for a TLS cluster.", path=True),
    _run_param("tls_key", str, None, "Client private key (PEM) for a TLS cluster.", path=True),
    _run_param(
        "verify_input",
        VERIFY_MODES,
        "listing",
        "How to tell that the input changed: listing (file sizes and times or ETags) "
        "or checksum (every file's bytes, hashed at the start and after each pass: "
        "one extra read of the input per pass).",
    ),
]
INPUT = [
    _run_param(
        "allow_missing_chunks",
        bool,
        False,
        "Read absent chunks as the fill value (an array sparse by design); else an error.",
    ),
]
OUTPUT = [
    replace(OVERWRITE, role="run"),
    CHECKPOINT,
    _run_param("restart", bool, False, "Discard an existing checkpoint instead of resuming."),
    STORAGE_OPTIONS,
]
PASSES = replace(
    _PASSES,
    help="Reads of A: 1 the single-pass sketch (sketch_svd); 2 (default) one power "
    "iteration at three times the width; k >= 3: k - 1 power iterations.",
)
#: A scheduled job on a growing matrix (svd only): update the result, or start over.
GROWTH = [
    _run_param(
        "update",
        bool,
        False,
        "Keep the single pass's sketches with the result (--passes 1 --keep-sketch), and "
        "when OUT already holds such a result of the input's leading rows and columns, "
        "extend it by reading only the rows and columns appended since (replacing OUT).",
    ),
    _run_param(
        "recompute",
        bool,
        False,
        "With --update: compute the result from the whole input afresh, replacing OUT "
        "(a weekly recompute; or after the covered part of the input changed).",
    ),
]
START = Param(
    "start",
    str,
    None,
    "Warm start from a previous result (a path or URL) of this matrix before it grew: "
    "fewer passes reach the same error; --passes 1 is then one read of the multi-pass "
    "algorithm, with an exact error.",
    path=True,
)
PLOT = _run_param(
    "plot", str, None, "Write a scree and cumulative-energy plot (PNG) here.", path=True
)


def _options(*specs: Spec, only: tuple[str, ...] | None = None, **defaults: Any) -> list[Param]:
    """The job keys of public functions' declarations (library-only ones left out). A name
    declared by several functions with different defaults gets None: each function then
    uses its own. ``defaults`` are the command's own."""
    merged: dict[str, Param] = {}
    for spec in specs:
        for p in spec.params:
            if p.role == "api" or (only is not None and p.name not in only):
                continue
            if p.name in merged and merged[p.name].default != p.default:
                p = replace(p, default=None, help=p.help + " (default: the algorithm's)")
            merged[p.name] = replace(p, default=defaults.get(p.name, p.default))
    return list(merged.values())


def _command(*own: Param) -> list[Param]:
    """A command's options: its own, then the shared input, output and runtime ones."""
    first: dict[str, Param] = {}
    for p in own:
        first.setdefault(p.name, p)  # a command's own declaration before a function's
    own = tuple(first.values())
    names = set(first)
    return [*own, *[p for p in INPUT + OUTPUT + RUNTIME if p.name not in names]]


#: Each command's options, derived from the declarations of the functions it calls.
COMMANDS: dict[str, list[Param]] = {
    "svd": _command(PASSES, *GROWTH, START, *_options(RANDOMIZED_SVD, SKETCH_SVD)),
    "factorize": _command(*_options(FACTORIZE)),
    "nmf": _command(*_options(NMF)),
    "spectrum": _command(
        *_options(
            RANDOMIZED_SVD,
            only=("rank", "n_power_iter", "n_oversamples", "seed", "layout", "memory", "timeout"),
            rank=50,
        ),
        PLOT,
    ),
}
#: Keys every job file has besides the command's options.
JOB_KEYS = ("command", "input", "out")


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean `{match[0]}`?" if match else f"; valid keys: {', '.join(valid)}"


def _coerce(opt: Param, value: Any, where: str) -> Any:
    """A job file's (or a flag's) value in the type the declaration parses, then parsed."""
    if value is None:
        return opt.parse(None)
    kind = opt.kind
    if kind is float and isinstance(value, str):
        try:  # YAML reads 1e-10 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if kind is dict and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if kind == "sketch_size" and isinstance(value, str):  # a flag: "K" or "K,S"
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            pass
        value = value[0] if isinstance(value, list) and len(value) == 1 else value
    if kind in ("seed", "checkpoint"):  # a file holds an int seed and a folder
        want = int if kind == "seed" else str
        if not isinstance(value, want) or isinstance(value, bool):
            raise ParameterError(
                f"{where}`{opt.name}` must be of type {want.__name__}; got {value!r}"
            )
    try:
        value = opt.parse(value)
    except ParameterError as exc:
        raise ParameterError(f"{where}{exc}") from None
    return float(value) if kind is float else value


def _aliases(command: str, data: dict, where: str) -> dict:
    """Deprecated keys renamed (with a warning); unset ones (None) dropped."""
    data = dict(data)
    for opt in COMMANDS[command]:
        for old in opt.aliases:
            if old not in data:
                continue
            value = data.pop(old)
            if value is None:
                continue
            if data.get(opt.name) not in (None, opt.default):
                raise ParameterError(f"{where}give `{opt.name}` or its old name `{old}`, not both")
            warnings.warn(
                f"{where}`{old}` is deprecated; use `{opt.name}` ({opt.flag} on the command line)",
                DlowrankWarning,
                stacklevel=3,
            )
            data[opt.name] = value
    return data


@dataclass(frozen=True)
class JobConfig:
    """A validated job: exactly what a job file holds (``to_dict`` round-trips)."""

    command: str
    input: str
    out: str | None
    options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "") -> JobConfig:
        """Validate a job dict: the command, required keys, unknown keys, types, bounds."""
        if not isinstance(data, dict):
            raise ParameterError(
                f"{where}a job must be a mapping of keys to values; got {type(data).__name__}"
            )
        command = data.get("command")
        if command not in COMMANDS:
            raise ParameterError(
                f"{where}`command` must be one of {', '.join(COMMANDS)}; got {command!r}"
            )
        data = _aliases(command, data, where)
        options = {o.name: o for o in COMMANDS[command]}
        valid = list(JOB_KEYS) + list(options)
        for key in data:
            if key not in valid:
                raise ParameterError(
                    f"{where}unknown key `{key}` for command {command}" + _closest(key, valid)
                )
        if not isinstance(data.get("input"), str):
            raise ParameterError(f"{where}`input` (a path or URL of a Zarr array) is required")
        out = data.get("out")
        if out is not None and not isinstance(out, str):
            raise ParameterError(f"{where}`out` must be a path or URL; got {out!r}")
        if command != "spectrum" and out is None:
            raise ParameterError(f"{where}`out` (where the result goes) is required for {command}")
        values = {name: _coerce(o, data.get(name, o.default), where) for name, o in options.items()}
        return cls(command=command, input=data["input"], out=out, options=values)

    def to_dict(self) -> dict:
        return {"command": self.command, "input": self.input, "out": self.out, **self.options}


#: Job keys that name local files or folders: relative ones resolve against the job file.
PATH_KEYS = ("input", "out", *sorted({p.name for ps in COMMANDS.values() for p in ps if p.path}))


def _resolve_paths(data: dict, folder: str, where: str) -> dict:
    """Relative local paths in a job file, made relative to the job file's ``folder``."""
    out = dict(data)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or "://" in value or os.path.isabs(value):
            continue
        value = os.path.expanduser(value)
        resolved = os.path.normpath(os.path.join(folder, value))
        if os.path.relpath(resolved, folder).startswith(os.pardir):
            logger.warning(
                "%s`%s: %s` resolves to %s, outside the job file's folder",
                where,
                key,
                data[key],
                resolved,
            )
        out[key] = resolved
    return out


def load_job_file(path: str | os.PathLike, *, overrides: dict | None = None) -> JobConfig:
    """Read a YAML (``.yaml``, ``.yml``) or TOML (``.toml``) job file and validate it.

    Relative local paths in the file (``input``, ``out``, ``checkpoint``,
    ``plot``, ``scheduler_file``, the TLS files) resolve against the job file's
    folder, as in compose files and CI configs. ``overrides`` (command-line
    flags, by job key) replace the file's keys and keep their own meaning.
    """
    import yaml

    path = os.fspath(path)
    where = f"job file {path}: "
    if not os.path.exists(path):
        raise StoreNotFoundError(f"job file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            data = tomllib.loads(raw.decode())
        else:
            data = yaml.safe_load(raw)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ParameterError(
            f"{where}not valid {'TOML' if path.endswith('.toml') else 'YAML'}: {detail}"
        ) from None
    if isinstance(data, dict):
        data = _resolve_paths(data, os.path.dirname(os.path.abspath(path)), where)
        data.update(overrides or {})
    return JobConfig.from_dict(data, where=where)


@dataclass(frozen=True)
class Outcome:
    """What running a job did: ``status`` is "done", "already done" or "validated"."""

    status: str
    summary: dict


def _job_params(cfg: JobConfig) -> dict:
    """The options that decide the result (not where or how it runs)."""
    keep = {o.name for o in COMMANDS[cfg.command] if o.role == "result"}
    return {k: v for k, v in cfg.options.items() if k in keep}


def _already_done(cfg: JobConfig, fp: str) -> bool:
    """True when ``out`` holds a complete result of this input and these parameters."""
    from dlowrank.results import load

    try:
        prev = load(cfg.out, storage_options=cfg.options.get("storage_options"))
    except (StoreNotFoundError, ResultError):
        return False
    job = prev.params.get("job", {})
    if cfg.options.get("update") and not getattr(prev, "updatable", False):
        return False  # an update job's result keeps its sketches
    return prev.input.get("fingerprint") == fp and job == _job_params(cfg)


@dataclass(frozen=True)
class Plan:
    """What a validated job will do, decided before any cluster starts."""

    source: Any
    fingerprint: str
    checkpoint: str | None
    checkpoint_meta: dict
    already_done: bool
    restored_passes: int  # completed passes the checkpoint holds (0: none, or --restart)


def checkpoint_url(cfg: JobConfig) -> str | None:
    """The job's checkpoint folder: ``checkpoint``, else ``OUT.checkpoint`` beside ``out``."""
    o = cfg.options
    return o.get("checkpoint") or (f"{cfg.out.rstrip('/')}.checkpoint" if cfg.out else None)


def _checkpoint_meta(cfg: JobConfig, fp: str) -> dict:
    """What a job's checkpoint belongs to: command, options, input fingerprint, version."""
    from dlowrank import __version__

    return {
        "command": cfg.command,
        "job": _job_params(cfg),
        "input_fingerprint": fp,
        "version": __version__,
    }


def preflight(cfg: JobConfig) -> Plan:
    """Every check a run would fail on, done before any work: ``--dry-run`` runs exactly this.

    The input's metadata, the parameters against its shape, the command against
    the input (nmf on ratings), the output path (not the input, not foreign
    data, replaceable only with ``overwrite``, writable), and the checkpoint
    (ours, and made by this very job unless ``restart``).
    """
    from dlowrank.io.checkpoint import Checkpoint, fingerprint
    from dlowrank.io.source import open_source
    from dlowrank.io.store import check_output, check_scratch, is_own_result

    o = cfg.options
    so = o.get("storage_options")
    source = open_source(cfg.input, storage_options=so)  # validates the input's metadata
    _check_params(cfg, source)
    fp = fingerprint(source)
    fresh = bool(o.get("recompute"))  # a recompute runs even on an unchanged input
    if cfg.out is not None and not fresh and is_own_result(cfg.out, so) and _already_done(cfg, fp):
        return Plan(source, fp, None, {}, True, 0)
    if cfg.out is not None:
        # an update job replaces its own result (extended, or recomputed)
        overwrite = bool(o.get("overwrite")) or _replaces(cfg)
        check_output(cfg.out, overwrite=overwrite, inputs=[cfg.input], storage_options=so)
    if cfg.command == "spectrum" and o.get("plot"):
        check_scratch(o["plot"], inputs=[cfg.input, cfg.out], what="plot", flag="--plot")
    ckpt = checkpoint_url(cfg)
    meta = _checkpoint_meta(cfg, fp)
    restored = 0
    if ckpt:
        check_scratch(ckpt, inputs=[cfg.input, cfg.out], storage_options=so)
        c = Checkpoint(ckpt, meta, storage_options=so)
        if o.get("restart"):
            c.check_owned()  # --restart removes only a checkpoint of dlowrank's
        else:
            restored = c.check()
    _check_space(cfg, source.shape, ckpt)
    return Plan(source, fp, ckpt, meta, False, restored)


def _estimate_bytes(cfg: JobConfig, shape: tuple[int, int]) -> tuple[int, int]:
    """Rough upper estimates of (result, checkpoint) bytes, float64 throughout."""
    o = cfg.options
    m, n = shape
    k = o.get("rank") or o.get("max_rank") or min(m, n, 512)
    width = min(2 * (k + (o.get("n_oversamples") or 10)), min(m, n))  # 2 passes: twice
    if cfg.command in ("svd", "spectrum"):
        q = o.get("n_power_iter")
        passes = (o.get("passes") or (2 if q is None else q + 1)) + 1
        return 8 * (m * k + k + k * n), 8 * passes * (m + n) * width
    passes = min(o.get("max_iter") or 100, 100) + 3
    return 8 * (m + n) * k, 8 * passes * (m + n) * k


def _check_space(cfg: JobConfig, shape: tuple[int, int], ckpt: str | None) -> None:
    """Free space for the result and the checkpoint, on local disks, before pass 1."""
    import shutil

    from dlowrank.io.store import is_local

    result, checkpoint = _estimate_bytes(cfg, shape)
    needs: dict[str, int] = {}
    for url, nbytes in ((cfg.out, 2 * result), (ckpt, checkpoint)):  # 2: old and new
        if not url or not is_local(url):
            continue
        folder = os.path.abspath(url.removeprefix("file://"))
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        device = os.stat(folder).st_dev
        needs[folder] = needs.get(folder, 0) + nbytes
        for other in list(needs):
            if other != folder and os.stat(other).st_dev == device:
                needs[folder] += needs.pop(other)
    for folder, nbytes in needs.items():
        free = shutil.disk_usage(folder).free
        if free < nbytes:
            raise OutOfSpaceError(
                f"the result and checkpoint need about {nbytes / 1e6:.1f} MB on the disk of "
                f"{folder}, which has {free / 1e6:.1f} MB free; free some space, or choose "
                "another --out or --checkpoint"
            )


def run_job(
    cfg: JobConfig,
    *,
    dry_run: bool = False,
    progress: Callable[[Any], None] | None = None,
    say: Callable[[str], None] = logger.info,
) -> Outcome:
    """Validate (:func:`preflight`), then run ``cfg`` on a cluster and publish its result.

    After a failure the checkpoint is kept when it holds completed passes, and
    the error says where it is and how to resume or discard it; an empty one is
    removed.
    """
    o = cfg.options
    settings = {
        "dlowrank.allow-missing-chunks": bool(o.get("allow_missing_chunks")),
        "dlowrank.verify-input": o.get("verify_input") or "listing",
        "dlowrank.connect-timeout": o.get("connect_timeout"),
        "dlowrank.no-workers-timeout": o.get("no_workers_timeout"),
    }
    with dask.config.set(settings):
        return _run_job(cfg, dry_run, progress, say)


def _run_job(cfg: JobConfig, dry_run: bool, progress: Any, say: Callable[[str], None]) -> Outcome:
    from dlowrank.io.checkpoint import Checkpoint

    o = cfg.options
    so = o.get("storage_options")
    plan = preflight(cfg)
    if dry_run:
        return Outcome(
            "validated",
            {
                "input": cfg.input,
                "shape": list(plan.source.shape),
                "dtype": str(plan.source.dtype),
                "command": cfg.command,
                "output": cfg.out,
                "already_done": plan.already_done,
                "checkpoint": plan.checkpoint,
                "resumable_passes": plan.restored_passes,
            },
        )
    if plan.already_done:
        say(
            f"{cfg.out} already holds this result (same input fingerprint and parameters); "
            "nothing to do"
        )
        if cfg.command == "spectrum" and o.get("plot"):
            _replot(cfg)
        return Outcome("already done", {"output": cfg.out})
    ckpt = (
        Checkpoint(plan.checkpoint, plan.checkpoint_meta, storage_options=so)
        if plan.checkpoint
        else None
    )
    if ckpt is not None:
        ckpt.verified_fingerprint = plan.fingerprint  # taken by preflight just now
    if ckpt is not None and o.get("restart"):
        ckpt.remove()
    runner = {
        "svd": _run_svd,
        "spectrum": _run_spectrum,
        "factorize": _run_factorization,
        "nmf": _run_factorization,
    }[cfg.command]
    from dlowrank.runtime import connect
    from dlowrank.runtime.client import security_from_files

    security = security_from_files(o.get("tls_ca_file"), o.get("tls_cert"), o.get("tls_key"))
    try:
        with (
            connect(
                security=security,
                scheduler=o.get("scheduler"),
                scheduler_file=o.get("scheduler_file"),
                workers=o.get("workers"),
                threads_per_worker=o.get("threads_per_worker"),
                memory_limit=o.get("memory_limit"),
                dashboard=bool(o.get("dashboard")),
            ) as client,
        ):
            if o.get("dashboard"):
                link = getattr(client, "dashboard_link", None) if client is not None else None
                say(f"dashboard: {link}" if link else "dashboard: none (no cluster: --workers 0)")
            summary = runner(cfg, client, ckpt, progress, plan.fingerprint, say)
    except BaseException as exc:
        if ckpt is not None:
            _after_failure(ckpt, exc)
        raise
    if ckpt is not None:
        ckpt.remove()
    return Outcome("done", summary)


def _after_failure(ckpt: Any, exc: BaseException) -> None:
    """Keep a checkpoint that holds completed passes and say so; remove it when it is
    empty, or when the failure would recur on a rerun (bad input, parameters,
    tolerance), since resuming could not help."""
    from dlowrank.errors import CheckpointError, InputError, ToleranceError, UnsafeOutputError

    try:
        done = ckpt.completed
    except Exception:  # the storage itself failed: say nothing we cannot check
        return
    recurs = isinstance(exc, (InputError, ParameterError, ToleranceError))
    if isinstance(exc, (CheckpointError, UnsafeOutputError)):
        return  # the checkpoint is not this job's to remove
    if done and not recurs:
        exc.add_note(
            f"the checkpoint {ckpt.url} keeps {done} completed pass(es): rerun the same "
            "command to resume from it, or add --restart to discard it"
        )
    else:
        try:
            ckpt.remove()
        except Exception:
            return


def _target(cfg: JobConfig) -> tuple[Callable, Spec, dict]:
    """The public function a job calls, its declaration, and the job's values for it
    (unset ones left out: the function's own defaults apply)."""
    from dlowrank.factorization import factorize, nmf
    from dlowrank.streaming import randomized_svd, sketch_svd

    o = cfg.options
    growing = cfg.command == "svd" and bool(o.get("update"))
    warm = o.get("start") is not None
    single = cfg.command == "svd" and ((o.get("passes") == 1 and not warm) or growing)
    fn, spec = {
        "factorize": (factorize, FACTORIZE),
        "nmf": (nmf, NMF),
        "spectrum": (randomized_svd, RANDOMIZED_SVD),
        "svd": (sketch_svd, SKETCH_SVD) if single else (randomized_svd, RANDOMIZED_SVD),
    }[cfg.command]
    kwargs = {k: o[k] for k in spec.names if o.get(k) is not None}
    if growing:
        kwargs["keep_sketch"] = True
    return fn, spec, kwargs


def _check_params(cfg: JobConfig, source: Any) -> None:
    """The function's own rules against the input (shape, kind), before any work: the
    same declaration and checks the function applies when it runs."""
    o = cfg.options
    if o.get("recompute") and not o.get("update"):
        raise ParameterError("`recompute` goes with `update` (a job on a growing matrix)")
    if o.get("update") and o.get("passes") not in (None, 1):
        raise ParameterError(
            f"`update` extends the single pass's result; got passes {o['passes']}: drop "
            "passes (update implies 1), or drop update"
        )
    if o.get("update") and o.get("start") is not None:
        raise ParameterError(
            "`start` warm-starts the multi-pass algorithm and `update` extends the single "
            "pass's result: give one of them"
        )
    single = o.get("passes") == 1 and o.get("start") is None
    if cfg.command == "svd" and (single or o.get("update")):
        for key in ("max_error", "n_power_iter"):
            if o.get(key) is not None:
                raise ParameterError(
                    f"`{key}` needs the multi-pass algorithm; drop it or --passes 1 (the "
                    "single pass takes sketch_size instead)"
                )
    _, spec, kwargs = _target(cfg)
    spec.validate(kwargs, source)


def _call(cfg: JobConfig, **runtime: Any) -> Any:
    fn, _, kwargs = _target(cfg)
    return fn(cfg.input, **{**kwargs, **runtime})


def _publish(result: Any, cfg: JobConfig, fp: str, overwrite: bool | None = None) -> Any:
    from dataclasses import replace

    result = replace(
        result,
        params={**result.params, "job": _job_params(cfg)},
        input={**result.input, "source": cfg.input, "fingerprint": fp},
    )
    result.save(
        cfg.out,
        overwrite=bool(cfg.options.get("overwrite")) if overwrite is None else overwrite,
        storage_options=cfg.options.get("storage_options"),
    )
    return result


def _summary(result: Any, cfg: JobConfig) -> dict:
    return {
        "output": cfg.out,
        "rank": result.rank,
        "rel_error": result.rel_error,
        "error_kind": result.error_kind,
        "passes": result.passes,
        "restored_passes": result.restored_passes,
        "seconds": result.seconds,
        "algorithm": result.algorithm,
    }


def _run_svd(cfg, client, ckpt, progress, fp, say) -> dict:
    previous = _updatable(cfg)
    if previous is not None:
        from dlowrank.updates import update

        o = cfg.options
        result = update(
            previous,
            cfg.input,
            client=client,
            progress=progress,
            storage_options=o.get("storage_options"),
            timeout=o.get("timeout"),
            memory=o.get("memory"),
        )
        info = result.params["update"]
        say(
            f"updated {cfg.out}: {info['from'][0]} x {info['from'][1]} -> {info['to'][0]} x "
            f"{info['to'][1]}, read {100 * info['fraction_read']:.1f} % of the input"
        )
        result = _publish(result, cfg, fp, overwrite=True)
        return {**_summary(result, cfg), "update": info}
    result = _call(cfg, client=client, checkpoint=ckpt, progress=progress)
    return _summary(_publish(result, cfg, fp, overwrite=_replaces(cfg) or None), cfg)


def _replaces(cfg: JobConfig) -> bool:
    """An update job replaces its own result at OUT (extended, recomputed, or computed
    afresh over one that kept no sketches): the rule preflight checks the output by."""
    from dlowrank.io.store import is_own_result

    o = cfg.options
    return bool(o.get("update")) and is_own_result(cfg.out, o.get("storage_options"))


def _updatable(cfg: JobConfig) -> Any:
    """The result at OUT that an ``update`` job extends (None: compute afresh)."""
    from dlowrank.io.store import is_own_result
    from dlowrank.results import load

    o = cfg.options
    so = o.get("storage_options")
    if not o.get("update") or o.get("recompute") or not is_own_result(cfg.out, so):
        return None
    result = load(cfg.out, storage_options=so)
    return result if getattr(result, "updatable", False) else None


def _run_spectrum(cfg, client, ckpt, progress, fp, say) -> dict:
    from dlowrank.spectrum import spectrum_summary

    o = cfg.options
    r = _call(cfg, client=client, checkpoint=ckpt, progress=progress)
    s = np.asarray(r.s, dtype=np.float64)
    # ||A||_F^2 from the exact error of the rank-k result: sum s^2 = (1 - err^2) ||A||_F^2
    total = _total_energy(s, r.rel_error)
    shape = r.input["shape"]
    summary = spectrum_summary(s, full_rank=min(shape), total_energy=total)
    if o.get("plot"):
        from dlowrank.app.plots import plot_spectrum

        plot_spectrum(s, total, o["plot"], title=os.path.basename(cfg.input.rstrip("/")))
    if cfg.out:
        _publish(r, cfg, fp)
    return {
        "output": cfg.out,
        "rank": r.rank,
        "singular_values": s.tolist(),
        "total_energy": total,
        "passes": r.passes,
        "seconds": r.seconds,
        "rel_error": r.rel_error,
        "restored_passes": r.restored_passes,
        "plot": o.get("plot"),
        **summary.to_dict(),
    }


def _run_factorization(cfg, client, ckpt, progress, fp, say) -> dict:
    """factorize or nmf: the job's options pass through to the function."""
    r = _call(cfg, client=client, checkpoint=ckpt, progress=progress)
    r = _publish(r, cfg, fp)
    return {
        **_summary(r, cfg),
        "n_iter": r.n_iter,
        "max_iter": r.params.get("max_iter"),
        "tol": r.params.get("tol"),
        "converged": r.converged,
        "loss": float(r.loss[-1]),
    }


def _replot(cfg: JobConfig) -> None:
    """Draw the spectrum plot of a stored spectrum result (a rerun with a new --plot)."""
    from dlowrank.app.plots import plot_spectrum
    from dlowrank.results import load

    r = load(cfg.out, storage_options=cfg.options.get("storage_options"))
    s = np.asarray(r.s, dtype=np.float64)
    total = _total_energy(s, r.rel_error)
    plot_spectrum(s, total, cfg.options["plot"], title=os.path.basename(cfg.input.rstrip("/")))


def _total_energy(s: np.ndarray, rel_error: float) -> float:
    """||A||_F^2 from a rank-k result's exact error: sum s^2 = (1 - err^2) ||A||_F^2."""
    return float(np.sum(s**2) / max(1.0 - rel_error**2, np.finfo(float).tiny))
