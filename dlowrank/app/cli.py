"""The ``dlowrank`` command line: argument parsing, exit codes, logging; no numerics.

Exit codes: 0 done (or already done), 2 invalid input, parameters, job or output
path, 3 tolerance not met, 4 storage or cluster failure, 130 interrupted, 141 the
reader of stdout went away (1: a bug; please report it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any

import click
import numpy as np

import dlowrank
from dlowrank.kernels.testmatrix import KINDS

logger = logging.getLogger("dlowrank")


EXIT_INVALID, EXIT_TOLERANCE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 3, 4, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as for any Unix tool whose reader went away


def _exit_code(exc: BaseException) -> int | None:
    """The documented exit code for an exception, or None for a bug (traceback)."""
    from dlowrank import errors

    if isinstance(exc, errors.ToleranceError):
        return EXIT_TOLERANCE
    if isinstance(
        exc,
        (
            errors.ParameterError,
            errors.InputError,
            errors.CheckpointError,
            errors.OutputExistsError,
            errors.StoreNotFoundError,
            errors.BackendError,
        ),
    ):
        return EXIT_INVALID
    if isinstance(exc, (errors.ResultError, OSError, TimeoutError)):
        return EXIT_FAILURE
    try:
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker, NoWorkerError
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    failures = (CommClosedError, KilledWorker, NoWorkerError)
    return EXIT_FAILURE if isinstance(exc, failures) else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _Group(click.Group):
    """Turn expected failures into one clear line and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_broken_pipe()
        except Exception as exc:
            code = _exit_code(exc)
            if code is None:
                raise
            kind = "storage or cluster failure: " if code == EXIT_FAILURE else ""
            notes = list(getattr(exc, "__notes__", ()))
            if _EVENTS["json"]:
                _event("error", exit_code=code, error=type(exc).__name__, message=_one_line(exc),
                       notes=notes)  # fmt: skip
                ctx.exit(code)
            click.echo(f"error: {kind}{_one_line(exc)}", err=True)
            for note in notes:
                click.echo(f"note: {note}", err=True)
            ctx.exit(code)


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away (``dlowrank info x | head -3``): exit quietly.

    Python would print an error while flushing stdout at exit; point stdout at
    /dev/null first, as the Python docs advise for SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dlowrank.__version__, prog_name="dlowrank")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log level (overrides -v).",
)
@click.option(
    "--log-json",
    is_flag=True,
    help="Everything on stderr as one JSON object per line, for batch schedulers: pass "
    "starts, pieces and ends, messages, warnings, log records, errors, and the result.",
)
def main(verbose: int, log_level: str | None, log_json: bool) -> None:
    """Low-rank approximation of matrices larger than memory (Zarr + Dask)."""
    from dlowrank.runtime.budget import few_arenas, return_freed_memory

    few_arenas()  # under RLIMIT_AS: start again with few malloc arenas
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    if log_level:
        level = getattr(logging, log_level.upper())
    _EVENTS["json"] = log_json
    handler = logging.StreamHandler(sys.stderr)
    if log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _quiet_dask(level)
    return_freed_memory()  # freed chunks go back to the system: a run stays in its budget
    warnings.showwarning = _show_warning


#: --log-json: every line on stderr is a JSON event (set by ``main``).
_EVENTS = {"json": False}


def _event(kind: str, **fields: Any) -> None:
    """One JSON event on stderr: ``{"event": kind, "time": ..., ...}``."""
    record = {"event": kind, "time": time.time(), **fields}
    click.echo(json.dumps(record, default=_json_default, sort_keys=True), err=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": "log",
                "time": record.created,
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            sort_keys=True,
        )


