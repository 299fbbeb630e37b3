"""Pass counting on a real Zarr store: every chunk is read once per pass, no more."""

from __future__ import annotations

import numpy as np
import pytest

import dlowrank
from dlowrank.errors import InputError
from tests.conftest import counted_array


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("passes") / "a.zarr")
    # noise keeps the sketch well conditioned, so no extra projection pass is needed
    dlowrank.generate(path, (600, 150), 40, noise=1e-3, chunks=(100, 50), seed=0)
    return path


def _reads_per_chunk(store) -> set[int]:
    assert len(store.reads) == 18  # 6 x 3 chunks, each read at least once
    return set(store.reads.values())


@pytest.mark.parametrize("q", [0, 1, 2])
@pytest.mark.parametrize("layout", ["panel", "auto"])
def test_rsvd_reads_each_chunk_q_plus_one_times(stored, q, layout):
    arr, store = counted_array(stored)
    r = dlowrank.randomized_svd(arr, 10, n_power_iter=q, seed=1, layout=layout)
    assert r.passes == q + 1
    assert _reads_per_chunk(store) == {q + 1}


def test_rsvd_block_layout_reads_each_chunk_two_q_plus_two_times(stored):
    arr, store = counted_array(stored)
    r = dlowrank.randomized_svd(arr, 10, n_power_iter=2, seed=1, layout="block")
    assert r.passes == 6
    assert _reads_per_chunk(store) == {6}


@pytest.mark.parametrize("layout", ["panel", "block"])
def test_sketch_reads_each_chunk_exactly_once(stored, layout):
    arr, store = counted_array(stored)
    r = dlowrank.sketch_svd(arr, 10, seed=1, layout=layout)
    assert r.passes == 1
    assert _reads_per_chunk(store) == {1}


def test_wide_matrix_is_read_q_plus_one_times_by_column_panels(tmp_path):
    path = str(tmp_path / "w.zarr")
    dlowrank.generate(path, (150, 600), 40, noise=1e-3, chunks=(50, 100), seed=0)
    arr, store = counted_array(path)
    r = dlowrank.randomized_svd(arr, 10, n_power_iter=2, seed=1)
    assert r.passes == 3 and r.u.shape == (150, 10) and r.vt.shape == (10, 600)
    assert _reads_per_chunk(store) == {3}


def test_exactly_low_rank_input_keeps_its_resolved_directions_or_takes_one_more_pass(tmp_path):
    # rank 5 < sketch width 15: R of the range sketch is singular. Q^T A is recovered
    # from A^T Y on the directions R resolves (at least the rank asked); asked for more
    # than A's rank, it is read explicitly in one more pass (see algorithms/rsvd.py).
    path = str(tmp_path / "lr.zarr")
    dlowrank.generate(path, (300, 100), 5, chunks=(100, 100), seed=0)
    arr, store = counted_array(path)
    r = dlowrank.randomized_svd(arr, 5, n_power_iter=1, seed=1)
    assert r.passes == 2 and set(store.reads.values()) == {2}
    np.testing.assert_allclose(r.s, 0.9 ** np.arange(5), rtol=1e-12)
    assert r.rel_error < 1e-7
    np.testing.assert_allclose(r.u.T @ r.u, np.eye(5), atol=1e-12)
    a = np.asarray(dlowrank.open_matrix(path))
    np.testing.assert_allclose(r.to_dense(), a, atol=1e-12)
    arr, store = counted_array(path)
    r = dlowrank.randomized_svd(arr, 8, n_power_iter=1, seed=1)  # more than A's rank
    assert r.passes == 3 and set(store.reads.values()) == {3}
    np.testing.assert_allclose(r.s[:5], 0.9 ** np.arange(5), rtol=1e-12)
    assert np.all(r.s[5:] < 1e-12) and r.rel_error < 1e-7


def test_open_matrix_arrays_are_read_by_the_tasks_themselves(stored):
    from dlowrank.io.source import ZarrSource, open_source

    assert isinstance(open_source(dlowrank.open_matrix(stored)), ZarrSource)
    assert not isinstance(open_source(dlowrank.open_matrix(stored) * 2), ZarrSource)
    # a bare da.from_zarr, as it came, is read by the tasks too (issue "at the read
    # floor"); anything computed on it, a slice or another chunking goes through dask
    import dask.array as da

    from dlowrank.io.source import DaskSource, Window

    bare = da.from_zarr(stored)  # 600 x 150 in chunks of 100 x 50
    assert isinstance(open_source(bare), ZarrSource)
    # a slice on the chunk boundaries is a window of the store, read by the tasks too
    for part, origin in ((bare[:300], (0, 0)), (bare[200:, 50:], (200, 50))):
        src = open_source(part)
        assert isinstance(src, Window) and src.origin == origin and src.shape == part.shape
        np.testing.assert_array_equal(src.read((0, part.shape[0], 0, part.shape[1])), part)
    # anything else goes through dask: off the boundaries, a step, computed, rechunked
    for other in (
        bare[150:300],
        bare[::2],
        bare[::-1],
        bare + 0,
        bare.rechunk((200, 50)),
        bare.astype("float32"),
        da.from_zarr(stored, chunks=(200, 50))[200:400],
    ):
        assert isinstance(open_source(other), DaskSource)
    r = dlowrank.randomized_svd(bare, 5, seed=1)
    ref = dlowrank.randomized_svd(bare + 0, 5, seed=1)
    np.testing.assert_allclose(r.s, ref.s, rtol=1e-12)
    arr, store = counted_array(stored)
    part = da.from_zarr(arr)[100:400, 50:]
    r = dlowrank.randomized_svd(part, 5, seed=1)
    # the window's 3 x 2 chunks only, each once a pass
    assert r.passes == 2 and dict(store.reads) == {
        f"c/{i}/{j}": 2 for i in (1, 2, 3) for j in (1, 2)
    }
    ref = dlowrank.randomized_svd(part + 0, 5, seed=1)
    np.testing.assert_allclose(r.s, ref.s, rtol=1e-12)


