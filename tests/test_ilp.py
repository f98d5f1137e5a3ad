"""ILP solvers: every backend against brute force, against each other, and against the simulator."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from mutwo.problem import Problem
from mutwo.registry import get_solver, solver_option_defaults
from mutwo.schedule import Decision, Schedule, Status
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual
from solvers.brute_force import brute_force
from solvers.ilp import AGREEMENT, repair, solve_ilp
from solvers.ilp_model import build
from solvers.ilp_options import IlpOptions
from solvers.modes import MODES

BACKENDS = ["ilp_cpsat", "ilp_ortools_mip", "ilp_pulp_cbc", "ilp_pulp_highs"]
EXACT = {"rel_gap": 1e-7, "warm_start": None, "time_limit_s": 30}
# the model alone: with the bound on, its rounded plan may anchor a recompute early (shared chains) and
# beat every plan brute force names (default points only), so equality with brute force is the model's
MODEL_ONLY = {**EXACT, "bound": "none"}


def budgets(p: Problem, fractions) -> list[int]:
    lo, hi = p.peak_floor()[0], simulate(p, Schedule.keep_all(p)).peak_bytes
    return [int(lo + f * (hi - lo)) for f in fractions]


def tiny(seed: int) -> Problem:
    """Small enough for brute force; slow links on some seeds so that copies stall and queue."""
    p = [random_dag(6 + seed % 3, seed), residual(2, seed=seed), chain(5 + seed % 3)][seed % 3]
    slow = [1.0, 0.1, 0.03][seed % 3]
    return dataclasses.replace(p, host_bandwidth_bytes_per_s=p.host_bandwidth_bytes_per_s * slow)


CASES = [(seed, f) for seed in range(6) for f in (0.15, 0.6)]


def check_against_simulate(p: Problem, s: Schedule, budget: int) -> None:
    """A feasible answer fits when simulated and its objective is the simulated time."""
    if not s.feasible:
        return
    sim = simulate(p, s)
    assert sim.peak_bytes <= budget, s.message
    assert abs(s.objective - sim.time_s) <= AGREEMENT * sim.time_s, s.message
    assert abs(s.objective - sim.time_s) <= 1e-9 * sim.time_s, "the model is exact for the plans it admits"
    if s.bound is not None:
        assert s.bound <= s.objective * (1 + 1e-9)


@pytest.fixture(scope="module")
def truth() -> dict:
    """Brute-force optimum (default prefetch points) per case."""
    out = {}
    for seed, f in CASES:
        p = tiny(seed)
        b = budgets(p, [f])[0]
        out[(seed, f)] = (p, b, brute_force(p, b))
    return out


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_finds_the_brute_force_optimum(name, truth):
    solver = get_solver(name)
    for (seed, f), (p, b, bf) in truth.items():
        s = solver(p, b, prefetch="default", **MODEL_ONLY)
        check_against_simulate(p, s, b)
        assert s.feasible == bf.feasible, (seed, f, s.message, bf.message)
        if bf.feasible:
            assert s.status == Status.OPTIMAL, (seed, f, s.message)
            assert s.objective == pytest.approx(bf.objective, rel=1e-6), (seed, f, s.message)


@pytest.mark.parametrize("name", BACKENDS)
def test_free_prefetch_points_never_lose_to_brute_force(name, truth):
    """Brute force uses default prefetch points; choosing them can only help."""
    solver = get_solver(name)
    for (seed, f), (p, b, bf) in list(truth.items())[::2]:
        s = solver(p, b, **EXACT)
        check_against_simulate(p, s, b)
        if bf.feasible:
            assert s.feasible and s.objective <= bf.objective * (1 + 1e-6), (seed, f, s.message)


def test_all_backends_agree_beyond_brute_force():
    """Problems too large to enumerate (13 activations): every backend proves the same optimum."""
    for p in (residual(3, seed=1), residual(3, seed=2)):
        for b in budgets(p, [0.3]):
            found = {}
            for name in BACKENDS:
                s = get_solver(name)(p, b, **EXACT)
                check_against_simulate(p, s, b)
                assert s.status == Status.OPTIMAL, (name, s.message)
                found[name] = s.objective
            best = min(found.values())
            assert all(v == pytest.approx(best, rel=1e-5) for v in found.values()), found


@pytest.mark.parametrize("name", BACKENDS + ["brute_force"])
def test_budget_below_fixed_memory_is_infeasible_quickly(name):
    p = random_dag(10, 2)
    b = int((p.fixed_bytes + p.op_transient_bytes).max()) - 1
    t = time.perf_counter()
    s = get_solver(name)(p, b)
    assert time.perf_counter() - t < 5.0
    assert s.status == Status.INFEASIBLE
    assert not s.feasible


@pytest.mark.parametrize("name", BACKENDS)
def test_modes_restrict_decisions(name):
    p = tiny(1)
    b = budgets(p, [0.4])[0]
    rec = get_solver(name)(p, b, mode="recompute", **MODEL_ONLY)
    assert not np.any(rec.decisions == Decision.SWAP)
    assert rec.objective == pytest.approx(brute_force(p, b, mode="recompute").objective, rel=1e-6)
    sw = get_solver(name)(p, b, mode="swap", **MODEL_ONLY)
    assert not np.any(sw.decisions == Decision.RECOMPUTE)
    check_against_simulate(p, sw, b)


@pytest.mark.parametrize("name", BACKENDS + ["brute_force"])
def test_mode_full_is_refused_with_its_new_name(name):
    with pytest.raises(ValueError, match="mode 'full' is now called 'both'.*use mode='both'"):
        get_solver(name)(chain(4), 10**12, mode="full")


def test_one_mode_vocabulary_with_both_the_default():
    """Every solver that takes a mode takes the same three words, and "both" is what no mode means."""
    from solvers.mutwo_greedy import MODES as GREEDY_MODES

    assert MODES == ("both", "recompute", "swap") and set(GREEDY_MODES) == set(MODES)
    for name in BACKENDS + ["brute_force", "mutwo_greedy"]:
        assert solver_option_defaults(name)["mode"] == "both", name
    p = tiny(1)
    b = budgets(p, [0.4])[0]
    both = get_solver("ilp_cpsat")(p, b, mode="both", **EXACT)
    default = get_solver("ilp_cpsat")(p, b, **EXACT)
    assert both.options["mode"] == default.options["mode"] == "both"
    assert both.objective == pytest.approx(default.objective, rel=1e-9)
    assert brute_force(p, b, mode="both").objective == brute_force(p, b).objective
    with pytest.raises(ValueError, match="mode must be one of"):
        get_solver("ilp_cpsat")(p, b, mode="offload")
    with pytest.raises(ValueError, match="prefetch must be 'free' or 'default'"):
        get_solver("ilp_cpsat")(p, b, prefetch="early")


def test_the_declared_defaults_are_the_ones_applied():
    """One options table per solver: what the registry shows is what the solver uses."""
    p = tiny(0)
    b = budgets(p, [0.3])[0]
    s = get_solver("ilp_pulp_highs")(p, b, warm_start=None)
    declared = solver_option_defaults("ilp_pulp_highs")
    for k in ("time_limit_s", "rel_gap", "threads", "seed", "mode"):
        assert s.options[k] == declared[k], k
    assert solver_option_defaults("ilp_ortools_mip") == {**declared, "engine": IlpOptions().engine}
    assert brute_force(p, b).options["mode"] == solver_option_defaults("brute_force")["mode"]
    with pytest.raises(TypeError, match=r"solve_ilp got unknown options \['time_limt_s'\]"):
        solve_ilp(p, b, "cpsat", time_limt_s=5)
    with pytest.raises(TypeError, match=r"brute_force got unknown options \['mdoe'\]"):
        brute_force.__wrapped__(p, b, mdoe="both")


def test_reported_fields():
    p = tiny(0)
    b = budgets(p, [0.3])[0]
    s = get_solver("ilp_cpsat")(p, b, **EXACT)
    assert s.solver == "ilp_cpsat" and s.budget_bytes == b and s.solve_time_s > 0
    assert s.options["gap"] is not None and s.options["gap"] <= 1e-6 + 1e-7
    assert s.bound is not None and "gap" in s.message
    Schedule.from_json(s.to_json())  # JSON-serialisable, options included


def test_warm_start_lies_inside_the_model_and_is_used():
    """The greedy plan becomes a candidate point set, so the hint is a complete feasible assignment."""
    p = random_dag(60, 3)
    b = budgets(p, [0.3])[0]
    greedy = get_solver("mutwo_greedy")(p, b)
    assert greedy.feasible
    F = build(p, b, plan=(greedy.decisions, greedy.prefetch_at))
    x, issue = F.complete(greedy.decisions, greedy.prefetch_at)
    assert issue == ""
    assert F.violation(x) <= 1e-7
    assert F.objective_of(x) == pytest.approx(simulate(p, greedy).time_s, rel=1e-9)
    for name in ("ilp_cpsat", "ilp_pulp_highs"):
        # without the bound (and so without its rounded plan) the named start is the start
        s = get_solver(name)(p, b, time_limit_s=3, warm_start="mutwo_greedy", bound="none")
        check_against_simulate(p, s, b)
        assert s.objective <= simulate(p, greedy).time_s * (1 + 1e-9), s.message
        assert s.options["warm_start"] == "mutwo_greedy"
        # with it, the plan rounded from the bound's relaxation replaces the start only when faster
        s = get_solver(name)(p, b, time_limit_s=3, warm_start="mutwo_greedy")
        check_against_simulate(p, s, b)
        assert s.objective <= simulate(p, greedy).time_s * (1 + 1e-9), s.message
        used = s.options["warm_start"]
        assert used == "mutwo_greedy" or used.startswith("mutwo_greedy, replaced by the bound's relaxation"), used


def test_completed_plans_satisfy_every_row_and_price_exactly(truth):
    """For brute-force optima (all three decisions mixed) the model's tight assignment is feasible."""
    for (p, b, bf) in truth.values():
        if not bf.feasible:
            continue
        F = build(p, b, plan=(bf.decisions, bf.prefetch_at))
        x, issue = F.complete(bf.decisions, bf.prefetch_at)
        assert issue == ""
        assert F.violation(x) <= 1e-7
        assert F.objective_of(x) == pytest.approx(simulate(p, bf).time_s, rel=1e-9)


