"""The iteration-time lower bound (`solvers.ilp_bound`): never above any fitting plan's simulated time,
above the compute time where memory forces eviction and swaps cannot hide, and an infeasible relaxation
only where no plan fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual
from solvers.brute_force import brute_force
from solvers.ilp_bound import iteration_bound


def range_budget(p: Problem, f: float) -> int:
    keep = simulate(p, Schedule.keep_all(p)).peak_bytes
    floor = p.peak_floor()[0]
    return int(floor + f * (keep - floor))


def slow_link(p: Problem, factor: float) -> Problem:
    """The same Problem with a host link ``factor`` times slower (swaps stop hiding)."""
    p.host_bandwidth_bytes_per_s = p.host_bandwidth_bytes_per_s / factor
    return p


def every_plan_time(p: Problem, budget: int, rng: np.random.Generator, points: int = 2) -> float:
    """The fastest simulated time over every decision vector, each tried with its default points and
    ``points`` random prefetch / recompute points in backward (more plans than brute force names)."""
    best = np.inf
    allowed = [[Decision.KEEP] + [Decision.RECOMPUTE] * bool(p.recomputable[a]) + [Decision.SWAP] * bool(p.swappable[a])
               for a in range(p.n_act)]
    lo = p.fwd_end + 1
    for d in itertools.product(*allowed):
        d = np.asarray(d, np.int8)
        for k in range(points + 1):
            pf = np.where(d == Decision.SWAP, p.first_bwd_use, -1)
            ra = np.full(p.n_act, -1, np.int64)
            if k:
                pf = np.where(d == Decision.SWAP, rng.integers(lo, p.first_bwd_use + 1), -1)
                ra = np.where(d == Decision.RECOMPUTE, rng.integers(lo, p.first_bwd_use + 1), -1)
            try:
                sim = simulate(p, Schedule(d, pf, recompute_at=ra))
            except ScheduleError:
                continue
            if sim.fits(budget):
                best = min(best, sim.time_s)
    return best


CASES = [(seed, f, slow) for seed in range(5) for f in (0.6, 0.3, 0.05) for slow in (1.0, 30.0)]


@pytest.mark.parametrize("seed,f,slow", CASES)
def test_bound_is_never_above_any_fitting_plan(seed, f, slow):
    p = slow_link(random_dag(6, seed), slow)
    b = range_budget(p, f)
    best = every_plan_time(p, b, np.random.default_rng(seed))
    ib = iteration_bound(p, b)
    if ib.infeasible:
        assert best == np.inf, ib.message
    else:
        assert ib.bound_s >= ib.compute_s
        assert ib.bound_s <= best * (1 + 1e-9), (ib, best)


@pytest.mark.parametrize("mode", ["both", "recompute", "swap"])
@pytest.mark.parametrize("integral", [False, True])
def test_bound_holds_against_brute_force_in_every_mode(mode, integral):
    for seed, f in itertools.product(range(3), (0.5, 0.2)):
        p = slow_link(random_dag(10, seed), 10.0)
        b = range_budget(p, f)
        bf = brute_force(p, b, mode=mode)
        ib = iteration_bound(p, b, mode=mode, integral=integral)
        if bf.feasible:
            assert not ib.infeasible and ib.bound_s <= bf.objective * (1 + 1e-9), (seed, f, ib, bf.objective)


def test_bound_bites_where_memory_forces_eviction():
    """A chain whose link is too slow to hide its swaps: the budget forces activations off the device,
    so every plan recomputes or stalls, and the bound says so (the compute time does not)."""
    p = slow_link(chain(8), 50.0)
    b = range_budget(p, 0.3)
    ib = iteration_bound(p, b)
    bf = brute_force(p, b)
    assert bf.feasible
    assert ib.bound_s > ib.compute_s * 1.01, ib
    assert ib.bound_s <= bf.objective * (1 + 1e-9)
    # the LP is tight enough here to be within 20% of the extra time the optimum spends
    assert ib.bound_s - ib.compute_s >= 0.2 * (bf.objective - ib.compute_s), (ib, bf.objective)


def test_integral_bound_is_at_least_the_lp_bound():
    p = slow_link(residual(4, seed=1), 20.0)
    b = range_budget(p, 0.3)
    lp, mip = iteration_bound(p, b), iteration_bound(p, b, integral=True)
    assert mip.bound_s >= lp.bound_s * (1 - 1e-9)
    assert mip.method == "mip" and lp.method == "lp"


def test_no_check_over_budget_gives_the_compute_time():
    p = random_dag(20, 0)
    ib = iteration_bound(p, 10**15)
    assert ib.bound_s == ib.compute_s and ib.method == "compute" and ib.n_checks == 0


def test_budget_below_what_every_plan_holds_is_infeasible():
    p = chain(6)
    floor = p.peak_floor()[0]
    ib = iteration_bound(p, floor - 1)
    assert ib.infeasible and "over budget with every plan" in ib.message
    assert not brute_force(p, floor - 1).feasible


def test_fewer_checks_only_weaken_the_bound():
    p = slow_link(residual(6, seed=0), 20.0)
    b = range_budget(p, 0.3)
    full, few = iteration_bound(p, b), iteration_bound(p, b, max_checks=2)
    assert few.n_checks <= 2 < full.n_checks
    assert few.bound_s <= full.bound_s * (1 + 1e-9)
