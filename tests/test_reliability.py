"""Issue #8: bad input is refused before any work, faults become rows, and a killed run loses nothing.

Bad scenarios: every mistake exits 2 with one line naming the file, the field and the fix. Faults: a
solver that raises (``error``), hangs (``timeout``: its forked child is killed), a budget below the
floor (``infeasible``, the floor in the message) and a plan that runs out of memory (``oom``). A run
SIGKILLed mid-way and resumed gives the rows an uninterrupted run gives; two runs of one scenario give
the same plans.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mutwo.compare import COLUMNS, main
from mutwo.memory import MemoryLimitExceeded, OpOutputTracker, memory_limit
from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.sandbox import SolverProcessError, SolverTimeout, run_solver
from mutwo.scenario import ScenarioError, load_scenario
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual

TESTS = Path(__file__).parent
ROOT = TESTS.parent
TOY = ROOT / "scenarios" / "toy_mlp.yaml"
# columns that depend only on the scenario, the seed and the profile (not on timing of this run)
DETERMINISTIC = ["batch_size", "solver", "budget", "budget_bytes", "status", "predicted_peak_bytes",
                 "predicted_time_s", "recompute_s", "stall_s", "keep_all_peak_bytes", "n_keep", "n_recompute",
                 "n_swap", "schedule_file"]


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    """One profile cache for the session (shared with test_compare): runs see identical Problems."""
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


# ---------------------------------------------------------------------- solvers that misbehave
@register_solver("test_hang")
def _hang(problem, budget_bytes, *, pid_file: str = "", helper: bool = False, **options):
    """Hangs; records its pid (and starts a helper process, as a MIP solver starts its binary)."""
    pids = [os.getpid()]
    if helper:
        pids.append(subprocess.Popen(["sleep", "60"]).pid)
    if pid_file:
        Path(pid_file).write_text(" ".join(map(str, pids)))
    time.sleep(60)
    raise AssertionError("not killed")


class _TwoArgError(Exception):
    """An exception that does not survive pickling (its __init__ takes two arguments)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"two-arg failure {a}/{b}")


@register_solver("test_raises")
def _raises(problem, budget_bytes, *, kind: str = "value", **options):
    if kind == "value":
        raise ValueError(f"bad budget {budget_bytes}")
    if kind == "two-arg":
        raise _TwoArgError(1, 2)
    if kind == "exit":
        sys.exit(3)
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(kind)


@register_solver("test_interrupt_once")
def _interrupt_once(problem, budget_bytes, *, flag: str, **options):
    """Ctrl-C on the first call (as if the user pressed it while this solver ran), keep-all after."""
    if not Path(flag).exists():
        Path(flag).write_text("interrupted")
        raise KeyboardInterrupt
    return Schedule.keep_all(problem)


@register_solver("test_slow_keep")  # sleeps, then returns keep-all and the pid it ran in
def _slow_keep(problem, budget_bytes, *, seconds: float = 0.2, **options):
    time.sleep(seconds)
    return Schedule.keep_all(problem, message=f"pid {os.getpid()}")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# ---------------------------------------------------------------------- bad input
BASE = {"name": "bad", "model": "mlp", "model_options": {"width": 16, "depth": 2}, "batch_size": 8,
        "optimizer": {"name": "sgd", "options": {"momentum": 0.0}}, "device": "cpu", "budgets": [1.0],
        "solvers": ["keep_all"], "profile": {"runs": 1, "warmup": 0}}