def test_completion_prices_the_links_as_simulate_does():
    """The completed link times are simulate's (mutwo.linkmodel's walks): each copy back arrives when
    simulate says and the stalls add up to simulate's, also where one op waits for several copies."""
    for n, seed, slow, f in ((16, 1, 1.0, 0.3), (12, 2, 0.3, 0.3)):
        p = random_dag(n, seed)
        p = dataclasses.replace(p, host_bandwidth_bytes_per_s=p.host_bandwidth_bytes_per_s * slow)
        b = budgets(p, [f])[0]
        greedy = get_solver("mutwo_greedy")(p, b)
        F = build(p, b, plan=(greedy.decisions, greedy.prefetch_at))
        x, issue = F.complete(greedy.decisions, greedy.prefetch_at)
        assert issue == "" and F.violation(x) <= 1e-7
        swapped = np.flatnonzero(greedy.decisions == Decision.SWAP)
        fbu = p.first_bwd_use[swapped]
        assert any((fbu == t).sum() > 1 and x[F.stall_var[t]] > 0 for t in fbu.tolist()), "the case covered here"
        sim, tu = simulate(p, greedy), F.time_unit
        arrival = {a: x[h] * tu for q, a, h in F.copy_back_tail_vars if q == greedy.prefetch_at[a]}
        assert arrival == pytest.approx({a: sim.prefetch_end_s[a] for a in swapped.tolist()}, rel=1e-12)
        assert sum(x[v] for v in F.stall_var.values()) * tu == pytest.approx(sim.stall_s, rel=1e-12)


