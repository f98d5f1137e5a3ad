"""Issue 19: comparison grids on a Ray cluster give a local run's rows.

On a local cluster started here (`ray.init(num_cpus=2)`, one for the module; skipped with the reason
when Ray is not installed): the same rows, statuses, predicted columns and plans as the local executor
for two scenario files in one command (one shared profile cache); a hanging solver killed at its hard
limit (``timeout``); a worker killed under a solver call (retried; always killed: an ``error`` row
naming the lost worker); the driver dying mid-run, then ``--resume``, loses no finished cell. The bad
input lines (no Ray, an unreachable address, cuda on a cluster without GPUs) are one line each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mutwo import run_folder
from mutwo.cell import WORKER_LOST
from mutwo.compare import main
from mutwo.schedule import Schedule

ROOT = Path(__file__).parent.parent
# columns that depend on the scenario, the seed and the profile only (not on this run's timing)
SAME = ["scenario", "batch_size", "device", "solver", "budget", "budget_bytes", "budget_fraction", "status",
        "predicted_peak_bytes", "predicted_time_s", "predicted_overhead_pct", "recompute_s", "stall_s",
        "keep_all_peak_bytes", "keep_all_time_s", "executed", "execute_note", "n_keep", "n_recompute", "n_swap",
        "schedule_file", "message", "kind"]
SOLVERS = "tests.fixtures_ray_solvers"


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    """One profile cache for the module: a local and a Ray run of a grid see one profile."""
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "ray_cache"))


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mutwo[ray]'); the Ray executor "
                                            "needs a local cluster to be tested")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _write(path: Path, **scenario) -> Path:
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def _go(tmp_path: Path, *args: str) -> int:
    return main([*map(str, args), "--out", str(tmp_path), "--quiet", "--no-plots", "--no-references"])


def _small(tmp_path: Path, name: str, **changes) -> Path:
    sc = {"name": name, "model": "mlp", "model_options": {"width": 16, "depth": 2}, "batch_size": [8],
          "optimizer": {"name": "sgd", "options": {"momentum": 0.0}}, "device": "cpu", "budgets": [1.0],
          "solvers": ["keep_all"], "profile": {"runs": 1, "warmup": 0}, "execute": {"enabled": False}, "seed": 0}
    return _write(tmp_path / f"{name}.yaml", **{**sc, **changes})


# ---------------------------------------------------------------------- the same results
def test_two_scenarios_on_ray_give_the_local_rows_and_plans(cluster, tmp_path):
    base = yaml.safe_load((ROOT / "scenarios" / "tiny_batches.yaml").read_text())
    a = _write(tmp_path / "a.yaml", **{**base, "batch_size": [512],
                                       "solvers": ["keep_all", "knapsack", "mutwo_greedy"]})
    b = _write(tmp_path / "b.yaml", **{**base, "name": "tiny_b", "batch_size": [256],
                                       "solvers": ["recompute_all", "mutwo_greedy"]})
    assert _go(tmp_path, a, b, "--run-id", "local") == 0  # one after another, in this process
    assert _go(tmp_path, a, b, "--run-id", "ray", "--executor", "ray") == 0
    for name, n in (("tiny_batches", 3 * 3), ("tiny_b", 2 * 3)):
        local, on_ray = (tmp_path / name / run for run in ("local", "ray"))
        lo, ra = (pd.read_csv(r / "results.csv") for r in (local, on_ray))
        assert len(lo) == n
        pd.testing.assert_frame_equal(lo[SAME], ra[SAME])
        assert lo["executed"].any() and lo["status"].isin(["feasible", "optimal"]).any()
        assert ra["measured_peak_bytes"].notna().sum() == lo["measured_peak_bytes"].notna().sum()
        for f in lo["schedule_file"].dropna():
            x, y = Schedule.load(local / f), Schedule.load(on_ray / f)
            assert x.plan_key() == y.plan_key() and x.status == y.status, f
        for folder in local.glob("batch*"):  # the one profile: byte-identical Problems
            assert (folder / "problem.npz").read_bytes() == (on_ray / folder.name / "problem.npz").read_bytes()
        info = json.loads((on_ray / "run.json").read_text())
        assert info["status"] == "finished" and info["cells"] == n
        assert len((on_ray / "cells.jsonl").read_text().splitlines()) == n


# ---------------------------------------------------------------------- faults
def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_hung_solver_is_killed_and_a_lost_worker_is_retried_then_reported(cluster, tmp_path):
    pid_file, flag = tmp_path / "hung.pid", tmp_path / "killed-once"
    path = _small(tmp_path, "faults", executor={"kind": "ray"}, solvers=[
        "keep_all",
        {"name": f"{SOLVERS}:sleeps", "label": "hangs", "timeout_s": 3, "options": {"pid_file": str(pid_file)}},
        {"name": f"{SOLVERS}:kills_its_worker", "label": "kills_once", "options": {"flag": str(flag)}},
        {"name": f"{SOLVERS}:kills_its_worker", "label": "kills_always"}])
    assert _go(tmp_path, path, "--run-id", "r", "--allow-errors") == 0  # executor: the scenario's section
    df = pd.read_csv(tmp_path / "faults" / "r" / "results.csv").set_index("solver")
    assert df.loc["keep_all", "status"] == "feasible"
    assert df.loc["hangs", "status"] == "timeout" and df.loc["hangs", "solve_time_s"] == 3
    assert "hard time limit of 3 s" in df.loc["hangs", "message"]
    time.sleep(0.5)
    assert not _alive(int(pid_file.read_text())), "the hung solver's process was killed"
    assert flag.exists() and df.loc["kills_once", "status"] == "feasible"  # retried on a new worker
    assert df.loc["kills_once", "message"] == "after its worker was killed"
    lost = df.loc["kills_always"]
    assert lost["status"] == "error" and "WorkerLost" in lost["message"]
    assert "Ray worker running this solver call was lost (3 tries)" in lost["message"]
    assert lost["execute_note"] == WORKER_LOST  # so --resume runs it again; the others are kept
    done = run_folder.finished_cells(tmp_path / "faults" / "r")
    assert {r.solver for r in done.values()} == {"keep_all", "hangs", "kills_once"}


def test_driver_dying_mid_run_then_resume_loses_no_finished_cell(cluster, tmp_path, monkeypatch, capsys):
    budgets = [1.0, 0.95, 0.9, 0.85, 0.8, 0.7]
    path = _small(tmp_path, "dies", budgets=budgets, solvers=["keep_all", "knapsack", "mutwo_greedy"])
    assert _go(tmp_path, path, "--run-id", "full") == 0  # the reference: local, uninterrupted
    append, written = run_folder.append_cell, []

    def dies_after_five(run_dir, row):  # the driver dies (Ctrl-C) once five rows are on disk
        if len(written) == 5:
            raise KeyboardInterrupt
        append(run_dir, row)
        written.append(row.key)

    monkeypatch.setattr(run_folder, "append_cell", dies_after_five)
    assert _go(tmp_path, path, "--run-id", "cut", "--executor", "ray") == 130
    assert "--resume" in capsys.readouterr().err
    run = tmp_path / "dies" / "cut"
    before = (run / "cells.jsonl").read_text().splitlines()
    assert len(before) == 5 and json.loads((run / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(run_folder, "append_cell", append)
    assert _go(tmp_path, path, "--run-id", "cut", "--executor", "ray", "--resume") == 0
    after = (run / "cells.jsonl").read_text().splitlines()
    assert len(after) == 18 and after[:5] == before, "finished cells are kept, not redone"
    assert json.loads((run / "run.json").read_text())["cells_resumed"] == 5
    full, resumed = (pd.read_csv(tmp_path / "dies" / r / "results.csv") for r in ("full", "cut"))
    pd.testing.assert_frame_equal(full[SAME], resumed[SAME])


# ---------------------------------------------------------------------- bad input: one line each
def test_executor_ray_without_ray_names_the_install_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert _go(tmp_path, _small(tmp_path, "noray"), "--executor", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --executor ray needs Ray, which is not installed here: pip install 'mutwo[ray]'"
    assert not (tmp_path / "noray").exists(), "refused before any work"


def test_unreachable_address_is_one_line_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'mutwo[ray]')")
    t0 = time.perf_counter()
    assert _go(tmp_path, _small(tmp_path, "far"), "--executor", "ray", "--address", "127.0.0.1:9") == 2
    assert time.perf_counter() - t0 < 15
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --address 127.0.0.1:9: no Ray cluster answers there")
    assert not (tmp_path / "far").exists()


def test_cuda_on_a_cluster_without_gpus_is_refused_before_any_work(cluster, tmp_path, capsys):
    assert _go(tmp_path, _small(tmp_path, "gpu", device="cuda"), "--executor", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "field 'device': cuda needs GPU: 1" in err and "has no GPU (CPU 2" in err
    assert not (tmp_path / "gpu").exists()


def test_scenarios_disagreeing_on_the_executor_are_refused(tmp_path, capsys):
    one = _small(tmp_path, "one", executor={"kind": "ray"})
    two = _small(tmp_path, "two")
    assert _go(tmp_path, one, two) == 2
    err = capsys.readouterr().err
    assert "field 'executor'" in err and "choose with --executor" in err
    assert _go(tmp_path, one, two, "--executor", "local") == 0  # the command line decides
    assert (tmp_path / "one").exists() and (tmp_path / "two").exists()


def test_two_files_of_one_name_are_refused(tmp_path, capsys):
    one = _small(tmp_path, "same")
    other = tmp_path / "other.yaml"
    other.write_text(one.read_text())
    assert _go(tmp_path, one, other) == 2
    assert "each scenario of one command needs its own name" in capsys.readouterr().err


def test_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    assert _go(tmp_path, _small(tmp_path, "addr"), "--address", "auto") == 2
    assert "add --executor ray" in capsys.readouterr().err


@pytest.mark.parametrize("section, field, fix", [
    ({"kind": "dask"}, "executor.kind", "'local' or 'ray'"),
    ({"kind": "ray", "address": "nowhere"}, "executor.address", "write auto, HOST:PORT"),
    ({"kind": "ray", "max_concurrent": 0}, "executor.max_concurrent", "greater than 0"),
])
def test_bad_executor_section_names_the_field(tmp_path, capsys, section, field, fix):
    assert _go(tmp_path, _small(tmp_path, "bad", executor=section)) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and fix in err


def test_local_default_does_not_import_ray(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from mutwo.compare import main; "
            f"rc = main([{str(_small(tmp_path, 'plain'))!r}, '--out', {str(tmp_path)!r}, '--quiet', '--no-plots']); "
            "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray imported'")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