def _say(line: str) -> None:
    """A progress message on stderr (an event with --log-json)."""
    if _EVENTS["json"]:
        _event("message", message=line)
    else:
        click.echo(line, err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """dlowrank's warnings as one line on stderr; others as Python shows them."""
    from dlowrank.errors import DlowrankWarning

    if _EVENTS["json"] and (issubclass(category, DlowrankWarning) or _level_is_debug()):
        _event("warning", category=category.__name__, message=" ".join(str(message).split()))
        return
    if issubclass(category, DlowrankWarning):
        click.echo(f"warning: {' '.join(str(message).split())}", err=True)
    elif _level_is_debug():
        click.echo(warnings.formatwarning(message, category, filename, lineno, line), err=True)


def _level_is_debug() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def _quiet_dask(level: int) -> None:
    """Only dlowrank's own lines unless ``--log-level debug``: distributed logs INFO by
    default, in this process and in every worker process it starts."""
    quiet = level > logging.DEBUG
    names = ("distributed", "distributed.client", "tornado", "tornado.application", "asyncio")
    levels = {name: "critical" if quiet else "debug" for name in names}
    # worker processes read their logging levels from the environment when they start
    # (dask parses the value as a Python literal and merges it into its `logging` config)
    os.environ["DASK_LOGGING"] = repr(levels)
    import dask

    # ... and this process's distributed from dask's config, when it is first imported
    dask.config.set({"logging": {**dask.config.get("logging", {}), **levels}})
    for name in (*names, "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL if quiet else level)


def _emit_json(summary: dict) -> None:
    click.echo(json.dumps(summary, default=_json_default, sort_keys=True))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _chunks_option(default: tuple[int, int] | None, help: str) -> Any:
    """The ``--chunks R C`` option of the commands that write a matrix."""
    return click.option(
        "--chunks",
        nargs=2,
        type=int,
        default=default,
        show_default=default is not None,
        metavar="R C",
        help=help,
    )


@main.command()
@click.argument("out")
@click.option("--shape", nargs=2, type=int, required=True, metavar="M N", help="Rows and columns.")
@click.option("--rank", type=int, required=True, help="Number of non-zero signal singular values.")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="exponential",
    show_default=True,
    help="Spectrum kind.",
)
@click.option(
    "--decay",
    type=float,
    default=None,
    help="Ratio (exponential, psd; default 0.9) or exponent (polynomial; default 1).",
)
@click.option("--scale", type=float, default=1.0, show_default=True, help="Largest singular value.")
@click.option("--noise", type=float, default=None, help="Std of iid Gaussian noise per entry.")
@_chunks_option(None, "Chunk shape (default: dask's auto).")
@click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True
)
@click.option("--seed", type=int, default=None, help="Seed; the matrix does not depend on chunks.")
@click.option("--overwrite", is_flag=True, help="Replace OUT once the new matrix is complete.")
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary.")
def generate(
    out: str,
    shape: tuple[int, int],
    rank: int,
    kind: str,
    decay: float | None,
    scale: float,
    noise: float | None,
    chunks: tuple[int, int] | None,
    dtype: str,
    seed: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write a test matrix with a known spectrum to the Zarr array OUT, blockwise."""
    start = time.perf_counter()
    made = dlowrank.generate(
        out,
        tuple(shape),
        rank,
        kind=kind,
        decay=decay,
        scale=scale,
        noise=noise,
        chunks=chunks or "auto",
        dtype=dtype,
        seed=seed,
        overwrite=overwrite,
    )
    seconds = time.perf_counter() - start
    x = made.array
    summary = {
        "output": out,
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "chunks": [c[0] for c in x.chunks],
        "rank": made.spec.rank,
        "seconds": seconds,
        "gb_per_s": x.nbytes / 1e9 / seconds,
        "seed": made.spec.entropy,
    }
    if as_json:
        _emit_json(summary)
    else:
        click.echo(
            f"wrote {out}: {x.shape[0]} x {x.shape[1]} {x.dtype}, chunks "
            f"{summary['chunks'][0]} x {summary['chunks'][1]}, {x.nbytes / 1e9:.2f} GB "
            f"in {seconds:.1f} s (seed {made.spec.entropy})"
        )


def _describe_array(url: str) -> dict:
    import zarr

    x = dlowrank.open_matrix(url)  # validates (unsafe codecs, shape, dtype) first
    arr = zarr.open_array(url, mode="r")
    meta = arr.metadata.to_dict()
    info = {
        "type": "array",
        "path": url,
        "shape": list(x.shape),
        "dtype": str(arr.dtype),
        "compute_dtype": str(x.dtype),
        "chunks": [c[0] for c in x.chunks],
        "n_chunks": int(np.prod(x.numblocks)),
        "nbytes": int(arr.nbytes),
        "zarr_format": meta.get("zarr_format"),
        "codecs": meta.get("codecs") or [meta.get("compressor")],
    }
    attrs = dict(arr.attrs.get("dlowrank") or {})
    if attrs:
        info["dlowrank"] = attrs
        if attrs.get("singular_values"):
            s = np.asarray(attrs["singular_values"])
            info["spectrum"] = dlowrank.spectrum_summary(s, full_rank=min(x.shape)).to_dict()
    return info


def _describe(url: str) -> dict:
    import zarr

    try:
        group = zarr.open_group(url, mode="r")
    except Exception:  # not a group: describe it as a matrix (which validates it)
        return _describe_array(url)
    attrs = dict(group.attrs.get("dlowrank") or {})
    if attrs.get("current") and attrs["current"] in group:  # a result: arrays in its version
        group = group[attrs["current"]]
    members = {
        name: {"shape": list(node.shape), "dtype": str(node.dtype)} for name, node in group.arrays()
    }
    return {
        "type": "result" if attrs else "group",
        "path": url,
        "arrays": members,
        "dlowrank": attrs,
    }


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(url: str, as_json: bool) -> None:
    """Describe a matrix (shape, dtype, chunks, codecs) or a stored result (provenance)."""
    described = _describe(url)
    if as_json:
        _emit_json(described)
        return
    for key, value in described.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k2, v2 in value.items():
                if isinstance(v2, list) and len(v2) > 8:
                    v2 = f"[{', '.join(f'{x:.4g}' for x in v2[:8])}, ...] ({len(v2)} values)"
                click.echo(f"  {k2}: {v2}")
        else:
            click.echo(f"{key}: {value}")


@main.command()
@click.option(
    "--shape",
    nargs=2,
    type=int,
    default=(20000, 500),
    show_default=True,
    metavar="M N",
    help="Size of the synthetic matrix.",
)
@click.option("--rank", type=int, default=20, show_default=True, help="Rank of the approximation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary.")
def demo(shape: tuple[int, int], rank: int, seed: int, as_json: bool) -> None:
    """Generate a matrix in a temporary Zarr store, approximate it, verify the result."""
    from dlowrank.app.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="dlowrank-demo-") as tmp:
        summary = run_demo(os.path.join(tmp, "a.zarr"), tuple(shape), rank, seed)
    if as_json:
        _emit_json(summary)
    else:
        for line in summary["lines"]:
            click.echo(line)
    if not summary["verified"]:
        sys.exit(1)


def _given(*names: str) -> dict[str, bool]:
    """Which of the current command's options the user gave (not their defaults)."""
    ctx = click.get_current_context()
    default = click.core.ParameterSource.DEFAULT
    return {name: ctx.get_parameter_source(name) != default for name in names}


def _show(result: dict, as_json: bool, fmt: Any) -> None:
    """A benchmark's result as one JSON line or as its table."""
    if as_json:
        _emit_json(result)
    else:
        click.echo(fmt(result))


@main.command()
@click.argument("input", required=False)
@click.option(
    "--shape",
    nargs=2,
    type=int,
    default=(100_000, 4_000),
    show_default=True,
    metavar="M N",
    help="Size of the generated matrix when no INPUT is given.",
)
@_chunks_option((10_000, 2_000), "Chunks of the generated matrix.")
@click.option("--rank", type=int, default=20, show_default=True)
@click.option("--n-oversamples", type=int, default=10, show_default=True)
@click.option("--n-power-iter", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scheduler",
    "schedulers",
    multiple=True,
    type=click.Choice(["threads", "local"]),
    default=("threads", "local"),
    show_default=True,
    help="Dask's threads and/or a LocalCluster of worker processes (repeatable).",
)
@click.option("--workers", type=int, default=2, show_default=True, help="LocalCluster workers.")
@click.option(
    "--sklearn/--no-sklearn",
    default=None,
    help="Include scikit-learn (default: when installed and A fits in memory).",
)
@click.option("--workdir", default=None, help="Where to generate the matrix (default: temp).")
@click.option(
    "--suite",
    type=click.Choice(
        [
            "svd",
            "factorization",
            "completion",
            "throughput",
            "memory",
            "tall",
            "passes",
            "growing",
            "ecosystem",
        ]
    ),
    default="svd",
    show_default=True,
    help="Which comparison to run.",
)
@click.option(
    "--cap",
    type=int,
    default=600,
    show_default=True,
    metavar="MB",
    help="Memory and tall suites: the cgroup cap on the whole process tree (needs root and "
    "cgroup v1; memory: default matrix 250000 x 1000, chunks 10000 x 1000; tall: use "
    "--cap 1000, default matrix 8000000 x 64 float32, chunks 250000 x 64).",
)
@click.option(
    "--heights",
    type=int,
    multiple=True,
    help="Tall suite: also run svd uncapped on the first N rows (repeatable): peak vs m.",
)
@click.option(
    "--cluster-memory",
    default=None,
    metavar="SIZE",
    help="Tall suite: also run the calls on a 2-worker LocalCluster with this memory_limit "
    "per worker (e.g. 500MB), recording every task's inputs on the scheduler.",
)
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Factorization, passes and growing suites: shrink the data sets by this factor "
    "(tests use 0.02).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as one JSON line.")
