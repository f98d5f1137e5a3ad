"""Solver registry: registration, lookup, close-match errors, lazy built-ins and entry points."""

from __future__ import annotations

import types

import numpy as np
import pytest

from mutwo import registry
from mutwo.schedule import Schedule, Status

_REAL_ENTRY_POINTS = registry._entry_points


@pytest.fixture
def clean_registry(monkeypatch):
    """An empty registry with nothing to load, so tests do not see (or leak) real solvers."""
    monkeypatch.setattr(registry, "_wrapped", {})
    monkeypatch.setattr(registry, "_original", {})
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ())
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_entry_points", lambda: [])
    return registry


class _FakeProblem:
    n_act = 3


def _plan(problem, budget_bytes, **options):
    return Schedule(np.zeros(problem.n_act, np.int8), np.full(problem.n_act, -1))


def test_register_and_lookup_fills_provenance(clean_registry):
    fn = clean_registry.register_solver("plan_a")(_plan)
    assert clean_registry.get_solver("plan_a") is fn
    assert clean_registry.available_solvers() == ["plan_a"]
    s = fn(_FakeProblem(), 1234, foo=1)
    assert s.solver == "plan_a" and s.budget_bytes == 1234
    assert s.solve_time_s > 0


def test_wrapper_keeps_values_the_solver_set(clean_registry):
    @clean_registry.register_solver("own")
    def own(problem, budget_bytes, **options):
        return Schedule(np.zeros(1, np.int8), np.full(1, -1), solver="custom", budget_bytes=7,
                        solve_time_s=42.0, status=Status.OPTIMAL)

    s = own(_FakeProblem(), 99)
    assert (s.solver, s.budget_bytes, s.solve_time_s) == ("custom", 7, 42.0)


def test_wrapper_rejects_non_schedule(clean_registry):
    bad = clean_registry.register_solver("bad")(lambda p, b: None)
    with pytest.raises(TypeError, match="bad"):
        bad(_FakeProblem(), 1)


def test_duplicate_name_different_function_raises(clean_registry):
    clean_registry.register_solver("dup")(_plan)
    clean_registry.register_solver("dup")(_plan)  # same function again: fine

    def other(problem, budget_bytes):
        return _plan(problem, budget_bytes)

    with pytest.raises(registry.DuplicateSolverError, match="dup"):
        clean_registry.register_solver("dup")(other)


def test_unknown_name_lists_close_matches_and_all(clean_registry):
    clean_registry.register_solver("largest_first")(_plan)
    clean_registry.register_solver("keep_all")(_plan)
    with pytest.raises(registry.UnknownSolverError) as info:
        clean_registry.get_solver("largest_frist")
    assert isinstance(info.value, KeyError)
    msg = str(info.value)
    assert "did you mean 'largest_first'" in msg
    assert "available: keep_all, largest_first" in msg


def test_builtin_missing_module_is_skipped_other_errors_propagate(clean_registry, monkeypatch):
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ("solvers._surely_not_written_yet",))
    assert clean_registry.available_solvers() == []

    monkeypatch.setattr(registry, "BUILTIN_MODULES", ("_mutwo_test_needs_dep",))
    monkeypatch.setattr(registry, "_builtins_loaded", False)

    def fake_import(name):
        raise ModuleNotFoundError("No module named 'ortools'", name="ortools")

    monkeypatch.setattr(registry.importlib, "import_module", fake_import)
    with pytest.raises(ModuleNotFoundError, match="ortools"):
        clean_registry.available_solvers()


def test_builtin_modules_are_imported_lazily(clean_registry, monkeypatch):
    module = types.ModuleType("_mutwo_test_builtin")
    imported = []

    def fake_import(name):
        imported.append(name)
        clean_registry.register_solver("lazy")(_plan)
        return module

    monkeypatch.setattr(registry, "BUILTIN_MODULES", ("_mutwo_test_builtin",))
    monkeypatch.setattr(registry.importlib, "import_module", fake_import)
    assert imported == []
    assert clean_registry.get_solver("lazy").solver_name == "lazy"
    clean_registry.get_solver("lazy")
    assert imported == ["_mutwo_test_builtin"]


class _EP:
    """Stands in for importlib.metadata.EntryPoint: a name and what ``load()`` does."""

    def __init__(self, name, loader):
        self.name, self.value, self.load = name, f"plugin:{name}", loader


def _raise(exc):
    raise exc


def test_entry_points_function_module_and_broken(clean_registry, monkeypatch):
    def plugin_fn(problem, budget_bytes, **options):
        return _plan(problem, budget_bytes)

    module = types.ModuleType("plugin_mod")

    def load_module():
        clean_registry.register_solver("from_module")(_plan)
        return module

    eps = [_EP("plugin_fn", lambda: plugin_fn), _EP("mod", load_module),
           _EP("broken", lambda: _raise(ImportError("nope")))]
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    with pytest.warns(RuntimeWarning, match="broken"):
        names = clean_registry.available_solvers()
    assert names == ["from_module", "plugin_fn"]
    assert clean_registry.get_solver("plugin_fn")(_FakeProblem(), 5).solver == "plugin_fn"


def test_entry_point_with_decorated_function_is_not_registered_twice(clean_registry, monkeypatch):
    decorated = clean_registry.register_solver("self_named")(_plan)
    monkeypatch.setattr(registry, "_entry_points", lambda: [_EP("alias", lambda: decorated)])
    assert clean_registry.available_solvers() == ["self_named"]


def test_real_entry_points_api_is_used(clean_registry, monkeypatch):
    """The default loader asks importlib.metadata for exactly the ``mutwo.solvers`` group."""
    seen = {}

    def fake_entry_points(**kw):
        seen.update(kw)
        return [_EP("via_metadata", lambda: _plan)]

    monkeypatch.setattr(registry, "_entry_points", _REAL_ENTRY_POINTS)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", fake_entry_points)
    assert clean_registry.available_solvers() == ["via_metadata"]
    assert seen == {"group": "mutwo.solvers"}
