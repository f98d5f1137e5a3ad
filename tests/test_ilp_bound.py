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


CASES = [(seed, f, slow) for seed in range(3) for f in (0.6, 0.3, 0.05) for slow in (1.0, 30.0)]


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


@pytest.mark.parametrize("mode,integral", [("both", False), ("both", True), ("recompute", False), ("swap", False)])
def test_bound_holds_against_brute_force_in_every_mode(mode, integral):
    for seed, f in itertools.product(range(2), (0.5, 0.2)):
        p = slow_link(random_dag(9, seed), 10.0)
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


# ---------------------------------------------------------------------- wired into the ILP solvers
def test_ilp_reports_the_bound_where_it_bites():
    """The ILPs' reported bound is at least the iteration-time bound (not the compute time), never above
    their plan, and a plan within rel_gap of it is proven optimal."""
    from mutwo.registry import get_solver

    p = slow_link(chain(8), 50.0)
    b = range_budget(p, 0.3)
    ib = iteration_bound(p, b)
    assert ib.bound_s > ib.compute_s * 1.01
    for name in ("ilp_cpsat", "ilp_pulp_highs"):
        s = get_solver(name)(p, b, time_limit_s=20, warm_start=None)
        assert s.feasible, s.message
        assert ib.bound_s * (1 - 1e-9) <= s.bound <= s.objective * (1 + 1e-9), (name, s.bound, s.objective)
        assert s.options["lower_bound"]["method"] == "lp"
    none = get_solver("ilp_cpsat")(p, b, time_limit_s=20, warm_start=None, bound="none")
    assert none.options["lower_bound"]["method"] == "compute"


def test_a_start_within_the_gap_of_the_bound_is_proven_without_a_model():
    from mutwo.registry import get_solver

    p = slow_link(chain(8), 50.0)
    b = range_budget(p, 0.3)
    best = brute_force(p, b)
    s = get_solver("ilp_pulp_highs")(p, b, warm_start=best, rel_gap=0.5)
    assert s.status.value == "optimal" and s.options["engine"].startswith("none (iteration-time bound")
    assert s.bound <= s.objective <= best.objective * (1 + 1e-9)
    # the start itself, or the plan rounded from the bound when that is faster: here it is, by anchoring a
    # recompute early so that its chain is shared (brute force tries default recompute points only)
    if s.decisions.tolist() != best.decisions.tolist():
        assert "replaced by the bound's relaxation" in s.options["warm_start"] and s.objective < best.objective
        assert (s.recompute_at >= 0).any()


def test_budget_the_bound_proves_infeasible_is_reported_for_every_plan():
    from mutwo.registry import get_solver

    p = chain(6)
    s = get_solver("ilp_cpsat")(p, p.peak_floor()[0] - 1, warm_start=None)
    assert s.status.value == "infeasible" and "every plan" in s.message


def test_warm_start_from_every_heuristic_takes_the_fastest():
    from mutwo.registry import get_solver
    from solvers.ilp import heuristic_names

    names = heuristic_names("both")
    assert "mutwo_greedy" in names and "knapsack" in names
    assert not any(n.startswith("ilp_") or n in ("brute_force", "checkmate_exact") for n in names)
    assert "swap_hidden" not in heuristic_names("recompute") and "knapsack" not in heuristic_names("swap")
    assert "mutwo_greedy" in heuristic_names("recompute") and "mutwo_greedy" in heuristic_names("swap")  # mode=
    p = slow_link(residual(3, seed=1), 10.0)
    b = range_budget(p, 0.4)
    s = get_solver("ilp_cpsat")(p, b, warm_start="heuristics", time_limit_s=20)
    assert "fastest of" in s.options["warm_start"] and "knapsack" in s.options["warm_start"]
    times = []
    for n in names:  # other tests register broken solvers too: those are no start
        try:
            sim = simulate(p, get_solver(n)(p, b))
        except Exception:  # noqa: BLE001
            continue
        if sim.fits(b):
            times.append(sim.time_s)
    fastest = min(times)
    assert s.feasible and s.objective <= fastest * (1 + 1e-9)


def test_a_start_that_does_not_fit_is_repaired_and_never_beaten_by_a_slower_answer():
    """A sweep's plan at a larger budget is a start at a smaller one: repaired until it fits."""
    from mutwo.registry import get_solver

    p = chain(10)
    big, small = range_budget(p, 0.8), range_budget(p, 0.3)
    start = get_solver("mutwo_greedy")(p, big)
    assert not simulate(p, start).fits(small)
    s = get_solver("ilp_cpsat")(p, small, warm_start=start, time_limit_s=20)
    assert "repaired to fit" in s.options["warm_start"]
    assert s.feasible and s.objective <= s.options["warm_start_time_s"] * (1 + 1e-9)
    from solvers.ilp import repair

    repaired = repair(p, small, start.decisions, start.prefetch_at, max_steps=40)[2]
    assert repaired is not None and s.options["warm_start_time_s"] <= repaired.time_s * (1 + 1e-9)