def bench(
    input: str | None,
    shape,
    chunks,
    rank,
    n_oversamples,
    n_power_iter,
    seed,
    schedulers,
    workers,
    sklearn,
    workdir,
    suite,
    cap,
    heights,
    cluster_memory,
    scale,
    as_json,
) -> None:
    """Compare dlowrank with dask svd_compressed and scikit-learn, side by side.

    --suite factorization runs the NMF, matrix-completion and GD-vs-ALS targets;
    --suite completion runs only the matrix-completion one (ratings recipe);
    --suite memory runs the CLI uncapped and under --cap MB on its whole process tree;
    --suite tall runs svd, svd --passes 1, factorize and nmf on a tall matrix under
    --cap MB, cold, with a bare read pass, true errors and U's orthonormality;
    --suite passes measures the error of each pass choice on real images, eigenfaces
    and slow and flat spectra (--rank, default 20);
    --suite ecosystem fits TruncatedSVD of dlowrank, dask-ml (tsqr, randomized) and
    scikit-learn on INPUT (--rank, default 20), each in its own process;
    --suite growing grows the bench matrix (--shape) by 10 % of its rows and times
    dlowrank update against sketch_svd of the grown matrix, then measures warm-started
    randomized_svd against cold runs on matrices grown by 10 % (--scale shrinks them).
    """
    from dlowrank.app.bench import format_table, rows_to_dicts, run_bench

    say = lambda line: click.echo(line, err=True)  # noqa: E731
    if suite == "throughput":
        from dlowrank.app.bench import bench_throughput

        if input is None:
            raise click.UsageError("--suite throughput needs INPUT (a Zarr matrix)")
        rows = bench_throughput(input, say=say)
        if as_json:
            _emit_json({"rows": rows})
        else:
            for r in rows:
                click.echo(
                    f"{r['scheduler']:12} one pass {r['seconds']:6.2f} s {r['mb_per_s']:8.0f} MB/s"
                )
        return
    if suite == "memory":
        from dlowrank.app.bench_memory import format_memory, run_memory_bench

        given = _given("shape", "chunks")
        result = run_memory_bench(
            input,
            shape=tuple(shape) if given["shape"] else (250_000, 1_000),
            chunks=tuple(chunks) if given["chunks"] else (10_000, 1_000),
            cap_mb=cap,
            workdir=workdir,
            say=say,
        )
        _show(result, as_json, format_memory)
        return
    if suite == "tall":
        from dlowrank.app.bench_tall import format_tall, run_tall_bench

        given = _given("shape", "chunks", "rank")
        result = run_tall_bench(
            input,
            shape=tuple(shape) if given["shape"] else (8_000_000, 64),
            chunks=tuple(chunks) if given["chunks"] else (250_000, 64),
            rank=rank if given["rank"] else 10,
            cap_mb=cap,
            heights=tuple(heights),
            cluster_memory=cluster_memory,
            workdir=workdir,
            say=say,
        )
        _show(result, as_json, format_tall)
        return
    if suite == "passes":
        from dlowrank.app.bench_passes import format_passes, run_passes_bench

        rows = run_passes_bench(rank=rank, scale=scale, say=say)
        if as_json:
            _emit_json({"rows": rows})
        else:
            click.echo(format_passes(rows))
        return
    if suite == "ecosystem":
        from dlowrank.app.bench_ecosystem import format_ecosystem, run_ecosystem_bench

        if input is None:
            raise click.UsageError("--suite ecosystem needs INPUT (a Zarr matrix)")
        given = _given("rank")
        result = run_ecosystem_bench(input, rank=rank if given["rank"] else 20, say=say)
        _show(result, as_json, format_ecosystem)
        return
    if suite == "growing":
        from dlowrank.app.bench_growing import (
            format_growing,
            format_warm,
            run_growing_bench,
            run_warm_bench,
        )

        given = _given("shape", "chunks", "rank")
        result = run_growing_bench(
            shape=tuple(shape) if given["shape"] else (100_000, 4_000),
            chunks=tuple(chunks) if given["chunks"] else (10_000, 2_000),
            rank=rank if given["rank"] else 20,
            workdir=workdir,
            say=say,
        )
        result["warm"] = run_warm_bench(rank=rank if given["rank"] else 20, scale=scale, say=say)
        _show(result, as_json, lambda r: format_growing(r) + "\n\n" + format_warm(r["warm"]))
        return
    if suite in ("factorization", "completion"):
        from dlowrank.app.bench_factor import (
            bench_completion,
            format_factorization,
            run_factorization_bench,
        )

        if suite == "completion":
            results = {"completion": bench_completion(workdir=workdir, scale=scale, say=say)}
        else:
            results = run_factorization_bench(workdir=workdir, scale=scale, say=say)
        if as_json:
            _emit_json(results)
        else:
            click.echo(format_factorization(results))
        return
    rows = run_bench(
        input,
        shape=tuple(shape),
        chunks=tuple(chunks),
        rank=rank,
        n_oversamples=n_oversamples,
        n_power_iter=n_power_iter,
        seed=seed,
        schedulers=tuple(schedulers),
        workers=workers,
        sklearn=sklearn,
        workdir=workdir,
        progress=lambda line: click.echo(line, err=True),
    )
    if as_json:
        _emit_json({"rows": rows_to_dicts(rows)})
    else:
        click.echo(format_table(rows))


