"""Updates of a single-pass result when its matrix grows (dlowrank.update)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

import dlowrank
from dlowrank.errors import DlowrankWarning, InputError, ResultError, StorageError
from tests.conftest import counted_array

SEED = 7


def _matrix(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A matrix with a decaying spectrum (the single pass suits it: no warnings)."""
    rng = np.random.default_rng(seed)
    k = min(shape)
    return (rng.standard_normal((shape[0], k)) * 0.8 ** np.arange(k)) @ rng.standard_normal(
        (k, shape[1])
    )


def _store(path: str, a: np.ndarray, chunks: tuple[int, int]) -> str:
    z = zarr.create_array(path, shape=a.shape, chunks=chunks, dtype="f8")
    z[...] = a
    return path


def _fresh(path: str, r: dlowrank.SVDResult) -> dlowrank.SVDResult:
    """The single pass of the grown matrix from scratch, with the result's seed and sizes."""
    k, s = r.params["sketch_size"]
    return dlowrank.sketch_svd(path, r.rank, seed=SEED, sketch_size=(k, s))


def _rel_diff(a: dlowrank.SVDResult, b: dlowrank.SVDResult) -> float:
    da, db = a.to_dense(), b.to_dense()
    return float(np.abs(da - db).max() / np.abs(db).max())


@pytest.mark.parametrize(
    ("full", "start", "steps", "chunks"),
    [
        ((500, 120), (300, 120), [(50, 0)], (64, 32)),  # rows, mid-chunk
        ((500, 120), (300, 100), [(0, 20)], (64, 32)),  # columns
        ((500, 120), (300, 100), [(50, 10), (40, 0), (0, 10)], (64, 32)),  # both, in turn
        ((120, 500), (100, 300), [(10, 100), (10, 100)], (30, 50)),  # a wide matrix
        ((1000, 80), (640, 80), [(128, 0), (232, 0)], (64, 80)),  # chunk-aligned appends
    ],
)
def test_an_update_equals_the_single_pass_of_the_grown_matrix(tmp_path, full, start, steps, chunks):
    a = _matrix(full)
    path = _store(str(tmp_path / "a.zarr"), a[: start[0], : start[1]], chunks)
    r = dlowrank.sketch_svd(path, 4, seed=SEED, keep_sketch=True)
    m, n = start
    for dm, dn in steps:
        if dm:
            dlowrank.append(path, a[m : m + dm, :n], axis=0)
            m += dm
        if dn:
            dlowrank.append(path, a[:m, n : n + dn], axis=1)
            n += dn
        r = dlowrank.update(r, path)
        assert r.params["update"]["to"] == [m, n]
        assert r.params["sketch"]["covered"] == [m, n]
    fresh = _fresh(path, r)
    assert r.u.shape == (m, 4) and r.vt.shape == (4, n)
    assert _rel_diff(r, fresh) < 1e-10
    np.testing.assert_allclose(r.s, fresh.s, rtol=1e-10)
    assert r.rel_error == pytest.approx(fresh.rel_error, rel=1e-9)
    assert r.params["sketch"]["updates"] == len(steps)
    assert r.passes == 1 and r.algorithm == "sketch_svd"