def test_gap_to_bound_pct():
    from mutwo.cell import gap_to_bound_pct

    assert gap_to_bound_pct(2.0, 1.5) == pytest.approx(25.0)
    assert gap_to_bound_pct(2.0, None) is None and gap_to_bound_pct(0.0, 1.0) is None
    assert gap_to_bound_pct(1.0, 1.0 + 1e-12) == 0.0


# ---------------------------------------------------------------------- a plan from the relaxation
@pytest.mark.parametrize("seed", range(3))
def test_rounded_plan_fits_and_is_no_faster_than_the_bound(seed):
    from mutwo.schedule import validate
    from solvers.ilp_rounding import round_bound

    p = slow_link(random_dag(40, seed), 5.0)
    for f in (0.6, 0.3):
        b = range_budget(p, f)
        ib = iteration_bound(p, b)
        s = round_bound(p, b, ib)
        assert s is not None, (seed, f)
        validate(p, s)
        sim = simulate(p, s)
        assert sim.fits(b) and sim.time_s >= ib.bound_s * (1 - 1e-9)


def test_latest_prefetch_points_lie_in_backward_and_hide_a_lone_copy():
    from solvers.ilp_rounding import latest_prefetch

    p = chain(8)
    d = np.zeros(p.n_act, np.int8)
    d[2] = Decision.SWAP
    pf = latest_prefetch(p, d)
    assert pf[2] > p.fwd_end and pf[2] <= p.first_bwd_use[2] and (pf[np.arange(p.n_act) != 2] == -1).all()
    sim = simulate(p, Schedule(d, pf))
    assert sim.stall_s == 0.0


def test_recompute_reading_a_swapped_source_too_late_is_kept():
    """The rounding never hands `simulate` a chain that reads a swapped source not yet back."""
    from solvers.ilp_rounding import _valid_decisions

    p = chain(6)
    d = np.full(p.n_act, int(Decision.RECOMPUTE), np.int8)
    d[1::2] = Decision.SWAP
    fixed = _valid_decisions(p, d)
    simulate(p, Schedule(fixed, np.where(fixed == Decision.SWAP, p.first_bwd_use, -1)))  # no ScheduleError
    assert (fixed == Decision.KEEP).any() and (fixed[d == Decision.SWAP] == Decision.SWAP).all()


def test_a_failing_heuristic_is_no_start_and_the_others_go_on():
    from mutwo.registry import get_solver, register_solver

    @register_solver("test_ilp_bound_failing_heuristic")
    def _failing(problem, budget_bytes):
        raise RuntimeError("broken on purpose")

    p = random_dag(20, 2)
    b = range_budget(p, 0.5)
    s = get_solver("ilp_pulp_highs")(p, b, warm_start="heuristics", time_limit_s=10)
    assert s.feasible and "test_ilp_bound_failing_heuristic: RuntimeError" in s.options["warm_start"]
    assert "mutwo_greedy: " in s.options["warm_start"]


# ---------------------------------------------------------------------- hints across a sweep's budgets
def test_a_hint_that_is_the_faster_start_is_used():
    """The plan of a related solve, faster than warm_start's, becomes the start (warm_start still runs)."""
    from mutwo.registry import get_solver

    p = slow_link(chain(8), 50.0)
    b = range_budget(p, 0.3)
    best = brute_force(p, b)
    slow = simulate(p, get_solver("largest_first")(p, b))
    assert slow.fits(b) and slow.time_s > best.objective
    s = get_solver("ilp_cpsat")(p, b, warm_start="largest_first", hint=best, rel_gap=0.5)
    assert s.options["hint"].startswith("fits") and "used as the start" in s.options["hint"]
    assert s.options["warm_start"].startswith("hint (fits)")
    assert s.feasible and s.objective <= best.objective * (1 + 1e-9)
    # the same call without the hint starts from largest_first's plan
    plain = get_solver("ilp_cpsat")(p, b, warm_start="largest_first", rel_gap=0.5, time_limit_s=10)
    assert "hint" not in plain.options and plain.options["warm_start"].startswith("largest_first")


def test_a_hint_slower_than_the_start_is_not_used_and_says_so():
    from mutwo.registry import get_solver

    p = slow_link(chain(8), 50.0)
    b = range_budget(p, 0.3)
    best = brute_force(p, b)
    slow = get_solver("largest_first")(p, b)
    s = get_solver("ilp_pulp_highs")(p, b, warm_start=best, hint=slow, rel_gap=0.5)
    assert "not used: the start (given schedule) is faster" in s.options["hint"]
    assert not s.options["warm_start"].startswith("hint")


