"""Property tests: whatever the Problem and the budget, a registered solver's answer is honest.

Problems come from mutwo.synthetic (chains, residual stacks, random DAGs, small), budgets from anywhere
between below the floor (``Problem.peak_floor``) and above keep-all. For every answer: the
schedule validates; if the solver calls it feasible its simulated peak is within the budget (a budget
below the floor is never called feasible); and it survives a JSON round trip unchanged (decisions,
prefetch points, recompute points, status, and the simulated peak).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mutwo.problem import Problem
from mutwo.registry import get_solver
from mutwo.schedule import Schedule, validate
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual


def _problems(max_chain: int, max_blocks: int, max_dag: int) -> st.SearchStrategy[Problem]:
    return st.one_of(
        st.builds(chain, st.integers(2, max_chain)),
        st.builds(lambda n, seed: residual(n, seed=seed), st.integers(1, max_blocks), st.integers(0, 10**6)),
        st.builds(lambda n, seed: random_dag(n, seed=seed), st.integers(3, max_dag), st.integers(0, 10**6)))


@st.composite
def _cases(draw, problems: st.SearchStrategy[Problem]) -> tuple[Problem, int]:
    """A Problem and a budget from 10% of the way below its floor to 10% above its keep-all peak."""
    p = draw(problems)
    floor, _ = p.peak_floor()
    keep = simulate(p, Schedule.keep_all(p)).peak_bytes
    frac = draw(st.floats(-0.1, 1.1, allow_nan=False))
    return p, max(1, int(floor + frac * (keep - floor)))


def _check(p: Problem, budget: int, s: Schedule) -> None:
    validate(p, s)
    sim = simulate(p, s)
    if s.feasible:
        assert sim.peak_bytes <= budget, f"{s.solver} says {s.status.value} at {sim.peak_bytes} > {budget} B"
    if budget < p.peak_floor()[0]:
        assert not s.feasible, "no plan fits below the floor"
    back = Schedule.from_json(s.to_json())
    assert np.array_equal(back.decisions, s.decisions) and back.decisions.dtype == s.decisions.dtype
    assert np.array_equal(back.prefetch_at, s.prefetch_at)
    assert np.array_equal(back.recompute_at, s.recompute_at)
    assert back.status == s.status and back.budget_bytes == s.budget_bytes and back.solver == s.solver
    assert back.to_json() == s.to_json()
    assert simulate(p, back).peak_bytes == sim.peak_bytes


FAST = [("keep_all", {}), ("recompute_all", {}), ("chen_sqrt", {}), ("largest_first", {}), ("swap_hidden", {}),
        ("knapsack", {}), ("mutwo_greedy", {}), ("mutwo_greedy", {"mode": "recompute"}),
        ("mutwo_greedy", {"mode": "swap"})]


@pytest.mark.parametrize("name, options", FAST, ids=[f"{n}{o or ''}" for n, o in FAST])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases(_problems(max_chain=16, max_blocks=5, max_dag=60)))
def test_fast_solvers_are_honest_and_round_trip(name, options, case):
    p, budget = case
    _check(p, budget, get_solver(name)(p, budget, **options))


# exact solvers: small Problems and short time limits (each example well under a second)
EXACT = [("ilp_cpsat", {"time_limit_s": 2}), ("ilp_pulp_highs", {"time_limit_s": 2}),
         ("ilp_pulp_cbc", {"time_limit_s": 2}), ("ilp_ortools_mip", {"time_limit_s": 2}),
         ("checkmate_exact", {"time_limit_s": 2}), ("brute_force", {})]


@pytest.mark.parametrize("name, options", EXACT, ids=[n for n, _ in EXACT])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases(_problems(max_chain=5, max_blocks=1, max_dag=6)))
def test_exact_solvers_are_honest_and_round_trip(name, options, case):
    p, budget = case
    _check(p, budget, get_solver(name)(p, budget, **options))


def test_checkmate_below_the_floor_says_infeasible():
    """Found by the property test above: checkmate_exact used to build an empty row that cannot hold."""
    p = chain(3)
    s = get_solver("checkmate_exact")(p, p.peak_floor()[0] - 1, time_limit_s=2)
    assert s.status.value == "infeasible"
