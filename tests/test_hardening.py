"""Hardening: dlowrank never removes or replaces what it did not write, and the
command line keeps its promises (flags, --dry-run, exit codes, quiet output).

Every case runs through the real entry point (``python -m dlowrank`` in a
subprocess, or click's runner on the same ``main``), and checks the bytes of
everything that was there before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, env=None, timeout=300, stdout=subprocess.PIPE):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dlowrank", *map(str, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


class _Proc:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def invoke(*args, cwd, env=None):
    """The same ``main`` in this process (no interpreter start-up): for the many cases
    that need neither a separate process nor a cluster."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner(env=env).invoke(main, list(map(str, args)))
    finally:
        os.chdir(old)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return _Proc(res.exit_code, res.stdout, res.stderr)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root`` with its bytes (symlinks by target): what must not change."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            out[rel] = ("-> " + os.readlink(p)) if os.path.islink(p) else Path(p).read_bytes()
    return out


@pytest.fixture
def place(tmp_path):
    """A folder with a small matrix and a user's unrelated files."""
    dlowrank.generate(tmp_path / "small.zarr", (400, 30), 5, chunks=(100, 30), seed=0)
    (tmp_path / "fulldir").mkdir()
    (tmp_path / "fulldir" / "data.txt").write_text("a user's data\n")
    (tmp_path / "afile.txt").write_text("a user's file\n")
    (tmp_path / "myfolder").mkdir()
    (tmp_path / "myfolder" / "notes.txt").write_text("a user's notes\n")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "small.zarr")
    return tmp_path


SVD = ("svd", "small.zarr", "--rank", "3", "--workers", "0", "-q")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--out", "fulldir", "--overwrite"],
            "is a folder holding 1 entry, not a complete dlowrank",
        ),
        (["--out", "small.zarr", "--overwrite"], "is the input"),
        (["--out", "afile.txt", "--overwrite"], "is a file of 14 bytes, not a complete dlowrank"),
        (["--out", ".", "--overwrite"], "contains the input"),
        (["--out", "..", "--overwrite"], "contains the input"),
        (["--out", "link.zarr", "--overwrite"], "is the input"),
        (["--out", "small.zarr/u", "--overwrite"], "lies inside the input"),
        (["--out", "r.zarr", "--checkpoint", "myfolder"], "dlowrank did not write"),
        (["--out", "r.zarr", "--checkpoint", "myfolder", "--restart"], "dlowrank did not write"),
        (["--out", "r.zarr", "--checkpoint", "small.zarr"], "is the input"),
        (["--out", "r.zarr", "--checkpoint", "afile.txt"], "is a file"),
        (["--out", "fulldir"], "is a folder holding 1 entry"),
    ],
)
def test_overwrite_and_checkpoint_never_touch_what_dlowrank_did_not_write(place, extra, message):
    before = snapshot(place)
    for dry in ([], ["--dry-run"]):  # the dry run refuses with the same message
        proc = invoke(*SVD, *extra, *dry, cwd=place)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert message in lines[0] and "nothing was touched" in lines[0]
        assert snapshot(place) == before


def test_overwrite_replaces_a_dlowrank_result_and_leaves_no_old_copy(place):
    first = invoke(*SVD, "--out", "r.zarr", cwd=place)
    assert first.returncode == 0, first.stderr
    again = invoke(*SVD[:3], "4", *SVD[4:], "--out", "r.zarr", "--overwrite", cwd=place)
    assert again.returncode == 0, again.stderr
    assert dlowrank.load(place / "r.zarr").rank == 4
    assert not [p.name for p in place.iterdir() if p.name.startswith(".r.zarr")]


def test_leftovers_of_a_crash_are_removed_only_when_marked_as_ours(place):
    from dlowrank.io.store import SCRATCH_MARKER

    r = dlowrank.exact_svd(np.arange(12.0).reshape(4, 3), 2)
    r.save(place / ".r.zarr.old-0123456789ab")  # a set-aside result a crash left behind
    ours = place / ".r.zarr.tmp-0123456789ab"
    ours.mkdir()
    (ours / SCRATCH_MARKER).write_text("")
    (ours / "r.zarr").mkdir()
    theirs = place / ".r.zarr.tmp-fedcba987654"  # same name pattern, no marker: not ours
    theirs.mkdir()
    (theirs / "keep.txt").write_text("not dlowrank's\n")
    r.save(place / "r.zarr")
    names = sorted(p.name for p in place.iterdir() if p.name.startswith(".r.zarr"))
    assert names == [".r.zarr.tmp-fedcba987654"]
    assert (theirs / "keep.txt").read_text() == "not dlowrank's\n"