def test_a_hint_from_a_larger_budget_is_repaired_to_fit():
    from mutwo.registry import get_solver

    p = chain(10)
    big, small = range_budget(p, 0.8), range_budget(p, 0.3)
    hint = get_solver("ilp_cpsat")(p, big, time_limit_s=10)
    assert hint.feasible and not simulate(p, hint).fits(small)
    s = get_solver("ilp_cpsat")(p, small, warm_start=None, hint=hint, time_limit_s=20)
    assert s.options["hint"].startswith("repaired to fit")
    assert s.feasible and simulate(p, s).fits(small)
    assert s.objective <= float(s.options["hint"].split(", ")[1].split(" s")[0]) * (1 + 1e-6)


def test_a_hint_that_cannot_be_made_to_fit_is_dropped_with_a_note():
    """Below what every plan holds no repair helps: the hint is dropped, and the answer says why."""
    from mutwo.registry import get_solver

    p = chain(6)
    floor = p.peak_floor()[0]
    hint = get_solver("mutwo_greedy")(p, range_budget(p, 0.8))
    s = get_solver("ilp_cpsat")(p, floor - 1, hint=hint, time_limit_s=10)
    assert s.options["hint"].startswith("dropped: over budget")
    assert not s.feasible


def test_a_hint_of_another_problem_is_refused_naming_the_option():
    from mutwo.registry import get_solver

    p, other = chain(6), chain(8)
    hint = get_solver("mutwo_greedy")(other, range_budget(other, 0.5))
    with pytest.raises(ValueError, match="hint has 8 decisions for a Problem of 6 activations"):
        get_solver("ilp_cpsat")(p, range_budget(p, 0.5), hint=hint, time_limit_s=5)


def test_hint_option_accepts_a_schedule_and_refuses_a_name():
    """A scenario's (or the grid's) hint is type-checked like every option: a Schedule or None."""
    from mutwo.registry import check_solver_options, get_solver

    p = chain(6)
    hint = get_solver("mutwo_greedy")(p, range_budget(p, 0.5))
    for name in ("ilp_cpsat", "ilp_ortools_mip", "ilp_pulp_cbc", "ilp_pulp_highs"):
        check_solver_options(name, {"hint": hint})
        check_solver_options(name, {"hint": None})
        with pytest.raises(Exception, match="hint"):
            check_solver_options(name, {"hint": "mutwo_greedy"})


# ---------------------------------------------------------------------- chains, checks, integral point
@pytest.mark.parametrize("seed", range(3))
def test_chain_members_never_price_more_than_the_chain_runs(seed):
    """Recompute everything (default anchors): each target's own time plus its members' exclusive times,
    over the members the chain really regenerates, is at most the chain's time (no op counted twice)."""
    from mutwo.schedule import resolve_recompute
    from solvers.ilp_bound_chains import chain_members

    p = random_dag(30, seed)
    d = np.where(p.recomputable, int(Decision.RECOMPUTE), int(Decision.KEEP)).astype(np.int8)
    chains = resolve_recompute(p, d)
    members = chain_members(p, p.recomputable.copy(), depth=3)
    assert members and all(m.extra_s >= 0 for m in members)
    priced = {a: float(p.recompute_time_s[a]) for a in chains}
    for m in members:
        if m.target in chains and m.member in chains[m.target].temporaries:
            priced[m.target] += m.extra_s
    for a, c in chains.items():
        assert priced[a] <= c.time_s * (1 + 1e-12) + 1e-15, (a, priced[a], c.time_s)
    # and the members do make up part of the chains here (the rows are not vacuous)
    assert any(priced[a] > p.recompute_time_s[a] for a in chains)


def test_more_checks_only_strengthen_the_bound():
    p = slow_link(residual(6, seed=0), 20.0)
    b = range_budget(p, 0.3)
    few = iteration_bound(p, b, max_checks=2)
    more = iteration_bound(p, b, max_checks=2, extra_checks=np.arange(p.n_ops))
    assert more.n_checks > few.n_checks and set(few.checks.tolist()) <= set(more.checks.tolist())
    assert more.bound_s >= few.bound_s * (1 - 1e-9)
    from mutwo.registry import get_solver

    plan = simulate(p, get_solver("mutwo_greedy")(p, b))
    assert plan.fits(b) and more.bound_s <= plan.time_s * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_integral_point_is_integral_and_rounds_to_a_plan_that_fits(seed):
    from solvers.ilp_rounding import round_bound

    p = slow_link(random_dag(40, seed), 5.0)
    b = range_budget(p, 0.3)
    ib = iteration_bound(p, b, with_point=True)
    assert ib.point_recompute is not None and ib.point_swap is not None
    for v in (ib.point_recompute, ib.point_swap):
        assert np.isin(v, (0.0, 1.0)).all()
    assert not (ib.point_recompute.astype(bool) & ib.point_swap.astype(bool)).any()
    s = round_bound(p, b, ib)
    assert s is not None and simulate(p, s).fits(b)


