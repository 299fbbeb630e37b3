"""Chunks decoded straight from the store (dlowrank.io.chunkread): every codec and
layout it accepts gives zarr's own values, and everything else is left to zarr."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr

import dlowrank
from dlowrank.io import chunkread
from dlowrank.io.source import open_source

RECTS = [(0, 23, 0, 17), (5, 15, 4, 12), (3, 22, 1, 16), (20, 23, 16, 17), (5, 10, 0, 17)]
LAYOUTS = {
    "v3 zstd": {},
    "v3 blosc": {"compressors": zarr.codecs.BloscCodec()},
    "v3 gzip": {"compressors": zarr.codecs.GzipCodec()},
    "v3 raw": {"compressors": None},
    "v2 zstd": {"zarr_format": 2, "compressors": numcodecs.Zstd()},
    "v2 raw": {"zarr_format": 2, "compressors": None},
}


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).standard_normal((23, 17))


@pytest.mark.parametrize("dtype", ["float64", "float32", "int16"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_tiles_and_rects_equal_zarrs_read(tmp_path, data, name, dtype):
    x = (data * 100).astype(dtype)
    arr = zarr.create_array(
        tmp_path / "a.zarr", shape=x.shape, chunks=(5, 4), dtype=dtype, **LAYOUTS[name]
    )
    arr[:] = x
    arr = zarr.open_array(tmp_path / "a.zarr", mode="r")
    direct = chunkread.plan(arr)
    assert direct is not None and direct.chunk == (5, 4)
    for rect in RECTS:
        want = x[rect[0] : rect[1], rect[2] : rect[3]]
        for ahead in (True, False):
            out = np.empty_like(want)
            chunkread.read_into(arr, direct, [(rect, out)], ahead)
            np.testing.assert_array_equal(out, want)
        for axis in (0, 1):
            tiles = chunkread.read_tiles(arr, direct, rect, axis)
            np.testing.assert_array_equal(np.concatenate([t for _, _, t in tiles], axis=axis), want)
            starts = [lo for lo, _, _ in tiles]
            assert starts[0] == 0 and all(t.shape[axis] == hi - lo for lo, hi, t in tiles)
            # tiles are cut at the chunk boundaries of that axis
            origin = rect[2 * axis]
            size = 4 if axis == 1 else 5
            assert all((lo + origin) % size == 0 for lo in starts[1:])


def test_whole_chunks_are_decoded_into_the_tile_without_a_copy(tmp_path, data):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(20, 8), chunks=(5, 4), dtype="f8")
    arr[:] = data[:20, :8]
    tiles = chunkread.read_tiles(arr, chunkread.plan(arr), (0, 20, 0, 8), 1)
    # two tiles, one chunk wide, each filled by its four chunks in place
    assert [(lo, hi) for lo, hi, _ in tiles] == [(0, 4), (4, 8)]
    assert all(t.flags.c_contiguous and t.base is None for _, _, t in tiles)


def test_other_layouts_are_left_to_zarr(tmp_path):
    sharded = zarr.create_array(
        tmp_path / "s.zarr", shape=(10, 8), chunks=(5, 4), shards=(10, 8), dtype="f8"
    )
    big = zarr.create_array(tmp_path / "b.zarr", shape=(10, 8), chunks=(5, 4), dtype=">f8")
    filtered = zarr.create_array(
        tmp_path / "f.zarr",
        shape=(10, 8),
        chunks=(5, 4),
        dtype="f8",
        zarr_format=2,
        filters=[numcodecs.Shuffle(elementsize=8)],
    )
    fortran = zarr.create_array(
        tmp_path / "o.zarr", shape=(10, 8), chunks=(5, 4), dtype="f8", zarr_format=2, order="F"
    )
    for arr in (sharded, big, filtered, fortran):
        assert chunkread.plan(arr) is None, arr.metadata
    # and a pass over them reads through zarr with the same result
    x = np.random.default_rng(1).standard_normal((10, 8))
    for arr in (sharded, filtered):
        arr[:] = x
        src = open_source(arr)
        assert not src.reads_in_place()
        np.testing.assert_array_equal(src.read((0, 10, 0, 8)), x)


def test_an_object_store_is_read_in_place(data):
    url = "memory://chunkread/a.zarr"
    arr = zarr.create_array(url, shape=data.shape, chunks=(5, 4), dtype="f8")
    arr[:] = data
    src = open_source(url)
    assert src.reads_in_place()
    np.testing.assert_array_equal(src.read((3, 22, 1, 16)), data[3:22, 1:16])
    r = dlowrank.randomized_svd(url, 3, seed=0)
    ref = dlowrank.exact_svd(data, 3)
    np.testing.assert_allclose(r.s, ref.s, rtol=1e-8)


def test_a_truncated_chunk_is_named(tmp_path, data):
    from dlowrank.errors import StorageError

    path = tmp_path / "a.zarr"
    arr = zarr.create_array(path, shape=data.shape, chunks=(5, 4), dtype="f8")
    arr[:] = data
    chunk = path / "c" / "1" / "2"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    src = open_source(str(path))
    with pytest.raises(
        StorageError, match=r"chunk c/1/2 of .* \(rows 5-9, columns 8-11\) cannot be decoded"
    ):
        src.read((0, 23, 0, 17))
    with pytest.raises(StorageError, match=r"chunk c/1/2"):
        src.read_tiles((0, 23, 0, 17), 1)


def test_a_chunk_that_decodes_short_is_named(tmp_path, data):
    from dlowrank.errors import StorageError

    path = tmp_path / "a.zarr"
    arr = zarr.create_array(path, shape=data.shape, chunks=(5, 4), dtype="f8")
    arr[:] = data
    # a valid zstd frame of 10 values where the chunk has 20: numcodecs would decode it
    # into the front of the chunk and leave the rest as it was
    (path / "c" / "0" / "1").write_bytes(numcodecs.Zstd().encode(np.arange(10.0)))
    with pytest.raises(StorageError, match=r"chunk c/0/1 .* decodes to 80 bytes where it has 160"):
        open_source(str(path)).read((0, 23, 0, 17))


def test_a_rechunked_from_zarr_slice_is_not_taken_for_the_store():
    import dask.array as da

    from dlowrank.io.source import DaskSource

    z = zarr.create_array("memory://chunkread/r.zarr", shape=(3, 3), chunks=(1, 2), dtype="f8")
    z[:] = np.arange(9.0).reshape(3, 3)
    part = da.from_zarr(z, chunks=(2, 1))[2:3, 1:2]  # as many blocks as z has chunks
    src = open_source(part)
    assert isinstance(src, DaskSource)


@pytest.mark.parametrize("call", ["sketch", "nystrom", "block", "panel"])
def test_a_slice_of_the_store_is_the_matrix_of_the_computation(tmp_path, call):
    """A slice read as a window of the store gives the kernels its own indices: the same
    result as the same slice through dask, for every algorithm and layout."""
    import dask.array as da

    from dlowrank.io.source import Window

    path = str(tmp_path / "a.zarr")
    dlowrank.generate(path, (90, 90), 30, kind="psd", noise=0, chunks=(10, 10), seed=0)
    part = da.from_zarr(path)[20:80, 20:80]
    assert isinstance(open_source(part), Window)
    runs = {
        "sketch": lambda x: dlowrank.sketch_svd(x, 4, seed=2),
        "nystrom": lambda x: dlowrank.nystrom(x, 4, seed=2),
        "block": lambda x: dlowrank.randomized_svd(x, 4, seed=2, layout="block"),
        "panel": lambda x: dlowrank.randomized_svd(x, 4, seed=2, layout="panel"),
    }
    got, want = runs[call](part), runs[call](part + 0)
    values = (lambda r: r.s) if call != "nystrom" else (lambda r: r.w)
    np.testing.assert_allclose(values(got), values(want), rtol=1e-10)
