"""Tall quantities (Y, Q, U) stay as row panels: in memory or in scratch Zarr, never
gathered; results hold large factors lazily; resume reads scratch panels back."""

from __future__ import annotations

import glob
import os

import dask
import dask.array as da
import numpy as np
import pytest

import dlowrank
from dlowrank.engine import passes
from dlowrank.errors import OutputExistsError, ParameterError

#: Force the scratch path: every tall quantity and every result factor goes to Zarr.
SCRATCH = {"dlowrank.tall-memory": 0, "dlowrank.factor-memory": 0}


@pytest.fixture(scope="module")
def tall():
    return dlowrank.make_matrix((3000, 200), 20, decay=0.8, seed=0, chunks=(500, 200))


@pytest.fixture(scope="module")
def wide():
    return dlowrank.make_matrix((200, 3000), 20, decay=0.8, seed=0, chunks=(200, 500))


CALLS = [
    pytest.param(dlowrank.randomized_svd, {}, id="rsvd-panel"),
    pytest.param(dlowrank.randomized_svd, {"layout": "block"}, id="rsvd-block"),
    pytest.param(dlowrank.sketch_svd, {}, id="sketch"),
]


@pytest.mark.parametrize("shape", ["tall", "wide"])
@pytest.mark.parametrize(("call", "kw"), CALLS)
def test_scratch_path_equals_the_in_memory_path(call, kw, shape, request):
    a = request.getfixturevalue(shape).array
    ref = call(a, 5, seed=1, **kw)
    with dask.config.set(SCRATCH):
        r = call(a, 5, seed=1, **kw)
    big = r.u if shape == "tall" else r.vt
    assert isinstance(big, da.Array)  # the factor above the limit comes back lazily
    scale = ref.s[0]
    np.testing.assert_allclose(np.asarray(r.u), ref.u, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(r.vt), ref.vt, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.s, ref.s, rtol=0, atol=1e-10 * scale)
    assert abs(r.rel_error - ref.rel_error) <= 1e-10
    u = np.asarray(r.u)
    # the sign convention holds on the lazy factor: each column's largest entry is > 0
    assert np.all(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])] > 0)
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)


def test_a_lazy_factor_keeps_its_folder_while_it_lives_and_no_scratch_is_left(tall, tmp_path):
    with dask.config.set({**SCRATCH, "temporary-directory": str(tmp_path)}):
        r = dlowrank.randomized_svd(tall.array, 5, seed=1)
        u = r.u
    # the run's scratch (Y, Q) is gone; only the factor's own folder is left
    assert glob.glob(str(tmp_path / "dlowrank-scratch-*")) == []
    assert len(glob.glob(str(tmp_path / "dlowrank-factor-*"))) == 1
    del r
    assert np.asarray(u).shape == (3000, 5)  # still readable: the array holds its folder
    del u
    import gc

    gc.collect()
    assert glob.glob(str(tmp_path / "dlowrank-factor-*")) == []


def test_save_copies_a_lazy_factor_and_load_returns_it_lazily(tall, tmp_path):
    ref = dlowrank.randomized_svd(tall.array, 5, seed=1)
    ref.save(tmp_path / "ref.zarr")
    with dask.config.set(SCRATCH):
        r = dlowrank.randomized_svd(tall.array, 5, seed=1)
        r.save(tmp_path / "r.zarr")
        back = dlowrank.load(tmp_path / "r.zarr")
    assert isinstance(back.u, da.Array)
    np.testing.assert_array_equal(np.asarray(back.u), ref.u)
    # the same bytes: the lazy factor's checksum, by blocks (hashed by the tasks that
    # copied them), holds for the in-memory factor too
    import zarr

    from dlowrank.errors import ResultError
    from dlowrank.results import verify

    sums = [
        zarr.open_group(str(tmp_path / name)).attrs["dlowrank"]["checksums"]
        for name in ("ref.zarr", "r.zarr")
    ]
    assert sums[1]["u"].startswith("blocks:500,5:") and not sums[0]["u"].startswith("blocks:")
    assert verify(ref.u, sums[1]["u"]) and verify(back.u, sums[1]["u"])
    assert sums[0]["vt"] == sums[1]["vt"] and sums[0]["s"] == sums[1]["s"]
    assert isinstance(dlowrank.load(tmp_path / "r.zarr").u, np.ndarray)  # default limit
    # one changed entry in one block of the stored factor: load refuses it
    group = zarr.open_group(str(tmp_path / "r.zarr"))
    stored = zarr.open_array(str(tmp_path / "r.zarr" / group.attrs["dlowrank"]["current"] / "u"))
    stored[2500, 3] = stored[2500, 3] + 1e-3
    with dask.config.set(SCRATCH), pytest.raises(ResultError, match="u do not match"):
        dlowrank.load(tmp_path / "r.zarr")


