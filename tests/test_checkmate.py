"""checkmate_exact: the stage-grid rematerialization ILP is a lower bound on our recompute-only optimum.

The relation (docs/ilp.md, "Checkmate cross-check"):

    checkmate optimum  <=  ilp_*(mode="recompute") optimum  ==  brute_force(mode="recompute") optimum

Checkmate may recompute early and hold, or regenerate a shared source once for several targets; our
rule regenerates each RECOMPUTE activation exactly at its first backward use, chain by chain.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from mutwo.registry import get_solver, solver_option_defaults
from mutwo.schedule import Decision, Status
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual
from solvers.brute_force import brute_force
from solvers.checkmate import checkmate_exact
from solvers.mutwo_greedy import mutwo_greedy
from tests.test_ilp import budgets

EXACT = {"rel_gap": 1e-7, "warm_start": None}
PROBLEMS = [chain(6), chain(9), residual(2, seed=3), random_dag(8, 1), random_dag(10, 6)]


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.name)
def test_checkmate_bounds_the_recompute_only_optimum(p):
    for b in budgets(p, [0.05, 0.35, 0.8]):
        bf = brute_force(p, b, mode="recompute")
        # the model alone (bound="none"): the bound's rounded plan may anchor a recompute early and beat
        # every plan brute force names (default points only)
        ilp = get_solver("ilp_cpsat")(p, b, mode="recompute", bound="none", **EXACT)
        cm = checkmate_exact(p, b)
        assert ilp.feasible == bf.feasible, (b, ilp.message, bf.message)
        if not bf.feasible:
            continue
        # the compact model restricted to recompute reaches the same optimum as enumeration
        assert ilp.status == Status.OPTIMAL
        assert ilp.objective == pytest.approx(bf.objective, rel=1e-6)
        # Checkmate has more freedom: its optimum is a lower bound, never above ours
        assert cm.status != Status.INFEASIBLE, cm.message
        assert cm.bound is not None and cm.bound <= bf.objective * (1 + 1e-6), cm.message
        assert cm.bound >= p.total_compute_s * (1 - 1e-9)
        if cm.feasible:  # its projection onto our decisions is a real plan, priced by simulate
            sim = simulate(p, cm)
            assert sim.peak_bytes <= b
            assert cm.objective == pytest.approx(sim.time_s, rel=1e-9)
            # never below the bound; it may beat brute force, which anchors every recompute at its first
            # backward use, where the projection keeps Checkmate's earlier regeneration points
            assert cm.objective >= cm.bound * (1 - 1e-9)
            assert not np.any(cm.decisions == Decision.SWAP)


def test_checkmate_is_strictly_lower_where_sharing_pays_and_early_anchors_reach_it():
    """chain(8), tight budget: Checkmate regenerates a dropped prefix once and holds it for the next
    target; with first-use anchors (brute force's plans) every target regenerates it inside its own chain
    (~4% slower here). Projected with Checkmate's regeneration points as early anchors, our plan does
    the same sharing and reaches the Checkmate optimum: proven optimal."""
    p = chain(8)
    b = budgets(p, [0.2])[0]
    bf = brute_force(p, b, mode="recompute")
    cm = checkmate_exact(p, b, interval_share=0)  # the grid model itself
    assert bf.feasible and cm.bound < bf.objective * (1 - 1e-3)
    assert cm.options["checkmate_objective_s"] == pytest.approx(cm.bound)
    assert cm.status == Status.OPTIMAL and (cm.recompute_at >= 0).any()
    assert cm.objective == pytest.approx(cm.bound, rel=1e-6) and simulate(p, cm).peak_bytes <= b
    # by default the interval model finds that plan first and the covering bound proves it: no grid built
    quick = checkmate_exact(p, b)
    assert quick.status == Status.OPTIMAL and quick.objective == pytest.approx(cm.objective, rel=1e-6)
    assert "interval model's plan" in quick.message and "checkmate_objective_s" not in quick.options
    assert quick.objective < simulate(p, mutwo_greedy(p, b, mode="recompute")).time_s * (1 - 1e-3)


def test_checkmate_optimal_when_projection_matches():
    p = residual(2, seed=3)
    b = budgets(p, [0.8])[0]
    cm = checkmate_exact(p, b)
    assert cm.status == Status.OPTIMAL
    # the bound is the engine's (proven to rel_gap=1e-6), never above the plan's time
    assert cm.bound <= cm.objective * (1 + 1e-12)
    assert cm.objective == pytest.approx(cm.bound, rel=1e-6)


@pytest.mark.parametrize("backend", ["cpsat", "pulp_highs"])
def test_backends_agree_on_the_checkmate_optimum(backend):
    p = random_dag(10, 6)
    b = budgets(p, [0.2])[0]
    ref = checkmate_exact(p, b)
    other = checkmate_exact(p, b, backend=backend)
    assert other.bound == pytest.approx(ref.bound, rel=1e-6)


def test_checkmate_infeasible_below_fixed_memory_quickly():
    p = random_dag(10, 2)
    b = int((p.fixed_bytes + p.op_transient_bytes).max()) - 1
    t = time.perf_counter()
    s = checkmate_exact(p, b)
    assert time.perf_counter() - t < 5 and s.status == Status.INFEASIBLE


def test_checkmate_refuses_large_graphs_other_modes_and_unknown_grids():
    with pytest.raises(ValueError, match=r"n_act=70 > max_act=60; pass max_act to insist"):
        checkmate_exact(random_dag(70, 0), 10**12, max_act=60)
    p = random_dag(40, 0)
    with pytest.raises(ValueError, match=r"would have ~[\d,]+ variables .* > max_vars=10; pass max_vars"):
        checkmate_exact(p, budgets(p, [0.3])[0], max_vars=10)
    for mode in ("both", "swap", "full"):
        with pytest.raises(ValueError, match="recompute-only: use mode='recompute'"):
            checkmate_exact(chain(4), 10**12, mode=mode)
    with pytest.raises(ValueError, match="grid must be one of"):
        checkmate_exact(chain(4), 10**12, grid="stages")
    with pytest.raises(ValueError, match="interval_share is a share of time_limit_s, between 0 and 1"):
        checkmate_exact(chain(4), 10**12, interval_share=1.5)
    with pytest.raises(TypeError, match=r"checkmate_exact got unknown options \['gird'\]"):
        checkmate_exact.__wrapped__(chain(4), 10**12, gird="ops")


def test_checkmate_applies_the_defaults_it_declares():
    p = chain(6)
    b = budgets(p, [0.3])[0]
    declared = solver_option_defaults("checkmate_exact")
    s = checkmate_exact(p, b)
    assert s.feasible, s.message
    assert {k: s.options[k] for k in ("backend", "rel_gap", "grid")} == {k: declared[k] for k in
                                                                         ("backend", "rel_gap", "grid")}


def test_registered():
    assert get_solver("checkmate_exact").__wrapped__ is checkmate_exact.__wrapped__
    assert get_solver("brute_force")


def test_projection_keeps_the_models_regeneration_points_where_they_are_faster():
    """residual(2) at 35% of the range: Checkmate regenerates two activations early and shares them; with its
    points as anchors our plan is faster than every first-use-anchored plan (brute force's optimum)."""
    p = residual(2, seed=3)
    b = budgets(p, [0.35])[0]
    cm = checkmate_exact(p, b, interval_share=0)  # the grid model's own solution, projected
    bf = brute_force(p, b, mode="recompute")
    assert cm.feasible and bf.feasible
    assert (cm.recompute_at >= 0).any() and "regeneration points as anchors" in cm.message
    assert simulate(p, cm).peak_bytes <= b and cm.objective < bf.objective


def test_a_failing_interval_heuristic_costs_its_plan_not_the_solve(monkeypatch):
    import solvers.checkmate as cm_module

    def broken(*args, **kwargs):
        raise RuntimeError("interval model broke")

    monkeypatch.setattr(cm_module, "solve_interval", broken)
    p = chain(8)
    b = budgets(p, [0.2])[0]
    s = checkmate_exact(p, b)
    assert s.status == Status.OPTIMAL and "interval model broke" in s.options["interval_start"]
    assert s.options["checkmate_objective_s"] == pytest.approx(s.bound)  # the grid model answered
