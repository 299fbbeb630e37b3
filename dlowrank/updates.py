"""Update a single-pass result when its matrix grows, reading only what was appended.

The single pass's sketches are linear in A (Tropp, Yurtsever, Udell, Cevher 2019, §2)
and its test matrices depend on the seed and the global index only. So the sketches of
a grown matrix are the covered part's (kept with the result: ``keep_sketch=True``),
zero-padded, plus the sketches of the entries outside it, which one pass over the
appended rows and columns gives. The factors then follow from the sketches as in the
single pass: the update equals :func:`~dlowrank.sketch_svd` of the grown matrix with the
same seed and sketch sizes, up to rounding.

What is read (tall orientation, covered part m0 x n0, grown M x N, chunk rows cr):
the rows from floor(m0 / cr) cr on, every column; and, when columns were appended, the
rows above that from the chunk column holding n0 on. A chunk that held covered entries
and was rewritten by the append is read whole: its covered entries are projected as the
stored sketches saw them and compared (A_i Omega with Y's rows, Upsilon A_j with X's
columns), so an append that changed them is refused. Every other covered chunk file
must keep the size and time (or ETag) it had when the result was made.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

import numpy as np
import zarr

from dlowrank.algorithms import sketch as _sketch
from dlowrank.engine.passes import PassEngine
from dlowrank.engine.runner import (
    CLIENT,
    MEMORY,
    OUT,
    OVERWRITE,
    PROGRESS,
    STORAGE_OPTIONS,
    TIMEOUT,
    Run,
)
from dlowrank.engine.tall import Tall, resolve
from dlowrank.errors import InputError, ResultError
from dlowrank.io.inventory import source_url
from dlowrank.io.source import Window, bare_zarr
from dlowrank.kernels import passkernels
from dlowrank.params import Param, Spec, parse_seed

logger = logging.getLogger(__name__)

#: A stored row of Y (or column of X) and the same projection of the chunk read again may
#: differ by rounding only: by more than this, relative to their size, the entries changed.
CHECK_RTOL = 1e-9

#: What a refusal of a changed or incompatible input suggests.
HINT = "; pass recompute=True (--recompute) to start over"

RECOMPUTE = Param(
    "recompute",
    bool,
    False,
    "When the covered part of the input changed (or cannot be extended), compute the "
    "single pass of the whole input afresh instead of refusing.",
    role="run",
)


def _check_update(v: dict, source: Any) -> dict:
    if source.sparse:
        raise InputError(
            "update needs a dense matrix (a Zarr array, a dask or NumPy array); a ratings "
            "group is read sparse: recompute it with sketch_svd"
        )
    return {}


UPDATE = Spec(
    "update",
    (
        RECOMPUTE,
        Param("layout", ("block",), "block", "Updates read chunk by chunk.", role="run"),
        CLIENT,
        STORAGE_OPTIONS,
        PROGRESS,
        TIMEOUT,
        MEMORY,
        OUT,
        OVERWRITE,
    ),
    _check_update,
)


def _listing(run: Run) -> tuple | None:
    """The input's chunk files: (url, stamps, file chunk shape, key prefix, key separator),
    listed after the input's fingerprint is taken (so the passes' own check that the
    input did not change covers the listing too); None for an input without files."""
    url = source_url(run.source)
    if url is None:
        return None
    from dlowrank.io.inventory import chunk_files

    run.engine.input_fingerprint  # noqa: B018 - taken first: the passes check it
    return (url, *chunk_files(url, getattr(run.source, "storage_options", None)))


def _kept_stamps(listing: tuple) -> dict:
    """What a result keeps of a listing: the stamps and the stored files' chunk shape
    (shards for a sharded array)."""
    _, stamps, file_chunks, _, _ = listing
    return {"stamps": stamps, "file_chunks": [int(c) for c in file_chunks[:2]]}


def take_stamps(run: Run) -> dict:
    """Each chunk file's stamp and the files' chunk shape, listed before the pass."""
    listing = _listing(run)
    return {"stamps": None} if listing is None else _kept_stamps(listing)


def keep_record(
    run: Run, rank: int, k: int, s: int, d: int, fro2: float, stamps: dict | None = None
) -> dict:
    """What a result keeps, besides its sketches, for an update: sizes, orientation, the
    covered shape (the input's orientation), the chunking, and each chunk file's stamp
    (``stamps``: :func:`take_stamps` before the pass)."""
    source = run.source
    return {
        "rank": rank,
        "k": k,
        "s": s,
        "d": d,
        "fro2": float(fro2),
        "transpose": bool(run.engine.transpose),
        "covered": [int(x) for x in source.shape],
        "chunks": [int(source.chunks[0][0]), int(source.chunks[1][0])],
        **(stamps or {"stamps": None}),
        "updates": 0,
    }


def update(
    result: Any,
    a: Any,
    *,
    recompute: bool = False,
    client: Any = None,
    storage_options: dict | None = None,
    progress: Any = None,
    timeout: float | None = None,
    memory: Any = None,
    out: Any = None,
    overwrite: bool = False,
) -> Any:
    """The single-pass result of the grown matrix ``a``, reading only its new entries.

    Parameters
    ----------
    result : SVDResult or a saved result's path or URL
        Made by ``sketch_svd(..., keep_sketch=True)`` (jobs keep sketches by default) or
        by an earlier update; it covers ``a``'s leading rows and columns.
    a : Zarr URL or path, zarr.Array, dask or NumPy array
        The grown matrix: the covered part unchanged, rows and/or columns appended, the
        same chunking.
    recompute : bool, default False
        When the covered part changed, the chunking differs, or the matrix turned from
        tall to wide: run the single pass over all of ``a`` (same seed and sizes) instead
        of refusing.
    out, overwrite
        Where to save the new result. A result given by its path is replaced there
        (atomically: readers see the old one or the new one) unless ``out`` says
        otherwise.
    client, storage_options, progress, timeout, memory
        As in :func:`dlowrank.sketch_svd`.

    Returns
    -------
    SVDResult
        Equal to ``sketch_svd(a, rank, seed=..., sketch_size=(k, s))`` to rounding, with
        its sketches; ``params["update"]`` records the shape covered before and now and
        the entries read. Nothing appended: the given result, unchanged (logged).
    """
    from dlowrank.results import SVDResult, load

    given_path = isinstance(result, (str, os.PathLike))
    if given_path:
        path = os.fspath(result)
        result = load(path, storage_options=storage_options)
        if out is None:
            out, overwrite = path, True
    if not isinstance(result, SVDResult) or not result.updatable:
        raise ResultError(
            "update needs a single-pass result that kept its sketches; this one "
            f"({getattr(result, 'algorithm', type(result).__name__)}) did not. Make it "
            "once with sketch_svd(a, rank, keep_sketch=True) (or a job, which keeps them)"
        )
    kept = result.params["sketch"]
    if isinstance(a, np.ndarray):  # in memory: cut as the result's input was
        import dask.array as da

        a = da.from_array(a, chunks=tuple(kept["chunks"]))
    run = Run(UPDATE, a, **{k: v for k, v in locals().items() if k in UPDATE.names})
    m1, n1 = (int(x) for x in run.source.shape)
    m0, n0 = kept["covered"]
    partial = _partial_marker(run.source)  # never read a half-written append, recompute or not
    if partial:
        run.engine.close()
        raise InputError(partial)
    problem = _cannot_extend(run, kept, (m0, n0), (m1, n1))
    if problem:
        if not recompute:
            run.engine.close()
            raise InputError(f"{problem}{HINT}")
        return _recompute(run, result, kept)
    if (m1, n1) == (m0, n0):
        try:
            _check_stamps(run, kept, (m0, n0), (m1, n1))  # no window: every file checked
        except CoveredChanged as exc:
            if not recompute:
                run.engine.close()
                raise InputError(f"{exc}{HINT}") from None
            return _recompute(run, result, kept)
        run.engine.close()
        logger.warning(
            "nothing appended: the input is %d x %d, as the result covers; the result is unchanged",
            m1,
            n1,
        )
        same = {"from": [m0, n0], "to": [m0, n0], "entries_read": 0, "fraction_read": 0.0}
        result = replace(result, params={**result.params, "update": same})
        if out is not None and not (given_path and os.fspath(out) == path):
            result.save(out, overwrite=overwrite, storage_options=storage_options)
        return result
    try:
        return _grow(run, result, kept, (m0, n0), (m1, n1))
    except CoveredChanged as exc:
        if not recompute:
            raise InputError(f"{exc}{HINT}") from None
        logger.warning("%s: recomputing", exc)
        return _recompute(run, result, kept)


class CoveredChanged(InputError):
    """The part of the input a result covers is not what it saw."""


def _cannot_extend(run: Run, kept: dict, old: tuple, new: tuple) -> str:
    """Why the result cannot be extended to the input, or ""."""
    if new[0] < old[0] or new[1] < old[1]:
        return (
            f"the input is {new[0]} x {new[1]}, smaller than the {old[0]} x {old[1]} the "
            "result covers: rows or columns were removed, not appended"
        )
    chunks = [int(run.source.chunks[0][0]), int(run.source.chunks[1][0])]
    if chunks != kept["chunks"]:
        return (
            f"the input's chunks are {tuple(chunks)}, the result was made on chunks "
            f"{tuple(kept['chunks'])}: the new entries cannot be read by whole chunks and the "
            "covered ones not checked; give the input in its former chunking"
        )
    if bool(run.engine.transpose) != kept["transpose"]:
        return (
            "the input turned from tall to wide (or back), so the single pass sketches the "
            "other side now"
        )
    return ""


#: The array attribute a producer sets to the shape it has finished writing.
COMPLETE_ATTR = "dlowrank_complete_shape"


def _partial_marker(source: Any) -> str:
    """A producer's append in progress: the array's complete marker (see :func:`append`)
    names a smaller shape than the array's."""
    array = getattr(source, "array", None)
    url = source_url(source)
    try:
        if array is None and url is not None:
            import zarr

            so = getattr(source, "storage_options", None)
            array = zarr.open_array(url, mode="r", **({"storage_options": so} if so else {}))
        done = None if array is None else array.attrs.get(COMPLETE_ATTR)
    except Exception:  # no attributes to read: no marker
        return ""
    if done is not None and [int(x) for x in done] != [int(x) for x in source.shape]:
        return (
            f"the input is being appended to: its shape is {tuple(source.shape)} but its "
            f"writer has completed {tuple(done)} ({COMPLETE_ATTR}); run the update once "
            "the append is complete"
        )
    return ""


def _recompute(run: Run, result: Any, kept: dict) -> Any:
    from dlowrank.streaming import sketch_svd

    run.engine.close()
    v = run.values
    return sketch_svd(
        run.a,
        kept["rank"],
        seed=parse_seed(result.seed),
        sketch_size=(kept["k"], kept["s"]),
        n_error_sketch=kept["d"],
        keep_sketch=True,
        client=v.get("client"),
        storage_options=v.get("storage_options"),
        progress=v.get("progress"),
        timeout=v.get("timeout"),
        memory=v.get("memory"),
        out=v.get("out"),
        overwrite=v.get("overwrite", False),
    )


def _tall(shape: tuple, transpose: bool) -> tuple:
    return (shape[1], shape[0]) if transpose else tuple(shape)


def _windows(old: tuple, new: tuple, chunks: tuple) -> list[tuple[tuple, tuple, tuple]]:
    """The windows to read (tall orientation): [(origin, shape, (check rows, check
    columns))]. The rows from the chunk row holding m0 on (every column); and, with new
    columns, the rows above that from the chunk column holding n0 on."""
    (m0, n0), (m1, n1), (cr, cc) = old, new, chunks
    rs = m0 if m1 == m0 else (m0 // cr) * cr
    cs = n0 if n1 == n0 else (n0 // cc) * cc
    out = []
    if m1 > rs:
        out.append(((rs, 0), (m1 - rs, n1), (rs < m0, cs < n0)))
    if n1 > n0 and rs > 0:
        out.append(((0, cs), (rs, n1 - cs), (False, cs < n0)))
    return out


def _grow(run: Run, result: Any, kept: dict, old_a: tuple, new_a: tuple) -> Any:
    engine = run.engine
    t = engine.transpose
    old, new = _tall(old_a, t), _tall(new_a, t)
    chunks = _tall(_alignment(kept), t)
    fresh = _check_stamps(run, kept, old_a, new_a)  # before any pass (None: no listing)
    k, s, d, rank = kept["k"], kept["s"], kept["d"], kept["rank"]
    seed = parse_seed(result.seed)
    key = _sketch.seed_key(seed)
    right = _sketch.right_tests(key, new[1], k, s)
    m1, n1 = new
    dy: list = [None] * len(engine.row_ranges)
    dx, de = np.zeros((k, n1)), np.zeros((d, n1))
    dz, dfro2 = np.zeros((s, s)), 0.0
    x0 = np.zeros((k, n1))
    y0_rows: list = []
    checked_cols = False
    engines, outs, read = [], [], 0  # kept alive: their scratch panels are read below
    for origin, shape, check in _windows(old, new, chunks):
        w = PassEngine(
            Window(run.source, _tall(origin, t), _tall(shape, t)),
            layout="block",
            client=engine.client,
            progress=run.values.get("progress"),
            timeout=run.values.get("timeout"),
            memory=run.values.get("memory"),
            fingerprint=engine.input_fingerprint,
            transpose=t,
        )
        engines.append(w)
        out = w.run(passkernels.grown_sketch, key, m1, right, k, d, old, check)
        outs.append(out)
        read += shape[0] * shape[1]
        c0 = origin[1]
        dx[:, c0:] += np.concatenate(out.cols["x"], axis=1)
        de[:, c0:] += np.concatenate(out.cols["e"], axis=1)
        dz += out.sums["z"]
        dfro2 += float(out.sums["f2"])
        if check[1]:
            x0[:, c0:] += np.concatenate(out.cols["x0"], axis=1)
            checked_cols = True
        first = _range_index(engine.row_ranges, origin[0])
        y = out.rows["y"]
        for j in range(len(w.row_ranges)):
            dy[first + j] = _item(y, j)
        if check[0]:
            y0_rows.append((origin[0], w.row_ranges, out.rows["y0"]))
    _check_covered(result, old, chunks, y0_rows, x0 if checked_cols else None, t)
    y_old = _reader(result.sketch_y)
    space = engine.space
    delta = Tall(space, refs=dy, base_width=k)
    y = delta.map(_with_old_rows, args=(y_old, old[0]), width=k, what="y")  # one tall copy
    x = dx.copy()
    x[:, : old[1]] += np.asarray(result.sketch_x)
    e = de.copy()
    e[:, : old[1]] += np.asarray(result.sketch_e)
    z = np.asarray(result.sketch_z) + dz
    state = _sketch.SketchState(y, x, z, e, kept["fro2"] + dfro2)
    f = _sketch.finish(state, rank, k, s, d, key)
    for w in engines:
        w.close()
    del outs
    engine.passes = 1  # every new entry was read once
    record = {
        **kept,
        "fro2": float(state.fro2),
        "covered": [int(x) for x in new_a],
        "updates": int(kept.get("updates", 0)) + 1,
    }
    record.update(fresh or {"stamps": None})  # an input without a listing: none to keep
    params = {
        **{k2: v for k2, v in result.params.items() if k2 not in ("update",)},
        "rel_error_interval": [float(x) for x in f.rel_error_interval],
        "shrink": f.shrink,
        "sketch": record,
        "update": {
            "from": [int(x) for x in old_a],
            "to": [int(x) for x in new_a],
            "entries_read": int(read),
            "fraction_read": read / float(m1 * n1),
        },
    }
    arrays = run.keep_sketch(state)
    run.params, run.seed = {}, seed
    return run.svd(
        f.u,
        f.s,
        f.vt,
        f.rel_error,
        error_kind="estimated",
        algorithm="sketch_svd",
        params=params,
        extra=arrays,
    )


def _range_index(ranges: tuple, start: int) -> int:
    for i, (r0, _) in enumerate(ranges):
        if r0 == start:
            return i
    raise ValueError(f"row {start} is not the start of a row range")


def _item(t: Any, j: int) -> Any:
    """Panel j of a pass's row output (an array, or a stored panel's reference)."""
    if isinstance(t, Tall):
        return t.panels[j] if t.panels is not None else t.refs[j]
    return t[j]


def _reader(y: Any) -> Any:
    """Y as tasks read it, by rows: the Zarr array behind a lazy factor (a stored result's,
    or a run's temporary copy), never the dask array itself (dask would compute it whole
    into every task's arguments)."""
    if isinstance(y, np.ndarray):
        return y
    from dlowrank.engine.tall import KeptArray

    z = bare_zarr(y)
    if z is not None:
        return z
    for value in dict(y.dask).values():
        value = getattr(value, "value", value)
        if isinstance(value, (KeptArray, zarr.Array)) and tuple(value.shape) == tuple(y.shape):
            return value
    return np.asarray(y)  # another lazy array: small by construction (in-memory results)


def _with_old_rows(i: int, span: tuple, delta: Any, y_old: Any, m0: int) -> np.ndarray:
    """Rows ``span`` of the grown Y: the stored Y's (zero below its m0 rows) plus the
    new entries' share ``delta`` (None where the windows read nothing)."""
    r0, r1 = span
    out = np.zeros((r1 - r0, y_old.shape[1]))
    if r0 < m0:
        out[: min(r1, m0) - r0] = np.asarray(y_old[r0 : min(r1, m0)])
    return out if delta is None else out + delta


def _check_covered(
    result: Any,
    old: tuple,
    chunks: tuple,
    y0_rows: list,
    x0: np.ndarray | None,
    transpose: bool = False,
) -> None:
    """The covered entries of the chunks read again (rewritten by the append) must project
    as the stored sketches recorded them (reported in the input's orientation)."""
    m0, n0 = old
    rows, cols = ("columns", "rows") if transpose else ("rows", "columns")
    for start, ranges, tall in y0_rows:
        parts = [
            np.asarray(resolve(_item(tall, j)))
            for j, (r0, _) in enumerate(ranges)
            if r0 < m0 - start
        ]
        got = np.concatenate(parts)[: m0 - start]
        want = np.asarray(result.sketch_y[start:m0])
        _compare(got, want, f"{rows} {start}-{m0 - 1}", start)
    cs = (n0 // chunks[1]) * chunks[1]
    if x0 is not None and cs < n0:
        want = np.asarray(result.sketch_x[:, cs:n0]).T
        _compare(x0[:, cs:n0].T, want, f"{cols} {cs}-{n0 - 1}", cs)


def _compare(got: np.ndarray, want: np.ndarray, where: str, start: int) -> None:
    scale = np.abs(got).max(axis=1) + np.abs(want).max(axis=1)
    bad = np.abs(got - want).max(axis=1) > CHECK_RTOL * scale
    if np.any(bad):
        first = int(np.argmax(bad))
        raise CoveredChanged(
            f"the covered part of the input changed: {where} were "
            f"rewritten by the append with other values (first: {start + first}); the "
            "sketches cannot be extended"
        )


def _alignment(kept: dict) -> list:
    """The chunk shape windows follow (input orientation): the stored files' (a shard of a
    sharded array), so that every file is either read whole or not at all."""
    return kept.get("file_chunks") or kept["chunks"]


def _check_stamps(run: Run, kept: dict, old_a: tuple, new_a: tuple) -> dict | None:
    """Every covered chunk file the update does not read keeps its stamp (one written
    since, where none was, counts as changed). Returns this listing's stamps to keep
    (None when the input has no listing)."""
    listing = _listing(run)
    if listing is None:
        return None
    url, stamps, chunk, prefix, sep = listing
    fresh = _kept_stamps(listing)
    if kept.get("stamps") is None:
        return fresh
    t = run.engine.transpose
    align = _tall(_alignment(kept), t)
    wins = [
        (_tall(o, t), _tall(sh, t))
        for o, sh, _ in _windows(_tall(old_a, t), _tall(new_a, t), align)
    ]
    old_keys = set(kept["stamps"])
    changed = []
    for key in sorted(old_keys | set(stamps)):
        idx = [int(x) for x in key[len(prefix) :].split(sep)]
        r0, c0 = idx[0] * chunk[0], idx[1] * chunk[1]
        r1, c1 = r0 + chunk[0], c0 + chunk[1]
        if r0 >= old_a[0] or c0 >= old_a[1]:
            continue  # not covered: new entries only
        inside = any(
            o[0] <= r0
            and min(r1, new_a[0]) <= o[0] + sh[0]
            and o[1] <= c0
            and min(c1, new_a[1]) <= o[1] + sh[1]
            for o, sh in wins
        )
        if not inside and stamps.get(key) != kept["stamps"].get(key):
            last_r, last_c = min(r1, old_a[0]) - 1, min(c1, old_a[1]) - 1
            changed.append(f"{key} (rows {r0}-{last_r}, columns {c0}-{last_c})")
    if changed:
        raise CoveredChanged(
            f"the covered part of {url} changed since the result was made: "
            f"{len(changed)} chunk file(s) differ in size or time, or were written since "
            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); the update "
            "would mix old and new data"
        )
    return fresh


def append(url: Any, block: Any, *, axis: int = 0, storage_options: dict | None = None) -> tuple:
    """Append ``block`` to the Zarr array at ``url`` as rows (``axis=0``) or columns, the
    way an update expects: the array's ``dlowrank_complete_shape`` attribute is set to
    the old shape first, then the array is resized and the new entries written, then the
    attribute is set to the new shape. An update that starts meanwhile sees the marker
    behind the shape and refuses to read a half-written append. Returns the new shape."""
    import zarr

    kwargs = {"storage_options": storage_options} if storage_options else {}
    arr = zarr.open_array(os.fspath(url), mode="r+", **kwargs)
    block = np.asarray(block)
    old = tuple(int(x) for x in arr.shape)
    other = old[1 - axis]
    if block.ndim != 2 or block.shape[1 - axis] != other:
        raise InputError(
            f"append: `block` must be 2-D with {other} {'columns' if axis == 0 else 'rows'} "
            f"to append along axis {axis} of a {old[0]} x {old[1]} array; got shape "
            f"{block.shape}"
        )
    arr.attrs[COMPLETE_ATTR] = list(old)
    new = (old[0] + block.shape[0], old[1]) if axis == 0 else (old[0], old[1] + block.shape[1])
    arr.resize(new)
    if axis == 0:
        arr[old[0] :, :] = block
    else:
        arr[:, old[1] :] = block
    arr.attrs[COMPLETE_ATTR] = list(new)
    return new