def test_out_saves_the_result_as_it_is_made_and_refuses_a_bad_output_first(tall, tmp_path):
    ref = dlowrank.randomized_svd(tall.array, 5, seed=1)
    out = tmp_path / "r.zarr"
    with dask.config.set({**SCRATCH, "temporary-directory": str(tmp_path)}):
        r = dlowrank.randomized_svd(tall.array, 5, seed=1, out=out)
        f = dlowrank.factorize(tall.array, 3, max_iter=2, out=tmp_path / "f.zarr")
    # the returned factor reads the published version: no temporary copy is left
    assert isinstance(r.u, da.Array) and r.u.name.startswith("from-zarr")
    assert glob.glob(str(tmp_path / "dlowrank-*")) == []
    back = dlowrank.load(out)
    np.testing.assert_array_equal(np.asarray(r.u), ref.u)
    np.testing.assert_array_equal(back.u, ref.u)
    assert back.rel_error == r.rel_error and dlowrank.load(tmp_path / "f.zarr").n_iter == f.n_iter
    assert 0 < r.peak_memory_mb == back.peak_memory_mb  # the run's, recorded with it
    events = []
    with pytest.raises(OutputExistsError):  # before any pass
        dlowrank.randomized_svd(tall.array, 5, out=out, progress=events.append)
    assert events == []
    again = dlowrank.randomized_svd(tall.array, 4, seed=1, out=out, overwrite=True)
    assert dlowrank.load(out).rank == 4 == again.rank
    with pytest.raises(ParameterError, match="`out` must be a path or URL"):
        dlowrank.randomized_svd(tall.array, 5, out=3)


