"""PyTorch's own savers as reference rows (mutwo.references): measured with the allocator meter on the
compiled code itself, rows of kind ``reference`` in every comparison, errors contained, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mutwo import references as refs_mod
from mutwo.compare import COLUMNS, main
from mutwo.memory import OpOutputTracker
from mutwo.references import Reference, ReferenceRunner, checkpoint_blocks, references
from mutwo.scenario import ScenarioError, validate_scenario
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload

SCENARIOS = Path(__file__).parent.parent / "scenarios"
SGD = OptimizerConfig("sgd", {"momentum": 0.0})
EAGER_VS_CAPTURED = 0.01  # the eager step and the captured keep-all step: same allocator peak within 1%


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp() -> ReferenceRunner:
    return ReferenceRunner(lambda: build_workload("mlp", 256), SGD, iterations=1)


def _scenario(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((SCENARIOS / "toy_mlp.yaml").read_text())
    data.update({"solvers": ["keep_all", "recompute_all"], "budgets": [1.0], "profile": {"runs": 1, "warmup": 0},
                 "execute": {"iterations": 1, "warmup": 0}, **changes})
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _go(path: Path, out: Path, *extra: str) -> int:
    return main([str(path), "--out", str(out), "--run-id", "r", "--quiet", "--no-plots", *extra])


# ---------------------------------------------------------------------- the measurement
def test_the_meter_sees_the_compiled_step_not_an_eager_fallback():
    runner = _mlp()
    eager = runner.measure(Reference("eager"))
    low = runner.measure(Reference("memory_budget", 0.0, "aot_eager_decomp_partition"))
    assert eager.status == low.status == "measured", (eager.message, low.message)
    assert low.compiled_calls >= 1 and low.graphs >= 1  # the metered step called the compiled graph
    # recomputing inside the compiled graph changes what the allocator holds: not eager's figure
    assert low.peak_bytes != eager.peak_bytes and low.baseline_bytes == eager.baseline_bytes
    assert low.loss_rel_diff <= refs_mod.LOSS_RTOL and eager.compiled_calls is None
    # the pitfall the counter guards against: under a dispatch mode Dynamo runs the model eagerly
    stepper, _ = runner.stepper(Reference("memory_budget", 0.0, "aot_eager"))
    stepper.step()
    calls = stepper.backend.calls
    with OpOutputTracker():
        stepper.step()
    assert stepper.backend.calls == calls
    runner.close()


def test_a_compile_that_never_runs_is_an_error_not_an_eager_figure(monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "disable", True)  # torch.compile then runs the model eagerly
    res = _mlp().measure(Reference("memory_budget", 0.5, "aot_eager"))
    assert res.status == "error" and "called no compiled graph" in res.message and res.peak_bytes is None


def test_per_block_checkpoint_wraps_the_outermost_blocks_and_lowers_the_peak():
    build = lambda: build_workload("bert-tiny", 8, dropout=0.0)  # noqa: E731
    assert checkpoint_blocks(build().model) == {"BertLayer": 2}
    assert checkpoint_blocks(build_workload("resnet18", 1, image_size=32).model) == {"BasicBlock": 8}
    assert checkpoint_blocks(build_workload("mlp", 4).model) == {}
    runner = ReferenceRunner(build, SGD, iterations=1)
    eager, ckpt = runner.measure(Reference("eager")), runner.measure(Reference("checkpoint"))
    assert ckpt.status == "measured" and ckpt.details == {"blocks": {"BertLayer": 2}}
    assert ckpt.peak_bytes < eager.peak_bytes and ckpt.loss_rel_diff == 0.0
    assert ckpt.time_ratio > 0 and ckpt.eager_time_s > 0
    skipped = _mlp().measure(Reference("checkpoint"))
    assert skipped.status == "skipped" and "has no module of a known block type" in skipped.message


def test_reference_labels_and_options():
    got = references(memory_budget=[0.8, 0.25], backend="aot_eager")
    assert [r.label for r in got] == ["pytorch:eager", "pytorch:checkpoint", "pytorch:memory_budget@0.8",
                                      "pytorch:memory_budget@0.25"]
    assert got[2].options == {"activation_memory_budget": 0.8, "backend": "aot_eager"}
    assert [r.label for r in references(eager=False, checkpoint=False, memory_budget=[])] == []
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        Reference("memory_budget", 1.5, "aot_eager")
    with pytest.raises(ValueError, match="not one of"):
        Reference("memory_budget", 0.5, "cudagraphs")


# ---------------------------------------------------------------------- the scenario section
def test_references_section_is_validated():
    base = {"name": "s", "model": "mlp", "batch_size": 8, "budgets": [1.0], "solvers": ["keep_all"]}
    sc = validate_scenario(base)
    assert (sc.references.enabled, sc.references.memory_budget, sc.references.backend) == \
        (True, [0.5], "aot_eager_decomp_partition")
    assert not validate_scenario({**base, "references": False}).references.enabled
    assert validate_scenario({**base, "references": {"memory_budget": 0.2}}).references.memory_budget == [0.2]
    with pytest.raises(ScenarioError, match="'references.memory_budget'.*1.5 is not an activation_memory_budget "
                                            "knob; write numbers in \\[0, 1\\]"):
        validate_scenario({**base, "references": {"memory_budget": [0.5, 1.5]}})
    with pytest.raises(ScenarioError, match="'references.backend'.*did you mean 'aot_eager'"):
        validate_scenario({**base, "references": {"backend": "aot_eagr"}})
    with pytest.raises(ScenarioError, match="unknown key 'references.chekpoint'; did you mean 'checkpoint'"):
        validate_scenario({**base, "references": {"chekpoint": True}})


# ---------------------------------------------------------------------- rows of a comparison
def test_reference_rows_beside_the_solvers_and_resume(tmp_path):
    path = _scenario(tmp_path)
    assert _go(path, tmp_path) == 0
    run = tmp_path / "toy_mlp" / "r"
    df = pd.read_csv(run / "results.csv")
    assert list(df.columns) == COLUMNS and COLUMNS[-2:] == ["kind", "gap_to_bound_pct"]
    assert set(df[df["solver"].isin(["keep_all", "recompute_all"])]["kind"]) == {"solver"}
    ref = df[df["kind"] == "reference"].set_index("solver")
    # the MLP has no block list: no checkpoint row, a note instead
    assert list(ref.index) == ["pytorch:eager", "pytorch:memory_budget@0.5"]
    assert (ref["status"] == "measured").all() and ref["executed"].all()
    assert ref[["budget", "budget_bytes", "predicted_peak_bytes", "predicted_time_s", "solve_time_s"]].isna().all().all()
    assert json.loads(ref.loc["pytorch:memory_budget@0.5", "solver_options"]) == {
        "activation_memory_budget": 0.5, "backend": "aot_eager_decomp_partition"}
    assert ref.loc["pytorch:eager", "measured_overhead_pct"] == 0.0
    assert ref.loc["pytorch:memory_budget@0.5", "max_rel_diff"] <= refs_mod.LOSS_RTOL
    info = json.loads((run / "batch256" / "keep_all.json").read_text())
    assert info["peak_method"] == "cpu-allocator-events"
    eager_peak = ref.loc["pytorch:eager", "measured_peak_bytes"]
    assert abs(eager_peak / info["profile_measured_peak_bytes"] - 1) <= EAGER_VS_CAPTURED
    assert "pytorch:checkpoint" in info["reference_notes"]
    report = (run / "report.md").read_text()
    section = report.split("## PyTorch's own savers", 1)[1].split("## All results", 1)[0]
    assert "| 256 | pytorch:memory_budget@0.5 |" in section and "no per-block checkpoint row" in section
    assert "the eager step peaks at" in section
    # resumed with nothing left to do: no reference runs again, rows and notes stay
    lines = (run / "cells.jsonl").read_text().splitlines()
    assert _go(path, tmp_path, "--resume") == 0
    assert (run / "cells.jsonl").read_text().splitlines() == lines
    again = pd.read_csv(run / "results.csv")
    pd.testing.assert_frame_equal(again, df)
    # what the reference rows depend on is part of the resume check
    changed = _scenario(tmp_path, references={"backend": "aot_eager"})
    assert _go(changed, tmp_path, "--resume") == 2


def test_resume_measures_only_the_missing_reference_rows(tmp_path):
    path = _scenario(tmp_path, references={"checkpoint": False, "memory_budget": []})
    assert _go(path, tmp_path) == 0
    run = tmp_path / "toy_mlp" / "r"
    first = (run / "cells.jsonl").read_text().splitlines()
    assert [json.loads(x)["solver"] for x in first][-1] == "pytorch:eager"
    keep_all = json.loads((run / "batch256" / "keep_all.json").read_text())["measured"]
    # a new budget (its cells need the batch prepared again) and a new knob value
    more = _scenario(tmp_path, budgets=[1.0, 0.9], references={"checkpoint": False, "memory_budget": [0.0]})
    assert _go(more, tmp_path, "--resume") == 0
    after = (run / "cells.jsonl").read_text().splitlines()
    assert after[: len(first)] == first and [json.loads(x)["solver"] for x in after[len(first):]] == [
        "keep_all", "recompute_all", "pytorch:memory_budget@0"]
    assert json.loads((run / "run.json").read_text())["cells_resumed"] == len(first)
    # the keep-all execution is not redone either
    assert json.loads((run / "batch256" / "keep_all.json").read_text())["measured"] == keep_all


def test_a_failing_reference_is_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    def broken(self, gm, example_inputs, **kwargs):
        raise RuntimeError("this backend cannot compile")

    monkeypatch.setattr(refs_mod.CountingBackend, "__call__", broken)
    path = _scenario(tmp_path, references={"memory_budget": [0.5, 0.2]})
    assert _go(path, tmp_path) == 0
    run = tmp_path / "toy_mlp" / "r"
    df = pd.read_csv(run / "results.csv").set_index("solver")
    failed = df.loc[["pytorch:memory_budget@0.5", "pytorch:memory_budget@0.2"]]
    assert (failed["status"] == "error").all() and failed["measured_peak_bytes"].isna().all()
    assert failed["message"].str.contains("this backend cannot compile").all()
    assert df.loc["pytorch:eager", "status"] == "measured"
    assert set(df.loc[["keep_all", "recompute_all"], "status"]) == {"feasible"}
    report = (run / "report.md").read_text()
    assert "pytorch:memory_budget@0.2: error: " in report and "this backend cannot compile" in report


def test_no_references_and_no_execute_leave_them_out(tmp_path):
    path = _scenario(tmp_path)
    for flag in ("--no-references", "--no-execute"):
        out = tmp_path / flag
        assert _go(path, out, flag) == 0
        df = pd.read_csv(out / "toy_mlp" / "r" / "results.csv")
        assert set(df["kind"]) == {"solver"} and len(df) == 2
        assert "No reference rows" in (out / "toy_mlp" / "r" / "report.md").read_text()


# ---------------------------------------------------------------------- report and plot
def _rows() -> pd.DataFrame:
    from mutwo.cell import Row, results_frame

    def plan(solver, budget, peak, time, overhead, **kw):
        return Row(batch_size=2, solver=solver, budget=budget, status="feasible", executed=True,
                   measured_peak_bytes=peak, measured_time_s=time, measured_overhead_pct=overhead,
                   max_rel_diff=0.0, emulated_swap=False, **kw)

    def ref(label, peak, overhead):
        return Row(batch_size=2, solver=label, status="measured", executed=True, kind="reference",
                   measured_peak_bytes=peak, measured_time_s=1.0, measured_overhead_pct=overhead)

    return results_frame([
        plan("keep_all", "1", 1000, 1.00, 0.0), plan("knapsack", "1", 1000, 1.00, 0.0),
        plan("greedy", "0.8", 800, 1.10, 10.0),
        plan("knapsack", "0.8", 790, 1.12, 12.0), plan("swapper", "0.8", 500, 1.0, 0.0, n_swap=3),
        plan("wrong", "0.8", 500, 1.0, 0.0), plan("slow", "0.6", 600, 3.0, 200.0),
        ref("pytorch:eager", 1000, 0.0), ref("pytorch:memory_budget@0.5", 850, 50.0),
        ref("pytorch:checkpoint", 610, 20.0), ref("pytorch:memory_budget@0", 400, 80.0)],
    ).assign(emulated_swap=lambda d: d["solver"] == "swapper",
             max_rel_diff=lambda d: d["solver"].map({"wrong": 0.5}).fillna(0.0))


def test_best_mutwo_plan_at_each_pytorch_point():
    from mutwo.report import best_at_each_reference, solver_rows

    df = _rows()
    assert set(solver_rows(df)["solver"]) == {"keep_all", "greedy", "knapsack", "swapper", "wrong", "slow"}
    got = best_at_each_reference(df).set_index("pytorch")
    # eager: keep-all at the same memory and time; a tie
    eager = got.loc["pytorch:eager"]  # knapsack @ 1 is keep-all's plan, measured once: not a tie of its own
    assert eager["best mutwo plan"] == "keep_all @ 1" and eager["verdict"] == "tie" and eager["ties"] == ""
    # at 850: the fastest plan at no more memory, another within 5% of its time is named a tie
    row = got.loc["pytorch:memory_budget@0.5"]
    assert row["best mutwo plan"] == "greedy @ 0.8" and row["ties"] == "knapsack @ 0.8"
    assert row["verdict"] == "mutwo faster"
    # at 610 only the slow plan fits: emulated swaps and plans that train differently do not count
    assert got.loc["pytorch:checkpoint", "best mutwo plan"] == "slow @ 0.6"
    assert got.loc["pytorch:checkpoint", "verdict"] == "PyTorch faster"
    assert got.loc["pytorch:memory_budget@0", "verdict"] == "no mutwo plan at this memory"


def test_reference_points_on_the_trade_off_plot(tmp_path):
    from mutwo.compare_plots import _reference_points, overhead_vs_peak

    df = _rows()
    points = _reference_points(df)
    assert list(points["label"]) == ["eager", "memory_budget@0.5", "checkpoint", "memory_budget@0"]
    assert overhead_vs_peak(df, tmp_path / "a.png").stat().st_size > 1000
    only_refs = df[df["kind"] == "reference"]  # no solver plan: PyTorch's points still shown
    assert overhead_vs_peak(only_refs, tmp_path / "b.png").stat().st_size > 1000


def test_reference_row_columns_and_the_memory_limit_note():
    from mutwo.references import ReferenceResult, reference_row

    ref = Reference("memory_budget", 0.5, "aot_eager")
    res = ReferenceResult(ref, "measured", peak_bytes=5000, baseline_bytes=1000, peak_method="cpu-allocator-events",
                          time_s=2.0, time_min_s=1.9, eager_time_s=1.0, eager_time_min_s=1.0, time_ratio=1.5,
                          time_spread=0.1, loss0=2.0, eager_loss0=2.0, first_step_s=30.0, compiled_calls=1, graphs=1)
    row = reference_row(res, scenario="s", model="m", batch_size=2, device="cpu",
                        keep_all={"keep_all_peak_bytes": 6000, "keep_all_time_s": 1.2}, memory_limit=4096)
    assert (row.kind, row.status, row.solver, row.solver_name) == ("reference", "measured",
                                                                   "pytorch:memory_budget@0.5", "memory_budget")
    assert (row.measured_peak_bytes, row.measured_time_s, row.measured_overhead_pct) == (5000, 2.0, 50.0)
    assert (row.max_rel_diff, row.bitwise_equal, row.keep_all_peak_bytes) == (0.0, True, 6000)
    assert row.budget is None and row.predicted_peak_bytes is None and row.n_keep is None
    assert "1 compiled call(s) metered" in row.message and "above execute.memory_limit (4096 B)" in row.message
    failed = reference_row(ReferenceResult(ref, "error", message="BackendCompilerFailed: no"), scenario="s",
                           model="m", batch_size=2, device="cpu")
    assert (failed.status, failed.executed, failed.message) == ("error", False, "BackendCompilerFailed: no")
