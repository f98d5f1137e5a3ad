"""checkmate_exact at scale: its presolve never changes the optimum, its start plan lies inside the model,
and the interval formulation (remat_interval) is a restriction of the Checkmate grid whose plan is real.

docs/remat_exact.md has the arguments; these tests check them on small random Problems.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mutwo.problem import Problem
from mutwo.registry import get_solver
from mutwo.schedule import Decision, Status
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual
from solvers.brute_force import brute_force
from solvers.checkmate import checkmate_exact, remat_interval
from solvers.checkmate_bound import covering_bound
from solvers.checkmate_model import build_checkmate, grid_of, plan_values
from solvers.mutwo_greedy import mutwo_greedy
from solvers.remat_interval import build_interval_model
from tests.test_ilp import budgets

PROBLEMS = [chain(9), residual(2, seed=3), random_dag(12, 3), random_dag(16, 5)]
FRACTIONS = [0.15, 0.5, 0.9]
NO_START = {"warm_start": None}


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.name)
def test_presolve_never_changes_the_optimum(p):
    shrank = False
    for b in budgets(p, FRACTIONS):
        full, _ = build_checkmate(p, b, presolve=False)
        small, _ = build_checkmate(p, b)
        shrank |= small.stats["n_rows"] < full.stats["n_rows"]
        assert bool(full.infeasible) == bool(small.infeasible)
        a = checkmate_exact(p, b, presolve=False, **NO_START)
        c = checkmate_exact(p, b, **NO_START)
        assert a.status == c.status or {a.status, c.status} <= {Status.OPTIMAL, Status.FEASIBLE}, (a.message,
                                                                                                   c.message)
        if a.bound is not None:
            assert c.bound == pytest.approx(a.bound, rel=1e-6), (b, a.message, c.message)
    assert shrank  # the presolve did drop rows somewhere (else this test checks nothing)


@pytest.mark.parametrize("p", [chain(8), residual(2, seed=3), random_dag(10, 6), random_dag(12, 3)],
                         ids=lambda p: p.name)
def test_covering_bound_is_below_every_recompute_only_plan(p):
    bites = False
    for b in budgets(p, [0.05, 0.2, 0.5, 0.8]):
        bound, how = covering_bound(p, b)
        bf = brute_force(p, b, mode="recompute")
        assert bound >= p.total_compute_s
        if bound == float("inf"):  # a proof that nothing fits
            assert not bf.feasible, how
            continue
        if bf.feasible:
            assert bound <= bf.objective * (1 + 1e-9), (b, how)
            bites |= bound > p.total_compute_s * (1 + 1e-6)
        cm = checkmate_exact(p, b, **NO_START)
        if cm.bound is not None:  # below the grid's optimum too (its bound is at least the covering bound)
            assert bound <= cm.options.get("checkmate_objective_s", np.inf) * (1 + 1e-9)
    assert bites  # above the compute time somewhere: the bound sees memory


def _chain_sharing_an_op() -> Problem:
    """chain(6) where a4 is recomputed from a2 through ops 3 and 4: op 3 is shared by a3 and a4."""
    p = chain(6)
    ops, srcs = list(p.recompute_ops), list(p.recompute_sources)
    ops[4], srcs[4] = np.array([3, 4]), np.array([2])
    return dataclasses.replace(p, recompute_ops=ops, recompute_sources=srcs, name="chain6_shared_op")


def test_covering_bound_pays_a_shared_op_once_per_dropped_activation_set():
    p = _chain_sharing_an_op()
    exact = 0
    for b in budgets(p, [0.3, 0.45, 0.55, 0.65, 0.8]):
        bound, how = covering_bound(p, b)
        bf = brute_force(p, b, mode="recompute")
        assert bf.feasible
        assert bound <= bf.objective * (1 + 1e-9), (b, how)
        exact += bound >= bf.objective * (1 - 1e-6)
    # at 45-65% the optimum recomputes a1 and a3 (+2 ms); splitting op 3 between a3 and a4 (0.5 ms each)
    # made the bound 15.5 ms there, paying the union of the dropped activations' ops reaches 16 ms
    assert exact >= 3


def test_presolve_fixes_cold_activations_resident():
    p = random_dag(16, 5)
    g = grid_of(p, "auto", budgets(p, [0.9])[0])
    assert g.n_fixed > 0 and g.free.sum() < (p.recomputable & (g.kf - g.kl > 1)).sum()
    loose = grid_of(p, "auto", 10**15)  # nothing can bind: every activation resident, no row at all
    assert loose.free.sum() == 0 and not loose.op_hot.any() and not loose.rc_hot.any()


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.name)
def test_our_plans_lie_inside_the_grid(p):
    """The start plan (greedy, recompute only) completes to a Checkmate solution of no more cost."""
    for b in budgets(p, [0.3, 0.7]):
        s = mutwo_greedy(p, b, mode="recompute")
        if not s.feasible:
            continue
        F, idx = build_checkmate(p, b)
        x = plan_values(F, idx, s.decisions)
        assert F.violation(x) <= 1e-9
        assert F.objective_of(x) <= simulate(p, s).time_s * (1 + 1e-9)


def test_start_plan_is_used_and_never_beaten_by_the_returned_plan():
    p = random_dag(16, 5)
    b = budgets(p, [0.3])[0]
    start = mutwo_greedy(p, b, mode="recompute")
    s = checkmate_exact(p, b, warm_start=start)
    assert s.options["warm_start"] == "given schedule" and s.options["start_violation"] == 0.0
    assert s.feasible and s.objective <= simulate(p, start).time_s * (1 + 1e-12)
    assert s.bound <= s.options["checkmate_objective_s"] <= s.options["start_checkmate_s"] * (1 + 1e-12)


@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.name)
def test_interval_model_is_a_restriction_and_its_plan_is_real(p):
    for b in budgets(p, [0.15, 0.5]):
        cm = checkmate_exact(p, b, **NO_START)
        iv = remat_interval(p, b, max_computations=3, **NO_START)
        if cm.status == Status.INFEASIBLE:  # the restriction cannot fit where the relaxation does not
            assert iv.status == Status.INFEASIBLE, iv.message
            continue
        if not iv.feasible:
            continue
        # a restriction of the grid: never below its optimum
        assert iv.options["interval_objective_s"] >= cm.bound * (1 - 1e-6)
        sim = simulate(p, iv)  # its plan is priced by simulate and fits
        assert sim.peak_bytes <= b
        assert iv.objective == pytest.approx(sim.time_s, rel=1e-12)
        assert not np.any(iv.decisions == Decision.SWAP)
        # its bound is the covering bound: below the grid's optimum, so below every recompute-only plan
        assert iv.bound == pytest.approx(iv.options["covering_bound_s"])
        assert p.total_compute_s <= iv.bound <= cm.bound * (1 + 1e-6)
        assert (iv.status == Status.OPTIMAL) == (iv.objective <= iv.bound * (1 + 1e-6))


def test_interval_model_reaches_the_checkmate_optimum_with_enough_computations():
    """random_dag(8, 1) at 5%: one recompute per activation is not enough, two reach the grid's optimum."""
    p = random_dag(8, 1)
    b = budgets(p, [0.05, 0.35])[1]
    cm = checkmate_exact(p, b, **NO_START)
    two = remat_interval(p, b, max_computations=2, **NO_START).options["interval_objective_s"]
    three = remat_interval(p, b, max_computations=3, **NO_START).options["interval_objective_s"]
    assert two > cm.bound * (1 + 1e-6)
    assert three == pytest.approx(cm.bound, rel=1e-6) and three < two


def test_interval_model_refuses_what_cannot_fit_at_once():
    p = random_dag(10, 2)
    b = int((p.fixed_bytes + p.op_transient_bytes).max()) - 1
    assert "in every plan" in build_interval_model(p, b).infeasible
    assert remat_interval(p, b).status == Status.INFEASIBLE


def test_bad_options_are_named():
    p = chain(4)
    with pytest.raises(ValueError, match="max_computations must be >= 2"):
        remat_interval(p, 10**12, max_computations=1)
    with pytest.raises(ValueError, match="recompute-only: use mode='recompute'"):
        remat_interval(p, 10**12, mode="both")
    with pytest.raises(ValueError, match="grid must be one of"):
        remat_interval(p, 10**12, grid="stage")
    with pytest.raises(TypeError, match=r"remat_interval got unknown options \['max_computation'\]"):
        remat_interval.__wrapped__(p, 10**12, max_computation=3)
    assert get_solver("remat_interval").__wrapped__ is remat_interval.__wrapped__
