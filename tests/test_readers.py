"""Readers never see a half-result: a real reader process polls a result while the
real CLI replaces it with --overwrite and is SIGKILLed at random moments.

The suite runs a short version (about 20 s); set DLOWRANK_READER_SECONDS=110 for
the long one (measured on the 2-core development machine: 43 runs, 14 killed,
12,490 whole loads, 0 bad). Every
load must give a whole result of one of the runs: its arrays
match their checksums (``load`` checks), their shapes agree with the stored rank,
and its singular values are those of a run at that rank.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import dlowrank

READER = r"""
import json, sys, time
import numpy as np
import dlowrank
from dlowrank.errors import StoreNotFoundError

url, expected_path, stop, report = sys.argv[1:5]
expected = {int(k): np.array(v) for k, v in json.load(open(expected_path)).items()}
counts = {"loads": 0, "whole": 0, "absent": 0, "bad": 0}
bad = []
import os
while not os.path.exists(stop):
    counts["loads"] += 1
    try:
        r = dlowrank.load(url)
    except StoreNotFoundError:
        counts["absent"] += 1  # before the first publish: no result yet, not a bad one
        continue
    except Exception as exc:
        counts["bad"] += 1
        there = sorted(os.listdir(url)) if os.path.isdir(url) else None
        bad.append(f"{type(exc).__name__}: {exc}"[:300] + f" (the folder held {there})")
        continue
    k = r.rank
    ok = (
        r.u.shape == (r.u.shape[0], k) and r.vt.shape[0] == k and r.params["rank"] == k
        and k in expected and np.allclose(r.s, expected[k], rtol=1e-10)
    )
    if ok:
        counts["whole"] += 1
    else:
        counts["bad"] += 1
        bad.append(f"inconsistent: rank {k}, u {r.u.shape}, vt {r.vt.shape}")
json.dump({**counts, "examples": bad[:5]}, open(report, "w"))
"""


def test_a_reader_sees_old_or_new_results_whole_during_kills_and_replacements(tmp_path):
    seconds = float(os.environ.get("DLOWRANK_READER_SECONDS", "10"))
    a = tmp_path / "a.zarr"
    dlowrank.generate(a, (3000, 60), 20, chunks=(500, 60), noise=1e-3, seed=0)
    ranks = [3, 4, 5, 6, 7]
    expected = {k: dlowrank.randomized_svd(str(a), k, seed=0).s.tolist() for k in ranks}
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    out, stop, report = tmp_path / "r.zarr", tmp_path / "stop", tmp_path / "report.json"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            READER,
            str(out),
            str(tmp_path / "expected.json"),
            str(stop),
            str(report),
        ]
    )
    rng = random.Random(0)
    runs = kills = 0
    start = time.monotonic()
    try:
        while True:
            k = ranks[runs % len(ranks)]
            cmd = [
                sys.executable,
                "-m",
                "dlowrank",
                "svd",
                str(a),
                "--rank",
                str(k),
                "--out",
                str(out),
                "--overwrite",
                "--restart",
                "--workers",
                "0",
                "-q",
            ]
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
            if runs % 3 == 2:  # every third run is killed at a random moment
                try:
                    proc.wait(timeout=rng.uniform(0.5, 2.5))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.wait()
            else:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
            runs += 1
            if runs >= 12 and time.monotonic() - start > seconds:
                break
    finally:
        stop.write_text("")
        reader.wait(timeout=60)
    counts = json.loads(report.read_text())
    print(f"runs {runs}, kills {kills}, reader: {counts}")
    assert counts["bad"] == 0, counts["examples"]
    assert counts["whole"] > 100 and kills >= 3
    # what the kills left behind is never a reader's problem, and the next run cleans it
    versions = [p.name for p in out.iterdir() if p.name.startswith("v-")]
    assert 1 <= len(versions) <= 3
