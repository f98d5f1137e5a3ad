"""plan_space: one choice of decisions for every solver, honoured by every built-in or refused at load."""

from __future__ import annotations

import pytest

from mutwo import registry
from mutwo.plan_space import DECISIONS, MODES, PlanSpace, fit_options, mode_decisions
from mutwo.schedule import Decision
from mutwo.simulate import simulate
from mutwo.synthetic import residual

SPACES = {"recompute": PlanSpace(recompute=True, swap=False), "swap": PlanSpace(recompute=False, swap=True)}
FORBIDDEN = {"recompute": Decision.SWAP, "swap": Decision.RECOMPUTE}
# small limits for the exact solvers on a 9-activation Problem
QUICK = {"ilp_cpsat": {"time_limit_s": 20.0}, "ilp_ortools_mip": {"time_limit_s": 20.0},
         "ilp_pulp_cbc": {"time_limit_s": 20.0}, "ilp_pulp_highs": {"time_limit_s": 20.0},
         "checkmate_exact": {"time_limit_s": 20.0}, "remat_interval": {"time_limit_s": 20.0}}
_CODE = {"recompute": Decision.RECOMPUTE, "swap": Decision.SWAP}


def _builtins() -> list[str]:
    return [n for n in registry.available_solvers() if registry.get_solver(n).__module__.startswith("solvers.")]


@pytest.fixture(scope="module")
def problem():
    p = residual(2, seed=1)
    assert p.recomputable.any() and p.swappable.any() and p.n_act <= 12  # brute force takes it
    return p


def _budgets(p) -> list[int]:
    keep = simulate(p, _keep(p)).peak_bytes
    floor = p.peak_floor()[0]
    return sorted({keep, int(0.8 * keep), int(0.6 * keep), floor, int(floor + 0.1 * (keep - floor))})


def _keep(p):
    from mutwo.schedule import Schedule

    return Schedule.keep_all(p)


