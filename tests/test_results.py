"""SVDResult / EighResult: save and load, provenance, completion marker, atomic publish."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import dlowrank
from dlowrank.errors import OutputExistsError, ResultError, StoreNotFoundError
from dlowrank.io.store import publish


@pytest.fixture
def result():
    t = dlowrank.make_matrix((50, 30), 6, seed=4, dtype="float32", chunks=(20, 30))
    return dlowrank.exact_svd(t.array, 4)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_and_load_round_trip(result, tmp_path, where):
    url = str(tmp_path / "r.zarr") if where == "local" else "memory://dlowrank-tests/results/r.zarr"
    result.save(url)
    back = dlowrank.load(url)
    assert isinstance(back, dlowrank.SVDResult)
    for name in ("u", "s", "vt"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == np.float32
    assert back.to_dict() == result.to_dict()
    prov = zarr.open_group(url, mode="r").attrs["dlowrank"]
    assert prov["complete"] is True and prov["kind"] == "svd"
    assert prov["rank"] == 4 and prov["passes"] == 1 and prov["algorithm"] == "exact_svd"
    assert prov["input"] == {"shape": [50, 30], "dtype": "float32", "chunks": [20, 30]}
    assert prov["version"] == dlowrank.__version__


def test_eigh_result_round_trip(tmp_path):
    b = np.random.default_rng(0).standard_normal((8, 8))
    r = dlowrank.exact_eigh(b + b.T, 3)
    r.save(tmp_path / "e.zarr")
    back = dlowrank.load(tmp_path / "e.zarr")
    assert isinstance(back, dlowrank.EighResult)
    np.testing.assert_array_equal(back.w, r.w)
    np.testing.assert_array_equal(back.v, r.v)


def test_save_refuses_to_replace_without_overwrite(result, tmp_path):
    result.save(tmp_path / "r.zarr")
    with pytest.raises(OutputExistsError, match="r.zarr already exists"):
        result.save(tmp_path / "r.zarr")
    result.save(tmp_path / "r.zarr", overwrite=True)
    assert dlowrank.load(tmp_path / "r.zarr").rank == 4


def test_failed_write_leaves_the_previous_result_intact(result, tmp_path):
    url = tmp_path / "r.zarr"
    result.save(url)

    def broken(tmp):
        zarr.open_group(tmp, mode="w").create_array("u", shape=(3,), dtype="f8")
        raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError, match="half way"):
        publish(url, broken, overwrite=True)
    np.testing.assert_array_equal(dlowrank.load(url).s, result.s)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_load_refuses_a_result_without_completion_marker(result, tmp_path):
    url = str(tmp_path / "r.zarr")
    result.save(url)
    group = zarr.open_group(url, mode="r+")
    attrs = dict(group.attrs["dlowrank"])
    del attrs["complete"]
    group.attrs["dlowrank"] = attrs
    with pytest.raises(ResultError, match="incomplete.*rerun"):
        dlowrank.load(url)


def test_load_refuses_things_that_are_not_results(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        dlowrank.load(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ResultError, match="not a dlowrank result"):
        dlowrank.load(tmp_path / "g.zarr")


def test_publish_without_overwrite_never_replaces_an_output_that_appeared_meanwhile(tmp_path):
    dest = tmp_path / "r.zarr"

    def racing_write(tmp):
        # another job publishes at the same path while this one is writing
        zarr.open_group(str(dest), mode="w").attrs["who"] = "other"
        zarr.open_group(tmp, mode="w").attrs["who"] = "mine"

    with pytest.raises(OutputExistsError, match="appeared while the result was written"):
        publish(dest, racing_write)
    assert zarr.open_group(str(dest), mode="r").attrs["who"] == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_seed_is_stored_so_that_it_replays():
    a = np.random.default_rng(0).standard_normal((40, 30))
    seq = np.random.SeedSequence(5).spawn(2)[1]
    r = dlowrank.randomized_svd(a, 3, n_power_iter=0, seed=seq)
    assert r.seed == {"entropy": 5, "spawn_key": [1]}
    again = dlowrank.randomized_svd(a, 3, n_power_iter=0, seed=r.seed)
    np.testing.assert_array_equal(again.u, r.u)
    assert dlowrank.randomized_svd(a, 3, seed=7).seed == 7