class _Reporter:
    """Pass progress: a bar per pass on a terminal, plain log lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bar = None

    def __call__(self, ev: Any) -> None:
        if _EVENTS["json"]:  # every event, --quiet or not: a scheduler reads them
            rate = ev.nbytes / 1e6 / ev.seconds if ev.seconds else None
            _event("pass", stage=ev.stage, index=ev.index, done=ev.done, total=ev.total,
                   seconds=ev.seconds, mb_per_s=rate, restored=ev.restored)  # fmt: skip
            return
        if self.quiet:
            return
        if ev.stage == "start" and self.tty:
            self.bar = click.progressbar(length=ev.total, label=f"pass {ev.index}", file=sys.stderr)
            self.bar.__enter__()
        elif ev.stage == "piece" and self.bar is not None:
            self.bar.update(1)
        elif ev.stage == "done":
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None
            stamp = time.strftime("%H:%M:%S")
            if ev.restored:
                click.echo(
                    f"{stamp} pass {ev.index}: restored from the checkpoint (resumed)", err=True
                )
            else:
                rate = ev.nbytes / 1e6 / ev.seconds if ev.seconds else 0.0
                click.echo(
                    f"{stamp} pass {ev.index} done: {ev.seconds:.1f} s, {rate:.0f} MB/s", err=True
                )


def _run_and_report(cfg: Any, dry_run: bool, as_json: bool, quiet: bool) -> None:
    import resource

    from dlowrank.app.jobs import run_job
    from dlowrank.runtime.budget import PeakMemory

    start = time.perf_counter()
    say = (lambda line: None) if quiet and not _EVENTS["json"] else _say
    with PeakMemory(interval=0.1) as tree:
        outcome = run_job(cfg, dry_run=dry_run, progress=_Reporter(quiet), say=say)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # exact, this process
    summary = {
        "status": outcome.status,
        "command": cfg.command,
        **outcome.summary,
        "seconds": time.perf_counter() - start,
        # the process tree's peak (sampled every 0.1 s), at least this process's own
        "peak_memory_mb": max(tree.peak, own) / 2**20,
    }
    if _EVENTS["json"]:
        _event("result", **{k: v for k, v in summary.items() if k != "singular_values"})
    if as_json:
        _emit_json({k: v for k, v in summary.items() if k != "singular_values"})
        return
    if outcome.status == "validated":
        click.echo(
            f"valid: {cfg.command} on {cfg.input} ({summary['shape'][0]} x "
            f"{summary['shape'][1]} {summary['dtype']})"
        )
    elif outcome.status == "already done":
        click.echo(f"already done: {cfg.out}")
    else:
        s = outcome.summary
        if cfg.command == "spectrum":
            click.echo(s["message"])
            if s.get("plot"):
                click.echo(f"plot: {s['plot']}")
        restored = f", {s['restored_passes']} restored" if s.get("restored_passes") else ""
        where = f"wrote {s['output']}: " if s.get("output") else ""
        click.echo(
            f"{where}rank {s['rank']}, relative error {s['rel_error']:.6g} "
            f"({s.get('error_kind', 'exact')}), {s['passes']} passes{restored}, "
            f"{summary['seconds']:.1f} s"
        )
        if "converged" in s:
            if s["converged"]:
                click.echo(f"converged after {s['n_iter']} iterations (tol {s['tol']:g})")
            else:
                click.echo(
                    f"not converged after {s['n_iter']} iterations (limit: max_iter "
                    f"{s['max_iter']}, or the time budget); the objective still changed by "
                    f"more than tol {s['tol']:g}: raise --max-iter or --tol"
                )


def _click_type(opt: Any) -> Any:
    """The click type of a declared parameter (values are parsed by the declaration)."""
    return {int: int, float: float, "seed": int}.get(opt.kind, str)


def _metavar(opt: Any) -> str | None:
    """Choices are shown in the help, and checked by the declaration (one-line errors)."""
    if isinstance(opt.kind, tuple):
        return "[" + "|".join(c for c in opt.kind if c is not None) + "]"
    return None


def _click_option(opt: Any, *, override: bool = False) -> list[click.Option]:
    """The flag of a declared parameter, and hidden flags for its deprecated names.
    ``override`` (for ``run``): an unset flag is None and changes nothing."""
    names = [opt.flag, *(f"--{old.replace('_', '-')}" for old in opt.aliases)]
    out = []
    for flag in names:
        hidden = flag != opt.flag
        help = opt.help if not hidden else f"Deprecated: use {opt.flag}."
        if opt.kind is bool:
            default = None if override else False
            out.append(
                click.Option(
                    [flag], is_flag=True, flag_value=True, default=default, help=help, hidden=hidden
                )
            )
            continue
        default = None if override or hidden else opt.default
        out.append(
            click.Option(
                [flag],
                type=_click_type(opt),
                metavar=_metavar(opt),
                default=default,
                help=help,
                hidden=hidden,
                show_default=default is not None,
            )
        )
    return out


def _job_command(name: str, doc: str) -> click.Command:
    from dlowrank.app.jobs import COMMANDS, JobConfig

    def callback(
        input: str, out: str | None, dry_run: bool, as_json: bool, quiet: bool, **options: Any
    ) -> None:
        cfg = JobConfig.from_dict({"command": name, "input": input, "out": out, **options})
        _run_and_report(cfg, dry_run, as_json, quiet)

    params = [
        click.Argument(["input"]),
        click.Option(["--out"], default=None, help="Where the result goes (path or URL)."),
        click.Option(
            ["--dry-run"], is_flag=True, help="Check everything a run would; run nothing."
        ),
        click.Option(["--json", "as_json"], is_flag=True, help="Print a one-line JSON summary."),
        click.Option(["--quiet", "-q"], is_flag=True, help="No progress output."),
        *[flag for o in COMMANDS[name] for flag in _click_option(o)],
    ]
    return click.Command(name, callback=callback, params=params, help=doc)


main.add_command(
    _job_command(
        "svd",
        "Truncated SVD of INPUT: multi-pass randomized (default) or "
        "single pass (--passes 1); result at --out.",
    )
)
main.add_command(
    _job_command(
        "factorize",
        "Factorize INPUT as U V^T with weight decay (ALS or gradient descent), NaN as missing "
        "with --missing nan; result (u, v) at --out.",
    )
)
main.add_command(
    _job_command(
        "nmf",
        "Non-negative factorization of INPUT (HALS or multiplicative updates); result at --out.",
    )
)
main.add_command(
    _job_command(
        "spectrum",
        "Top singular values of INPUT, how fast they decay, "
        "and optionally a plot (--plot FILE.png).",
    )
)


def _run_command() -> click.Command:
    from dlowrank.app.jobs import GROWTH, INPUT, OUTPUT, RUNTIME, load_job_file

    def callback(job_file: str, dry_run: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
        overrides = {k: v for k, v in flags.items() if v is not None}
        _run_and_report(load_job_file(job_file, overrides=overrides), dry_run, as_json, quiet)

    params = [
        click.Argument(["job_file"]),
        click.Option(
            ["--dry-run"], is_flag=True, help="Check everything a run would; run nothing."
        ),
        click.Option(["--json", "as_json"], is_flag=True, help="Print a one-line JSON summary."),
        click.Option(["--quiet", "-q"], is_flag=True, help="No progress output."),
        *[
            flag
            for o in INPUT + OUTPUT + GROWTH + RUNTIME
            for flag in _click_option(o, override=True)
        ],
    ]
    return click.Command(
        "run",
        callback=callback,
        params=params,
        help="Run the job described in JOB_FILE (YAML or TOML); keys are the flags' names, "
        "and relative paths in it resolve against the job file's folder. Flags given here "
        "override the job file's keys.",
    )


main.add_command(_run_command())


@main.command()
@click.argument("input")
@click.option("--out", required=True, help="The Zarr array to write (path or URL).")
@_chunks_option(None, "Chunk shape (default: dask's auto; CSV: 10000 rows, all columns).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default=None,
    help="Store as this dtype (default: float32/float64 kept, others float64).",
)
@click.option("--dataset", default=None, help="Member of an .npz or dataset of an HDF5 file.")
@click.option("--overwrite", is_flag=True, help="Replace OUT once the new array is complete.")
@click.option(
    "--ratings",
    is_flag=True,
    help="INPUT (.csv or .parquet) holds (row, column, value) triplets: write a sparse "
    "ratings group, never densified.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary.")
def convert(input: str, out: str, chunks, dtype, dataset, overwrite, ratings, as_json) -> None:
    """Convert INPUT (.npy, .npz, .h5, .csv/.tsv/.txt, .mtx, or a .zarr matrix to
    rechunk; or ratings) to Zarr."""
    from dlowrank.io.convert import convert as run_convert

    start = time.perf_counter()
    if ratings:
        from dlowrank.io.ratings import read_table, write_ratings
        from dlowrank.io.store import check_writable

        check_writable(out, overwrite=overwrite, inputs=[input])  # before reading INPUT
        src = write_ratings(out, *read_table(input), overwrite=overwrite)
        summary = {
            "output": out,
            "shape": list(src.shape),
            "nnz": src.nnz,
            "seconds": time.perf_counter() - start,
        }
        if as_json:
            _emit_json(summary)
        else:
            click.echo(f"wrote {out}: ratings {src.shape[0]} x {src.shape[1]}, {src.nnz} entries")
        return
    x = run_convert(
        input,
        out,
        chunks=tuple(chunks) if chunks else None,
        dtype=dtype,
        dataset=dataset,
        overwrite=overwrite,
    )
    summary = {
        "output": out,
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "chunks": [c[0] for c in x.chunks],
        "seconds": time.perf_counter() - start,
    }
    if as_json:
        _emit_json(summary)
    else:
        click.echo(
            f"wrote {out}: {x.shape[0]} x {x.shape[1]} {x.dtype}, chunks "
            f"{summary['chunks'][0]} x {summary['chunks'][1]}"
        )


@main.command()
@click.argument("result")
@click.argument("input")
@click.option(
    "--out",
    default=None,
    help="Save the updated result here (default: replace RESULT, atomically).",
)
@click.option(
    "--recompute",
    is_flag=True,
    help="When the covered part of INPUT changed, run the single pass over all of INPUT "
    "afresh instead of refusing.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing result at --out (RESULT is always)."
)
@click.option("--scheduler", default=None, help="A dask scheduler's address.")
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="Workers of a local cluster; 0: dask's threads in this process.",
)
@click.option("--memory", default=None, help="Memory the run may use, e.g. 600MB.")
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary.")
def update(
    result: str,
    input: str,
    out,
    recompute: bool,
    overwrite: bool,
    scheduler,
    workers: int,
    memory,
    as_json,
) -> None:
    """Extend the single-pass RESULT (made with --passes 1 --keep-sketch) to the rows and
    columns appended to INPUT since, reading only those."""
    import dlowrank as dl
    from dlowrank.runtime.client import connect

    with connect(scheduler=scheduler, workers=workers) as client:
        r = dl.update(
            result,
            input,
            recompute=recompute,
            client=client,
            memory=memory,
            out=out or result,
            overwrite=overwrite or out is None or out == result,
        )
    info = r.params.get("update")
    summary = {
        "output": out or result,
        "shape": [int(r.u.shape[0]), int(r.vt.shape[1])],
        "rank": r.rank,
        "rel_error": r.rel_error,
        "update": info,
    }
    if _EVENTS["json"]:
        _event("result", **summary)
    if as_json:
        _emit_json(summary)
    elif info is None:
        shape = summary["shape"]
        click.echo(f"{summary['output']}: recomputed, {shape[0]} x {shape[1]}")
    elif info["from"] == info["to"]:
        click.echo(f"{summary['output']}: nothing appended, unchanged")
    else:
        click.echo(
            f"{summary['output']}: {info['from'][0]} x {info['from'][1]} -> {info['to'][0]} "
            f"x {info['to'][1]}, read {100 * info['fraction_read']:.1f} % of the input, "
            f"estimated relative error {r.rel_error:.6g}"
        )


@main.command()
@click.argument("input")
@click.option("--rank", type=int, required=True, help="Rank of the approximations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as one JSON line.")
def verify(input: str, rank: int, seed: int, as_json: bool) -> None:
    """Exact and streaming SVDs of a small INPUT side by side, with their errors."""
    import dlowrank as dl

    exact = dl.exact_svd(input, rank)
    a = dl.open_matrix(input).compute().astype(np.float64)
    norm = float(np.linalg.norm(a))
    runs = [("exact_svd", exact)]
    runs += [
        (f"randomized_svd q={q}", dl.randomized_svd(input, rank, n_power_iter=q, seed=seed))
        for q in (0, 1, 2)
    ]
    runs.append(("sketch_svd", dl.sketch_svd(input, rank, seed=seed)))
    rows = []
    for name, r in runs:
        true = float(np.linalg.norm(a - r.to_dense()) / norm) if norm else 0.0
        rows.append(
            {
                "method": name,
                "passes": r.passes,
                "reported_error": r.rel_error,
                "error_kind": r.error_kind,
                "true_error": true,
                "ratio_to_optimal": true / exact.rel_error if exact.rel_error else 1.0,
                "max_s_diff": float(np.max(np.abs(r.s - exact.s)) / exact.s[0]),
            }
        )
    if as_json:
        _emit_json({"rows": rows})
        return
    click.echo(
        f"{'method':22} {'passes':>6} {'reported':>10} {'kind':>9} {'true':>10} "
        f"{'/optimal':>9} {'max ds/s0':>10}"
    )
    for r in rows:
        click.echo(
            f"{r['method']:22} {r['passes']:6d} {r['reported_error']:10.6f} "
            f"{r['error_kind']:>9} {r['true_error']:10.6f} {r['ratio_to_optimal']:9.5f} "
            f"{r['max_s_diff']:10.2e}"
        )
