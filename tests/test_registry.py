"""Solver registry: registration, lookup, close-match errors, built-ins and plug-ins as entry points."""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pytest
import tomllib

from mutwo import registry
from mutwo.schedule import Schedule, Status
from mutwo.solver_options import Ge

ROOT = Path(__file__).parent.parent
_REAL_ENTRY_POINTS = registry._entry_points


class _EP:
    """Stands in for importlib.metadata.EntryPoint: a name, what ``load()`` does and, for a built-in,
    the distribution that declared it."""

    def __init__(self, name, loader, dist=None, value=None):
        self.name, self.value, self.load = name, value or f"plugin:{name}", loader
        self.dist = types.SimpleNamespace(name=dist) if dist else None


# mutwo's own entry point for a solver module that registers nothing: the registry wants built-ins
_EMPTY_BUILTIN = _EP("solvers.empty", lambda: types.ModuleType("solvers.empty"), dist="mutwo",
                     value="solvers.empty")


@pytest.fixture
def clean_registry(monkeypatch):
    """An empty registry with nothing to load, so tests do not see (or leak) real solvers."""
    monkeypatch.setattr(registry, "_wrapped", {})
    monkeypatch.setattr(registry, "_original", {})
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_entry_points", lambda: [_EMPTY_BUILTIN])
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


def test_builtin_load_errors_propagate_plugin_ones_warn(clean_registry, monkeypatch):
    """A missing dependency of a built-in module (ortools) is the user's to see; a broken plug-in only
    warns, so it cannot take the built-ins down."""
    def needs_ortools():
        raise ModuleNotFoundError("No module named 'ortools'", name="ortools")

    monkeypatch.setattr(registry, "_entry_points",
                        lambda: [_EP("solvers.ilp", needs_ortools, dist="mutwo", value="solvers.ilp")])
    with pytest.raises(ModuleNotFoundError, match="ortools"):
        clean_registry.available_solvers()
    with pytest.raises(ModuleNotFoundError, match="ortools"):  # not marked loaded: it says so again
        clean_registry.get_solver("keep_all")


def test_builtin_module_missing_from_the_checkout_says_reinstall(clean_registry, monkeypatch):
    def gone():
        raise ModuleNotFoundError("No module named 'solvers.gone'", name="solvers.gone")

    monkeypatch.setattr(registry, "_entry_points",
                        lambda: [_EP("solvers.gone", gone, dist="mutwo", value="solvers.gone")])
    with pytest.raises(registry.NotInstalledError, match=r"'solvers.gone'.*stale.*`pip install -e \.`"):
        clean_registry.available_solvers()


def test_no_builtin_entry_points_is_an_error_not_an_empty_registry(clean_registry, monkeypatch, tmp_path):
    """A source checkout that was never pip-installed (or installed before the built-ins were declared)
    has no mutwo entry points: every lookup says how to fix it, even with plug-ins installed."""
    plugin = _EP("plugin", lambda: _plan, dist="some-other-package")
    monkeypatch.setattr(registry, "_entry_points", lambda: [plugin])
    for lookup in (clean_registry.available_solvers, lambda: clean_registry.get_solver("keep_all"),
                   lambda: clean_registry.solver_options("keep_all")):
        with pytest.raises(registry.NotInstalledError) as info:
            lookup()
        assert "`pip install -e .`" in str(info.value) and "'mutwo.solvers' entry points" in str(info.value)
    # an older install's mutwo.egg-info in the checkout is found before the installed metadata and
    # hides it (pip install -e . does not rewrite it): the message names it
    stale = tmp_path / "mutwo.egg-info"
    stale.mkdir()
    (stale / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: mutwo\nVersion: 0.1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.NotInstalledError, match=f"{re.escape(str(stale.resolve()))} .* hides the installed one: "
                                                         f"delete it"):
        clean_registry.available_solvers()
    (stale / "entry_points.txt").write_text("[mutwo.solvers]\nsolvers.baselines = solvers.baselines\n")
    with pytest.raises(registry.NotInstalledError) as info:
        clean_registry.available_solvers()
    assert "delete it" not in str(info.value)  # a current egg-info is not blamed
    # the distribution is told by its normalised name (pip may write MuTwo or mutwo)
    monkeypatch.setattr(registry, "_entry_points", lambda: [_EP("x", _EMPTY_BUILTIN.load, dist="MuTwo")])
    assert clean_registry.available_solvers() == []


