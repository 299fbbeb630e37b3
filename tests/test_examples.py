"""Each example runs at a tiny size and prints what it claims."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_known_spectrum_example_reaches_the_optimum(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "known_spectrum.py"),
            "--shape",
            "600",
            "150",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows = re.findall(r"rank\s+(\d+): relative error ([\d.]+), optimum ([\d.]+)", proc.stdout)
    assert [int(k) for k, _, _ in rows] == [5, 20, 50]
    for _, got, opt in rows:
        assert abs(float(got) - float(opt)) < 1e-6
    assert (tmp_path / "known.zarr").exists()