def test_no_command_removes_anything_outside_a_dlowrank_result(place):
    """Every writing command, including failures and --overwrite: user files survive."""
    np.save(place / "m.npy", np.random.default_rng(0).standard_normal((60, 8)))
    (place / "ratings.csv").write_text("0,0,1.0\n1,2,2.0\n2,1,3.0\n")
    before = snapshot(place)
    runs = [
        ("generate", "g.zarr", "--shape", "50", "8", "--rank", "2", "--seed", "0"),
        ("generate", "afile.txt", "--shape", "50", "8", "--rank", "2", "--overwrite"),
        ("generate", "fulldir", "--shape", "50", "8", "--rank", "2", "--overwrite"),
        ("convert", "m.npy", "--out", "m.zarr"),
        ("convert", "m.npy", "--out", "m.npy", "--overwrite"),
        ("convert", "m.npy", "--out", "fulldir", "--overwrite"),
        ("convert", "ratings.csv", "--out", "afile.txt", "--ratings", "--overwrite"),
        ("convert", "ratings.csv", "--out", "ratings.zarr", "--ratings"),
        (*SVD, "--out", "r.zarr"),
        (*SVD, "--out", "r.zarr", "--overwrite"),
        (*SVD, "--out", "myfolder", "--overwrite"),
        ("spectrum", "small.zarr", "--rank", "3", "--workers", "0", "--out", "afile.txt"),
        (
            "factorize",
            "small.zarr",
            "--rank",
            "2",
            "--max-iter",
            "2",
            "--workers",
            "0",
            "--out",
            "fulldir",
            "--overwrite",
        ),
        ("nmf", "ratings.zarr", "--rank", "2", "--workers", "0", "--out", "n.zarr"),
        ("svd", "m.npy", "--rank", "2", "--workers", "0", "--out", "x.zarr"),
    ]
    for args in runs:
        proc = invoke(*args, cwd=place)
        assert proc.returncode in (0, 2), (args, proc.stderr)
    after = snapshot(place)
    assert {k: v for k, v in after.items() if k in before} == before
    written = {k.split(os.sep)[0] for k in set(after) - set(before)}
    assert written == {"g.zarr", "m.zarr", "ratings.zarr", "r.zarr"}


# --- one set of flags -------------------------------------------------------------

_GLOBAL = {"--help", "-h", "--version", "--log-level", "-v", "--verbose"}


def _flags(command: str) -> set[str]:
    cmd = main.commands[command]
    return {o for p in cmd.params for o in getattr(p, "opts", [])} | _GLOBAL


def _doc_lines():
    docs = [ROOT / "README.md", *ROOT.glob("cluster/**/*"), *ROOT.glob("examples/*.md")]
    for path in docs:
        if path.is_file() and path.suffix in (".md", ".sh", ".yaml", ".yml", ".toml", ""):
            text = path.read_text(errors="replace").replace("\\\n", " ")
            for number, line in enumerate(text.splitlines(), 1):
                yield f"{path.relative_to(ROOT)}:{number}", line


def test_every_flag_a_document_names_exists_on_its_command():
    checked = 0
    for where, line in _doc_lines():
        for match in re.finditer(r"dlowrank\s+([a-z]+)\b([^|#;&`]*)", line):
            command, rest = match.group(1), match.group(2)
            if command not in main.commands:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
                assert flag in _flags(command), f"{where}: `dlowrank {command}` has no {flag}"
                checked += 1
    assert checked > 30  # the README and cluster recipes name many flags


JOB_COMMANDS = ("svd", "factorize", "nmf", "spectrum", "run")


def test_every_flag_a_message_names_exists_on_the_commands_it_is_said_of():
    """A job's output and runtime flags (named by the job layer's, checkpoints' and
    publishing's messages) exist on every job command and on `run`; any other flag
    the library names exists on some command."""
    from dlowrank.app.jobs import INPUT, OUTPUT, RUNTIME

    job_level = {o.flag for o in INPUT + OUTPUT + RUNTIME}
    group = {opt for p in main.params for opt in getattr(p, "opts", ())}  # --log-json, -v
    anywhere = set().union(group, *(_flags(c) for c in main.commands))
    found = set()
    for path in (ROOT / "dlowrank").rglob("*.py"):
        for flag in re.findall(r"[\"'(\s`](--[a-z][a-z-]+)", path.read_text()):
            found.add(flag)
            assert flag in anywhere, f"{path.name} names {flag}, which no command has"
            if flag in job_level:
                for command in JOB_COMMANDS:
                    assert flag in _flags(command), f"`dlowrank {command}` has no {flag}"
    assert {"--overwrite", "--restart", "--checkpoint", "--timeout"} <= found


