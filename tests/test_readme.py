"""Every Python snippet of the README runs as written, in order, in a fresh folder.

The snippets are what a newcomer pastes first; names they use must be defined
in them, and what their comments claim is checked after they ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_snippets_run_as_written(tmp_path):
    snippets = python_snippets()
    assert len(snippets) >= 2
    claims = """
# what the snippets' comments claim
assert r.passes == 2 and r.error_kind == "exact" and abs(r.rel_error - 0.3585) < 1e-4
assert r.u.shape == (20000, 20) and r.vt.shape == (20, 1000)
assert repr(r).startswith("SVDResult(rank=20, shape=(20000, 1000), rel_error=0.3585 (exact)")
assert r1.passes == 1 and rt.rel_error <= 0.4 and e.rank == k.rank == 10
assert f.converged and m.converged and fit.converged, (f.n_iter, m.n_iter, fit.n_iter)
assert n.u.min() >= 0 and n.v.min() >= 0
import dask.array, numpy
assert isinstance(tall.u, dask.array.Array) and isinstance(back.u, dask.array.Array)
assert isinstance(in_memory.u, numpy.ndarray) and tall.u.chunksize == (50_000, 10)
assert isinstance(direct.u, dask.array.Array) and direct.u.name.startswith("from-zarr")
assert numpy.array_equal(direct.s, in_memory.s) and direct.peak_memory_mb > 0
assert grown.params["update"]["from"] == [5000, 300] and grown.u.shape == (5500, 20)
assert abs(grown.params["update"]["fraction_read"] - 500 / 5500) < 1e-12
assert biased.row_bias.shape == (500,) and biased.col_bias.shape == (200,)
assert rec.transform(new_users).shape == (2, 4) and rec.n_passes_ <= 50
assert rec.rmse(user[test], item[test], rating[test]) < 0.5
print("README snippets ran")
"""
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(snippets) + claims)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "README snippets ran" in proc.stdout
