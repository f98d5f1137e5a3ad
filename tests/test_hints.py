"""Hints across a sweep's budgets (`mutwo.hints`): each solver's budgets solved from the largest down,
the plan at the next larger budget handed to a solver that takes a ``hint``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from mutwo.compare import main
from mutwo.hints import SweepHints, largest_first, takes_hint
from mutwo.schedule import Schedule
from mutwo.synthetic import random_dag

SCENARIOS = Path(__file__).parent.parent / "scenarios"
ECHO = "tests.fixtures_user_solver:hint_echo"


def test_largest_first_keeps_solvers_together_and_unknown_sizes_last():
    labels = ["a", "a", "a", "b", "b", "a"]
    sizes = [50, 90, None, 10, 70, 70]
    assert largest_first(labels, sizes) == [1, 5, 0, 2, 4, 3]


def test_sweep_hints_picks_the_nearest_larger_budget(tmp_path):
    p = random_dag(8, seed=1)
    sweep = SweepHints()
    for b in (300, 200, 250):
        s = Schedule.keep_all(p, budget_bytes=b)
        sweep.record("x", b, s.save(tmp_path / f"x{b}.json"))
    sweep.record("x", 100, tmp_path / "missing.json")  # no file: not recorded
    assert sweep.for_budget("x", 220).budget_bytes == 250
    assert sweep.for_budget("x", 250).budget_bytes == 300  # strictly larger
    assert sweep.for_budget("x", 300) is None and sweep.for_budget("y", 10) is None
    assert sweep.for_budget("x", None) is None


def test_takes_hint_only_where_declared_and_not_set():
    assert takes_hint(ECHO, {}) and not takes_hint(ECHO, {"hint": None})
    assert not takes_hint("knapsack", {})


def _scenario(tmp_path: Path, hints: bool) -> Path:
    data = yaml.safe_load((SCENARIOS / "toy_mlp.yaml").read_text())
    path = tmp_path / f"hints_{hints}.yaml"
    path.write_text(yaml.safe_dump({**data, "name": f"hints_{hints}", "budgets": [0.9, 0.95, 0.85],
                                    "solvers": [{"name": ECHO, "label": "echo"}, "keep_all"],
                                    "plan_space": "recompute", "solve": {"timeout_s": 60, "hints": hints},
                                    "references": False}))
    return path


def test_grid_hands_each_budget_the_plan_of_the_next_larger_one(tmp_path):
    run = tmp_path / "hints_True" / "r"
    assert main([str(_scenario(tmp_path, True)), "--no-execute", "--no-plots", "--quiet", "--out", str(tmp_path),
                 "--run-id", "r"]) == 0
    df = pd.read_csv(run / "results.csv")
    assert list(df["budget"].astype(str)) == ["0.9", "0.95", "0.85"] * 2  # the scenario's order
    echo = df[df["solver"] == "echo"].set_index(df[df["solver"] == "echo"]["budget"].astype(str))
    assert echo.loc["0.95", "message"] == "no hint"
    assert echo.loc["0.9", "message"] == f"hint from budget {echo.loc['0.95', 'budget_bytes']}"
    assert echo.loc["0.85", "message"] == f"hint from budget {echo.loc['0.9', 'budget_bytes']}"
    assert (echo["solver_options"] == "{}").all()  # the row shows the scenario's options, not the hint


def test_hints_off_solves_every_cell_on_its_own(tmp_path):
    assert main([str(_scenario(tmp_path, False)), "--no-execute", "--no-plots", "--quiet", "--out", str(tmp_path),
                 "--run-id", "r"]) == 0
    df = pd.read_csv(tmp_path / "hints_False" / "r" / "results.csv")
    assert (df[df["solver"] == "echo"]["message"] == "no hint").all()
