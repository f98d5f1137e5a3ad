"""docs/solvers.md's examples run: its toy Problem (a doctest) and examples/my_solver.py, whose
solver the doc shows verbatim, through ``python -m mutwo.compare`` as a ``module:function``."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mutwo.compare import main
from mutwo.scenario import ScenarioError, validate_scenario

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "solvers.md"
EXAMPLE = ROOT / "examples" / "my_solver.py"
SOLVER = "examples.my_solver:cheapest_first"


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def test_the_doc_toy_problem_is_what_it_says():
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


def test_the_doc_shows_the_example_verbatim():
    source = EXAMPLE.read_text()
    solver = source[source.index("def cheapest_first("):].strip()
    assert solver in DOC.read_text()
    assert len(solver.splitlines()) <= 20


def test_the_example_runs_through_compare(tmp_path):
    path = tmp_path / "example.yaml"
    data = yaml.safe_load((ROOT / "scenarios" / "toy_mlp.yaml").read_text())
    path.write_text(yaml.safe_dump({**data, "name": "example", "plan_space": "recompute",
                                    "solvers": ["keep_all", {"name": SOLVER, "options": {"limit": 3},
                                                             "label": "cheapest3"}, SOLVER]}))
    assert main([str(path), "--out", str(tmp_path), "--run-id", "r", "--quiet", "--no-plots"]) == 0
    df = pd.read_csv(tmp_path / "example" / "r" / "results.csv")
    mine = df[df["solver_name"] == SOLVER]
    assert len(mine) == 6 and (mine["n_swap"] == 0).all()
    assert (mine[mine["budget"] == "1"]["n_recompute"] == 0).all()  # keep-all fits: nothing recomputed
    fits = mine[mine["budget"] == "0.85"]
    assert fits["status"].isin(["feasible"]).all() and (fits["predicted_peak_bytes"] <= fits["budget_bytes"]).all()
    assert (mine[mine["solver"] == "cheapest3"]["n_recompute"] <= 3).all()
    assert json.loads(mine[mine["solver"] == "cheapest3"]["solver_options"].iloc[0]) == {"limit": 3}
    executed = fits[fits["executed"]]
    assert (executed["max_rel_diff"] < 1e-3).all()


def test_the_example_is_checked_like_any_solver():
    base = {"name": "t", "model": "mlp", "batch_size": 4, "budgets": [1.0]}
    with pytest.raises(ScenarioError, match="'limit' is -1; it takes an integer >= 0 or null"):
        validate_scenario({**base, "solvers": [{"name": SOLVER, "options": {"limit": -1}}]})
    with pytest.raises(ScenarioError, match="cheapest_first makes RECOMPUTE plans"):
        validate_scenario({**base, "plan_space": "swap", "solvers": [SOLVER]})
