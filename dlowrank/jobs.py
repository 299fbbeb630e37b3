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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from dlowrank.errors import OutOfSpaceError, ParameterError, ResultError, StoreNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """One option: the job key ``name``; its flag is the name with dashes for underscores."""

    name: str
    type: Any  # int, float, str, bool, dict, or a tuple of choices
    default: Any = None
    help: str = ""
    nargs: int = 1

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


RUNTIME = [
    Option("scheduler", str, None, "Dask scheduler address (else DASK_SCHEDULER_ADDRESS)."),
    Option("scheduler_file", str, None, "Dask scheduler file."),
    Option("workers", int, None, "LocalCluster worker processes (0: dask threads, no cluster)."),
    Option("threads_per_worker", int, None, "Threads per LocalCluster worker."),
    Option("memory_limit", str, None, "Memory limit per LocalCluster worker, e.g. 2GB."),
    Option(
        "timeout",
        float,
        None,
        "Fail (exit 4) when one pass takes longer (seconds); default on a cluster: "
        "20 times the first pass, at least 600.",
    ),
    Option("connect_timeout", float, 30.0, "Seconds to wait for a scheduler to answer."),
    Option(
        "no_workers_timeout",
        float,
        60.0,
        "Seconds to wait for a first worker, or without any worker during a pass.",
    ),
    Option("tls_ca_file", str, None, "CA certificate (PEM) for a TLS cluster."),
    Option("tls_cert", str, None, "Client certificate (PEM) for a TLS cluster."),
    Option("tls_key", str, None, "Client private key (PEM) for a TLS cluster."),
    Option(
        "verify_input",
        str,
        "listing",
        "How to tell that the input changed: listing (file sizes and times or ETags) "
        "or checksum (every file's bytes, hashed at the start and after each pass: "
        "one extra read of the input per pass).",
    ),
]
INPUT = [
    Option(
        "allow_missing_chunks",
        bool,
        False,
        "Read absent chunks as the fill value (an array sparse by design); else an error.",
    ),
]
OUTPUT = [
    Option("overwrite", bool, False, "Replace an existing result once the new one is complete."),
    Option("checkpoint", str, None, "Checkpoint folder (default: OUT.checkpoint beside OUT)."),
    Option("restart", bool, False, "Discard an existing checkpoint instead of resuming."),
    Option("storage_options", dict, None, "fsspec options for INPUT and OUT (JSON)."),
]
COMMANDS: dict[str, list[Option]] = {
    "svd": [
        Option("rank", int, None, "Number of singular triplets (or give --tol)."),
        Option("tol", float, None, "Relative Frobenius error to reach instead of a rank."),
        Option("max_rank", int, None, "Largest rank tried with --tol."),
        Option("passes", int, None, "1: single-pass sketch; k >= 2: k - 1 power iterations."),
        Option("n_power_iter", int, 2, "Power iterations q (q + 1 passes)."),
        Option("n_oversamples", int, 10, "Extra sketch columns."),
        Option("sketch_size", int, None, "Single pass: range sketch width k (default 4 rank + 1)."),
        Option("seed", int, 0, "Seed; the result does not depend on chunks or workers."),
        Option("symmetric", bool, False, "Symmetric input: eigen-decomposition form."),
        *INPUT,
        *OUTPUT,
        *RUNTIME,
    ],
    "factorize": [
        Option("rank", int, None, "Number of factors k."),
        Option("weight_decay", float, 0.0, "L2 weight decay alpha on both factors."),
        Option("method", str, "als", "als or gd."),
        Option("max_iter", int, None, "Iterations (one pass each) at most."),
        Option("tol", float, 1e-6, "Stop when the objective changes less (relative)."),
        Option("init", str, None, "svd or random (default: svd for complete data)."),
        Option("missing", str, None, "nan: NaN entries are missing."),
        Option("seed", int, 0, "Seed."),
        *INPUT,
        *OUTPUT,
        *RUNTIME,
    ],
    "nmf": [
        Option("rank", int, None, "Number of non-negative factors k."),
        Option("solver", str, "hals", "hals or mu."),
        Option("init", str, "nndsvd", "nndsvd, nndsvda or random."),
        Option("max_iter", int, 200, "Iterations (one pass each) at most."),
        Option("tol", float, 1e-4, "Stop when the objective changes less (relative)."),
        Option("weight_decay", float, 0.0, "L2 weight decay alpha on both factors."),
        Option("seed", int, 0, "Seed."),
        *INPUT,
        *OUTPUT,
        *RUNTIME,
    ],
    "spectrum": [
        Option("rank", int, 50, "How many singular values to compute."),
        Option("n_power_iter", int, 2, "Power iterations q (q + 1 passes)."),
        Option("n_oversamples", int, 10, "Extra sketch columns."),
        Option("seed", int, 0, "Seed."),
        Option("plot", str, None, "Write a scree and cumulative-energy plot (PNG) here."),
        *INPUT,
        *OUTPUT,
        *RUNTIME,
    ],
}
#: Keys every job file has besides the command's options.
JOB_KEYS = ("command", "input", "out")


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean `{match[0]}`?" if match else f"; valid keys: {', '.join(valid)}"