def test_builtin_modules_are_imported_lazily(clean_registry, monkeypatch):
    module = types.ModuleType("_mutwo_test_builtin")
    imported = []

    def load():
        imported.append("_mutwo_test_builtin")
        clean_registry.register_solver("lazy")(_plan)
        return module

    monkeypatch.setattr(registry, "_entry_points",
                        lambda: [_EP("_mutwo_test_builtin", load, dist="mutwo", value="_mutwo_test_builtin")])
    assert imported == []
    assert clean_registry.get_solver("lazy").solver_name == "lazy"
    clean_registry.get_solver("lazy")
    clean_registry.available_solvers()
    assert imported == ["_mutwo_test_builtin"]


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
    monkeypatch.setattr(registry, "_entry_points", lambda: [_EMPTY_BUILTIN, *eps])
    with pytest.warns(RuntimeWarning, match="broken"):
        names = clean_registry.available_solvers()
    assert names == ["from_module", "plugin_fn"]
    assert clean_registry.get_solver("plugin_fn")(_FakeProblem(), 5).solver == "plugin_fn"


def test_entry_point_with_decorated_function_is_not_registered_twice(clean_registry, monkeypatch):
    decorated = clean_registry.register_solver("self_named")(_plan)
    monkeypatch.setattr(registry, "_entry_points", lambda: [_EMPTY_BUILTIN, _EP("alias", lambda: decorated)])
    assert clean_registry.available_solvers() == ["self_named"]


def test_real_entry_points_api_is_used(clean_registry, monkeypatch):
    """The default loader asks importlib.metadata for exactly the ``mutwo.solvers`` group."""
    seen = {}

    def fake_entry_points(**kw):
        seen.update(kw)
        return [_EMPTY_BUILTIN, _EP("via_metadata", lambda: _plan)]

    monkeypatch.setattr(registry, "_entry_points", _REAL_ENTRY_POINTS)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", fake_entry_points)
    assert clean_registry.available_solvers() == ["via_metadata"]
    assert seen == {"group": "mutwo.solvers"}


# ---------------------------------------------------------------------- the options a solver takes
def test_options_derived_from_a_signature_without_kwargs(clean_registry):
    seen = {}

    @clean_registry.register_solver("derived")
    def derived(problem, budget_bytes, *, k: int = 10, share: bool = True):
        seen.update(k=k, share=share)
        return _plan(problem, budget_bytes)

    assert clean_registry.solver_options("derived") == {"k", "share"}
    assert clean_registry.solver_option_defaults("derived") == {"k": 10, "share": True}
    derived(_FakeProblem(), 1, k=3)
    assert seen == {"k": 3, "share": True}
    with pytest.raises(TypeError) as info:
        derived(_FakeProblem(), 1, kk=3)
    assert str(info.value) == "derived got unknown options ['kk']; did you mean 'k'? it takes: k, share"
    # a solver with no parameters but the two takes no options at all
    bare = clean_registry.register_solver("bare")(lambda problem, budget_bytes: _plan(problem, budget_bytes))
    assert clean_registry.solver_options("bare") == set()
    with pytest.raises(TypeError, match=r"bare got unknown options \['x'\]; it takes no options"):
        bare(_FakeProblem(), 1, x=1)