def test_two_phase_and_larger_problem_stay_honest():
    """A time-limited solve on a mid-size problem: whatever it returns fits and is priced right."""
    p = random_dag(120, 5)
    for b in budgets(p, [0.3]):
        s = get_solver("ilp_pulp_highs")(p, b, time_limit_s=4, two_phase=True)
        assert s.feasible, s.message
        check_against_simulate(p, s, b)
        assert "phase1" in s.options


def test_repair_turns_an_overfull_plan_into_a_fitting_one():
    p = random_dag(30, 1)
    b = budgets(p, [0.3])[0]
    keep = np.zeros(p.n_act, np.int8)
    d, pf, sim = repair(p, b, keep, np.full(p.n_act, -1, np.int64))
    assert sim is not None and sim.peak_bytes <= b
    assert simulate(p, Schedule(d, pf)).peak_bytes <= b


def test_brute_force_refuses_large_problems():
    with pytest.raises(ValueError, match="refuses n_act=13"):
        brute_force(random_dag(13, 0), 10**12)


def test_brute_force_tie_break_prefers_fewest_changes():
    p = chain(4)
    big = 10**12
    s = brute_force(p, big)
    assert s.status == Status.OPTIMAL and np.all(s.decisions == Decision.KEEP)


@pytest.mark.parametrize("name", BACKENDS)
def test_start_plan_within_the_gap_of_the_compute_time_is_proven_without_a_model(name):
    """Swaps that hide under compute cost nothing: the greedy's plan is as fast as the compute time,
    which bounds every plan, so it is returned as optimal at once, with that bound."""
    p = dataclasses.replace(chain(30), host_bandwidth_bytes_per_s=1e15)
    b = int(0.7 * simulate(p, Schedule.keep_all(p)).peak_bytes)
    greedy = get_solver("mutwo_greedy")(p, b)
    assert simulate(p, greedy).time_s == pytest.approx(p.total_compute_s)
    s = get_solver(name)(p, b, time_limit_s=30)
    assert s.status is Status.OPTIMAL and "compute-time bound" in s.message
    assert s.bound == pytest.approx(p.total_compute_s) and s.options["engine"].startswith("none")
    assert s.decisions.tolist() == greedy.decisions.tolist()
    assert simulate(p, s).peak_bytes <= b
    # with a tighter gap than the start plan's, the model is solved
    slow = dataclasses.replace(p, host_bandwidth_bytes_per_s=1e3)
    assert "compute-time bound" not in get_solver(name)(slow, b, time_limit_s=10, rel_gap=1e-9).message


