"""Test matrices: known spectrum, chunking independence, every kind, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

import dlowrank
from dlowrank.errors import OutputExistsError, ParameterError
from dlowrank.kernels import testmatrix

CASES = [
    (kind, shape)
    for kind in ("exponential", "polynomial", "flat", "psd")
    for shape in ((90, 40), (40, 90), (50, 50))
    if kind != "psd" or shape == (50, 50)
]


@pytest.mark.parametrize(("kind", "shape"), CASES)
def test_generated_spectrum_matches_exact_svd(kind, shape, tmp_path):
    made = dlowrank.generate(tmp_path / "a.zarr", shape, 12, kind=kind, chunks=(17, 23), seed=3)
    stored = zarr.open_array(str(tmp_path / "a.zarr"), mode="r").attrs["dlowrank"]
    s_stored = np.array(stored["singular_values"])
    np.testing.assert_array_equal(s_stored, made.singular_values)
    s = dlowrank.exact_svd(tmp_path / "a.zarr").s
    np.testing.assert_allclose(s[:12], s_stored, atol=1e-13 * s_stored[0])
    np.testing.assert_allclose(s[12:], 0, atol=1e-13 * s_stored[0])
    if kind == "psd":
        a = made.array.compute()
        assert np.min(np.linalg.eigvalsh((a + a.T) / 2)) > -1e-12


def test_float32_is_the_rounded_float64_matrix():
    a64 = dlowrank.make_matrix((40, 30), 5, seed=1).array.compute()
    a32 = dlowrank.make_matrix((40, 30), 5, seed=1, dtype="float32").array.compute()
    assert a32.dtype == np.float32
    np.testing.assert_array_equal(a32, a64.astype(np.float32))


@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 50),
    noise=st.sampled_from([0.0, 0.1]),
    kind=st.sampled_from(["exponential", "flat"]),
)
def test_same_seed_same_matrix_for_any_chunking(rows, cols, noise, kind):
    ref = dlowrank.make_matrix(
        (70, 50), 8, kind=kind, noise=noise, seed=7, chunks=(70, 50)
    ).array.compute()
    other = dlowrank.make_matrix(
        (70, 50), 8, kind=kind, noise=noise, seed=7, chunks=(rows, cols)
    ).array.compute()
    np.testing.assert_allclose(other, ref, rtol=0, atol=1e-14)


def test_chunking_independence_across_canonical_panel_boundaries(monkeypatch):
    # Small canonical panels and tiles, so chunks straddle many of them.
    monkeypatch.setattr(testmatrix, "FACTOR_PANEL", 16)
    monkeypatch.setattr(testmatrix, "NOISE_TILE", 8)
    ref = dlowrank.make_matrix((70, 45), 6, noise=0.01, seed=2, chunks=(70, 45)).array.compute()
    for chunks in [(13, 45), (70, 7), (9, 11), (1, 45)]:
        got = dlowrank.make_matrix((70, 45), 6, noise=0.01, seed=2, chunks=chunks).array.compute()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)


def test_different_seeds_give_different_matrices():
    a = dlowrank.make_matrix((20, 10), 3, seed=1).array.compute()
    b = dlowrank.make_matrix((20, 10), 3, seed=2).array.compute()
    assert not np.allclose(a, b)


def test_cholesky_qr2_and_householder_give_the_same_orthonormal_factor(monkeypatch):
    spec = testmatrix.TestMatrixSpec((9000, 40), 8, "exponential", 0.9, 1.0, 0.0, 11)
    rinv_small = testmatrix.factor_rinv(spec, 0, 9000)
    monkeypatch.setattr(testmatrix, "SMALL_FACTOR", 0)  # force the panel-wise CholeskyQR2
    rinv_large = testmatrix.factor_rinv(spec, 0, 9000)
    u = testmatrix.factor_rows(spec, 0, 9000, rinv_large, 0, 9000)
    np.testing.assert_allclose(u.T @ u, np.eye(8), atol=1e-14)
    np.testing.assert_allclose(rinv_large, rinv_small, rtol=1e-12)


def test_noise_has_the_requested_standard_deviation():
    clean = dlowrank.make_matrix((400, 300), 4, seed=5).array.compute()
    noisy = dlowrank.make_matrix((400, 300), 4, seed=5, noise=0.5).array.compute()
    diff = noisy - clean
    # 120,000 iid N(0, 0.25) entries: the sample std is within 1 % with overwhelming probability
    assert diff.std() == pytest.approx(0.5, rel=0.01)
    assert abs(diff.mean()) < 0.01


def test_generate_refuses_an_existing_output_and_overwrites_on_request(tmp_path):
    out = tmp_path / "a.zarr"
    dlowrank.generate(out, (10, 8), 2, seed=1)
    with pytest.raises(OutputExistsError, match="already exists.*overwrite"):
        dlowrank.generate(out, (10, 8), 2, seed=2)
    np.testing.assert_array_equal(
        dlowrank.open_matrix(out).compute(),
        dlowrank.make_matrix((10, 8), 2, seed=1).array.compute(),
    )
    dlowrank.generate(out, (10, 8), 2, seed=2, overwrite=True)
    np.testing.assert_array_equal(
        dlowrank.open_matrix(out).compute(),
        dlowrank.make_matrix((10, 8), 2, seed=2).array.compute(),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]  # no temporary left behind


def test_generate_to_memory_url():
    url = "memory://dlowrank-tests/generate/a.zarr"
    made = dlowrank.generate(url, (30, 20), 4, chunks=(10, 10), seed=0)
    np.testing.assert_allclose(
        np.linalg.svd(made.array.compute(), compute_uv=False)[:4], made.singular_values
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (10,)}, "`shape` must be two positive integers"),
        ({"shape": (0, 5)}, r"`shape` must be an integer >= 1; got 0"),
        ({"rank": 0}, r"`rank` must be an integer in \[1, min\(a.shape\)\] = \[1, 8\]; got 0"),
        ({"kind": "gaussian"}, "`kind` must be one of exponential, polynomial"),
        ({"kind": "psd"}, "psd needs a square `shape`"),
        ({"decay": 1.5}, r"`decay` must be a finite number in \(0.0, 1.0\]; got 1.5"),
        ({"kind": "flat", "decay": 0.5}, "`decay` does not apply to kind flat"),
        ({"noise": -1.0}, r"`noise` must be a finite number in \[0.0, inf; got -1.0"),
        ({"scale": float("nan")}, "`scale` must be a finite number"),
        ({"kind": "lowrank-noise", "noise": 0.0}, "`noise` must be > 0 for kind lowrank-noise"),
        ({"seed": -3}, "`seed` must be a non-negative integer"),
        ({"dtype": "int8"}, "`dtype` must be float32 or float64; got 'int8'"),
        ({"chunks": (0, 3)}, r"`chunks` must be an integer >= 1; got 0"),
    ],
)
def test_bad_generate_parameters_are_refused(kwargs, match):
    args = {"shape": (10, 8), "rank": 3, **kwargs}
    with pytest.raises(ParameterError, match=match):
        dlowrank.make_matrix(args.pop("shape"), args.pop("rank"), **args)


def test_matrices_that_differ_in_any_parameter_never_share_dask_keys():
    import dask

    a = dlowrank.make_matrix((100, 50), 5, seed=0, decay=0.9).array
    b = dlowrank.make_matrix((100, 50), 5, seed=0, decay=0.1).array
    c = dlowrank.make_matrix((100, 50), 5, seed=0, decay=0.9, dtype="float32").array
    na, nb, nc = dask.compute(np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(c))
    assert na == pytest.approx(np.linalg.norm(0.9 ** np.arange(5)))
    assert nb == pytest.approx(np.linalg.norm(0.1 ** np.arange(5)))
    assert nc == pytest.approx(na, rel=1e-6)  # float32: the same matrix, rounded
    assert len({a.name, b.name, c.name}) == 3