def test_no_m_row_array_is_built_in_the_scratch_path(tmp_path, monkeypatch):
    """Every task result, every array the panel operations return and every
    concatenation is checked: none has the m rows of A (here 9000; row ranges of 1000;
    the test matrices of a chunk, made from canonical panels, are only its rows)."""
    from dask.callbacks import Callback

    from dlowrank.engine import tall as tall_module

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (9000, 50), 20, decay=0.8, seed=0, chunks=(1000, 50))
    m = 9000
    seen = []

    def note(value):
        if isinstance(value, dict):
            for v in value.values():
                note(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                note(v)
        elif isinstance(value, np.ndarray) and value.ndim == 2:
            seen.append(value.shape[0])

    class Results(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            note(result)

    real_concatenate = np.concatenate

    def concatenate(arrays, *args, **kwargs):
        out = real_concatenate(arrays, *args, **kwargs)
        note(out)
        return out

    monkeypatch.setattr(np, "concatenate", concatenate)
    monkeypatch.setattr(tall_module.np, "concatenate", concatenate)
    with dask.config.set(SCRATCH), Results():
        r = dlowrank.randomized_svd(path, 5, seed=1, layout="block")
        s = dlowrank.sketch_svd(path, 5, seed=1)
    assert seen and max(seen) <= 1000 < m
    assert isinstance(r.u, da.Array) and isinstance(s.u, da.Array)


def test_a_killed_run_resumes_from_its_scratch_panels(tall, tmp_path):
    ckpt = tmp_path / "ckpt"
    ref = dlowrank.randomized_svd(tall.array, 5, seed=1, layout="block", n_power_iter=1)

    def stop_after_pass_3(event):
        if event.stage == "done" and event.index == 3:
            raise OSError("the job was stopped")

    with dask.config.set(SCRATCH):
        with pytest.raises(OSError, match="stopped"):
            dlowrank.randomized_svd(
                tall.array,
                5,
                seed=1,
                layout="block",
                n_power_iter=1,
                checkpoint=ckpt,
                progress=stop_after_pass_3,
            )
        # passes 1 and 3 computed Y = A X: their panels are in the checkpoint's folder
        assert len(glob.glob(str(ckpt / "tall-0001-y" / "p*"))) == 6
        assert len(glob.glob(str(ckpt / "tall-0003-y" / "p*"))) == 6
        r = dlowrank.randomized_svd(
            tall.array, 5, seed=1, layout="block", n_power_iter=1, checkpoint=ckpt
        )
    assert r.restored_passes == 3 and r.passes == 4
    np.testing.assert_allclose(np.asarray(r.u), ref.u, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.s, ref.s, rtol=1e-12)
    # the scratch of the finished run (its Q) is gone; the passes' panels stay for reuse
    assert not [p for p in os.listdir(ckpt) if p.startswith("tall-x")]


def test_a_checkpoint_whose_scratch_panels_are_gone_reads_the_pass_again(tall, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    with dask.config.set(SCRATCH):
        first = dlowrank.randomized_svd(tall.array, 5, seed=1, checkpoint=ckpt)
        shutil.rmtree(ckpt / "tall-0002-y")
        again = dlowrank.randomized_svd(tall.array, 5, seed=1, checkpoint=ckpt)
    assert again.restored_passes == 1  # pass 2 (Y) was read again
    np.testing.assert_array_equal(np.asarray(again.u), np.asarray(first.u))


def test_pass_outputs_report_where_their_tall_panels_live(tall):
    from dlowrank.io.source import open_source
    from dlowrank.kernels import passkernels

    x = np.ones((200, 3))
    for limit, in_memory in [(None, True), (0, False)]:
        with dask.config.set({"dlowrank.tall-memory": limit}):
            engine = passes.PassEngine(open_source(tall.array), "block")
            y = engine.run(passkernels.apply_block, x).rows["y"]
            assert y.in_memory is in_memory and y.shape == (3000, 3)
            np.testing.assert_allclose(y.to_numpy(), np.asarray(tall.array) @ x, rtol=1e-12)
            engine.close()


def _nonnegative(t):
    return abs(t.array)


def _with_missing(t):
    a = np.asarray(t.array).copy()
    a[np.random.default_rng(0).random(a.shape) < 0.1] = np.nan
    return da.from_array(a, chunks=t.array.chunks)


FACTOR_CALLS = [
    pytest.param(dlowrank.factorize, dict(weight_decay=0.1, max_iter=4), None, id="als"),
    pytest.param(
        dlowrank.factorize, dict(weight_decay=0.1, max_iter=8, solver="gd"), None, id="gd"
    ),
    pytest.param(
        dlowrank.factorize,
        dict(weight_decay=0.1, max_iter=3, missing="nan"),
        _with_missing,
        id="als-missing",
    ),
    pytest.param(dlowrank.nmf, dict(max_iter=4), _nonnegative, id="nmf"),
    pytest.param(dlowrank.nmf, dict(max_iter=4, init="random"), _nonnegative, id="nmf-random"),
]


@pytest.mark.parametrize("shape", ["tall", "wide"])
@pytest.mark.parametrize(("call", "kw", "make"), FACTOR_CALLS)
def test_factorizations_keep_the_row_factor_in_scratch_and_agree(call, kw, make, shape, request):
    t = request.getfixturevalue(shape)
    a = make(t) if make is not None else t.array
    ref = call(a, 4, seed=1, **kw)
    with dask.config.set(SCRATCH):
        r = call(a, 4, seed=1, **kw)
    big = r.u if shape == "tall" else r.v
    assert isinstance(big, da.Array)
    for x, y in ((r.u, ref.u), (r.v, ref.v)):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=0, atol=1e-9 * np.abs(y).max())
    np.testing.assert_allclose(r.loss, ref.loss, rtol=1e-9)
    assert r.rel_error == pytest.approx(ref.rel_error, rel=1e-9)


def test_canonicalize_predict_and_contributions_work_on_lazy_factors(tall):
    ref = dlowrank.factorize(tall.array, 4, weight_decay=0.1, max_iter=3, seed=1)
    with dask.config.set(SCRATCH):
        r = dlowrank.factorize(tall.array, 4, weight_decay=0.1, max_iter=3, seed=1)
    assert isinstance(r.u, da.Array)
    cu, cv = dlowrank.canonicalize(r.u, r.v)
    assert isinstance(cu, da.Array)  # still lazy: never gathered
    eu, ev = dlowrank.canonicalize(ref.u, ref.v)
    np.testing.assert_allclose(np.asarray(cu), eu, atol=1e-9 * np.abs(eu).max())
    np.testing.assert_allclose(cv, ev, atol=1e-9 * np.abs(ev).max())
    rows, cols = [0, 2999, 17], [5, 0, 199]
    np.testing.assert_allclose(
        dlowrank.predict(r, rows, cols), dlowrank.predict(ref, rows, cols), rtol=1e-9
    )
    got, want = dlowrank.contributions(r, 2999, 5), dlowrank.contributions(ref, 2999, 5)
    assert [c for c, _ in got] == [c for c, _ in want]
    np.testing.assert_allclose([x for _, x in got], [x for _, x in want], rtol=1e-9)


def test_scratch_may_live_under_a_url_every_worker_reaches(tall):
    """dask config ``dlowrank.scratch``: an fsspec URL (here the in-process memory
    filesystem, standing in for an object-store prefix); the run's panels are removed
    after it, the result's factor with the result."""
    import fsspec

    ref = dlowrank.randomized_svd(tall.array, 5, seed=1, layout="block")
    fs = fsspec.filesystem("memory")
    with dask.config.set({**SCRATCH, "dlowrank.scratch": "memory://dlr-scratch"}):
        seen = []
        r = dlowrank.randomized_svd(
            tall.array,
            5,
            seed=1,
            layout="block",
            progress=lambda e: seen.append(fs.ls("/dlr-scratch")) if e.stage == "done" else None,
        )
    assert seen and seen[-1]  # the passes' panels were there during the run
    np.testing.assert_allclose(np.asarray(r.u), ref.u, atol=1e-10)
    # after the run only the result's factor is there, and it goes with the result
    assert [p["name"].split("/")[-1][:16] for p in fs.ls("/dlr-scratch")] == ["dlowrank-factor-"]
    del r
    import gc

    gc.collect()
    assert not fs.exists("/dlr-scratch") or fs.ls("/dlr-scratch") == []


def test_separable_kernels_run_in_row_slabs_with_the_same_result(tall, monkeypatch):
    """A dense piece is worked in row slabs (small float64 temporaries): same result."""
    calls = dict(r=dlowrank.randomized_svd, s=dlowrank.sketch_svd)
    ref = {k: f(tall.array, 5, seed=1) for k, f in calls.items()}
    joined = []
    real_add = passes._Joined.add
    monkeypatch.setattr(passes, "SLAB_BYTES", 8 * 200 * 64)  # 64-row slabs of 500-row pieces

    def add(self, part, s0, s1):
        joined.append(s1 - s0)
        real_add(self, part, s0, s1)

    monkeypatch.setattr(passes._Joined, "add", add)
    for key, f in calls.items():
        r = f(tall.array, 5, seed=1)
        np.testing.assert_allclose(r.s, ref[key].s, rtol=1e-12)
        np.testing.assert_allclose(r.u, ref[key].u, atol=1e-10)
        assert r.rel_error == pytest.approx(ref[key].rel_error, rel=1e-10)
    assert joined and max(joined) == 64


@pytest.mark.parametrize("call", ["factorize", "randomized_svd"])
def test_a_sparse_ratings_input_takes_the_same_scratch_path(tmp_path, call):
    from dlowrank.io.ratings import write_ratings

    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((1500, 4)), rng.standard_normal((300, 4))
    rows, cols = np.nonzero(rng.random((1500, 300)) < 0.15)
    vals = np.einsum("tk,tk->t", u[rows], v[cols])
    path = str(tmp_path / "r.zarr")
    write_ratings(path, rows, cols, vals, shape=(1500, 300))
    f = getattr(dlowrank, call)
    kw = {"weight_decay": 1.0, "max_iter": 5} if call == "factorize" else {}
    ref = f(path, 4, seed=0, **kw)
    with dask.config.set(SCRATCH):
        r = f(path, 4, seed=0, **kw)
    assert isinstance(r.u, da.Array)
    np.testing.assert_allclose(np.asarray(r.u), ref.u, atol=1e-10 * np.abs(ref.u).max())
    assert r.rel_error == pytest.approx(ref.rel_error, rel=1e-10)


def test_panel_tasks_work_in_row_slabs_with_the_same_result(tall, monkeypatch):
    """Scratch panels are worked in slabs of SLAB_ROWS rows (here 64 of a 500-row panel):
    reductions, maps, the factor's writing and its sign convention give the same result."""
    from dlowrank.engine import tall as tall_module

    a = tall.array
    calls = [
        lambda: dlowrank.randomized_svd(a, 5, seed=1),
        lambda: dlowrank.sketch_svd(a, 5, seed=1),
        lambda: dlowrank.factorize(a, 4, weight_decay=0.1, max_iter=6, solver="gd", seed=1),
        lambda: dlowrank.nmf(abs(a), 4, max_iter=3, seed=1),
    ]
    refs = [call() for call in calls]
    monkeypatch.setattr(tall_module, "SLAB_ROWS", 64)
    with dask.config.set(SCRATCH):
        for call, ref in zip(calls, refs, strict=True):
            r = call()
            np.testing.assert_allclose(np.asarray(r.u), ref.u, atol=1e-9 * np.abs(ref.u).max())
            assert r.rel_error == pytest.approx(ref.rel_error, rel=1e-9)


def test_a_folder_named_like_scratch_that_dlowrank_did_not_write_is_never_removed(tall, tmp_path):
    """Without checkpoint.json a tall-* folder is someone else's: the checkpoint is refused
    and nothing is touched; in a checkpoint, only folders named as dlowrank names its
    scratch are removed with it."""
    from dlowrank.errors import UnsafeOutputError
    from dlowrank.io.checkpoint import Checkpoint

    theirs = tmp_path / "ckpt" / "tall-data"
    theirs.mkdir(parents=True)
    (theirs / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeOutputError, match="tall-data"):
        dlowrank.randomized_svd(tall.array, 5, seed=1, checkpoint=tmp_path / "ckpt")
    assert (theirs / "keep.txt").read_text() == "mine"

    ckpt = tmp_path / "ours"
    with dask.config.set(SCRATCH):
        dlowrank.randomized_svd(tall.array, 5, seed=1, checkpoint=ckpt)
    (ckpt / "tall-notes").mkdir()
    assert (ckpt / "tall-0002-y").is_dir()
    Checkpoint(str(ckpt), {}).remove()
    assert sorted(os.listdir(ckpt)) == ["tall-notes"]