def test_reported_bound_is_never_below_the_compute_time():
    p = random_dag(40, 3)
    b = budgets(p, [0.4])[0]
    s = get_solver("ilp_pulp_highs")(p, b, **{**EXACT, "time_limit_s": 10})
    assert s.bound is not None and p.total_compute_s - 1e-12 <= s.bound <= s.objective


def test_a_faster_start_plan_outside_the_model_is_kept():
    """A start plan the model's conservative chain rows exclude, but that fits under simulate and is
    faster than the model's optimum, is returned (FEASIBLE, with only the compute-time bound)."""
    from solvers.ilp import _no_worse_than_start

    p = chain(12)
    b = budgets(p, [0.5])[0]
    start = get_solver("mutwo_greedy")(p, b, mode="recompute")
    t = simulate(p, start).time_s
    slower = Schedule.keep_all(p, solver="ilp_cpsat", status=Status.OPTIMAL, budget_bytes=b, objective=2 * t,
                               bound=1.9 * t, message="model optimum")
    kept = _no_worse_than_start(p, b, slower, start, "mutwo_greedy", time.perf_counter())
    assert kept.status is Status.FEASIBLE and kept.decisions.tolist() == start.decisions.tolist()
    assert kept.objective == pytest.approx(t) and kept.bound == pytest.approx(p.total_compute_s)
    assert "outside the model" in kept.message and "model optimum" in kept.message
    # a model answer at least as fast stays
    faster = dataclasses.replace(slower, objective=t)
    assert _no_worse_than_start(p, b, faster, start, "mutwo_greedy", time.perf_counter()) is faster


def test_warm_start_from_a_solver_without_mode_or_seed_options():
    """The start solver gets only the options it declares (knapsack takes none): no retry on TypeError."""
    p = random_dag(30, 1)
    b = budgets(p, [0.6])[0]
    s = get_solver("ilp_pulp_highs")(p, b, warm_start="knapsack", time_limit_s=10)
    assert s.feasible and s.options["warm_start"].startswith("knapsack")


def test_a_fitting_start_is_kept_when_the_engine_finds_no_plan(monkeypatch):
    """An engine that stops at its limit with no plan (CP-SAT UNKNOWN) while the start fits but lies outside
    the model (so it is not the engine's incumbent) must not turn a fitting plan into a `timeout` row."""
    from solvers import ilp_backends
    from solvers.ilp_model import Formulation

    p = random_dag(40, 3)
    b = budgets(p, [0.4])[0]
    start = get_solver("mutwo_greedy")(p, b)
    assert simulate(p, start).peak_bytes <= b

    def no_plan(F, **kw):
        return ilp_backends.BackendResult("unknown", None, None, None, 0.01, "cp-sat", "UNKNOWN")

    monkeypatch.setitem(ilp_backends.BACKENDS, "cpsat", no_plan)
    monkeypatch.setattr(Formulation, "violation", lambda self, x: 1.0)  # the start is outside the model
    s = get_solver("ilp_cpsat")(p, b, warm_start=start, bound="none", rel_gap=1e-9, two_phase=False)
    assert s.status is Status.FEASIBLE and s.decisions.tolist() == start.decisions.tolist()
    assert simulate(p, s).time_s == pytest.approx(simulate(p, start).time_s)
    assert "no plan found" in s.message


def test_reasons_a_start_lies_outside_the_model_are_summarized():
    """A 7B step's greedy start had 400+ chains deeper than the model: the row named each one."""
    from solvers.ilp_completion import summarize

    many = [f"chain of {a} is deeper than the model allows" for a in range(400)]
    text = summarize(many)
    assert text.startswith("chain of 0 is deeper") and text.endswith("; and 397 more") and len(text) < 200
    assert summarize(many[:2]) == "chain of 0 is deeper than the model allows; chain of 1 is deeper than the model allows"
    assert summarize([]) == ""