def test_shared_anchors_make_a_run_once_and_never_invalidate_a_plan():
    from solvers.ilp_rounding import share_anchors

    p = chain(8)
    d = np.zeros(p.n_act, np.int8)
    d[1:6] = Decision.RECOMPUTE  # a run: each member's chain regenerates the ones before it
    pf = np.full(p.n_act, -1, np.int64)
    alone = simulate(p, Schedule(d, pf))
    ra = share_anchors(p, d)
    shared = simulate(p, Schedule(d, pf, recompute_at=ra))
    assert (ra[d == Decision.RECOMPUTE] >= 0).any() and (ra[d != Decision.RECOMPUTE] == -1).all()
    assert shared.recompute_s < alone.recompute_s
    assert shared.recompute_s == pytest.approx(p.recompute_time_s[d == Decision.RECOMPUTE].sum())
    # with swapped sources in the way, sharing keeps every chain valid (simulate raises otherwise)
    for seed in range(4):
        q = random_dag(20, seed)
        rng = np.random.default_rng(seed)
        e = rng.choice([0, 1, 2], size=q.n_act).astype(np.int8)
        e[(e == 1) & ~q.recomputable] = 0
        e[(e == 2) & ~q.swappable] = 0
        from solvers.ilp_rounding import _valid_decisions

        e = _valid_decisions(q, e)
        simulate(q, Schedule(e, np.where(e == 2, q.first_bwd_use, -1), recompute_at=share_anchors(q, e)))


def test_repair_moves_an_early_anchor_back_when_it_holds_the_peak():
    from solvers.ilp_repair import repair_schedule
    from solvers.ilp_rounding import share_anchors

    p = chain(8)
    d = np.zeros(p.n_act, np.int8)
    d[1:6] = Decision.RECOMPUTE
    pf = np.full(p.n_act, -1, np.int64)
    plan = Schedule(d, pf, recompute_at=share_anchors(p, d))
    shared, alone = simulate(p, plan), simulate(p, Schedule(d, pf))
    assert shared.peak_bytes > alone.peak_bytes  # the shared run is held longer
    fixed, sim = repair_schedule(p, alone.peak_bytes, plan, mode="recompute")
    assert sim is not None and sim.fits(alone.peak_bytes) and sim.time_s <= alone.time_s


@pytest.mark.parametrize("start", ["mutwo_greedy", None])
def test_no_model_is_built_once_the_time_limit_is_spent(monkeypatch, start):
    """Building a large model takes seconds the engine's limit does not see (a 7B Llama: 15-20 s after a
    60 s limit was spent on the start and the bound): past the limit the start plan is returned, or
    TIMEOUT with the bound reached when there is none (no start, and the bound's rounding disabled)."""
    import time

    import solvers.ilp as ilp
    from mutwo.registry import get_solver

    p = slow_link(residual(3, seed=1), 10.0)
    b = range_budget(p, 0.3)
    built = []
    real_build = ilp.build
    monkeypatch.setattr(ilp, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    if start is None:
        monkeypatch.setattr(ilp, "_start_from_bound", lambda problem, budget, mode, lb, warm, warm_from, s: (warm, warm_from))
    ilp.ilp_cpsat(p, b, rel_gap=0.0, time_limit_s=20, warm_start=start)
    assert built  # with time left, the model is built: the check below is not vacuous
    built.clear()
    real_bound = ilp.lower_bound

    def slow_bound(*args, **kwargs):
        lb = real_bound(*args, **kwargs)
        time.sleep(0.5)
        return lb

    monkeypatch.setattr(ilp, "lower_bound", slow_bound)
    s = ilp.ilp_cpsat(p, b, rel_gap=0.0, time_limit_s=0.5, warm_start=start)
    assert not built and "time limit spent before the model" in s.message
    if start is None:
        assert s.status.value == "timeout" and "lower bound reached" in s.message and s.bound is not None
    else:
        assert s.status.value == "feasible" and simulate(p, s).peak_bytes <= b
        assert s.objective <= simulate(p, get_solver(start)(p, b)).time_s * (1 + 1e-9)  # the start, or its rounding
        assert s.bound is not None and s.bound <= s.objective
