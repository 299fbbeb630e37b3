"""Opening input: local and memory:// stores, and every refusal with its message."""

from __future__ import annotations

import json
import os
import pickle

import dask.array as da
import numcodecs
import numpy as np
import pytest
import zarr

import dlowrank
from dlowrank.errors import InputError, StoreNotFoundError, UnsafeInputError


def _store(path, data, **kw):
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, **kw)
    arr[...] = data
    return str(path)


def test_open_matrix_local_keeps_stored_chunks(tmp_path):
    data = np.arange(600.0).reshape(30, 20)
    x = dlowrank.open_matrix(_store(tmp_path / "a.zarr", data, chunks=(7, 20)))
    assert isinstance(x, da.Array)
    assert x.chunks == ((7, 7, 7, 7, 2), (20,))
    np.testing.assert_array_equal(x.compute(), data)


def test_open_matrix_memory_url():
    data = np.random.default_rng(0).standard_normal((12, 9)).astype(np.float32)
    url = "memory://dlowrank-tests/open/a.zarr"
    arr = zarr.open_array(url, mode="w", shape=data.shape, chunks=(5, 4), dtype=data.dtype)
    arr[...] = data
    x = dlowrank.open_matrix(url)
    assert x.dtype == np.float32 and x.chunks[1] == (4, 4, 1)
    np.testing.assert_array_equal(x.compute(), data)


def test_open_matrix_reads_zarr_format_2(tmp_path):
    data = np.arange(20.0).reshape(4, 5)
    x = dlowrank.open_matrix(_store(tmp_path / "v2.zarr", data, chunks=(2, 5), zarr_format=2))
    np.testing.assert_array_equal(x.compute(), data)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_integer_and_bool_input_is_computed_as_float64(tmp_path, dtype):
    data = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    x = dlowrank.open_matrix(_store(tmp_path / "i.zarr", data, chunks=(3, 4)))
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x.compute(), data.astype(np.float64))
    assert dlowrank.exact_svd(data, 1).u.dtype == np.float64


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((10,), r"has 1 dimensions \(shape \(10,\)\); dlowrank needs a 2-D matrix"),
        ((2, 3, 4), "has 3 dimensions"),
        ((0, 5), r"zero-length dimension \(shape \(0, 5\)\)"),
    ],
)
def test_bad_shapes_are_refused_naming_the_path(tmp_path, shape, match):
    path = _store(tmp_path / "bad.zarr", np.zeros(shape), chunks=tuple(max(1, s) for s in shape))
    with pytest.raises(InputError, match=match) as info:
        dlowrank.open_matrix(path)
    assert path in str(info.value)


def test_complex_dtype_is_refused(tmp_path):
    path = _store(tmp_path / "c.zarr", np.ones((3, 3), dtype=np.complex128), chunks=(3, 3))
    with pytest.raises(InputError, match=f"input {path} has complex dtype complex128"):
        dlowrank.open_matrix(path)


def _write_v2_metadata(path, dtype, **extra):
    os.makedirs(path)
    meta = {
        "zarr_format": 2,
        "shape": [2, 2],
        "chunks": [2, 2],
        "dtype": dtype,
        "fill_value": None,
        "order": "C",
        "filters": None,
        "compressor": None,
    }
    meta.update(extra)
    with open(os.path.join(path, ".zarray"), "w") as f:
        json.dump(meta, f)
    return str(path)


@pytest.mark.parametrize(
    ("dtype", "match"),
    [
        ("<U8", "dtype <U8 \\(string\\)"),
        ("|S4", "dtype \\|S4 \\(bytes\\)"),
        ([["x", "<f8"], ["y", "<i4"]], "structured dtype"),
        ("<M8[s]", "datetime"),
    ],
)
def test_non_numeric_dtypes_are_refused(tmp_path, dtype, match):
    path = _write_v2_metadata(tmp_path / "s.zarr", dtype)
    with pytest.raises(InputError, match=match):
        dlowrank.open_matrix(path)


def test_object_dtype_in_memory_is_refused():
    with pytest.raises(InputError, match="dtype object"):
        dlowrank.exact_svd(np.array([[1, "a"], [2, "b"]], dtype=object))