def test_engine_works_chunk_by_chunk_with_a_warning_when_a_panel_exceeds_the_budget(stored):
    from dlowrank.engine.passes import PassEngine
    from dlowrank.errors import DlowrankWarning
    from dlowrank.io.source import open_source

    # a chunk (100 x 50) needs 3 x 40 kB in a task, a panel (100 x 150) 3 x 120 kB
    with pytest.warns(DlowrankWarning, match="row panel of 100 x 150 needs .* two passes per"):
        engine = PassEngine(open_source(stored), memory=2 * 200_000)
    assert engine.layout == "block"
    assert len(engine.row_ranges) == 6 and len(engine.col_ranges) == 3
    assert PassEngine(open_source(stored)).layout == "panel"
    with pytest.warns(DlowrankWarning, match="working chunk by chunk"):
        one = PassEngine(open_source(stored), memory=200_000)  # room for one chunk at a time
    assert one.plan.threads == 1 and one.layout == "block"
    with pytest.raises(InputError, match=r"cannot hold one chunk of 100 x 50 .* --chunks 46 50"):
        PassEngine(open_source(stored), memory=150_000)


def _rows_seen(block, rows, cols, u):
    """Which rows of ``u`` the task got, and its piece's global rows."""
    return {
        "sums": {},
        "rows": {"got": u[:, 0].copy(), "want": np.arange(*rows, dtype=float)},
        "cols": {},
    }


@pytest.mark.parametrize("layout", ["panel", "block"])
def test_a_task_receives_only_its_rows_of_an_m_row_operand(stored, layout):
    from dlowrank.engine.passes import ByRows, PassEngine
    from dlowrank.io.source import open_source

    engine = PassEngine(open_source(stored), layout=layout, memory=1_600_000)  # small panels
    m = engine.tall_shape[0]
    u = np.repeat(np.arange(m, dtype=float)[:, None], 3, axis=1)
    out = engine.run(_rows_seen, ByRows(u))
    assert len(out.rows["got"]) == len(engine.row_ranges) > 1
    for got, want in zip(out.rows["got"], out.rows["want"], strict=True):
        np.testing.assert_array_equal(got, want)  # (both summed over the row's pieces)


def test_tile_kernels_equal_their_assembled_panel():
    from dlowrank.kernels import passkernels as pk

    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 30))
    tiles = pk.Tiles(
        [(0, 8, a[:, :8].copy()), (8, 20, a[:, 8:20].copy()), (20, 30, a[:, 20:].copy())]
    )
    x, q = rng.standard_normal((30, 4)), rng.standard_normal((40, 3))
    for kernel, arg in ((pk.gram_apply, x), (pk.range_and_adjoint, x), (pk.project, q)):
        got, want = kernel(tiles, (0, 40), (0, 30), arg), kernel(a, (0, 40), (0, 30), arg)
        for part in ("sums", "rows"):
            for key, value in want[part].items():
                np.testing.assert_allclose(got[part][key], value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pk.block_fro2(tiles), np.sum(a**2), rtol=1e-14)
    # float32 data: power iterations multiply in float32 and sum in float64; the last
    # pass (its sums give the exact error) converts each slab to float64
    t32 = pk.Tiles([(lo, hi, t.astype(np.float32)) for lo, hi, t in tiles.parts])
    a32 = a.astype(np.float32).astype(np.float64)
    z = pk.gram_apply(t32, (0, 40), (0, 30), x)["sums"]["z"]
    assert z.dtype == np.float64
    np.testing.assert_allclose(z, a32.T @ (a32 @ x), rtol=1e-4)
    w = pk.range_and_adjoint(t32, (0, 40), (0, 30), x)["sums"]["w"]
    np.testing.assert_allclose(w, a32.T @ (a32 @ x), rtol=1e-12)


def test_a_panel_read_in_place_needs_itself_and_one_chunk_in_flight(stored):
    from dlowrank.engine.passes import Plan
    from dlowrank.io.source import open_source

    src = open_source(stored)  # 600 x 150 float64, chunks 100 x 50 (40 kB), zstd
    assert src.reads_in_place()
    panel, chunk = 100 * 150 * 8, 100 * 50 * 8
    # kernels that take tiles: the panel's chunks are decoded where they belong
    tight = Plan.make(src, "auto", panel + chunk, tiles=True)
    assert tight.kind == "panel" and not tight.ahead  # the next chunk is fetched after
    roomy = Plan.make(src, "auto", panel + 2 * chunk, tiles=True)
    assert roomy.kind == "panel" and roomy.ahead
    with pytest.warns(match="working chunk by chunk"):
        assert Plan.make(src, "auto", panel + chunk - 1, tiles=True).kind == "block"
    # a panel assembled whole passes each chunk through a chunk buffer besides
    with pytest.warns(match="working chunk by chunk"):
        assert Plan.make(src, "auto", panel + chunk).kind == "block"
    assert Plan.make(src, "auto", panel + 2 * chunk).kind == "panel"


def test_a_seed_of_several_words_makes_its_test_matrices(stored):
    seed = np.random.SeedSequence([1, 2])
    a = dlowrank.randomized_svd(stored, 5, seed=seed)
    b = dlowrank.randomized_svd(stored, 5, seed=np.random.SeedSequence([1, 2]))
    np.testing.assert_array_equal(a.s, b.s)
    c = dlowrank.sketch_svd(stored, 5, seed=seed)
    assert c.passes == 1 and np.all(np.isfinite(c.s))
