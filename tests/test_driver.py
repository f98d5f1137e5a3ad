"""The seams of the comparison driver: atomic files, the typed Row and its cells.jsonl format, the run
folder's finished cells, the timing routine (interleaved brackets, reruns, threads), and one batch size
prepared and reloaded."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mutwo import files, run_folder, timing
from mutwo.cell import COLUMNS, FEASIBLE, WORKER_LOST, CellStatus, Row, results_frame
from mutwo.problem import Problem
from mutwo.schedule import Schedule, Status
from mutwo.simulate import simulate
from mutwo.synthetic import chain

# one cells.jsonl line exactly as the driver wrote it before the split (tiny_batches, batch 128)
OLD_LINE = (
    '{"scenario": "tiny_batches", "model": "mlp", "batch_size": 128, "device": "cpu", "solver": "mutwo_greedy", '
    '"solver_name": "mutwo_greedy", "solver_options": "{}", "budget": "600KiB", "budget_bytes": 614400, '
    '"budget_fraction": 2.213352162197213, "status": "feasible", "solve_time_s": 0.003970039000023462, '
    '"predicted_peak_bytes": 277588, "predicted_time_s": 0.0011853940001174124, "predicted_overhead_pct": 0.0, '
    '"recompute_s": 0.0, "stall_s": 0.0, "keep_all_peak_bytes": 277588, "keep_all_time_s": 0.0011853940001174124, '
    '"executed": true, "execute_note": "executed: same plan as the keep-all reference, measured once", '
    '"measured_peak_bytes": 277588, "measured_time_s": 0.0006390219999730107, "measured_overhead_pct": 0.0, '
    '"max_rel_diff": 0.0, "bitwise_equal": true, "emulated_swap": false, "n_keep": 6, "n_recompute": 0, '
    '"n_swap": 0, "schedule_file": "schedules/128_mutwo_greedy_600KiB.json", '
    '"message": "predicted peak 277588 B after 0 decisions"}')


# ---------------------------------------------------------------------- atomic files
def test_atomic_write_leaves_old_content_and_no_partial_file_when_the_writer_raises(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    files.write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="disk full"), files.atomic_path(path) as tmp:
        tmp.write_text("half a ta")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"], "the temporary file is gone"


def test_atomic_writers_write_whole_files_and_keep_the_suffix_for_format_sniffing_writers(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": np.int64(3), "y": np.float32(np.nan), "z": np.arange(2)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 3, "y": None, "z": [0, 1]}
    files.write_csv(tmp_path / "b.csv", pd.DataFrame({"a": [1, 2]}))
    assert pd.read_csv(tmp_path / "b.csv")["a"].tolist() == [1, 2]
    files.write_bytes(tmp_path / "c.bin", b"\x00\x01")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    with files.atomic_path(tmp_path / "d.npz") as tmp:
        assert tmp.suffix == ".npz" and files.TMP_MARK in tmp.name
        np.savez(tmp, a=np.ones(3))  # np.savez would append .npz to a name without it
    assert np.load(tmp_path / "d.npz")["a"].sum() == 3
    assert not list(tmp_path.glob(f"*{files.TMP_MARK}*"))


def test_problem_and_schedule_save_atomically_under_any_name(tmp_path):
    problem = chain(5)
    path = problem.save(tmp_path / "no_suffix")  # savez gets a file object: no .npz appended
    assert path.exists() and Problem.load(path).n_act == problem.n_act
    sched = Schedule.keep_all(problem).save(tmp_path / "plan.json")
    assert Schedule.load(sched).plan_key() == Schedule.keep_all(problem).plan_key()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_suffix", "plan.json"]


# ---------------------------------------------------------------------- Row, cells.jsonl
def test_cell_status_holds_the_solver_statuses_and_oom():
    assert {s.value for s in Status} | {"oom", "measured"} == {s.value for s in CellStatus}  # measured: references
    assert FEASIBLE == ("optimal", "feasible")
    assert f"{CellStatus.OOM}" == str(CellStatus.OOM) == "oom" and CellStatus.FEASIBLE in FEASIBLE
    assert pd.Series(["optimal", "oom"]).isin(FEASIBLE).tolist() == [True, False]


def test_an_old_cells_line_round_trips_byte_for_byte():
    row = Row.from_dict(json.loads(OLD_LINE))
    assert row.status is CellStatus.FEASIBLE and row.executed is True and row.n_keep == 6
    assert list(row.to_dict()) == COLUMNS
    added = COLUMNS[len(json.loads(OLD_LINE)):]  # columns added since, at the end: absent, so null (kind: solver)
    tail = "".join(f', "{c}": ' + ('"solver"' if c == "kind" else "null") for c in added)
    assert row.kind == "solver" and json.dumps(files.jsonable(row.to_dict())) == OLD_LINE[:-1] + tail + "}"
    assert row.key == "128|mutwo_greedy|600KiB"


def test_finished_cells_drop_a_torn_line_and_partial_files(tmp_path):
    rows = [Row(batch_size=2, solver="s", budget=b, status=CellStatus.OOM, message="m", budget_bytes=7)
            for b in ("1", "0.5")]
    for r in rows:
        run_folder.append_cell(tmp_path, r)
    cells = tmp_path / run_folder.CELLS_FILE
    cells.write_text(cells.read_text() + '{"scenario": "torn')
    (tmp_path / "batch2").mkdir()
    stray = tmp_path / "batch2" / f".ops.csv.1{files.TMP_MARK}.csv"
    stray.write_text("half")
    done = run_folder.finished_cells(tmp_path)
    assert list(done) == ["2|s|1", "2|s|0.5"] and list(done.values()) == rows
    assert len(cells.read_text().splitlines()) == 2 and cells.read_text().endswith("\n")
    assert not stray.exists()


def test_finished_cells_run_a_cell_whose_worker_was_lost_again(tmp_path):
    kept = Row(batch_size=2, solver="s", budget="1", status=CellStatus.ERROR, message="raised", budget_bytes=7)
    lost = Row(batch_size=2, solver="s", budget="0.5", status=CellStatus.ERROR, message="WorkerLost",
               budget_bytes=7, execute_note=WORKER_LOST)
    for r in (kept, lost):
        run_folder.append_cell(tmp_path, r)
    assert list(run_folder.finished_cells(tmp_path)) == ["2|s|1"]  # a fault of the cluster, not a result


def test_results_frame_has_the_columns_and_numeric_types():
    df = results_frame([Row(batch_size=1, status=CellStatus.INVALID, budget_bytes=5, solve_time_s=None)])
    assert list(df.columns) == COLUMNS and df["status"].tolist() == ["invalid"]
    assert df["solve_time_s"].dtype == float and df["budget_bytes"].iloc[0] == 5


# ---------------------------------------------------------------------- timing
class _Clock:
    """A fake perf_counter: each step advances it by the next duration of its own list."""

    def __init__(self, monkeypatch, plan: list[float], reference: list[float]) -> None:
        self.now, self.plan, self.reference = 0.0, iter(plan), iter(reference)
        self.plan_calls = self.reference_calls = 0
        monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: self.now, thread_time=self.cpu))

    def cpu(self) -> float:  # this thread had the core half the time: CPU time runs at half the wall's pace
        return self.now / 2

    def run_plan(self):
        self.plan_calls += 1
        self.now += next(self.plan)
        return self.plan_calls

    def run_reference(self):
        self.reference_calls += 1
        self.now += next(self.reference)


def test_interleaved_brackets_every_iteration_and_runs_more_while_the_load_moves(monkeypatch):
    # 4 s steps: one iteration is wanted. The unmodified step went from 4 s to 6 s during it (the
    # load moved), so more run (one plan and one reference call each: the last bracket is reused)
    # until the median ratio is precise
    clock = _Clock(monkeypatch, plan=[6.0, 7.2, 7.2], reference=[4.0, 6.0, 6.0, 6.0])
    checked = []
    t = timing.interleaved(clock.run_plan, clock.run_reference, 1, after_plan=lambda i, out: checked.append((i, out)))
    assert t.plan_times_s == pytest.approx([6.0, 7.2, 7.2]) and t.reference_times_s == pytest.approx([4, 6, 6, 6])
    assert t.wanted == 1 and t.steady and t.note() == "" and t.attempts == 3
    assert t.ratios == pytest.approx([1.2] * 3) and t.ratio == pytest.approx(1.2)  # each over its brackets' mean
    assert checked == [(0, 1)], "only the first iterations' outputs are checked"


def test_short_steps_get_enough_iterations_for_a_precise_median(monkeypatch):
    # 0.5 s steps: MIN_TIMED_S / 0.5 = 4 iterations wanted; ratios 1.1, 0.9, 1.0, 1.0 are steady
    clock = _Clock(monkeypatch, plan=[0.55, 0.45, 0.5, 0.5], reference=[0.5] * 5)
    t = timing.interleaved(clock.run_plan, clock.run_reference, 1)
    assert t.wanted == math.ceil(timing.MIN_TIMED_S / 0.55) == 4 and len(t.plan_times_s) == 4
    assert t.ratio == 1.0 and t.spread == pytest.approx(0.05) and t.steady
    assert t.error == pytest.approx(1.2533 * 1.4826 * 0.05 / 2)


def test_ratios_on_the_thread_s_cpu_time_on_a_one_thread_cpu(monkeypatch):
    assert timing.ratio_clock("cpu", 1) == "thread-cpu"
    assert timing.ratio_clock("cpu", 2) == timing.ratio_clock("cuda", 1) == "wall"
    clock = _Clock(monkeypatch, plan=[6.0], reference=[4.0, 4.0])
    t = timing.interleaved(clock.run_plan, clock.run_reference, 1, clock="thread-cpu")
    assert t.clock == "thread-cpu" and t.plan_cpu_s == [3.0] and t.reference_cpu_s == [2.0, 2.0]
    assert t.time_s == 6.0 and t.reference_time_s == 4.0 and t.ratio == 1.5  # times stay wall times


def test_interleaved_stops_at_max_attempts_for_slow_plans_and_for_its_own_reference(monkeypatch):
    clock = _Clock(monkeypatch, plan=[1.0, 3.0, 2.0] * 2, reference=[1.0] * 7)  # 1 s steps: 2 wanted
    noisy = timing.interleaved(clock.run_plan, clock.run_reference, 2, max_attempts=3)
    assert len(noisy.plan_times_s) == 6 and noisy.attempts == 3 and not noisy.steady
    assert noisy.ratio == 2.0 and noisy.spread == pytest.approx(0.5) and "6 iterations" in noisy.note()
    assert "standard error is 38% (limit 5%" in noisy.note()
    slow = timing.RETRY_MAX_S + 1
    clock = _Clock(monkeypatch, plan=[slow], reference=[1.0, 3.0])
    once = timing.interleaved(clock.run_plan, clock.run_reference, 1)
    assert once.attempts == 1 and not once.steady and "over 10 s: not rerun" in once.note()
    assert "differs by 200% (limit 10%)" in once.note() and once.ratio == slow / 2.0
    clock = _Clock(monkeypatch, plan=[2.0, 2.0], reference=[])
    own = timing.interleaved(clock.run_plan, None, 2)
    assert own.ratio == 1.0 and own.reference_time_s == 2.0 and own.attempts == 1 and own.steady


def test_thread_count_is_chosen_per_device_and_restored():
    import torch

    assert timing.threads_for("cpu") == 1 and timing.threads_for("cuda") is None
    assert timing.threads_for("cuda:0", 4) == 4
    before = torch.get_num_threads()
    with timing.torch_threads(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with timing.torch_threads(None) as n:
        assert n == before


# ---------------------------------------------------------------------- one batch size
def test_prepare_then_reload_gives_the_same_problem(tmp_path, monkeypatch):
    from mutwo import pipeline
    from mutwo.scenario import validate_scenario

    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path / "cache"))
    sc = validate_scenario({"name": "p", "model": "mlp", "model_options": {"width": 16, "depth": 2},
                            "batch_size": 8, "optimizer": {"name": "sgd", "options": {"momentum": 0.0}},
                            "device": "cpu", "budgets": [1.0], "solvers": ["keep_all"],
                            "profile": {"runs": 1, "warmup": 0}})
    said = []
    prep = pipeline.prepare_scenario(sc, 8, "cpu", status=said.append)
    assert said == ["b8: build mlp", "b8: capture", "b8: profile", "b8: check against eager PyTorch"]
    eager = prep.info["eager_check"]  # the MLP's captured step is eager PyTorch's, bit for bit
    assert eager["bitwise_equal"] and eager["within_tolerance"] and eager["max_rel_diff"] == 0.0
    assert eager["tolerance"].startswith("bitwise")
    keep = simulate(prep.problem, Schedule.keep_all(prep.problem))
    assert (prep.keep_all_peak_bytes, prep.keep_all_time_s) == (keep.peak_bytes, keep.time_s)
    assert prep.graph is not None and len(prep.flat) > 0 and prep.floor == prep.problem.peak_floor()
    assert prep.info["floor_bytes"] == prep.floor[0] and prep.problem.notes["batch_size"] == 8
    folder = tmp_path / "batch8"
    assert pipeline.reload(folder, 8) is None  # nothing there yet
    pipeline.save_tables(prep, folder)
    files.write_json(folder / pipeline.KEEP_ALL_FILE, prep.info)
    back = pipeline.reload(folder, 8)
    assert back.graph is None and back.keep_all_peak_bytes == prep.keep_all_peak_bytes
    assert back.floor == prep.floor and np.array_equal(back.problem.act_bytes, prep.problem.act_bytes)
    assert {"ops.csv", "activations.csv", "problem.npz", "keep_all.json"} == {p.name for p in folder.iterdir()}


def test_the_eager_check_reports_a_step_that_differs_and_its_tolerance():
    import torch

    from mutwo import pipeline
    from mutwo.capture import capture, flat_state
    from mutwo.workload import OptimizerConfig
    from mutwo.zoo import build_workload

    wl = build_workload("mlp", 8)
    graph = capture(wl, OptimizerConfig("sgd", {"lr": 0.01}))
    flat = flat_state(wl, OptimizerConfig("sgd", {"lr": 0.01}))[0]
    same = pipeline.eager_check(wl, OptimizerConfig("sgd", {"lr": 0.01}), graph, flat)
    other = pipeline.eager_check(wl, OptimizerConfig("sgd", {"lr": 0.5}), graph, flat)  # not the captured step
    assert same["bitwise_equal"] and not other["bitwise_equal"] and not other["within_tolerance"]
    assert other["max_rel_diff"] > 1e-3 and "float32 rtol 1.3e-06 atol 1e-05" in other["tolerance"]
    x = torch.ones(4)
    near = pipeline._compare([x + 1e-7], [x])  # rounding-level: not bitwise, within assert_close's defaults
    assert not near["bitwise_equal"] and near["within_tolerance"] and 0 < near["max_rel_diff"] < 1e-6
    broken = pipeline.eager_check(wl, OptimizerConfig("sgd", {"lr": 0.01}), None, flat)
    assert broken["error"].startswith("AttributeError")
