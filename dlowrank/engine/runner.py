"""The runner: what every public streaming computation needs around its algorithm.

A :class:`Run` parses the call's parameters against the function's declaration
(:class:`dlowrank.params.Spec`), opens the input once (:func:`open_source`, the
one opener), checks the input-dependent rules, builds the pass engine, attaches
the checkpoint, and makes the result with its provenance (passes, parameters,
seed, input, seconds). A public function is then: declare, ``Run(...)``, call an
algorithm on ``run.engine``, ``run.svd(...)`` (or ``eigh``, ``factorization``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import weakref
from typing import Any

import numpy as np

from dlowrank.engine.passes import PassEngine
from dlowrank.engine.tall import Tall, factor
from dlowrank.io.source import input_info, open_source
from dlowrank.kernels import exact
from dlowrank.params import MAX_TIMEOUT, Param, Spec, parse_seed, seed_record
from dlowrank.runtime.budget import PeakMemory

logger = logging.getLogger(__name__)

# --- the parameters every streaming function shares (declared once) -------------------------

SEED = Param(
    "seed",
    "seed",
    0,
    "Seed, an integer >= 0. Random numbers depend on the seed and the global index only: "
    "the same seed gives the same result for any chunking, workers or task order.",
)
CLIENT = Param(
    "client",
    "object",
    None,
    "A distributed.Client to run on; default: dask's current scheduler.",
    role="api",
)
LAYOUT = Param(
    "layout",
    ("auto", "panel", "block"),
    "auto",
    "panel: tasks read whole row panels (A^T A in one read); block: chunk by chunk; "
    "auto: panels when one fits the memory budget.",
    role="run",
)
STORAGE_OPTIONS = Param(
    "storage_options",
    dict,
    None,
    "fsspec options for the input and the output (JSON on the command line).",
    role="run",
)
CHECKPOINT = Param(
    "checkpoint",
    "checkpoint",
    None,
    "Folder where each completed pass is saved; a rerun with the same input and "
    "parameters resumes from it (jobs: default OUT.checkpoint beside OUT).",
    role="run",
    path=True,
)
PROGRESS = Param(
    "progress",
    "object",
    None,
    "A callable receiving a PassEvent as passes start, progress and end.",
    role="api",
)
TIMEOUT = Param(
    "timeout",
    float,
    None,
    "Fail (exit 4) when one pass takes longer (seconds); default on a cluster: "
    "20 times the first pass, at least 600.",
    low=0.0,
    high=MAX_TIMEOUT,
    low_open=True,
    role="run",
)
MEMORY = Param(
    "memory",
    "memory",
    None,
    "Memory the run may use, e.g. 600MB: on dask's threads the whole process (default: "
    "the cgroup limit, RLIMIT_AS or the available memory, minus what the process holds); "
    "on a cluster each worker (default: its memory_limit). Tasks in flight, panel sizes "
    "and the layout follow from it; a budget that cannot hold one chunk is refused.",
    role="run",
)
OUT = Param(
    "out",
    "url",
    None,
    "Zarr group (path or URL) where the result is saved as it is made, atomically: a "
    "tall factor is written there chunk by chunk by the tasks (in the input's row "
    "chunking), never whole in memory; the returned result reads it from there "
    "(see dlowrank.load). The command line and jobs always have one (--out).",
    role="api",
    path=True,
)
OVERWRITE = Param(
    "overwrite",
    bool,
    False,
    "Replace an existing result at the output once the new one is complete.",
    role="api",
)
#: Engine parameters of every streaming function (factorizations fix the layout).
ENGINE = (CLIENT, STORAGE_OPTIONS, CHECKPOINT, PROGRESS, TIMEOUT, MEMORY, OUT, OVERWRITE)


class Run:
    """One public computation: its parsed parameters, source, engine, seed and timer.

    ``Run(spec, a, **values)`` does every check before any pass; ``params`` is what
    the result and the checkpoint record (``spec.check``'s output, plus the engine's
    layout for functions that declare one).
    """

    def __init__(self, spec: Spec, a: Any, **values: Any) -> None:
        self.start = time.perf_counter()
        self.memory = PeakMemory(interval=0.1).__enter__()  # the result's peak_memory_mb
        weakref.finalize(self, self.memory.__exit__)
        from dlowrank.xr import unlabel

        a, self.labels = unlabel(a)  # a 2-D DataArray: its data, and its dims and coords
        self.spec, self.a = spec, a
        v = spec.parse(values)
        self.values = v
        self.source = open_source(a, storage_options=v.get("storage_options"))
        params = spec.check(v, self.source) if spec.check is not None else {}
        if v.get("out") is not None:  # refused before any pass, as the command line does
            from dlowrank.io.store import check_output

            given = a if isinstance(a, (str, os.PathLike)) else None
            check_output(
                os.fspath(v["out"]),
                overwrite=v.get("overwrite", False),
                inputs=[None if given is None else os.fspath(given)],
                storage_options=v.get("storage_options"),
            )
        checkpoint = v.get("checkpoint")
        self.engine = PassEngine(
            self.source,
            layout=v.get("layout", "panel"),
            client=v.get("client"),
            progress=v.get("progress"),
            timeout=v.get("timeout"),
            memory=v.get("memory"),
            fingerprint=getattr(checkpoint, "verified_fingerprint", None),
            missing=v.get("missing") == "nan",
            rank=params.get("rank") if isinstance(params.get("rank"), int) else None,
            tiles=spec.tiles,
        )
        if "layout" in v:
            params["layout"] = self.engine.layout
        self.params = params
        self.seed = parse_seed(v.get("seed"))
        self._attach_checkpoint(checkpoint)

    def _attach_checkpoint(self, checkpoint: Any) -> None:
        """Resume from (and save to) ``checkpoint``: a URL, a Checkpoint, or None."""
        if checkpoint is None:
            return
        from dlowrank import __version__
        from dlowrank.io.checkpoint import Checkpoint

        if not isinstance(checkpoint, Checkpoint):
            meta = {
                "algorithm": self.spec.name,
                "version": __version__,  # passes saved by other code are not mixed in
                "input_fingerprint": self.engine.input_fingerprint,
                "params": self.params,
                "seed": seed_record(self.seed),
            }
            checkpoint = Checkpoint(
                checkpoint, meta, storage_options=self.values.get("storage_options")
            )
        done = checkpoint.open()
        if done:
            logger.info("resuming from %s: %d completed pass(es)", checkpoint.url, done)
        self.engine.checkpoint = checkpoint

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def _finish(self, result: Any) -> Any:
        """The result, saved at ``out`` when given (its lazy factors then read from
        there), with a DataArray input's labels."""
        out = self.values.get("out")
        if out is not None:
            so = self.values.get("storage_options")
            client = self.engine.client  # the run's: lazy factors are saved by its workers
            with client.as_current() if client is not None else contextlib.nullcontext():
                version = result._publish(
                    out, overwrite=self.values.get("overwrite", False), storage_options=so
                )
            result = result._reopened(out, version, so)
        if self.labels is not None:
            result = dataclasses.replace(result, labels=self.labels)
        return result

    def _provenance(self, algorithm: str | None, params: dict | None) -> dict:
        return {
            "passes": self.engine.passes,
            "restored_passes": self.engine.restored,
            "algorithm": algorithm or self.spec.name,
            "params": {**self.params, **(params or {})},
            "seed": seed_record(self.seed),
            "input": input_info(self.source, self.a),
            "seconds": time.perf_counter() - self.start,
            "peak_memory_mb": self._peak() / 2**20,
        }

    def _peak(self) -> int:
        """The process tree's peak RSS from the start of the run to now (sampling stops)."""
        self.memory.__exit__()
        return self.memory.peak

    def svd(
        self,
        u: np.ndarray,
        s: np.ndarray,
        vt: np.ndarray,
        rel_error: float,
        *,
        error_kind: str = "exact",
        algorithm: str | None = None,
        params: dict | None = None,
        extra: dict | None = None,
    ) -> Any:
        """An SVDResult from tall-oriented factors: transposition undone, the package's
        sign convention, A's dtype. ``u`` may be a Tall (row panels): it becomes a NumPy
        array when small, else a dask array over Zarr (:func:`dlowrank.engine.tall.factor`),
        never gathered whole. ``extra``: further arrays of the result (kept sketches)."""
        from dlowrank.results import SVDResult

        dtype = self.dtype
        if isinstance(u, Tall):
            u, vt = self._tall_svd(u, vt)
        else:
            if self.engine.transpose:
                u, vt = vt.T, u.T
            u, vt = exact.sign_flip(u, vt)
            u, vt = u.astype(dtype), vt.astype(dtype)
        self.engine.close()
        result = SVDResult(
            u=u,
            s=s.astype(dtype),
            vt=vt,
            rel_error=rel_error,
            error_kind=error_kind,
            **(extra or {}),
            **self._provenance(algorithm, params),
        )
        return self._finish(result)

    def keep_sketch(self, state: Any) -> dict:
        """A single pass's sketches as result arrays (tall orientation, float64): Y like a
        tall factor (NumPy when small, else chunked Zarr, never gathered), X, Z, E."""
        rows = self.engine.plan.tall_chunks[0][0]
        return {
            "sketch_y": factor(state.y, np.float64, rows, limit=self._limit),
            "sketch_x": state.x,
            "sketch_z": state.z,
            "sketch_e": state.e,
        }

    @property
    def _limit(self) -> int:
        """The largest factor returned in memory: within the run's budget (a NumPy factor
        is held about three times while it is made: measured, a 200 MB U took a 600 MB
        run over its cap), at most ``dlowrank.factor-memory``."""
        return self.engine.space.limit

    def _tall_svd(self, u: Tall, vt: np.ndarray) -> tuple[Any, Any]:
        """(u, vt) in the input's orientation and sign convention, from a tall-oriented
        Tall u and a small vt: the sign is decided on the original u (one read of the
        panels when that is the Tall), then the Tall becomes the result's factor."""
        dtype = self.dtype
        rows = self.engine.plan.tall_chunks[0][0]
        if self.engine.transpose:  # the Tall is the wide input's v
            small, flips = exact.sign_flip(vt.T, np.eye(vt.shape[0]))
            signs = np.diag(flips)
            big = factor(u.times(np.diag(signs)), dtype, rows, transpose=True, limit=self._limit)
            return small.astype(dtype), big
        out, signs = factor(u, dtype, rows, flip=True, limit=self._limit)  # signs: its tasks
        return out, (vt * signs[:, None]).astype(dtype)

    def eigh(
        self,
        w: np.ndarray,
        v: np.ndarray,
        rel_error: float,
        *,
        error_kind: str = "exact",
        algorithm: str | None = None,
        params: dict | None = None,
    ) -> Any:
        from dlowrank.results import EighResult

        self.engine.close()
        v, _ = exact.sign_flip(v)
        result = EighResult(
            w=w.astype(self.dtype),
            v=v.astype(self.dtype),
            rel_error=rel_error,
            error_kind=error_kind,
            **self._provenance(algorithm, params),
        )
        return self._finish(result)

    def factorization(self, st: Any, *, algorithm: str) -> Any:
        """A FactorizationResult from an algorithm's final state (tall orientation undone)."""
        from dlowrank.results import FactorizationResult

        rows = self.engine.plan.tall_chunks[0][0]
        tall = (
            factor(st.u, self.dtype, rows, limit=self._limit)
            if isinstance(st.u, Tall)
            else st.u.astype(self.dtype)
        )
        self.engine.close()
        bias = getattr(st, "biases", None)
        extra: dict = {}
        if bias is not None:  # the row biases are the last column of the tall factor
            k = st.v.shape[1]
            tall, row_bias = tall[:, :k], tall[:, k] - tall.dtype.type(bias.shift)
            col_bias = bias.col.astype(self.dtype)
            if self.engine.transpose:
                row_bias, col_bias = col_bias, row_bias
            extra = {"mean": float(bias.mean), "row_bias": row_bias, "col_bias": col_bias}
        u, v = (
            (st.v.astype(self.dtype), tall)
            if self.engine.transpose
            else (tall, st.v.astype(self.dtype))
        )
        result = FactorizationResult(
            u=u,
            v=v,
            **extra,
            loss=np.asarray(st.loss),
            n_iter=st.n_iter,
            converged=st.converged,
            rel_error=float(np.sqrt(st.residual2 / st.fro2)) if st.fro2 else 0.0,
            error_kind="exact",
            **self._provenance(algorithm, None),
        )
        return self._finish(result)