def test_the_vocabulary():
    assert MODES == ("both", "recompute", "swap") and DECISIONS == ("recompute", "swap")
    assert PlanSpace().mode == "both" and PlanSpace.from_mode("swap") == SPACES["swap"]
    assert {m: PlanSpace.from_mode(m).decisions for m in MODES} == {m: mode_decisions(m) for m in MODES}
    assert str(SPACES["recompute"]) == "recompute only"
    with pytest.raises(ValueError, match="neither recompute nor swap.*allow at least one"):
        PlanSpace(recompute=False, swap=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        mode_decisions("full")


def test_fit_options_rules():
    rec, both = SPACES["recompute"], PlanSpace()
    modes = MODES
    # a solver with a mode gets the space's; its own options stay
    assert fit_options("g", rec, {"seed": 3}, frozenset(DECISIONS), modes) == {"seed": 3, "mode": "recompute"}
    # under "both" nothing is added, and an explicit narrower mode is kept
    assert fit_options("g", both, {}, frozenset(DECISIONS), modes) == {}
    assert fit_options("g", rec, {"mode": "recompute"}, frozenset(DECISIONS), modes) == {"mode": "recompute"}
    with pytest.raises(ValueError, match="g has options mode: both.*plan_space allows recompute only; drop the "
                                         "option, or write mode: recompute"):
        fit_options("g", rec, {"mode": "both"}, frozenset(DECISIONS), modes)
    # without a mode, the declared decisions decide
    assert fit_options("k", rec, {}, frozenset(), None) == {}
    assert fit_options("c", rec, {}, frozenset({"recompute"}), None) == {}
    with pytest.raises(ValueError, match="s makes SWAP plans \\(it has no mode option\\), but plan_space allows "
                                         "recompute only; remove s from solvers, or allow SWAP in plan_space"):
        fit_options("s", rec, {}, frozenset({"swap"}), None)
    with pytest.raises(ValueError, match="does not declare which decisions it makes.*decisions="):
        fit_options("u", rec, {}, None, None)
    assert fit_options("u", both, {"x": 1}, None, None) == {"x": 1}  # undeclared is fine when nothing is restricted


def test_every_builtin_declares_its_decisions():
    for name in _builtins():
        info = registry.solver_info(name)
        assert info.decisions is not None and info.decisions <= set(DECISIONS), name
        if info.modes is not None:
            assert set(info.modes) <= set(MODES) and info.defaults["mode"] in info.modes, name
    assert registry.solver_info("keep_all").decisions == frozenset()
    assert registry.solver_info("swap_hidden").decisions == {"swap"}
    assert registry.solver_info("chen_sqrt").decisions == {"recompute"} and registry.solver_info("chen_sqrt").modes is None
    assert registry.solver_info("mutwo_greedy").modes == MODES
    assert registry.solver_info("checkmate_exact").modes == ("recompute",)


@pytest.mark.parametrize("name", _builtins())
def test_declared_decisions_are_the_ones_made(problem, name):
    """Under its defaults, a built-in's plans use only the decisions it declares (so a plan space that
    admits them is honoured without a mode)."""
    info, fn = registry.solver_info(name), registry.get_solver(name)
    for budget in _budgets(problem):
        d = fn(problem, budget, **QUICK.get(name, {})).decisions
        for kind, code in _CODE.items():
            if kind not in info.decisions:
                assert not (d == code).any(), (name, budget, kind)


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("name", _builtins())
def test_plan_space_is_honoured_by_every_builtin(problem, name, space):
    """Every built-in, under each restricted space: refused (and then it declares a decision the space
    forbids and has no mode for it), or its plans at every budget, low ones included, contain no
    decision the space forbids."""
    info, fn = registry.solver_info(name), registry.get_solver(name)
    try:
        options = fit_options(name, SPACES[space], QUICK.get(name, {}), info.decisions, info.modes)
    except ValueError as exc:
        assert name in str(exc)
        assert not info.decisions <= SPACES[space].decisions
        assert info.modes is None or space not in info.modes
        return
    used = set()
    for budget in _budgets(problem):
        s = fn(problem, budget, **options)
        assert not (s.decisions == FORBIDDEN[space]).any(), (name, budget, s.counts())
        used |= set(s.decisions[s.decisions != Decision.KEEP].tolist())
    if "mode" in options:  # a solver restricted through its mode still plans: the test is not vacuous
        assert used == {_CODE[space]}, (name, used)


def test_refusals_and_acceptances_of_the_builtins():
    """Which built-ins run under which space (the declarations above, spelled out)."""
    def runs(name: str, space: str) -> bool:
        info = registry.solver_info(name)
        try:
            fit_options(name, SPACES[space], {}, info.decisions, info.modes)
        except ValueError:
            return False
        return True

    recompute_only = {"recompute_all", "chen_sqrt", "largest_first", "knapsack", "checkmate_exact", "remat_interval"}
    for name in _builtins():
        assert runs(name, "recompute") == (name != "swap_hidden"), name
        assert runs(name, "swap") == (name not in recompute_only), name


def test_undeclared_plugin_is_refused_only_under_a_restricted_space(monkeypatch):
    monkeypatch.setattr(registry, "_wrapped", dict(registry._wrapped))
    monkeypatch.setattr(registry, "_original", dict(registry._original))

    @registry.register_solver("test_plan_space_undeclared")
    def undeclared(problem, budget_bytes, **options):
        return _keep(problem)

    info = registry.solver_info("test_plan_space_undeclared")
    assert info.decisions is None and info.modes is None
    assert fit_options("x", PlanSpace(), {}, info.decisions, info.modes) == {}
    with pytest.raises(ValueError, match="does not declare"):
        fit_options("x", SPACES["swap"], {}, info.decisions, info.modes)
    # a mode option in the vocabulary declares both its modes and its decisions
    registry.register_solver("test_plan_space_moded", options={"mode": "recompute"})(undeclared)
    info = registry.solver_info("test_plan_space_moded")
    assert info.modes == MODES and info.decisions == {"recompute"}
    with pytest.raises(ValueError, match="give a set of"):
        registry.register_solver("test_plan_space_bad", decisions="swap")(undeclared)
    with pytest.raises(ValueError, match="give a set of"):
        registry.register_solver("test_plan_space_bad", decisions={"offload"})(undeclared)

