"""Each option is declared once: the function signature, the job keys and the CLI flags
agree with the declaration, including defaults and help; deprecated names still work."""

from __future__ import annotations

import inspect
import warnings

import click
import numpy as np
import pytest
from click.testing import CliRunner

import dlowrank
from dlowrank.app.cli import main
from dlowrank.app.jobs import COMMANDS, GROWTH, INPUT, OUTPUT, RUNTIME, JobConfig
from dlowrank.factorization import FUNCTIONS as FACTORIZATIONS
from dlowrank.streaming import FUNCTIONS as STREAMING

FUNCTIONS = {**STREAMING, **FACTORIZATIONS}
#: The functions each job command calls.
CALLS = {
    "svd": ("randomized_svd", "sketch_svd"),
    "factorize": ("factorize",),
    "nmf": ("nmf",),
    "spectrum": ("randomized_svd",),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_signature_is_the_declaration(name):
    fn, spec = FUNCTIONS[name]
    params = list(inspect.signature(fn).parameters.values())
    assert params[0].name == "a"
    declared = {p.name: p.default for p in spec.params}
    declared.update({old: None for p in spec.params for old in p.aliases})
    got = {p.name: p.default for p in params[1:]}
    required = {k for k, v in got.items() if v is inspect.Parameter.empty}
    assert required == {"rank"} or (name == "randomized_svd" and not required)
    got = {k: (None if v is inspect.Parameter.empty else v) for k, v in got.items()}
    assert got == declared
    for p in spec.params:  # every parameter is documented in the function's docstring
        assert p.name in fn.__doc__, (name, p.name)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_job_keys_and_flags_are_the_declarations(command):
    options = {o.name: o for o in COMMANDS[command]}
    for fname in CALLS[command]:
        _, spec = FUNCTIONS[fname]
        for p in spec.params:
            if p.role == "api" or (command == "spectrum" and p.name in ("symmetric",)):
                continue
            if command == "spectrum" and p.name not in options:
                continue  # spectrum exposes the rank-and-sketch subset only
            assert p.name in options, (command, p.name)
            assert options[p.name].kind == p.kind and options[p.name].role == p.role
    for shared in INPUT + OUTPUT + RUNTIME:
        assert options[shared.name] is shared or options[shared.name].name == shared.name
    flags = {
        opt: p
        for p in main.commands[command].params
        if isinstance(p, click.Option)
        for opt in p.opts + p.secondary_opts
    }
    for o in options.values():
        flag = flags[o.flag]
        assert flag.help == o.help
        assert flag.default == (False if o.kind is bool else o.default)
        for old in o.aliases:  # a deprecated name is a hidden flag of its own
            assert flags[f"--{old.replace('_', '-')}"].hidden
    generic = {"--out", "--dry-run", "--json", "--quiet", "-q"}
    aliases = {f"--{a.replace('_', '-')}" for o in options.values() for a in o.aliases}
    assert set(flags) - generic - aliases == {o.flag for o in options.values()}


def test_the_run_command_overrides_exactly_the_shared_options():
    flags = {
        opt for p in main.commands["run"].params if isinstance(p, click.Option) for opt in p.opts
    }
    shared = {o.flag for o in INPUT + OUTPUT + GROWTH + RUNTIME}  # GROWTH: svd's schedule
    assert shared <= flags
    assert flags - shared == {"--dry-run", "--json", "--quiet", "-q"}


def test_the_job_seed_and_the_function_seed_agree():
    cfg = JobConfig.from_dict({"command": "svd", "input": "a.zarr", "out": "r.zarr", "rank": 2})
    assert (
        cfg.options["seed"]
        == inspect.signature(dlowrank.randomized_svd).parameters["seed"].default
        == 0
    )
    for size in (7, [7, 15]):  # the job's sketch_size takes what the function takes
        data = {"command": "svd", "input": "a", "out": "r", "rank": 2, "sketch_size": size}
        assert JobConfig.from_dict(data).options["sketch_size"] == size


def test_deprecated_names_still_work_and_say_so(tmp_path):
    t = dlowrank.make_matrix((400, 60), 10, seed=0, chunks=(100, 60))
    with pytest.warns(DeprecationWarning, match="`tol` is deprecated; use `max_error`"):
        old = dlowrank.randomized_svd(t.array, tol=0.3)
    new = dlowrank.randomized_svd(t.array, max_error=0.3)
    assert old.rank == new.rank and old.params == new.params
    with pytest.warns(DeprecationWarning, match="`method` is deprecated; use `solver`"):
        f = dlowrank.factorize(t.array, 3, method="gd", max_iter=20)
    assert f.algorithm == "factorize_gd"
    with pytest.raises(dlowrank.errors.ParameterError, match="not both"):
        dlowrank.randomized_svd(t.array, tol=0.3, max_error=0.2)
    path = str(tmp_path / "a.zarr")
    t.array.to_zarr(path)
    res = CliRunner().invoke(
        main, ["svd", path, "--out", str(tmp_path / "r.zarr"), "--tol", "0.3", "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    assert "warning: `tol` is deprecated; use `max_error` (--max-error" in res.output
    assert dlowrank.load(tmp_path / "r.zarr").rank == new.rank
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names warn about nothing
        dlowrank.factorize(t.array, 3, solver="gd", max_iter=5)
    np.testing.assert_allclose(old.s, new.s)


def test_values_the_declarations_accept_and_refuse(tmp_path):
    a = dlowrank.make_matrix((300, 40), 5, seed=0).array.compute()
    r = dlowrank.randomized_svd(a, 3, seed=None)  # fresh entropy, stored so it replays
    again = dlowrank.randomized_svd(a, 3, seed=r.seed)
    np.testing.assert_array_equal(r.s, again.s)
    sym = a.T @ a
    assert dlowrank.randomized_svd(sym, 3, symmetric=np.True_).algorithm == "randomized_eigh"
    with pytest.raises(
        dlowrank.errors.ParameterError, match=r"`rank` must be an integer in \[1, min"
    ):
        dlowrank.randomized_svd(a, 3.0)
    with pytest.raises(dlowrank.errors.ParameterError, match="`memory` must be a memory size"):
        dlowrank.randomized_svd(a, 3, memory="auto")
    budgeted = dlowrank.randomized_svd(a, 3, memory="64MB")
    np.testing.assert_allclose(budgeted.s, dlowrank.randomized_svd(a, 3).s, rtol=1e-12)
    path = str(tmp_path / "a.zarr")
    dlowrank.make_matrix((300, 40), 5, seed=0).array.to_zarr(path)
    res = CliRunner().invoke(
        main, ["svd", path, "--out", str(tmp_path / "r"), "--rank", "3", "--memory", "auto"]
    )
    assert res.exit_code == 2 and "`memory` must be a memory size" in res.output, res.output