class _Payload:
    """Unpickling this creates the canary folder: proof that code ran."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.makedirs, (self.canary,))


def _malicious_chunk(canary) -> bytes:
    return pickle.dumps(np.array([_Payload(canary)], dtype=object))


@pytest.fixture
def pickle_decoding_allowed(monkeypatch):
    """numcodecs >= 0.16 refuses pickle decoding by default; a user may allow it (or run an
    older numcodecs). Allow it here so that dlowrank's own check is the only guard tested."""
    if hasattr(numcodecs, "pickles") and hasattr(numcodecs.pickles, "ALLOW_UNSAFE_PICKLE_DECODE"):
        monkeypatch.setattr(numcodecs.pickles, "ALLOW_UNSAFE_PICKLE_DECODE", True)


def test_the_pickle_payload_is_live(tmp_path, pickle_decoding_allowed):
    # Control: decoding the payload with numcodecs' Pickle codec does run it, so the
    # next test's "canary not created" is a real proof, not a dud payload.
    canary = tmp_path / "control-canary"
    numcodecs.Pickle().decode(_malicious_chunk(canary))
    assert canary.exists()


@pytest.mark.parametrize("layout", ["v2-object-filter", "v2-pickle-compressor", "v3-codec"])
def test_pickle_store_is_refused_before_any_chunk_is_decoded(
    tmp_path, layout, pickle_decoding_allowed
):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.zarr"
    if layout == "v2-object-filter":
        _write_v2_metadata(path, "|O", filters=[{"id": "pickle", "protocol": 5}])
        (path / "0.0").write_bytes(_malicious_chunk(canary))
    elif layout == "v2-pickle-compressor":
        _write_v2_metadata(path, "<f8", compressor={"id": "pickle", "protocol": 5})
        (path / "0.0").write_bytes(_malicious_chunk(canary))
    else:
        os.makedirs(path / "c" / "0")
        meta = {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [2, 2],
            "data_type": "float64",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 2]}},
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0.0,
            "codecs": [{"name": "bytes"}, {"name": "numcodecs.pickle"}],
        }
        (path / "zarr.json").write_text(json.dumps(meta))
        (path / "c" / "0" / "0").write_bytes(_malicious_chunk(canary))
    with pytest.raises(UnsafeInputError, match="pickle.*refuses such stores"):
        x = dlowrank.open_matrix(str(path))
        x.compute()
    with pytest.raises(UnsafeInputError):
        dlowrank.exact_svd(str(path))
    assert not canary.exists()


def test_missing_path_says_it_does_not_exist(tmp_path):
    path = str(tmp_path / "nope.zarr")
    with pytest.raises(StoreNotFoundError, match=f"input {path} does not exist"):
        dlowrank.open_matrix(path)
    with pytest.raises(FileNotFoundError):  # the builtin class catches it too
        dlowrank.open_matrix("memory://dlowrank-tests/nothing-here")


def test_plain_folder_is_not_a_zarr_array(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="is not a Zarr array"):
        dlowrank.open_matrix(str(tmp_path / "folder"))


def test_group_is_not_an_array_and_the_message_names_a_member(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("matrix", shape=(3, 3), dtype="f8")
    with pytest.raises(InputError, match="is a Zarr group, not an array.*g.zarr/matrix"):
        dlowrank.open_matrix(str(tmp_path / "g.zarr"))


def test_in_memory_inputs_are_validated_too():
    with pytest.raises(InputError, match="`a` has 1 dimensions"):
        dlowrank.exact_svd(np.ones(4))
    with pytest.raises(InputError, match="`a` has complex dtype"):
        dlowrank.exact_svd(np.ones((2, 2), dtype=complex))
    x = da.ones((10, 4), chunks=5)
    x = x[x[:, 0] > 0]
    with pytest.raises(InputError, match="unknown chunk sizes; call `a.compute_chunk_sizes\\(\\)`"):
        dlowrank.exact_svd(x)


def test_nonfinite_values_are_reported_with_their_location():
    a = np.ones((5, 4))
    a[3, 2] = np.nan
    a[4, 0] = np.inf
    with pytest.raises(
        InputError, match="2 NaN or infinite values \\(the first at row 3, column 2\\)"
    ):
        dlowrank.exact_svd(a)


def test_exact_path_refuses_input_above_max_bytes():
    with pytest.raises(InputError, match="above the exact path's max_bytes.*randomized_svd"):
        dlowrank.exact_svd(np.ones((100, 100)), 2, max_bytes=1000)