# (case, changes to BASE, the field the message must name, a fragment of the fix it must give)
BAD_INPUTS = [
    ("unknown key", {"budget": [0.5]}, "'budget'", "did you mean 'budgets'"),
    ("unknown nested key", {"execute": {"iterations": 1, "memory_limt": "1GiB"}}, "execute.memory_limt",
     "did you mean 'memory_limit'"),
    ("wrong type: seed", {"seed": "abc"}, "'seed'", "write a whole number"),
    ("wrong type: execute.enabled", {"execute": {"enabled": "maybe"}}, "'execute.enabled'", "true or false"),
    ("wrong type: batch_size", {"batch_size": "two"}, "'batch_size'", "e.g. batch_size: [2, 4]"),
    ("wrong type: solvers entry", {"solvers": [5]}, "'solvers[0]'", "a registered name"),
    ("unknown model", {"model": "resnet15"}, "'model'", "did you mean 'resnet152'"),
    ("unknown solver", {"solvers": ["mutwo_gredy"]}, "'solvers[0].name'", "did you mean 'mutwo_greedy'"),
    ("decimal size unit", {"budgets": ["6GB"]}, "'budgets[0]'", "write '6GiB'"),
    ("negative size", {"budgets": ["-1GiB"]}, "'budgets[0]'", "must be positive"),
    ("zero budget", {"budgets": [0]}, "'budgets[0]'", "fraction of the keep-all peak"),
    ("negative budget", {"budgets": [0.5, -0.5]}, "'budgets[1]'", "outside (0, 1]"),
    ("zero batch size", {"batch_size": 0}, "'batch_size'", "must be > 0"),
    ("negative batch size", {"batch_size": [2, -1]}, "'batch_size'", "must be > 0"),
    ("module that does not import", {"model": "no_such_pkg.models:build"}, "'model'", "PYTHONPATH"),
    ("function missing", {"model": "tests.fixtures_user_model:biuld"}, "'model'", "did you mean 'build'"),
    ("annotated wrong return type", {"model": "tests.fixtures_bad_builders:annotated_list"}, "'model'",
     "must return mutwo.capture.Workload"),
    ("builder option it does not take", {"model": "tests.fixtures_user_model:build",
                                         "model_options": {"hiden": 8}}, "'model_options'",
     "did you mean 'hidden'"),
    ("zoo model option typo", {"model": "resnet18", "model_options": {"image_sise": 32}}, "'model_options'",
     "did you mean 'image_size'"),
    ("optimizer option typo", {"optimizer": {"name": "sgd", "options": {"momentom": 0.9}}},
     "'optimizer.options'", "did you mean 'momentum'"),
    ("empty solver list", {"solvers": []}, "'solvers'", "list at least one"),
    ("device not one of the choices", {"device": "gpu"}, "'device'", "'auto', 'cpu' or 'cuda'"),
    ("bad memory limit", {"execute": {"memory_limit": "20GB"}}, "'execute.memory_limit'", "write '20GiB'"),
    ("zero solve timeout", {"solve": {"timeout_s": 0}}, "'solve.timeout_s'", "greater than 0"),
    ("ILP limit above the hard limit", {"solvers": [{"name": "ilp_cpsat", "options": {"time_limit_s": 60},
                                                     "timeout_s": 30}]},
     "'solvers[0].options.time_limit_s'", "raise solvers[0].timeout_s"),
    ("baseline option typo", {"solvers": ["keep_all", {"name": "chen_sqrt", "options": {"segmnts": 3}}]},
     "'solvers[1].options'", "unknown chen_sqrt option 'segmnts'; did you mean 'segments'? chen_sqrt takes: "
                             "segments, share"),
    ("option for a baseline that takes none", {"solvers": [{"name": "knapsack", "options": {"segmnts": 3}}]},
     "'solvers[0].options'", "unknown knapsack option 'segmnts'; knapsack takes no options: remove it"),
    ("mutwo_greedy option typo", {"solvers": [{"name": "mutwo_greedy", "options": {"mdoe": "both"}}]},
     "'solvers[0].options'", "did you mean 'mode'? mutwo_greedy takes: mode, seed, verify"),
    ("ILP option typo", {"solvers": [{"name": "ilp_cpsat", "options": {"time_limt_s": 30}}]},
     "'solvers[0].options'", "did you mean 'time_limit_s'? ilp_cpsat takes: time_limit_s, rel_gap,"),
    ("option of another ILP backend", {"solvers": [{"name": "ilp_pulp_cbc", "options": {"engine": "CBC"}}]},
     "'solvers[0].options'", "unknown ilp_pulp_cbc option 'engine'; ilp_pulp_cbc takes: time_limit_s,"),
    ("solver option value typo", {"solvers": [{"name": "mutwo_greedy", "options": {"mode": "recomput"}}]},
     "'solvers[0].options'", "mutwo_greedy option 'mode' is 'recomput'; did you mean 'recompute'? it takes 'both', "
                             "'recompute' or 'swap'"),
    ("solver option value out of range", {"solvers": [{"name": "chen_sqrt", "options": {"segments": 0}}]},
     "'solvers[0].options'", "it takes an integer >= 1 or null"),
    ("solver the plan space excludes", {"plan_space": "recompute", "solvers": ["keep_all", "swap_hidden"]},
     "'solvers[1]'", "remove swap_hidden from solvers, or allow SWAP in plan_space"),
    ("solver mode outside the plan space", {"plan_space": {"recompute": True, "swap": False},
                                            "solvers": [{"name": "mutwo_greedy", "options": {"mode": "swap"}}]},
     "'solvers[0]'", "drop the option, or write mode: recompute"),
    ("solver module that does not import", {"solvers": ["no_such_pkg.solvers:mine"]}, "'solvers[0].name'",
     "cannot import module 'no_such_pkg.solvers'"),
    ("solver function missing", {"solvers": ["tests.fixtures_user_solver:recompute_shar"]}, "'solvers[0].name'",
     "did you mean 'recompute_share'?"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append(("cuda without a GPU", {"device": "cuda"}, "'device'", "use device: auto or cpu"))


def _bad_run(tmp_path: Path, capsys, changes: dict, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    rc = main([str(path), "--out", str(tmp_path / "out"), "--quiet", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err  # names the file
    return err


@pytest.mark.parametrize("changes, field, fix", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_field_and_the_fix(tmp_path, capsys, changes, field, fix):
    err = _bad_run(tmp_path, capsys, changes)
    assert field in err and fix in err
    assert not (tmp_path / "out").exists(), "refused before any run folder (or model) was made"


def test_plan_space_from_the_command_line_is_checked_like_the_file(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "solvers": ["keep_all", "swap_hidden"]}))
    rc = main([str(path), "--plan-space", "recompute", "--out", str(tmp_path / "out"), "--quiet", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == (f"error: {path}: field 'solvers[1]': swap_hidden makes SWAP plans (it has no mode option), "
                           f"but plan_space allows recompute only; remove swap_hidden from solvers, or allow SWAP "
                           f"in plan_space")
    assert not (tmp_path / "out").exists()


def test_solver_option_typo_is_refused_through_the_cli_solvers_path_too(tmp_path, capsys):
    """With --solvers the file is checked as a whole first (whichever solvers are picked), then the
    picked ones are validated again as overrides, their options with them."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "solvers": ["keep_all", {"name": "mutwo_greedy",
                                                                     "options": {"mdoe": "swap"}}]}))
    for picked in ("mutwo_greedy", "keep_all"):
        rc = main([str(path), "--solvers", picked, "--out", str(tmp_path / "out"), "--quiet", "--no-plots"])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.strip() == (f"error: {path}: field 'solvers[1].options': unknown mutwo_greedy option "
                               f"'mdoe'; did you mean 'mode'? mutwo_greedy takes: mode, seed, verify")
    assert not (tmp_path / "out").exists()
    # the second validation (what --solvers passes to load_scenario) checks options too
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ScenarioError) as info:
        load_scenario(good, {"solvers": [{"name": "swap_hidden", "options": {"margn": 2.0}}]})
    assert str(info.value) == (f"{good}: field 'solvers[0].options': unknown swap_hidden option 'margn'; "
                               f"did you mean 'margin'? swap_hidden takes: margin")
    assert load_scenario(good, {"solvers": [{"name": "swap_hidden", "options": {"margin": 2.0}}]}).solvers[0].options \
        == {"margin": 2.0}


def test_builder_returning_the_wrong_type_stops_before_capture(tmp_path, capsys):
    err = _bad_run(tmp_path, capsys, {"model": "tests.fixtures_bad_builders:returns_a_dict", "model_options": {}})
    assert "'model'" in err and "returned dict, expected mutwo.capture.Workload" in err
    run = next((tmp_path / "out" / "bad").iterdir())
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "returned dict" in info["error"]
    assert not (run / "batch8" / "problem.npz").exists()


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "budgets": ["6GB"]}))
    res = subprocess.run([sys.executable, "-m", "mutwo.compare", str(path), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"error: {path}: field 'budgets[0]': '6GB' has unit 'GB'; sizes use binary "
                                  f"units (1 GiB = 2^30 bytes): write '6GiB'")


# ---------------------------------------------------------------------- solver faults
def test_run_solver_in_a_child_keeps_types_messages_and_solve_time():
    p = chain(6)
    s = run_solver("test_slow_keep", p, 10**12, {"seconds": 0.2}, timeout_s=30)
    assert s.message != f"pid {os.getpid()}", "ran in a child process"
    assert 0.2 <= s.solve_time_s < 1.0 and s.solver == "test_slow_keep"  # the solver's time, not the fork's
    s = run_solver("test_slow_keep", p, 10**12, {"seconds": 0.0}, timeout_s=None)
    assert s.message == f"pid {os.getpid()}", "timeout_s=None runs in this process"
    with pytest.raises(ValueError, match="bad budget 123") as info:
        run_solver("test_raises", p, 123, timeout_s=30)
    assert "_raises" in info.value.child_traceback  # the child's traceback, for --debug
    with pytest.raises(SolverProcessError, match="two-arg failure 1/2") as info:
        run_solver("test_raises", p, 1, {"kind": "two-arg"}, timeout_s=30)
    assert info.value.type_name == "_TwoArgError"
    with pytest.raises(SolverProcessError, match="SystemExit"):
        run_solver("test_raises", p, 1, {"kind": "exit"}, timeout_s=30)
    with pytest.raises(SolverProcessError, match="died \\(signal SIGKILL\\)"):
        run_solver("test_raises", p, 1, {"kind": "die"}, timeout_s=30)


def test_hanging_solver_is_killed_with_its_helpers(tmp_path):
    pid_file = tmp_path / "pids"
    t0 = time.perf_counter()
    with pytest.raises(SolverTimeout, match="hard time limit of 0.5 s"):
        run_solver("test_hang", chain(4), 1, {"pid_file": str(pid_file), "helper": True}, timeout_s=0.5)
    assert time.perf_counter() - t0 < 5
    pids = [int(x) for x in pid_file.read_text().split()]
    assert len(pids) == 2 and pids[0] != os.getpid()
    deadline = time.time() + 5
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), "the child and the helper it started are killed"


def _scenario(tmp_path: Path, name: str = "rel", **changes) -> Path:
    data = yaml.safe_load(TOY.read_text())
    data.update({"name": name, "profile": {"runs": 1, "warmup": 0},
                 "execute": {"iterations": 1, "warmup": 0}, **changes})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _go(path: Path, out: Path, *extra: str, run_id: str = "r") -> int:
    return main([str(path), "--out", str(out), "--run-id", run_id, "--quiet", "--no-plots", *extra])


def test_faults_are_rows_and_the_run_goes_on(tmp_path):
    pid_file = tmp_path / "pids"
    path = _scenario(tmp_path, budgets=[1.0, "1KiB"], solvers=[
        "mutwo_greedy", {"name": "test_hang", "options": {"pid_file": str(pid_file)}, "timeout_s": 0.5},
        {"name": "test_raises", "options": {"kind": "two-arg"}}, "knapsack"])
    assert _go(path, tmp_path, "--no-execute") == 0
    df = pd.read_csv(tmp_path / "rel" / "r" / "results.csv")
    assert list(df.columns) == COLUMNS and len(df) == 8
    hang = df[df["solver"] == "test_hang"]
    assert (hang["solve_time_s"] == 0.5).all() and hang["message"].str.contains("hard time limit of 0.5 s").all()
    assert not _alive(int(pid_file.read_text().split()[0]))
    raised = df[df["solver"] == "test_raises"]
    assert raised["message"].str.contains("_TwoArgError: two-arg failure 1/2").all()
    # at a budget it could meet, a failing solver is its failure; below the floor the cell is infeasible
    # all the same (the floor proves it), and the message says what the solver did
    assert hang[hang["budget"] == "1"]["status"].tolist() == ["timeout"]
    assert raised[raised["budget"] == "1"]["status"].tolist() == ["error"]
    report = (tmp_path / "rel" / "r" / "report.md").read_text().split("## Errors", 1)[1]
    assert "test_hang @ 1: timeout" in report and "test_raises @ 1: error" in report
    failed_low = df[(df["budget"] == "1KiB") & df["solver"].isin(["test_hang", "test_raises"])]
    assert (failed_low["status"] == "infeasible").all()
    assert failed_low["message"].str.contains("the solver did not say so: its call (?:timed out|raised)").all()
    # the budget below the floor: every solver that answered says infeasible and names the floor
    problem = Problem.load(tmp_path / "rel/r/batch256/problem.npz")
    floor, _ = problem.peak_floor()
    low = df[df["budget"] == "1KiB"]
    assert (low["status"] == "infeasible").all()
    assert low["message"].str.contains(f"no plan can peak below {floor} B").all()
    ok = df[(df["budget"] == "1") & df["solver"].isin(["mutwo_greedy", "knapsack"])]
    assert ok["status"].isin(["feasible", "optimal"]).all() and not ok["message"].str.contains("floor").any()


def test_budget_below_the_floor_is_infeasible_for_every_builtin_solver(tmp_path):
    """The built-in solvers (fast ones) say infeasible just below the floor, and the row names it."""
    from mutwo.cell import CellContext, PlanMemo, run_cell
    from mutwo.pipeline import Prepared
    from mutwo.scenario import Budget, validate_scenario

    problem = residual(4, seed=1)
    floor, _ = problem.peak_floor()
    keep = simulate(problem, Schedule.keep_all(problem))
    names = ["keep_all", "recompute_all", "chen_sqrt", "largest_first", "knapsack", "swap_hidden", "mutwo_greedy",
             "ilp_cpsat", "checkmate_exact"]
    sc = validate_scenario({"name": "f", "model": "mlp", "batch_size": 1, "budgets": [1.0], "solvers": names,
                            "solve": {"timeout_s": None}})
    batch = Prepared(1, problem, keep.peak_bytes, keep.time_s, info={})
    assert batch.floor == problem.peak_floor()
    for spec in sc.solvers:
        if spec.name.startswith(("ilp", "checkmate")):
            spec.options = {"time_limit_s": 5}
        ctx = CellContext(sc, "cpu", tmp_path, None, "not executed")
        row = run_cell(ctx, batch, PlanMemo(), spec, Budget(nbytes=floor - 1))
        assert row.status == "infeasible", (spec.name, row.message)
        assert f"no plan can peak below {floor} B" in row.message, spec.name


@pytest.mark.parametrize("make", [lambda s: chain(6 + s), lambda s: residual(3, seed=s),
                                  lambda s: random_dag(25, seed=s)], ids=["chain", "residual", "random_dag"])
def test_floor_is_a_lower_bound_on_every_plan(make):
    rng = np.random.default_rng(0)
    for seed in range(3):
        problem = make(seed)
        floor, t = problem.peak_floor()
        assert problem.fixed_bytes.max() <= floor <= simulate(problem, Schedule.keep_all(problem)).peak_bytes
        for _ in range(20):
            d = rng.integers(0, 3, problem.n_act).astype(np.int8)
            d[(d == 1) & ~problem.recomputable] = 0
            d[(d == 2) & ~problem.swappable] = 0
            try:
                peak = simulate(problem, Schedule.from_decisions(problem, d)).peak_bytes
            except ValueError:  # a recompute reading a swapped-out source: not a plan
                continue
            assert peak >= floor


# ---------------------------------------------------------------------- out of memory
def test_memory_guard_raises_as_soon_as_live_bytes_exceed_the_limit():
    with OpOutputTracker() as tr:  # no limit: counts only
        a = torch.zeros(10_000)
    assert tr.peak == 40_000 and tr.limit_bytes is None
    caught = None
    with memory_limit(60_000):
        tr = OpOutputTracker([a])  # a: 40,000 bytes live from the start
        try:
            with tr:
                b = torch.ones(2_500)  # 50,000 live: fits
                assert tr.current == 50_000
                c = torch.ones(2_500)  # 60,000: fits exactly
                torch.ones(1)  # 60,004: over
        except MemoryLimitExceeded as exc:
            caught = (exc.current, exc.limit, str(exc))
    assert caught is not None and caught[:2] == (60_004, 60_000) and "memory limit of 60000 bytes" in caught[2]
    gc.collect()
    assert tr.current == 60_000, "the tensor that crossed the limit is freed as the error unwinds"
    del b, c
    assert tr.current == 40_000
    with OpOutputTracker() as tr:
        torch.zeros(100_000)
    assert tr.limit_bytes is None, "the limit ends with its context"


def test_plan_out_of_memory_is_a_row_and_the_run_goes_on(tmp_path):
    limit = 400 * 1024  # between the toy MLP's keep-all peak (~480 KiB) and its floor (~337 KiB)
    path = _scenario(tmp_path, budgets=[1.0, 0.75], solvers=["keep_all", "mutwo_greedy"],
                     execute={"iterations": 1, "warmup": 0, "memory_limit": "400KiB"})
    assert _go(path, tmp_path) == 0
    df = pd.read_csv(tmp_path / "rel" / "r" / "results.csv")
    info = json.loads((tmp_path / "rel/r/batch256/keep_all.json").read_text())
    assert info["keep_all_peak_bytes"] > limit > info["floor_bytes"]
    assert info["execute_error"].startswith("out of memory: MemoryLimitExceeded")
    planned = df[df["status"] != "infeasible"]  # keep-all at 0.75 is not a plan for that budget
    over = planned[planned["predicted_peak_bytes"] > limit]
    assert len(over) == 2 and (over["status"] == "oom").all() and not over["executed"].any()
    assert over["message"].str.contains("ran out of memory: MemoryLimitExceeded").all()
    under = planned[planned["predicted_peak_bytes"] <= limit]
    assert len(under) >= 1 and under["executed"].all() and (under["status"] == "feasible").all()
    # on CPU a swap's host copy is in the same memory: the device figure of swap plans is the emulated one
    device = under["emulated_device_peak_bytes"].fillna(under["measured_peak_bytes"])
    assert (device <= limit).all() and (under["max_rel_diff"] < 1e-6).all()


# ---------------------------------------------------------------------- interruptions and resume
def _complete(run: Path) -> None:
    """Every file a (killed) run left is whole: JSON parses, CSVs parse, cells.jsonl lines parse."""
    for f in run.rglob("*"):
        if not f.is_file() or ".tmp" in f.name:
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".csv":
            pd.read_csv(f)
        elif f.suffix == ".npz":
            np.load(f).files  # noqa: B018 - opening it is the check
    lines = (run / "cells.jsonl").read_text().split("\n") if (run / "cells.jsonl").exists() else []
    for line in lines[:-1]:  # the last may be torn by the kill
        json.loads(line)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    budgets = [round(1.0 - 0.02 * i, 2) for i in range(15)]  # 4 solvers x 15 budgets = 60 cells
    path = _scenario(tmp_path, budgets=budgets, solvers=["keep_all", "knapsack", "mutwo_greedy", "chen_sqrt"])
    # the reference: uninterrupted, with the same profile cache
    assert _go(path, tmp_path, "--no-execute", run_id="full") == 0
    run = tmp_path / "rel" / "killed"
    cells = run / "cells.jsonl"

    def start(*extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "mutwo.compare", str(path), "--out", str(tmp_path), "--run-id", "killed",
               "--quiet", "--no-plots", "--no-execute", *extra]
        # the same torch thread count as the in-process reference run: it is part of the profile cache key
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # kill 1: as soon as the run folder is there (while the model is built / captured)
    _kill_when(start(), lambda: (run / "run.json").exists())
    _complete(run)
    # kill 2: resumed, then killed again after a few cells
    _kill_when(start("--resume"), lambda: len(_lines(cells)) >= 6)
    _complete(run)
    before = []
    for line in _lines(cells):
        try:
            json.loads(line)
            before.append(line)
        except json.JSONDecodeError:  # torn by the kill
            pass
    assert 6 <= len(before) < 60
    # finish it here
    assert _go(path, tmp_path, "--no-execute", "--resume", run_id="killed") == 0
    after = _lines(cells)
    assert len(after) == 60 and after[: len(before)] == before, "finished cells are kept, not redone"
    assert not list(run.rglob("*.tmp*")), "no partial files left"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["cells_resumed"] == len(before)
    full = pd.read_csv(tmp_path / "rel" / "full" / "results.csv")
    resumed = pd.read_csv(run / "results.csv")
    pd.testing.assert_frame_equal(full[DETERMINISTIC], resumed[DETERMINISTIC])
    for f in full["schedule_file"].dropna():
        a, b = Schedule.load(tmp_path / "rel" / "full" / f), Schedule.load(run / f)
        assert a.plan_key() == b.plan_key() and a.status == b.status


def test_same_scenario_and_seed_give_the_same_plans(tmp_path):
    path = _scenario(tmp_path, solvers=["keep_all", "recompute_all", "chen_sqrt", "knapsack", "mutwo_greedy",
                                        "swap_hidden", "largest_first"])
    for run_id in ("one", "two"):
        assert _go(path, tmp_path, "--no-execute", run_id=run_id) == 0
    one, two = (pd.read_csv(tmp_path / "rel" / r / "results.csv") for r in ("one", "two"))
    pd.testing.assert_frame_equal(one[DETERMINISTIC], two[DETERMINISTIC])
    assert (one["n_recompute"] + one["n_swap"]).gt(0).any(), "some plans do decide something"
    for f in one["schedule_file"].dropna():
        a, b = (json.loads((tmp_path / "rel" / r / f).read_text()) for r in ("one", "two"))
        for k in ("decisions", "prefetch_at", "status", "recompute_at", "budget_bytes"):
            assert json.dumps(a.get(k)) == json.dumps(b.get(k)), (f, k)  # byte-identical decisions
    for name in ("problem.npz",):
        pa, pb = (np.load(tmp_path / "rel" / r / "batch256" / name) for r in ("one", "two"))
        assert all(np.array_equal(pa[k], pb[k]) for k in pa.files)


def test_interrupted_run_is_recorded_and_resumable(tmp_path, capsys):
    path = _scenario(tmp_path, budgets=[1.0, 0.8], solve={"timeout_s": None},  # in-process: Ctrl-C reaches it
                     solvers=["keep_all", {"name": "test_interrupt_once", "options": {"flag": str(tmp_path / "f")}},
                              "knapsack"])
    assert _go(path, tmp_path, "--no-execute") == 130
    assert "--resume" in capsys.readouterr().err
    run = tmp_path / "rel" / "r"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and "KeyboardInterrupt" in info["error"]
    assert len(_lines(run / "cells.jsonl")) == 2 and len(pd.read_csv(run / "results.csv")) == 2
    # without --resume the finished cells are protected; with it, the rest runs and nothing twice
    assert _go(path, tmp_path, "--no-execute") == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert _go(path, tmp_path, "--no-execute", "--resume") == 0
    df = pd.read_csv(run / "results.csv")
    assert len(df) == 6 and len(_lines(run / "cells.jsonl")) == 6
    assert df[["solver", "budget"]].drop_duplicates().shape[0] == 6
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_resume_refuses_changed_settings(tmp_path, capsys):
    path = _scenario(tmp_path, budgets=[1.0], solvers=["keep_all"])
    assert _go(path, tmp_path, "--no-execute") == 0
    changed = _scenario(tmp_path, budgets=[1.0, 0.8], solvers=["keep_all"], seed=1)
    assert _go(changed, tmp_path, "--no-execute", "--resume") == 2
    err = capsys.readouterr().err
    assert "cannot --resume" in err and "seed was 0, now 1" in err
    more = _scenario(tmp_path, budgets=[1.0, 0.8], solvers=["keep_all", "knapsack"])  # new cells only: fine
    assert _go(more, tmp_path, "--no-execute", "--resume") == 0
    assert len(pd.read_csv(tmp_path / "rel" / "r" / "results.csv")) == 4


def test_solver_child_dies_with_a_killed_driver(tmp_path):
    """SIGKILL of the driver mid-solve leaves no solver running (the child asked for PDEATHSIG)."""
    pid_file = tmp_path / "pids"
    script = ("import time, sys; from pathlib import Path; from mutwo.registry import register_solver\n"
              "from mutwo.sandbox import run_solver\nfrom mutwo.synthetic import chain\n"
              "@register_solver('hang_here')\n"
              "def hang(p, b, **o):\n"
              f"    import os; Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(60)\n"
              "run_solver('hang_here', chain(3), 1, timeout_s=60)\n")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    _kill_when(driver, lambda: pid_file.exists() and pid_file.read_text() != "", timeout=60)
    child = int(pid_file.read_text())
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    path = _scenario(tmp_path, budgets=[1.0], solvers=["keep_all"])
    assert _go(path, tmp_path, "--no-execute") == 0
    lock = tmp_path / "rel" / "r" / "run.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _go(path, tmp_path, "--no-execute", "--resume") == 2
        assert "is in use by another mutwo.compare process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait(10)
    assert _go(path, tmp_path, "--no-execute", "--resume") == 0  # the holder died: the lock went with it


def test_a_terminated_run_says_interrupted_and_resumes(tmp_path):
    """SIGTERM (kill, a scheduler's time limit) ends a run like Ctrl-C: exit 130, run.json
    ``interrupted``, finished cells kept, and --resume completes it."""
    budgets = [round(1.0 - 0.02 * i, 2) for i in range(15)]
    path = _scenario(tmp_path, budgets=budgets, solvers=["keep_all", "knapsack", "mutwo_greedy", "chen_sqrt"])
    run = tmp_path / "rel" / "term"
    cmd = [sys.executable, "-m", "mutwo.compare", str(path), "--out", str(tmp_path), "--run-id", "term", "--quiet",
           "--no-plots", "--no-execute"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while len(_lines(run / "cells.jsonl")) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and "--resume" in proc.stderr.read().decode()
    kept = _lines(run / "cells.jsonl")
    assert len(kept) >= 4
    assert _go(path, tmp_path, "--no-execute", "--resume", run_id="term") == 0
    assert _lines(run / "cells.jsonl")[:len(kept)] == kept and len(pd.read_csv(run / "results.csv")) == 60