def _coerce(opt: Option, value: Any, where: str) -> Any:
    if value is None:
        return None
    kind = opt.type
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        dict: isinstance(value, dict),
    }.get(kind, False)
    if kind is dict and isinstance(value, str):
        try:
            value, ok = json.loads(value), True
        except json.JSONDecodeError:
            ok = False
        ok = ok and isinstance(value, dict)
    if not ok and kind is float and isinstance(value, str):
        try:  # YAML reads 1e-10 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not ok:
        name = getattr(kind, "__name__", str(kind))
        raise ParameterError(f"{where}`{opt.name}` must be of type {name}; got {value!r}")
    return float(value) if kind is float else value


@dataclass(frozen=True)
class JobConfig:
    """A validated job: exactly what a job file holds (``to_dict`` round-trips)."""

    command: str
    input: str
    out: str | None
    options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "") -> JobConfig:
        """Validate a job dict: the command, required keys, unknown keys, types."""
        if not isinstance(data, dict):
            raise ParameterError(
                f"{where}a job must be a mapping of keys to values; got {type(data).__name__}"
            )
        command = data.get("command")
        if command not in COMMANDS:
            raise ParameterError(
                f"{where}`command` must be one of {', '.join(COMMANDS)}; got {command!r}"
            )
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
PATH_KEYS = (
    "input",
    "out",
    "checkpoint",
    "plot",
    "scheduler_file",
    "tls_ca_file",
    "tls_cert",
    "tls_key",
)


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
    skip = {o.name for o in OUTPUT + RUNTIME} | {"plot"}
    return {k: v for k, v in cfg.options.items() if k not in skip}


def _already_done(cfg: JobConfig, fp: str) -> bool:
    """True when ``out`` holds a complete result of this input and these parameters."""
    from dlowrank.results import load

    try:
        prev = load(cfg.out, storage_options=cfg.options.get("storage_options"))
    except (StoreNotFoundError, ResultError):
        return False
    job = prev.params.get("job", {})
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
    from dlowrank.factorization import check_nmf_source
    from dlowrank.io.checkpoint import Checkpoint, fingerprint
    from dlowrank.io.source import as_source
    from dlowrank.io.store import check_output, check_scratch, is_own_result

    o = cfg.options
    so = o.get("storage_options")
    source = as_source(cfg.input, storage_options=so)  # validates the input's metadata
    _check_params(cfg, source.shape)
    if cfg.command == "nmf":
        check_nmf_source(source)
    fp = fingerprint(source)
    if cfg.out is not None and is_own_result(cfg.out, so) and _already_done(cfg, fp):
        return Plan(source, fp, None, {}, True, 0)
    if cfg.out is not None:
        overwrite = bool(o.get("overwrite"))
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
    width = min(k + (o.get("n_oversamples") or 10), min(m, n))
    if cfg.command in ("svd", "spectrum"):
        passes = (o.get("passes") or (o.get("n_power_iter") or 0) + 1) + 1
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
        "dlowrank.pass-timeout": o.get("timeout"),
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
            ) as client,
        ):
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


def _check_params(cfg: JobConfig, shape: tuple[int, int]) -> None:
    """Parameter rules that need the input's shape, checked before any work."""
    from dlowrank.params import parse_int, parse_rank

    o = cfg.options
    if cfg.command == "svd":
        if (o["rank"] is None) == (o["tol"] is None):
            raise ParameterError(
                f"give exactly one of `rank` and `tol`; got rank={o['rank']!r}, tol={o['tol']!r}"
            )
        if o["rank"] is not None:
            parse_rank(o["rank"], shape)
        if o["passes"] is not None:
            parse_int(o["passes"], "passes", 1)
            if o["passes"] == 1 and o["tol"] is not None:
                raise ParameterError("`tol` needs the multi-pass algorithm; drop --passes 1")
    else:
        parse_rank(o["rank"], shape, required=True)
    _check_options(cfg.command, o)


