"""The seams of the comparison driver: atomic files, the typed Row and its cells.jsonl format, the run
folder's finished cells, the timing routine's reruns, and one batch size prepared and reloaded."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mutwo import files, run_folder, timing
from mutwo.cell import COLUMNS, FEASIBLE, CellStatus, Row, results_frame
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
    # written before the kind and gap_to_bound_pct columns: a solver cell, the same line with them added
    assert row.kind == "solver" and json.dumps(files.jsonable(row.to_dict())) == OLD_LINE[:-1] + ', "kind": "solver", "gap_to_bound_pct": null}'
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


def test_results_frame_has_the_columns_and_numeric_types():
    df = results_frame([Row(batch_size=1, status=CellStatus.INVALID, budget_bytes=5, solve_time_s=None)])
    assert list(df.columns) == COLUMNS and df["status"].tolist() == ["invalid"]
    assert df["solve_time_s"].dtype == float and df["budget_bytes"].iloc[0] == 5


# ---------------------------------------------------------------------- timing
def _result(times: list[float]) -> SimpleNamespace:
    return SimpleNamespace(measured_peak_bytes=10, iteration_time_s=float(np.median(times)), iteration_times_s=times,
                           max_rel_diff=0.0, bitwise_equal=True, emulated_swap=False, method="fake", notes={})


def test_bracketed_reruns_while_the_baseline_moves():
    baselines = iter([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0], [1.0, 1.0]])  # attempt 1: the load doubled
    runs = []
    m = timing.bracketed(lambda: runs.append(1) or _result([1.5, 1.5]), lambda: next(baselines), max_attempts=3)
    assert len(runs) == 2 and m["attempts"] == 2 and m["load_steady"]
    assert m["baseline_time_s"] == 1.0 and m["measured_time_s"] == 1.5


def test_bracketed_stops_at_max_attempts_and_for_slow_plans_and_self_baselines():
    calls = []
    noisy = timing.bracketed(lambda: calls.append(1) or _result([1.0, 3.0]), lambda: [1.0], max_attempts=3)
    assert len(calls) == 3 and not noisy["load_steady"] and noisy["time_spread"] == pytest.approx(2.0)
    slow = timing.bracketed(lambda: _result([timing.RETRY_MAX_S + 1, 3 * timing.RETRY_MAX_S]), lambda: [1.0])
    assert slow["attempts"] == 1 and not slow["load_steady"]
    own = timing.bracketed(lambda: _result([2.0, 2.0]), None)
    assert own["baseline_time_s"] == 2.0 and own["attempts"] == 1 and own["load_steady"]


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
    assert said == ["b8: build mlp", "b8: capture", "b8: profile"]
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