def test_declared_options_are_the_only_ones_accepted(clean_registry):
    got = {}

    @clean_registry.register_solver("declared", options={"alpha": 0.5, "beta": None})
    def declared(problem, budget_bytes, **options):
        got.update(options)
        return _plan(problem, budget_bytes)

    assert clean_registry.solver_options("declared") == {"alpha", "beta"}
    assert clean_registry.solver_option_defaults("declared") == {"alpha": 0.5, "beta": None}
    declared(_FakeProblem(), 1, alpha=0.9)
    assert got == {"alpha": 0.9}
    with pytest.raises(TypeError, match=r"declared got unknown options \['alpah', 'gamma'\]; did you mean "
                                        r"'alpha'\? it takes: alpha, beta"):
        declared(_FakeProblem(), 1, alpah=0.9, gamma=1)

    names_only = clean_registry.register_solver("names_only", options=["x", "y"])(_plan)
    assert clean_registry.solver_option_defaults("names_only") == {"x": registry.NO_DEFAULT,
                                                                   "y": registry.NO_DEFAULT}
    assert names_only(_FakeProblem(), 1, y=2).solver == "names_only"
    with pytest.raises(TypeError, match="names_only got unknown options"):
        names_only(_FakeProblem(), 1, z=2)


def test_bad_declarations_are_refused_at_registration(clean_registry):
    def no_kwargs(problem, budget_bytes, *, k=1):
        return _plan(problem, budget_bytes)

    with pytest.raises(ValueError, match="declares 'j'.*no such parameter and no \\*\\*kwargs"):
        clean_registry.register_solver("wrong", options={"j": 1})(no_kwargs)
    with pytest.raises(TypeError, match="not the string"):
        clean_registry.register_solver("str", options="mode")(_plan)
    with pytest.raises(ValueError, match="is not an option name"):
        clean_registry.register_solver("dash", options=["time-limit"])(_plan)
    assert "wrong" not in clean_registry.available_solvers()


def test_kwargs_solver_without_a_declaration_accepts_anything(clean_registry):
    got = {}

    @clean_registry.register_solver("third_party")
    def third_party(problem, budget_bytes, *, k=1, **options):
        got.update(options, k=k)
        return _plan(problem, budget_bytes)

    assert clean_registry.solver_options("third_party") is None
    assert clean_registry.solver_option_defaults("third_party") is None
    third_party(_FakeProblem(), 1, k=2, anything=3, at_all="x")
    assert got == {"k": 2, "anything": 3, "at_all": "x"}


def test_entry_point_function_and_re_registered_wrapper_keep_their_options(clean_registry, monkeypatch):
    def plugin(problem, budget_bytes, *, depth=2):
        return _plan(problem, budget_bytes)

    monkeypatch.setattr(registry, "_entry_points", lambda: [_EMPTY_BUILTIN, _EP("plugin", lambda: plugin)])
    assert clean_registry.solver_options("plugin") == {"depth"}
    with pytest.raises(TypeError, match="did you mean 'depth'"):
        clean_registry.get_solver("plugin")(_FakeProblem(), 1, deph=3)
    inner = clean_registry.register_solver("inner", options={"a": 1})(_plan)
    clean_registry.register_solver("alias")(inner)  # the wrapper's **options does not hide the declaration
    assert clean_registry.solver_options("alias") == {"a"}
    with pytest.raises(registry.UnknownSolverError):
        clean_registry.solver_options("nobody")