def _check_options(command: str, o: dict) -> None:
    """The value rules of every option, so that --dry-run catches what a run would."""
    from dlowrank.params import (
        MAX_ITER,
        MAX_OVERSAMPLES,
        MAX_POWER_ITER,
        MAX_TIMEOUT,
        MAX_WORKERS,
        parse_choice,
        parse_float,
        parse_int,
        parse_memory,
    )

    ints = {
        "n_power_iter": (0, MAX_POWER_ITER),
        "n_oversamples": (0, MAX_OVERSAMPLES),
        "max_rank": (1, None),
        "sketch_size": (1, None),
        "max_iter": (1, MAX_ITER),
        "passes": (1, MAX_POWER_ITER + 1),
        "workers": (0, MAX_WORKERS),
        "threads_per_worker": (1, MAX_WORKERS),
    }
    for name, (low, high) in ints.items():
        if o.get(name) is not None:
            parse_int(o[name], name, low, high)
    for name in ("timeout", "connect_timeout", "no_workers_timeout"):
        if o.get(name) is not None:
            parse_float(o[name], name, low=0.0, high=MAX_TIMEOUT, low_open=True)
    if o.get("memory_limit") is not None:
        parse_memory(o["memory_limit"])
    if o.get("weight_decay") is not None:
        parse_float(o["weight_decay"], "weight_decay", low=0.0)
    if o.get("tol") is not None:
        if command == "svd":
            parse_float(o["tol"], "tol", low=0.0, high=1.0, low_open=True, high_open=True)
        else:
            parse_float(o["tol"], "tol", low=0.0)
    if o.get("seed") is not None:
        parse_int(o["seed"], "seed", 0)
    if o.get("verify_input") is not None:
        from dlowrank.io.inventory import VERIFY_MODES

        parse_choice(o["verify_input"], "verify_input", VERIFY_MODES)
    if command == "factorize":
        parse_choice(o["method"], "method", ("als", "gd"))
        parse_choice(o["missing"], "missing", (None, "nan"))
        parse_choice(o["init"], "init", (None, "svd", "random"))
    if command == "nmf":
        parse_choice(o["solver"], "solver", ("hals", "mu"))
        parse_choice(o["init"], "init", ("nndsvd", "nndsvda", "random"))


def _svd_call(cfg: JobConfig, client: Any, ckpt: str | None, progress: Any) -> Any:
    from dlowrank.streaming import randomized_svd, sketch_svd

    o = cfg.options
    common = {
        "seed": o["seed"],
        "client": client,
        "checkpoint": ckpt,
        "progress": progress,
        "storage_options": o.get("storage_options"),
    }
    if o["passes"] == 1:
        return sketch_svd(cfg.input, o["rank"], sketch_size=o["sketch_size"], **common)
    q = o["passes"] - 1 if o["passes"] is not None else o["n_power_iter"]
    return randomized_svd(
        cfg.input,
        o["rank"],
        tol=o["tol"],
        max_rank=o["max_rank"],
        n_power_iter=q,
        n_oversamples=o["n_oversamples"],
        symmetric=o["symmetric"],
        **common,
    )


def _publish(result: Any, cfg: JobConfig, fp: str) -> Any:
    from dataclasses import replace

    result = replace(
        result,
        params={**result.params, "job": _job_params(cfg)},
        input={**result.input, "source": cfg.input, "fingerprint": fp},
    )
    result.save(
        cfg.out,
        overwrite=bool(cfg.options.get("overwrite")),
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
    result = _publish(_svd_call(cfg, client, ckpt, progress), cfg, fp)
    return _summary(result, cfg)


def _run_spectrum(cfg, client, ckpt, progress, fp, say) -> dict:
    from dlowrank.api import spectrum_summary
    from dlowrank.streaming import randomized_svd

    o = cfg.options
    r = randomized_svd(
        cfg.input,
        o["rank"],
        n_power_iter=o["n_power_iter"],
        n_oversamples=o["n_oversamples"],
        seed=o["seed"],
        client=client,
        checkpoint=ckpt,
        progress=progress,
        storage_options=o.get("storage_options"),
    )
    s = np.asarray(r.s, dtype=np.float64)
    # ||A||_F^2 from the exact error of the rank-k result: sum s^2 = (1 - err^2) ||A||_F^2
    total = _total_energy(s, r.rel_error)
    shape = r.input["shape"]
    summary = spectrum_summary(s, full_rank=min(shape), total_energy=total)
    if o.get("plot"):
        from dlowrank.plots import plot_spectrum

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
    """factorize or nmf: the job's own options (those of the command's schema) pass through."""
    from dlowrank.factorization import factorize, nmf

    o = cfg.options
    own = {opt.name for opt in COMMANDS[cfg.command]} - {x.name for x in INPUT + OUTPUT + RUNTIME}
    kwargs = {k: o[k] for k in own if k != "rank"}
    call = factorize if cfg.command == "factorize" else nmf
    r = call(
        cfg.input,
        o["rank"],
        client=client,
        checkpoint=ckpt,
        progress=progress,
        storage_options=o.get("storage_options"),
        **kwargs,
    )
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
    from dlowrank.plots import plot_spectrum
    from dlowrank.results import load

    r = load(cfg.out, storage_options=cfg.options.get("storage_options"))
    s = np.asarray(r.s, dtype=np.float64)
    total = _total_energy(s, r.rel_error)
    plot_spectrum(s, total, cfg.options["plot"], title=os.path.basename(cfg.input.rstrip("/")))


def _total_energy(s: np.ndarray, rel_error: float) -> float:
    """||A||_F^2 from a rank-k result's exact error: sum s^2 = (1 - err^2) ||A||_F^2."""
    return float(np.sum(s**2) / max(1.0 - rel_error**2, np.finfo(float).tiny))