def test_run_flags_override_the_job_file(place):
    job = place / "job.yaml"
    job.write_text("command: svd\ninput: small.zarr\nout: r.zarr\nrank: 3\nworkers: 0\n")
    assert invoke("run", job, "-q", cwd=place).returncode == 0
    job.write_text("command: svd\ninput: small.zarr\nout: r.zarr\nrank: 4\nworkers: 0\n")
    refused = invoke("run", job, "-q", cwd=place)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    done = invoke("run", job, "-q", "--overwrite", "--workers", "0", "--timeout", "600", cwd=place)
    assert done.returncode == 0, done.stderr
    assert dlowrank.load(place / "r.zarr").rank == 4


# --- --dry-run checks everything a run would fail on, before any cluster ------------

# A scheduler address nothing listens on: a command that tried to connect would fail
# with a cluster error, so exit 2 with the expected message proves it never tried.
NO_CLUSTER = {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9"}


def test_dry_run_refuses_what_the_run_would_refuse_without_a_cluster(place):
    from dlowrank.io.checkpoint import Checkpoint

    base = ("svd", "small.zarr", "--rank", "3", "-q")
    assert invoke(*base, "--workers", "0", "--out", "r.zarr", cwd=place).returncode == 0
    Checkpoint(place / "ck", {"command": "svd", "job": {"rank": 9}}).open()
    ro = place / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    (place / "ratings.csv").write_text("0,0,1.0\n1,2,2.0\n2,1,3.0\n")
    assert (
        invoke("convert", "ratings.csv", "--out", "ratings.zarr", "--ratings", cwd=place).returncode
        == 0
    )
    cases = [
        ((*base, "--out", "r.zarr", "--rank", "4"), "already exists"),
        ((*base, "--out", "s.zarr", "--checkpoint", "ck"), "belongs to another computation"),
        ((*base, "--out", "readonly/r.zarr"), "is not writable"),
        ((*base, "--out", "afile.txt/sub/r.zarr"), "is not writable"),  # a parent is a file
        (("nmf", "ratings.zarr", "--rank", "2", "--out", "n.zarr"), "ratings group"),
    ]
    try:
        for args, message in cases:
            for dry in (["--dry-run"], []):
                if os.geteuid() == 0 and "readonly/r.zarr" in args:
                    continue  # root writes into a read-only folder anyway
                proc = invoke(*args, *dry, cwd=place, env=NO_CLUSTER)
                assert proc.returncode == 2, (args, dry, proc.stderr)
                assert message in proc.stderr, (args, proc.stderr)
    finally:
        ro.chmod(0o755)


def test_dry_run_reports_a_valid_job_and_what_it_would_resume(place):
    proc = cli(
        "svd",
        "small.zarr",
        "--rank",
        "3",
        "--out",
        "r.zarr",
        "--dry-run",
        "--json",
        cwd=place,
        env=NO_CLUSTER,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "validated" and summary["already_done"] is False
    assert summary["checkpoint"] == "r.zarr.checkpoint" and summary["resumable_passes"] == 0


# --- exit codes by cause -----------------------------------------------------------


@pytest.mark.parametrize("name", ["m.npy", "m.h5", "m.csv"])
def test_a_file_that_is_not_zarr_exits_2_with_a_hint_to_convert(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x93NUMPY not really")
    proc = cli("svd", tmp_path / name, "--rank", "2", "--out", tmp_path / "r.zarr")
    assert proc.returncode == 2
    assert "is not a Zarr array" in proc.stderr and "dlowrank convert" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_fsspec_backend_exits_2_naming_the_package(tmp_path):
    pytest.importorskip("click")
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    proc = cli("svd", "s3://bucket/a.zarr", "--rank", "2", "--out", tmp_path / "r.zarr")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3fs" in lines[0] and "dlowrank[s3]" in lines[0]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_pass_over_its_limit_exits_4_naming_the_pass_and_the_limit(tmp_path, workers):
    dlowrank.generate(tmp_path / "a.zarr", (4000, 200), 5, chunks=(100, 200), seed=0)
    proc = cli(
        "svd",
        tmp_path / "a.zarr",
        "--rank",
        "3",
        "--out",
        tmp_path / "r.zarr",
        "--timeout",
        "0.001",
        "--workers",
        workers,
        "-q",
    )
    assert proc.returncode == 4, proc.stderr
    assert re.search(r"pass 1 did not finish within the pass limit of 0.001 s", proc.stderr)
    assert not (tmp_path / "r.zarr").exists() and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.zarr.checkpoint").exists()  # nothing completed: removed


def test_a_closed_stdout_pipe_exits_quietly(place):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before dlowrank writes (`| head -0`)
    try:
        proc = cli("info", "small.zarr", cwd=place, stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_a_failed_job_keeps_its_checkpoint_and_says_how_to_resume(place):
    from dlowrank.app.jobs import JobConfig, run_job

    cfg = JobConfig.from_dict(
        {
            "command": "svd",
            "input": str(place / "small.zarr"),
            "out": str(place / "r.zarr"),
            "rank": 3,
            "workers": 0,
        }
    )

    def fail_after_pass_1(ev):
        if ev.stage == "done" and ev.index == 1:
            raise OSError("the storage went away")

    with pytest.raises(OSError) as caught:
        run_job(cfg, progress=fail_after_pass_1)
    note = " ".join(getattr(caught.value, "__notes__", []))
    assert "r.zarr.checkpoint keeps 1 completed pass" in note and "--restart" in note
    assert (place / "r.zarr.checkpoint" / "checkpoint.json").exists()
    resumed = CliRunner().invoke(
        main,
        [
            "svd",
            str(place / "small.zarr"),
            "--rank",
            "3",
            "--out",
            str(place / "r.zarr"),
            "--workers",
            "0",
        ],
    )
    assert resumed.exit_code == 0 and "restored from the checkpoint" in resumed.output
    assert not (place / "r.zarr.checkpoint").exists()


# --- quiet by default --------------------------------------------------------------


def test_a_local_cluster_run_prints_only_dlowranks_lines(place):
    proc = cli(
        "factorize",
        "small.zarr",
        "--rank",
        "4",
        "--weight-decay",
        "0.01",
        "--max-iter",
        "3",
        "--tol",
        "1e-15",
        "--out",
        "f.zarr",
        "--workers",
        "1",
        cwd=place,
    )
    assert proc.returncode == 0, proc.stderr
    for line in proc.stderr.strip().splitlines():
        assert re.match(r"\d\d:\d\d:\d\d pass \d+ done", line), proc.stderr
    assert "not converged after 3 iterations" in proc.stdout
    loud = cli(
        "--log-level",
        "debug",
        "svd",
        "small.zarr",
        "--rank",
        "2",
        "--out",
        "r.zarr",
        "--workers",
        "1",
        cwd=place,
    )
    assert loud.returncode == 0 and "distributed" in loud.stderr


# --- job-file paths ----------------------------------------------------------------


def test_job_file_paths_resolve_against_the_job_files_folder(place, tmp_path_factory):
    jobs = place / "jobs"
    jobs.mkdir()
    (jobs / "job.yaml").write_text(
        "command: svd\ninput: ../small.zarr\nout: results/r.zarr\nrank: 3\nworkers: 0\n"
    )
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = cli("run", jobs / "job.yaml", "-q", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert dlowrank.load(jobs / "results" / "r.zarr").rank == 3
    assert not list(elsewhere.iterdir())
    assert "outside the job file's folder" in proc.stderr  # input: ../small.zarr


# --- honest defaults ---------------------------------------------------------------


def test_results_have_a_short_repr():
    r = dlowrank.randomized_svd(np.random.default_rng(0).standard_normal((300, 40)), 5)
    text = repr(r)
    assert len(text) < 160 and "rank=5" in text and "shape=(300, 40)" in text


def test_spectrum_summary_without_total_energy_says_what_its_energy_is():
    s = 0.9 ** np.arange(20)
    partial = dlowrank.spectrum_summary(s, full_rank=4000)
    assert "relative to those values only" in partial.message
    whole = dlowrank.spectrum_summary(s, full_rank=4000, total_energy=2 * float(np.sum(s**2)))
    assert "relative" not in whole.message and whole.ranks_for_energy["0.9"] is None


def test_default_factorize_tolerance_is_reached_and_said(tmp_path):
    dlowrank.generate(
        tmp_path / "a.zarr",
        (3000, 200),
        100,
        decay=0.95,
        scale=1000,
        noise=1e-3,
        chunks=(1000, 200),
        seed=0,
    )
    res = CliRunner().invoke(
        main,
        [
            "factorize",
            str(tmp_path / "a.zarr"),
            "--rank",
            "10",
            "--weight-decay",
            "0.5",
            "--workers",
            "0",
            "--out",
            str(tmp_path / "f.zarr"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert re.search(r"converged after \d+ iterations \(tol 1e-06\)", res.output)
    assert zarr.open_group(str(tmp_path / "f.zarr")).attrs["dlowrank"]["converged"] is True