# ---------------------------------------------------------------------- built-in solvers
def test_every_builtin_declares_its_options_and_refuses_others():
    import inspect

    from mutwo.synthetic import chain
    from solvers import ilp, mutwo_greedy
    from solvers.baselines import ChenSqrtOptions, SwapHiddenOptions
    from solvers.options import option_defaults

    p = chain(3)
    names = registry.available_solvers()
    builtin = [n for n in names if registry.get_solver(n).__module__.startswith("solvers.")]
    assert set(builtin) >= {"keep_all", "recompute_all", "chen_sqrt", "largest_first", "swap_hidden", "knapsack",
                            "mutwo_greedy", "ilp_cpsat", "ilp_ortools_mip", "ilp_pulp_cbc", "ilp_pulp_highs",
                            "checkmate_exact", "brute_force"}
    for name in builtin:
        accepted = registry.solver_options(name)
        assert accepted is not None, f"{name} declares no options"
        with pytest.raises(TypeError, match=rf"{name} got unknown options \['not_an_option'\]"):
            registry.get_solver(name)(p, 10**12, not_an_option=1)
    for name in ("keep_all", "recompute_all", "largest_first", "knapsack"):
        assert registry.solver_options(name) == set()
        with pytest.raises(TypeError, match=rf"{name} got unknown options \['segmnts'\]; it takes no options"):
            registry.get_solver(name)(p, 10**12, segmnts=3)
    # declared defaults are the options tables' (the solvers read their values from the same tables)
    assert registry.solver_option_defaults("chen_sqrt") == option_defaults(ChenSqrtOptions)
    assert registry.solver_option_defaults("swap_hidden") == option_defaults(SwapHiddenOptions)
    assert registry.get_solver("swap_hidden")(p, 10**12).options == {"margin": SwapHiddenOptions().margin}
    solve_sig = inspect.signature(mutwo_greedy.solve).parameters
    assert registry.solver_option_defaults("mutwo_greedy") == {k: solve_sig[k].default
                                                               for k in ("mode", "seed", "verify")}
    with pytest.raises(TypeError, match="did you mean 'mode'\\? it takes: mode, seed, verify"):
        registry.get_solver("mutwo_greedy")(p, 10**12, mdoe="both")
    # the ILP options are solve_ilp's; engine only where there is more than one engine
    for name in ("ilp_cpsat", "ilp_pulp_cbc", "ilp_pulp_highs"):
        assert registry.solver_options(name) == ilp._OPTIONS - {"engine"}
    assert registry.solver_options("ilp_ortools_mip") == ilp._OPTIONS
    with pytest.raises(TypeError, match="did you mean 'time_limit_s'"):
        registry.get_solver("ilp_cpsat")(p, 10**12, time_limt_s=5)
    # what was accepted before still is (seed / time_limit_s for brute_force, warm_start for checkmate)
    assert registry.solver_options("brute_force") == {"mode", "max_act", "seed", "time_limit_s"}
    assert registry.solver_options("checkmate_exact") == {"backend", "time_limit_s", "rel_gap", "threads", "seed",
                                                          "grid", "max_act", "max_vars", "presolve", "mode",
                                                          "warm_start", "interval_share"}
    assert registry.get_solver("chen_sqrt")(p, 10**12, segments=1, share=False).options["segments"] == 1


