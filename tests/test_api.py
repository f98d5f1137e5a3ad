"""The public API at the package top level: every name loads, ``import mutwo`` stays torch-free, the
functions that share a module's name are callable however the module was imported, and the pieces
chain: capture -> profile -> build_problem -> solve -> simulate -> execute, and compare."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

import mutwo

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def _fresh(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_import_mutwo_imports_neither_torch_nor_solvers():
    out = _fresh("import sys, mutwo\nprint(sorted(m for m in sys.modules if m.split('.')[0] in "
                 "('torch', 'solvers', 'pandas') or m.startswith('mutwo.')))")
    assert out == "[]"


def test_every_public_name_loads_with_a_docstring():
    assert set(mutwo.__all__) >= {"capture", "profile", "build_problem", "solve", "simulate", "execute", "compare",
                                  "optimize", "Workload", "Problem", "Schedule", "register_solver"}
    for name in mutwo.__all__:
        obj = getattr(mutwo, name)
        target = obj._function() if isinstance(obj, types.ModuleType) else obj
        assert callable(obj) and (inspect.getdoc(target) or "").strip(), name
        if inspect.isfunction(target) and name != "register_solver":
            assert "return" in inspect.getfullargspec(target).annotations, f"{name} has no return type hint"
    assert set(mutwo.__all__) <= set(dir(mutwo))
    with pytest.raises(AttributeError, match="the public API is capture, profile"):
        mutwo.not_a_name  # noqa: B018


def test_functions_named_like_their_module_are_callable_however_imported():
    """``import mutwo.compare`` binds the module to ``mutwo.compare``; it still calls the function."""
    out = _fresh("import mutwo.compare, mutwo.simulate, inspect\n"
                 "from mutwo.simulate import simulate, SimResult\n"
                 "from mutwo import capture\n"
                 "print(callable(mutwo.compare), mutwo.compare.main.__name__, mutwo.simulate.SimResult is SimResult,\n"
                 "      inspect.signature(mutwo.simulate) == inspect.signature(simulate), callable(capture),\n"
                 "      capture.CaptureError.__name__, mutwo.compare.compare is mutwo.compare._function())")
    assert out == "True main True True True CaptureError True"


def test_the_pieces_chain_from_capture_to_execute():
    import torch

    from mutwo.capture import flat_state
    from mutwo.zoo import build_workload

    wl = build_workload("mlp", 256, width=128, depth=6)
    graph = mutwo.capture(wl, "adam")
    flat, _, _ = flat_state(wl, mutwo.OptimizerConfig("adam"))
    prof = mutwo.profile(graph, flat, runs=1, progress=False)
    problem, binding = mutwo.build_problem(graph, prof)
    assert isinstance(problem, mutwo.Problem)
    keep = mutwo.simulate(problem, mutwo.Schedule.keep_all(problem))
    schedule = mutwo.solve(problem, 0.9, solver="mutwo_greedy", mode="recompute")
    sim = mutwo.simulate(problem, schedule)
    assert schedule.feasible and sim.peak_bytes <= int(0.9 * keep.peak_bytes) and schedule.counts()["n_recompute"] > 0
    # a size and bytes are budgets too; the same plan for the same bytes
    same = mutwo.solve(problem, int(0.9 * keep.peak_bytes), mode="recompute")
    assert same.plan_key() == schedule.plan_key()
    assert mutwo.solve(problem, "1GiB").counts()["n_recompute"] == 0
    result = mutwo.execute(graph, problem, schedule, flat, binding=binding, iterations=1)
    assert result.bitwise_equal and isinstance(flat[0], torch.Tensor)
    with pytest.raises(ValueError, match="budget=1.5: .*outside \\(0, 1\\]"):
        mutwo.solve(problem, 1.5)
    with pytest.raises(ValueError, match="unknown mutwo_greedy option 'modes'"):
        mutwo.solve(problem, 0.9, modes="recompute")


def test_compare_is_the_command_line_from_python(tmp_path):
    run_dir, df = mutwo.compare(ROOT / "scenarios" / "toy_mlp.yaml", solvers=["keep_all", "mutwo_greedy"],
                                budgets=[1.0, 0.8], no_execute=True, no_references=True, no_plots=True, quiet=True,
                                out=tmp_path, run_id="api")
    assert run_dir == tmp_path / "toy_mlp" / "api" and (run_dir / "results.csv").exists()
    assert isinstance(df, pd.DataFrame) and set(df["solver"]) == {"keep_all", "mutwo_greedy"}
    assert df[df["solver"] == "mutwo_greedy"]["status"].isin(["feasible", "optimal"]).all()
    with pytest.raises(TypeError, match="unknown option 'budget'; did you mean 'budgets'"):
        mutwo.compare(ROOT / "scenarios" / "toy_mlp.yaml", budget=0.8)
    with pytest.raises(TypeError, match="is a flag"):
        mutwo.compare(ROOT / "scenarios" / "toy_mlp.yaml", no_execute="yes")
