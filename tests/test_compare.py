"""End to end: ``python -m mutwo.compare`` on the small scenarios, through ``main([...])``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mutwo.compare import COLUMNS, main
from mutwo.registry import register_solver
from mutwo.schedule import Decision, Schedule, Status

TESTS = Path(__file__).parent
SCENARIOS = TESTS.parent / "scenarios"
FEASIBLE = ("optimal", "feasible")
HAS_EXECUTE = importlib.util.find_spec("mutwo.execute") is not None


# a solver from outside the package: registered by the test, then named in a scenario
@register_solver("test_recompute_half")
def _recompute_half(problem, budget_bytes, **options):
    d = np.zeros(problem.n_act, np.int8)
    cand = np.flatnonzero(problem.recomputable)
    d[cand[: len(cand) // 2]] = Decision.RECOMPUTE
    return Schedule.from_decisions(problem, d, status=Status.FEASIBLE, message="half, fits or not")


@register_solver("test_broken")
def _broken(problem, budget_bytes, **options):
    raise RuntimeError("this solver always fails")


@register_solver("test_wrong_length")
def _wrong_length(problem, budget_bytes, **options):
    return Schedule(np.zeros(problem.n_act + 1, np.int8), np.full(problem.n_act + 1, -1))


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def _run(args: list[str], out: Path) -> Path:
    assert main([*args, "--out", str(out), "--quiet", "--run-id", "r"]) == 0
    return out


def _check_run(run: Path, n_rows: int, executed: bool) -> pd.DataFrame:
    for name in ("results.csv", "cells.jsonl", "run.json", "report.md", "scenario.yaml"):
        assert (run / name).is_file(), name
    df = pd.read_csv(run / "results.csv")
    assert list(df.columns) == COLUMNS and (df["kind"] == "solver").sum() == n_rows  # + PyTorch's reference rows
    assert not list(run.rglob("*.tmp*")), "atomic writes leave no temporary files"
    for bs in df["batch_size"].unique():
        for name in ("ops.csv", "activations.csv", "problem.npz", "keep_all.json"):
            assert (run / f"batch{bs}" / name).is_file()
    ok = df[df["status"].isin(FEASIBLE)]
    assert (ok["predicted_peak_bytes"] <= ok["budget_bytes"]).all()
    assert np.allclose(ok["budget_fraction"], ok["budget_bytes"] / ok["keep_all_peak_bytes"])
    for f in df["schedule_file"].dropna():
        Schedule.load(run / f)
    sane = df[df["status"] != "invalid"]  # one decision per activation
    assert (sane["n_keep"] + sane["n_recompute"] + sane["n_swap"]).nunique() <= df["batch_size"].nunique()
    if executed:
        assert ok["executed"].all() and ok["measured_peak_bytes"].gt(0).all()
        assert ok["max_rel_diff"].lt(1e-3).all()
    else:  # --no-execute, or mutwo.execute not there: said so in every row
        assert not df["executed"].any() and df["measured_peak_bytes"].isna().all()
        assert df["execute_note"].str.startswith("not executed").all()
    report = (run / "report.md").read_text()
    assert "## Verdict at each budget" in report and "## All results" in report
    assert "## Best solver at each budget" not in report  # the verdict replaced it: one place says it
    for png in run.glob("plots/*.png"):
        assert f"plots/{png.name}" in report
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["status"] == "finished" and "torch" in run_info["versions"]
    return df


def test_toy_mlp_end_to_end_executed(tmp_path, capsys):
    out = _run([str(SCENARIOS / "toy_mlp.yaml"), "--solvers", "keep_all,knapsack,mutwo_greedy",
                "--budgets", "1.0,0.8"], tmp_path)
    run = out / "toy_mlp" / "r"
    df = _check_run(run, 6, executed=HAS_EXECUTE)
    greedy = df[(df["solver"] == "mutwo_greedy") & (df["budget_fraction"] < 0.9)].iloc[0]
    assert greedy["status"] in FEASIBLE and greedy["predicted_peak_bytes"] < df["keep_all_peak_bytes"].iloc[0]
    if HAS_EXECUTE:  # a keep-all plan is not run again: it is the keep-all reference, measured once
        same = df[(df["n_recompute"] + df["n_swap"] == 0) & df["executed"]]
        assert len(same) >= 2 and same["execute_note"].str.contains("same plan as the keep-all").all()
        assert np.allclose(same["measured_overhead_pct"], 0.0)
    for png in ("overhead_vs_peak.png", "solve_times.png", "timeline_b256.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "best feasible solver per budget" in printed and "mutwo_greedy" in printed
    info = json.loads((run / "batch256" / "keep_all.json").read_text())
    assert info["eager_check"]["bitwise_equal"], info["eager_check"]
    report = (run / "report.md").read_text()
    assert "against eager PyTorch" in report and "emulated device peak MiB" in report
    if HAS_EXECUTE:
        ran = df[df["executed"]]
        assert (ran["peak_method"] == "cpu-allocator-events").all() and (ran["torch_threads"] == 1).all()
        assert ran["reference_time_s"].gt(0).all() and ran["measured_overhead_pct"].notna().all()
        assert "## How it was measured" in report
        swapped = ran[ran["n_swap"] > 0]  # CPU swaps: the emulated device figure, and a note on the time
        assert swapped["emulated_swap"].all() and swapped["emulated_device_peak_bytes"].notna().all()
        assert (swapped["emulated_device_peak_bytes"] <= swapped["measured_peak_bytes"]).all()
        assert swapped["timing_note"].str.contains("swaps emulated on CPU").all()
        assert ran.loc[ran["n_swap"] == 0, "emulated_device_peak_bytes"].isna().all()


@pytest.mark.skipif(not HAS_EXECUTE, reason="needs mutwo.execute")
def test_allocator_events_unavailable_is_one_line_never_a_silent_switch(tmp_path, monkeypatch, capsys):
    """Without the CPU allocator's events there is no measured peak: the rows (and keep-all) say so in
    one line naming the meter and its fallback; nothing is measured another way. Where even profiling
    needs them, the run stops with one line."""
    import torch

    from mutwo import execute, memory, references

    def unavailable(*args, **kwargs):
        raise memory._unavailable("this torch build has no Kineto profiler with allocation events")

    monkeypatch.setattr(execute, "allocator_peak", unavailable)
    monkeypatch.setattr(references, "allocator_peak", unavailable)  # PyTorch's savers use the same meter
    out = _run([str(SCENARIOS / "toy_mlp.yaml"), "--solvers", "keep_all,mutwo_greedy", "--budgets", "1.0,0.8",
                "--no-plots"], tmp_path)
    run = out / "toy_mlp" / "r"
    df = pd.read_csv(run / "results.csv")
    info = json.loads((run / "batch256" / "keep_all.json").read_text())
    assert info["execute_error"].startswith("AllocatorEventsUnavailable: allocator meter")
    assert "measured" not in info and df["measured_peak_bytes"].isna().all()
    failed = df[df["execute_note"].str.startswith("execution failed")]
    assert len(failed) and failed["execute_note"].str.contains("mutwo.memory.allocator_peak").all()
    assert failed["execute_note"].str.contains("fallback is mutwo.memory.measure_peak").all()
    assert not failed["execute_note"].str.contains("\n").any()
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setattr(torch.autograd, "kineto_available", lambda: False)
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path / "fresh_cache"))  # the profile needs the events too
    assert main([str(SCENARIOS / "toy_mlp.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AllocatorEventsUnavailable: allocator meter" in err[0] and "Kineto" in err[0]


def test_user_model_and_outside_solver(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump({
        "name": "user", "model": "fixtures_user_model:build", "model_options": {"hidden": 32},
        "batch_size": [64, 128], "optimizer": {"name": "sgd", "options": {"momentum": 0.0}},
        "device": "cpu", "budgets": [0.9, "1MiB"], "solvers": ["test_recompute_half", "test_broken", "test_wrong_length", "knapsack"],
        "profile": {"runs": 1, "warmup": 0}, "execute": {"iterations": 1, "warmup": 0}}))
    run = _run([str(path), "--no-execute", "--allow-errors"], tmp_path) / "user" / "r"  # test_broken: all errors
    df = _check_run(run, 2 * 2 * 4, executed=False)
    broken = df[df["solver"] == "test_broken"]
    assert (broken["status"] == "error").all() and broken["message"].str.contains("always fails").all()
    assert broken["schedule_file"].isna().all()
    wrong = df[df["solver"] == "test_wrong_length"]
    assert (wrong["status"] == "invalid").all() and wrong["message"].str.contains("decisions").all()
    half = df[df["solver"] == "test_recompute_half"]
    # it claims FEASIBLE whatever the budget: the driver checks with the simulator
    assert set(half["status"]) <= {"feasible", "invalid"}
    bad = half[half["predicted_peak_bytes"] > half["budget_bytes"]]
    assert (bad["status"] == "invalid").all()
    assert (df[df["budget"] == "1MiB"]["budget_bytes"] == 2**20).all()
    assert (run / "plots" / "batch_scaling.png").is_file()


def test_resume_skips_finished_cells(tmp_path):
    args = [str(SCENARIOS / "toy_mlp.yaml"), "--no-execute", "--solvers", "keep_all,mutwo_greedy",
            "--budgets", "1.0,0.8,0.6"]
    run = _run(args, tmp_path) / "toy_mlp" / "r"
    lines = (run / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 6
    # the run was "killed" after four cells, the last line half written
    (run / "cells.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    _run([*args, "--resume"], tmp_path)
    after = (run / "cells.jsonl").read_text().splitlines()
    assert len(after) == 4 + 2  # 4 kept, the torn line dropped, 2 re-run
    assert [json.loads(x)["budget"] for x in after] == ["1", "0.8", "0.6", "1", "0.8", "0.6"]
    assert json.loads((run / "run.json").read_text())["cells_resumed"] == 4
    df = _check_run(run, 6, executed=False)
    # nothing left to do: the Problem is reloaded from the run folder, no cell runs again
    _run([*args, "--resume"], tmp_path)
    assert len((run / "cells.jsonl").read_text().splitlines()) == 6
    assert pd.read_csv(run / "results.csv")["status"].tolist() == df["status"].tolist()


@pytest.mark.parametrize("scenario, solvers", [("tiny_resnet", "knapsack,mutwo_greedy"),
                                               ("tiny_bert", "swap_hidden,mutwo_greedy")])
def test_small_model_scenarios(tmp_path, scenario, solvers):
    run = _run([str(SCENARIOS / f"{scenario}.yaml"), "--no-execute", "--solvers", solvers, "--budgets",
                "1.0,0.9", "--no-plots"], tmp_path) / scenario / "r"
    df = _check_run(run, 4, executed=False)
    assert df["status"].isin(FEASIBLE).any()
    acts = pd.read_csv(run / f"batch{df['batch_size'].iloc[0]}" / "activations.csv")
    assert {"bytes", "recompute_ratio", "inactive_time_s"} <= set(acts.columns)


def test_bad_scenario_exits_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmodel: mlp\nbatch_size: 0\nbudgets: ['6GB']\nsolvers: [keep_all]\n")
    assert main([str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "batch_size" in err and "6GiB" in err
    assert "Traceback" not in err
    assert main([str(SCENARIOS / "toy_mlp.yaml"), "--solvers", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown solver 'nope'" in capsys.readouterr().err
    assert main([str(SCENARIOS / "toy_mlp.yaml"), "--batch-sizes", "2,x", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])


def test_execution_guard_and_plans_measured_once(tmp_path):
    """run_cell skips plans predicted to be far slower than keep-all, and runs each distinct plan once."""
    from types import SimpleNamespace

    from mutwo.cell import CellContext, PlanMemo, run_cell
    from mutwo.pipeline import Prepared
    from mutwo.scenario import validate_scenario
    from mutwo.synthetic import chain

    problem = chain(12)
    keep = mutwo_simulate(problem)
    calls = []

    def fake_execute(graph, problem, schedule, flat, **kw):
        calls.append(schedule.counts())
        return SimpleNamespace(measured_peak_bytes=123, iteration_time_s=2.0, max_rel_diff=0.0,
                               bitwise_equal=True, emulated_swap=False, time_ratio=2.0)

    def cell(max_slowdown, label):
        sc = validate_scenario({"name": "g", "model": "mlp", "batch_size": 1, "budgets": ["1TiB"],
                                "solvers": [{"name": "recompute_all", "label": label}],
                                "execute": {"max_slowdown": max_slowdown}})
        batch = Prepared(1, problem, keep.peak_bytes, keep.time_s, graph=object(), flat=[],
                         info={"measured_time_s": 1.0})
        ctx = CellContext(sc, "cpu", tmp_path, fake_execute, "executed")
        return run_cell(ctx, batch, shared, sc.solvers[0], sc.budgets[0])

    shared = PlanMemo()
    row = cell(1.01, "a")
    assert row.status == "feasible" and row.predicted_time_s > 1.01 * keep.time_s
    assert not row.executed and "max_slowdown" in row.execute_note and not calls
    row = cell(None, "b")
    assert row.executed and row.measured_overhead_pct == 100.0 and len(calls) == 1
    row = cell(None, "c")  # the same plan again: measured once
    assert row.executed and "same plan as b @ 1TiB" in row.execute_note and len(calls) == 1


def mutwo_simulate(problem):
    from mutwo.simulate import simulate

    return simulate(problem, Schedule.keep_all(problem))


# ---------------------------------------------------------------------- plan space, solvers by path, exit status
def test_plan_space_recompute_run_has_no_swaps(tmp_path):
    args = [str(SCENARIOS / "toy_mlp.yaml"), "--no-execute", "--no-plots", "--plan-space", "recompute",
            "--solvers", "keep_all,knapsack,mutwo_greedy", "--budgets", "1.0,0.85,0.75"]
    run = _run(args, tmp_path) / "toy_mlp" / "r"
    df = pd.read_csv(run / "results.csv")
    assert (df["n_swap"] == 0).all() and df["n_recompute"].gt(0).any()
    greedy = df[df["solver"] == "mutwo_greedy"]
    assert (greedy["solver_options"] == '{"mode": "recompute"}').all()
    # 0.75 is below what recompute alone reaches on toy_mlp (scenarios/toy_mlp.yaml): only swaps fit it
    assert not greedy[greedy["budget"] == "0.75"]["status"].isin(FEASIBLE).any()
    assert json.loads((run / "run.json").read_text())["scenario"]["plan_space"] == {"recompute": True, "swap": False}


def test_solver_by_module_function_end_to_end(tmp_path):
    """A function in a module nobody registered, named in the scenario and on the command line: checked at
    load like any solver (options, values, plan space), run in the same sandbox, executed."""
    path = "tests.fixtures_user_solver:recompute_share"
    scenario = tmp_path / "mine.yaml"
    data = yaml.safe_load((SCENARIOS / "toy_mlp.yaml").read_text())
    scenario.write_text(yaml.safe_dump({**data, "name": "mine", "budgets": [1.0, 0.85],
                                        "solvers": ["keep_all", {"name": path, "options": {"share": 1.0},
                                                                 "label": "all_of_them"}],
                                        "solve": {"timeout_s": 60}, "plan_space": "recompute",
                                        # recompute-all of a tiny MLP can be predicted over 3x keep-all on a
                                        # noisy profile; every plan must run here
                                        "execute": {**data["execute"], "max_slowdown": None}}))
    run = _run([str(scenario)], tmp_path) / "mine" / "r"
    df = _check_run(run, 4, executed=HAS_EXECUTE)
    mine = df[df["solver"] == "all_of_them"]
    assert (mine["solver_name"] == path).all() and (mine["solver_options"] == '{"share": 1.0}').all()
    assert (mine["n_recompute"] > 0).all() and (mine["n_swap"] == 0).all()
    assert mine["status"].isin(FEASIBLE).all() and mine["solve_time_s"].gt(0).all()
    # --solvers names it too (default options), next to a registered one
    assert main([str(scenario), "--solvers", f"keep_all,{path}", "--no-execute", "--no-plots", "--quiet",
                 "--out", str(tmp_path), "--run-id", "cli"]) == 0
    cli = pd.read_csv(tmp_path / "mine" / "cli" / "results.csv")
    assert set(cli["solver"]) == {"keep_all", path}
    assert (cli[cli["solver"] == path]["solver_options"] == "{}").all()


def test_a_solver_whose_every_cell_errored_fails_the_run(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    data = yaml.safe_load((SCENARIOS / "toy_mlp.yaml").read_text())
    path.write_text(yaml.safe_dump({**data, "name": "broken", "solvers": ["keep_all", "test_broken"],
                                    "budgets": [1.0, 0.85]}))
    args = [str(path), "--no-execute", "--no-plots", "--quiet", "--out", str(tmp_path)]
    assert main([*args, "--run-id", "a"]) == 3
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        "error: every cell of test_broken is an error (the reasons are in the table above and in report.md); exit "
        "status 3 (--allow-errors: 0)")
    table = [line for line in captured.out.splitlines() if "test_broken" in line]
    assert len(table) == 2 and all("RuntimeError: this solver always fails" in line for line in table)
    assert main([*args, "--run-id", "b", "--allow-errors"]) == 0
    # one error among successes is a result, not a broken solver
    assert main([*args, "--run-id", "c", "--solvers", "keep_all"]) == 0


def test_list_solvers_shows_options_defaults_and_accepted_values(capsys):
    assert main(["--list-solvers"]) == 0
    out = capsys.readouterr().out
    for name in ("keep_all", "chen_sqrt", "swap_hidden", "mutwo_greedy", "ilp_cpsat", "checkmate_exact"):
        assert any(line.startswith(f"{name}: ") for line in out.splitlines()), name
    assert "      mode    default 'both'         'both', 'recompute' or 'swap'" in out
    assert "      segments  default null           an integer >= 1 or null" in out
    assert "decisions: SWAP" in out and "decisions: KEEP only" in out
    with pytest.raises(SystemExit):  # neither a scenario nor --list-solvers
        main([])


def test_report_floor_is_the_problems_floor(tmp_path):
    from mutwo.problem import Problem
    from mutwo.report import fmt_bytes

    run = _run([str(SCENARIOS / "toy_mlp.yaml"), "--no-execute", "--no-plots", "--solvers", "keep_all"],
               tmp_path) / "toy_mlp" / "r"
    info = json.loads((run / "batch256" / "keep_all.json").read_text())
    floor, _ = Problem.load(run / "batch256" / "problem.npz").peak_floor()
    assert info["floor_bytes"] == floor and floor > info["fixed_peak_bytes"]
    text = (run / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 256 |"))
    assert row.endswith(f"| {fmt_bytes(floor)} | {fmt_bytes(info['fixed_peak_bytes'])} |")
    assert "| activations | floor | fixed peak |" in text and "the floor no activation plan" not in text


def test_a_noisy_profile_is_a_warning_and_a_note(tmp_path, capsys, monkeypatch):
    from mutwo import profile

    monkeypatch.setattr(profile, "SPREAD_WARN", -1.0)  # any spread is "too large"
    _run([str(SCENARIOS / "toy_mlp.yaml"), "--no-execute", "--no-plots", "--solvers", "keep_all"], tmp_path)
    run = tmp_path / "toy_mlp" / "r"
    info = json.loads((run / "batch256" / "keep_all.json").read_text())
    assert info["profile_spread"] >= 0 and info["profile_warning"].startswith("the profile's own iterations differ")
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warned == [f"warning: {info['profile_warning']}"]
    assert f"- batch 256: noisy profile: {info['profile_warning']}" in (run / "report.md").read_text()


def test_refresh_profile_measures_again_and_resume_keeps_the_profile(tmp_path):
    args = [str(SCENARIOS / "toy_mlp.yaml"), "--no-execute", "--no-plots", "--quiet", "--solvers", "keep_all",
            "--out", str(tmp_path)]

    def profiled(run_id: str) -> tuple[float, str]:
        info = json.loads((tmp_path / "toy_mlp" / run_id / "batch256" / "keep_all.json").read_text())
        return info["profile_s"], info["profile_cache_key"]

    assert main([*args, "--run-id", "a"]) == 0
    assert main([*args, "--run-id", "b", "--refresh-profile"]) == 0
    assert main([*args, "--run-id", "c"]) == 0
    (a, key), (b, key_b), (c, _) = profiled("a"), profiled("b"), profiled("c")
    assert key == key_b and b != a and c == b  # measured again, and the new profile replaced the old one
    # a resumed run keeps its own profile, --refresh-profile or not
    cells = tmp_path / "toy_mlp" / "b" / "cells.jsonl"
    cells.write_text(cells.read_text().splitlines()[0] + "\n")
    assert main([*args, "--run-id", "b", "--resume", "--refresh-profile"]) == 0
    assert profiled("b") == (b, key)