def test_builtins_are_the_entry_points_pyproject_declares():
    """Every solvers/ module that registers solvers is declared in pyproject.toml, and the installed
    metadata the registry reads declares the same (a stale install would load other modules)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["mutwo.solvers"]
    registering = {f"solvers.{f.stem}" for f in (ROOT / "solvers").glob("*.py")
                   if re.search(r"^@register_solver\(", f.read_text(), re.M)}
    assert set(declared.values()) == registering
    installed = {ep.value for ep in registry._entry_points() if registry._is_builtin(ep)}
    assert installed == set(declared.values()), "reinstall: pip install -e ."
    modules = {registry.get_solver(n).__wrapped__.__module__ for n in registry.available_solvers()}
    assert registering <= modules


# ---------------------------------------------------------------------- typed options, decisions
@dataclass(frozen=True)
class _Table:
    mode: Literal["both", "recompute", "swap"] = "both"
    k: Annotated[int, Ge(1)] = 4
    fast: bool = False


def test_an_options_table_declares_defaults_and_accepted_values(clean_registry):
    clean_registry.register_solver("tabled", options=_Table)(_plan)
    info = clean_registry.solver_info("tabled")
    assert info.defaults == {"mode": "both", "k": 4, "fast": False}
    assert info.modes == ("both", "recompute", "swap") and info.decisions == {"recompute", "swap"}
    clean_registry.check_solver_options("tabled", {"mode": "swap", "k": 2, "fast": True})
    bad = {(("mode", "recomput"),): "tabled option 'mode' is 'recomput'; did you mean 'recompute'? it takes 'both', "
                                    "'recompute' or 'swap'",
           (("k", 0),): "tabled option 'k' is 0; it takes an integer >= 1",
           (("k", 2.0),): "tabled option 'k' is 2.0; it takes an integer >= 1",
           (("k", "2"),): "tabled option 'k' is '2'; it takes an integer >= 1",
           (("fast", 1),): "tabled option 'fast' is 1; it takes true or false",
           (("kk", 1),): "unknown tabled option 'kk'; did you mean 'k'? tabled takes: mode, k, fast"}
    for items, message in bad.items():
        with pytest.raises(ValueError) as info:
            clean_registry.check_solver_options("tabled", dict(items))
        assert str(info.value) == message


def test_a_table_whose_hints_do_not_resolve_is_refused(clean_registry):
    Positive = Annotated[int, Ge(1)]  # noqa: F841 - a local name, out of reach of the postponed hint below

    @dataclass(frozen=True)
    class Local:
        k: Positive = 4  # noqa: F821

    with pytest.raises(TypeError, match="type hints of options table .*Local do not resolve.*define it at module "
                                        "level"):
        clean_registry.register_solver("local", options=Local)(_plan)


def test_signature_annotations_are_the_accepted_values(clean_registry):
    @clean_registry.register_solver("annotated")
    def annotated(problem, budget_bytes, *, grid: Literal["ops", "events"] = "ops", limit: float | None = None,
                  untyped=3):
        return _plan(problem, budget_bytes)

    check = clean_registry.check_solver_options
    check("annotated", {"grid": "events", "limit": 2, "untyped": "anything"})  # an int is a number
    with pytest.raises(ValueError, match="'grid' is 'evnts'; did you mean 'events'\\? it takes 'ops' or 'events'"):
        check("annotated", {"grid": "evnts"})
    with pytest.raises(ValueError, match="'limit' is True; it takes a number or null"):
        check("annotated", {"limit": True})
    assert clean_registry.solver_info("annotated").decisions is None  # no mode, no declaration
    # a solver accepting any option is not checked
    clean_registry.register_solver("loose")(_plan)
    check("loose", {"whatever": object()})


def test_every_builtin_default_is_an_accepted_value():
    from mutwo.solver_options import check_value

    for name in registry.available_solvers():
        info = registry.solver_info(name)
        if registry.get_solver(name).__module__.startswith("solvers."):
            for option, spec in info.options.items():
                if spec.default is not registry.NO_DEFAULT:
                    check_value(name, option, spec.default, spec.type)


def test_a_module_function_is_registered_under_its_path(clean_registry):
    path = "tests.fixtures_user_solver:recompute_share"
    fn = clean_registry.get_solver(path)
    assert clean_registry.get_solver(path) is fn  # once
    info = clean_registry.solver_info(path)
    assert info.defaults == {"share": 0.5} and info.decisions == {"recompute"} and info.modes is None
    assert "first ``share``" in info.doc
    with pytest.raises(ValueError, match="'share' is 1.5; it takes a number >= 0 and <= 1"):
        clean_registry.check_solver_options(path, {"share": 1.5})
    from mutwo.synthetic import chain

    s = fn(chain(4), 10**12, share=1.0)
    assert s.solver == path and s.counts()["n_recompute"] == 4


@pytest.mark.parametrize("path, message", [
    ("tests.no_such_module:f", "cannot import module 'tests.no_such_module' for solver 'tests.no_such_module:f': "
                               "ModuleNotFoundError"),
    ("tests.fixtures_user_solver:recompute_shar", "module 'tests.fixtures_user_solver' has no function "
                                                  "'recompute_shar'; did you mean 'recompute_share'?"),
    ("tests.fixtures_user_solver:NOT_A_FUNCTION", "'tests.fixtures_user_solver:NOT_A_FUNCTION' is not a function "
                                                  "(int 3)"),
    ("tests.fixtures_user_solver:Schedule", "is not a function (a class)"),
    ("tests.fixtures_user_solver:one_argument", "cannot be called as one_argument(problem, budget_bytes): its "
                                                "signature is one_argument(problem: 'Problem') -> 'Schedule'"),
    ("tests.fixtures_user_solver:", "is not 'module:function'"),
])
def test_a_bad_module_function_says_what_is_wrong(clean_registry, path, message):
    with pytest.raises(registry.SolverPathError) as info:
        clean_registry.get_solver(path)
    assert message in str(info.value)
    assert path not in clean_registry._wrapped