def test_a_week_of_appends_reads_only_new_chunks_then_a_recompute_agrees(tmp_path):
    """Seven nightly row appends, each update through a store that counts chunk reads,
    the result saved in place every night; then the weekly recompute."""
    a = _matrix((1000, 60), seed=3)
    rows, cols = 50, 30
    path = _store(str(tmp_path / "a.zarr"), a[:300], (rows, cols))
    out = str(tmp_path / "r.zarr")
    dlowrank.sketch_svd(path, 3, seed=SEED, keep_sketch=True, out=out)
    m = 300
    for night in range(7):
        add = 37 + 11 * night  # not a multiple of the chunk rows
        dlowrank.append(path, a[m : m + add])
        arr, store = counted_array(path)
        r = dlowrank.update(out, arr)
        first = (m // rows) * rows  # the chunk row holding the first new row
        read_rows = {int(key.split("/")[1]) for key in store.reads}
        assert read_rows == set(range(first // rows, -(-(m + add) // rows))), night
        assert max(store.reads.values()) == 1  # each chunk read once
        m += add
        assert dlowrank.load(out).params["sketch"]["covered"] == [m, 60]
    assert r.params["sketch"]["updates"] == 7
    weekly = dlowrank.sketch_svd(path, 3, seed=SEED, sketch_size=tuple(r.params["sketch_size"]))
    assert _rel_diff(dlowrank.load(out), weekly) < 1e-10


def test_an_update_refuses_what_it_cannot_extend_and_loses_nothing(tmp_path):
    a = _matrix((400, 100))
    path = _store(str(tmp_path / "a.zarr"), a[:300], (64, 32))
    out = str(tmp_path / "r.zarr")
    r = dlowrank.sketch_svd(path, 4, seed=SEED, keep_sketch=True, out=out)

    same = dlowrank.update(r, path)  # nothing appended: the result, unchanged
    assert same.params["update"]["entries_read"] == 0
    np.testing.assert_array_equal(same.s, r.s)

    # a producer's append in progress: resized, chunks not written yet (refused as missing
    # chunks), then written but not marked complete (refused by the marker, even with
    # recompute, which would read them)
    z = zarr.open_array(path, mode="r+")
    z.attrs[dlowrank.updates.COMPLETE_ATTR] = [300, 100]
    z.resize((350, 100))
    with pytest.raises(StorageError, match="lacks 4 of 24 chunk files"):
        dlowrank.update(out, path)
    z[300:] = a[300:350]
    with pytest.raises(InputError, match="being appended to.*complete"):
        dlowrank.update(out, path, recompute=True)
    z.attrs[dlowrank.updates.COMPLETE_ATTR] = [350, 100]

    # the append rewrote a covered entry of the chunk it extended: found by projection
    z[290, 5] += 1.0
    with pytest.raises(InputError, match=r"rows 256-299.*first: 290.*recompute"):
        dlowrank.update(out, path)
    z[290, 5] -= 1.0

    # a covered chunk the update would not read changed: found by its stamp
    z[0, 0] += 1.0
    with pytest.raises(InputError, match=r"c/0/0 \(rows 0-63, columns 0-31\).*recompute"):
        dlowrank.update(out, path)
    assert dlowrank.load(out).params["sketch"]["covered"] == [300, 100]  # kept as it was
    redone = dlowrank.update(out, path, recompute=True)
    assert "update" not in redone.params and redone.params["sketch"]["covered"] == [350, 100]
    assert _rel_diff(redone, _fresh(path, redone)) < 1e-12

    with pytest.raises(ResultError, match="keep_sketch=True"):
        dlowrank.update(dlowrank.sketch_svd(path, 4), path)
    smaller = _store(str(tmp_path / "b.zarr"), a[:200], (64, 32))
    with pytest.raises(InputError, match="smaller than the 350 x 100"):
        dlowrank.update(out, smaller)
    rechunked = _store(str(tmp_path / "c.zarr"), a, (50, 32))
    with pytest.raises(InputError, match=r"chunks are \(50, 32\)"):
        dlowrank.update(out, rechunked)


def test_update_on_the_command_line_replaces_the_result_in_place(tmp_path):
    a = _matrix((700, 90), seed=5)
    path = _store(str(tmp_path / "a.zarr"), a[:500], (100, 90))
    out = str(tmp_path / "r.zarr")
    cli = [sys.executable, "-m", "dlowrank"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [*cli, "svd", path, "--rank", "3", "--passes", "1", "--keep-sketch", "--seed", "7"]
        + ["--out", out, "--workers", "0"],
        check=True,
        capture_output=True,
        env=env,
    )
    dlowrank.append(path, a[500:])
    done = subprocess.run(
        [*cli, "update", out, path, "--workers", "2", "--json"],  # on a LocalCluster
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["update"]["from"] == [500, 90] and summary["update"]["to"] == [700, 90]
    assert summary["update"]["fraction_read"] == pytest.approx(200 / 700)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DlowrankWarning)
        fresh = dlowrank.sketch_svd(path, 3, seed=SEED)
    assert _rel_diff(dlowrank.load(out), fresh) < 1e-10


def test_a_job_with_update_extends_its_result_each_night_and_recomputes_on_demand(tmp_path):
    from dlowrank.app.jobs import JobConfig, run_job

    a = _matrix((600, 70), seed=9)
    path = _store(str(tmp_path / "a.zarr"), a[:400], (100, 35))
    out = str(tmp_path / "r.zarr")
    job = {"command": "svd", "input": path, "out": out, "rank": 3, "seed": SEED}
    nightly = JobConfig.from_dict({**job, "update": True, "workers": 0})
    assert run_job(nightly).status == "done"  # the first night computes it
    dlowrank.append(path, a[400:530])
    done = run_job(nightly)
    assert done.summary["update"]["from"] == [400, 70] and done.summary["passes"] == 1
    assert run_job(nightly).status == "already done"  # nothing appended since
    r = dlowrank.load(out)
    assert r.params["sketch"]["updates"] == 1 and _rel_diff(r, _fresh(path, r)) < 1e-10
    weekly = JobConfig.from_dict({**job, "update": True, "recompute": True, "workers": 0})
    assert run_job(weekly).status == "done"
    assert dlowrank.load(out).params["sketch"]["updates"] == 0
    with pytest.raises(dlowrank.errors.ParameterError, match="update implies 1"):
        run_job(JobConfig.from_dict({**job, "update": True, "passes": 2}))


def test_a_warm_start_reaches_the_cold_three_pass_error_in_fewer_passes(tmp_path):
    t = dlowrank.make_matrix((4400, 300), 100, decay=0.9, noise=1e-3, chunks=(4400, 300), seed=1)
    a = t.array.compute()
    before = dlowrank.randomized_svd(a[:4000], 10, passes=3, seed=0)
    cold = dlowrank.randomized_svd(a, 10, passes=3, seed=1)
    one = dlowrank.randomized_svd(a, 10, passes=1, start=before, seed=1)
    assert (cold.passes, one.passes) == (3, 1)
    assert one.rel_error <= cold.rel_error * 1.001
    assert one.params["start"] == {"from": None, "shape": [4000, 300]}
    path = str(tmp_path / "before.zarr")
    before.save(path)
    two = dlowrank.randomized_svd(a, 10, passes=2, start=path, seed=1)  # by its path
    assert two.passes == 2 and two.rel_error <= one.rel_error * (1 + 1e-9)
    assert two.params["start"]["from"] == path
    # new columns: the start covers the old ones, the Gaussian columns reach the others
    wider = dlowrank.randomized_svd(a[:, :270], 10, passes=3, seed=0)
    grown = dlowrank.randomized_svd(a, 10, passes=2, start=wider, seed=1)
    assert grown.rel_error <= cold.rel_error * 1.001
    with pytest.raises(dlowrank.errors.ParameterError, match="single-pass sketch"):
        dlowrank.randomized_svd(a, 10, passes=1)
    with pytest.raises(dlowrank.errors.ParameterError, match="larger than this 4000 x 300"):
        dlowrank.randomized_svd(a[:4000], 10, start=cold)


def test_what_a_review_found_stays_fixed(tmp_path, monkeypatch):
    import dask

    from dlowrank.algorithms import sketch as _sketch
    from dlowrank.app.jobs import JobConfig, run_job

    a = _matrix((400, 100), seed=4)
    # stamps are those of the data the pass read: a covered chunk rewritten after the pass
    # (here, while the factors are made) is found by the next update
    path = _store(str(tmp_path / "a.zarr"), a[:300], (64, 32))
    finish = _sketch.finish

    def rewrite_then_finish(*args, **kw):
        z = zarr.open_array(path, mode="r+")
        z[0, 0] += 5.0
        return finish(*args, **kw)

    monkeypatch.setattr(_sketch, "finish", rewrite_then_finish)
    r = dlowrank.sketch_svd(path, 4, seed=SEED, keep_sketch=True)
    monkeypatch.setattr(_sketch, "finish", finish)
    dlowrank.append(path, a[300:350])
    with pytest.raises(InputError, match="c/0/0"):
        dlowrank.update(r, path)
    with pytest.raises(InputError, match="c/0/0"):  # nothing appended checks the files too
        dlowrank.update(r, _store(str(tmp_path / "same.zarr"), a[:300], (64, 32)))

    # a covered chunk absent when the result was made (all fill value) and written since
    sparse = str(tmp_path / "s.zarr")
    z = zarr.create_array(sparse, shape=(300, 100), chunks=(64, 32), dtype="f8")
    z[64:] = a[64:300]
    with dask.config.set({"dlowrank.allow-missing-chunks": True}):
        r = dlowrank.sketch_svd(sparse, 4, seed=SEED, keep_sketch=True)
        z[:64, :32] = 1.0
        dlowrank.append(sparse, a[300:350])
        with pytest.raises(InputError, match=r"written since \(c/0/0"):
            dlowrank.update(r, sparse)

    # tall quantities in scratch, rows and columns at once, chained without saving
    with dask.config.set({"dlowrank.tall-memory": 1000}):
        grow = _store(str(tmp_path / "g.zarr"), a[:300, :90], (64, 32))
        r = dlowrank.sketch_svd(grow, 4, seed=SEED, keep_sketch=True)
        for rows, cols in ((330, 95), (400, 100)):
            dlowrank.append(grow, a[r.u.shape[0] : rows, : r.vt.shape[1]], axis=0)
            dlowrank.append(grow, a[:rows, r.vt.shape[1] : cols], axis=1)
            r = dlowrank.update(r, grow)
        assert _rel_diff(r, _fresh(grow, r)) < 1e-10

    # a sharded array: windows follow the shards (the stored files)
    shard = str(tmp_path / "sh.zarr")
    z = zarr.create_array(shard, shape=(300, 100), chunks=(32, 50), shards=(64, 100), dtype="f8")
    z[...] = a[:300]
    r = dlowrank.sketch_svd(shard, 4, seed=SEED, keep_sketch=True)
    dlowrank.append(shard, a[300:])
    assert _rel_diff(dlowrank.update(r, shard), _fresh(shard, r)) < 1e-10

    # in memory: cut as before
    r = dlowrank.sketch_svd(da_from(a[:300]), 4, seed=SEED, keep_sketch=True)
    assert dlowrank.update(r, a).u.shape == (400, 4)

    # an update job over a result that kept no sketches computes one and replaces it
    job = {"command": "svd", "input": path, "out": str(tmp_path / "r.zarr"), "rank": 4}
    assert run_job(JobConfig.from_dict({**job, "workers": 0})).status == "done"
    assert run_job(JobConfig.from_dict({**job, "update": True, "workers": 0})).status == "done"
    assert dlowrank.load(job["out"]).updatable
    with pytest.raises(dlowrank.errors.ParameterError, match="fixed-rank"):
        dlowrank.randomized_svd(a, max_error=0.5, passes=1, start=r)


def da_from(x: np.ndarray):
    import dask.array as da

    return da.from_array(x, chunks=(64, 32))
