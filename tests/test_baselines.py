"""Baseline solvers: valid schedules, honest statuses, budgets respected, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from mutwo.problem import Problem
from mutwo.registry import available_solvers, get_solver
from mutwo.schedule import Decision, Schedule, Status, resolve_recompute, validate
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual

BASELINES = ["keep_all", "recompute_all", "chen_sqrt", "largest_first", "swap_hidden", "knapsack"]
BUDGET_DRIVEN = ["largest_first", "knapsack"]
PROBLEMS = {"chain": chain(12), "residual": residual(4, seed=3), "dag": random_dag(80, seed=5)}


def _keep_peak(p: Problem) -> int:
    return simulate(p, Schedule.keep_all(p)).peak_bytes


def _floor(p: Problem) -> int:
    return int((p.fixed_bytes + p.op_transient_bytes).max())


def test_all_registered():
    assert set(BASELINES) <= set(available_solvers())


@pytest.mark.parametrize("pname", PROBLEMS)
@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("frac", [1.0, 0.8, 0.6, 0.4])
def test_valid_and_honest(name, pname, frac):
    p = PROBLEMS[pname]
    budget = int(_floor(p) + frac * (_keep_peak(p) - _floor(p)))
    s = get_solver(name)(p, budget)
    validate(p, s)
    sim = simulate(p, s)
    assert s.solver == name and s.budget_bytes == budget and s.solve_time_s > 0
    assert s.status in (Status.FEASIBLE, Status.INFEASIBLE)
    assert s.feasible == (sim.peak_bytes <= budget)
    if not s.feasible:
        assert str(sim.peak_bytes) in s.message
    assert s.objective == pytest.approx(sim.time_s)
    if frac == 1.0 and name in BUDGET_DRIVEN:
        assert s.feasible and s.counts()["n_recompute"] == 0  # keep-all already fits


@pytest.mark.parametrize("name", BASELINES)
def test_infeasible_below_fixed_memory(name):
    p = PROBLEMS["dag"]
    s = get_solver(name)(p, _floor(p) - 1)
    assert s.status is Status.INFEASIBLE
    assert "lowest peak reached" in s.message


@pytest.mark.parametrize("name", BASELINES)
def test_deterministic(name):
    p = random_dag(60, seed=11)
    budget = int(0.8 * _keep_peak(p))
    a, b = get_solver(name)(p, budget), get_solver(name)(p, budget)
    assert a.decisions.tolist() == b.decisions.tolist() and a.prefetch_at.tolist() == b.prefetch_at.tolist()
    assert a.status == b.status and a.message == b.message


@pytest.mark.parametrize("name", BUDGET_DRIVEN)
@pytest.mark.parametrize("p", [random_dag(100, seed=1), random_dag(150, seed=2), chain(16)],
                         ids=["dag100", "dag150", "chain16"])
def test_peak_falls_as_budget_falls(name, p):
    keep, floor = _keep_peak(p), _floor(p)
    peaks, recomputed = [], []
    for frac in np.linspace(1.0, 0.0, 9):
        s = get_solver(name)(p, int(floor + frac * (keep - floor)))
        if not s.feasible:
            break
        peaks.append(simulate(p, s).peak_bytes)
        recomputed.append(s.counts()["n_recompute"])
    assert len(peaks) >= 3, "the budget range should allow a few feasible plans"
    assert peaks == sorted(peaks, reverse=True) and peaks[-1] < peaks[0]
    assert recomputed == sorted(recomputed)


def _two_acts(recompute_time: tuple[float, float], nbytes: tuple[int, int]) -> Problem:
    """a (made at op 0) and b (op 1) are both alive at the loss (op 2), where 100 fixed bytes sit."""
    return Problem(
        name="two", op_names=[f"op{t}" for t in range(5)],
        op_time_s=[recompute_time[0], recompute_time[1], 1, 1, 1], op_transient_bytes=np.zeros(5, np.int64),
        fixed_bytes=[0, 0, 100, 0, 0], fwd_end=2, act_names=["a", "b"], act_bytes=list(nbytes),
        created=[0, 1], last_fwd_use=[0, 1], first_bwd_use=[4, 3], last_bwd_use=[4, 3],
        recomputable=[True, True], swappable=[True, True], recompute_ops=[[0], [1]],
        recompute_sources=[[], []], recompute_temp_bytes=[0, 0])


def test_knapsack_prefers_cheapest_time_per_byte_and_largest_first_prefers_size():
    p = _two_acts(recompute_time=(1.0, 10.0), nbytes=(60, 100))  # a: 1/60 s/B, b: 10/100 s/B
    budget = 210  # keep-all peaks at 260 on op 2; recomputing either one fits
    assert _keep_peak(p) == 260
    assert get_solver("knapsack")(p, budget).decisions.tolist() == [Decision.RECOMPUTE, Decision.KEEP]
    assert get_solver("largest_first")(p, budget).decisions.tolist() == [Decision.KEEP, Decision.RECOMPUTE]
    both = get_solver("knapsack")(p, 160)
    assert both.feasible and both.decisions.tolist() == [Decision.RECOMPUTE, Decision.RECOMPUTE]


def test_chen_sqrt_keeps_every_kth_as_checkpoint():
    p = chain(16)
    s = get_solver("chen_sqrt")(p, 10**12)
    assert np.flatnonzero(s.decisions == Decision.KEEP).tolist() == [3, 7, 11, 15]
    assert s.options["segments"] == 4
    s2 = get_solver("chen_sqrt")(p, 10**12, segments=2)
    assert np.flatnonzero(s2.decisions == Decision.KEEP).tolist() == [7, 15]
    s16 = get_solver("chen_sqrt")(p, 10**12, segments=16)
    assert (s16.decisions == Decision.KEEP).all()
    with pytest.raises(ValueError, match="segments"):
        get_solver("chen_sqrt")(p, 10**12, segments=0)


def test_chen_sqrt_shares_each_segment_once():
    """On a chain a shared segment is regenerated once at the first backward use of any member: each
    forward op of the segment re-runs exactly once, no chain has temporaries; without sharing every
    member re-runs the segment from the checkpoint on its own (quadratic in the segment length)."""
    p = chain(16)
    shared, alone = (get_solver("chen_sqrt")(p, 10**12, share=flag) for flag in (True, False))
    assert shared.decisions.tolist() == alone.decisions.tolist()
    members = np.flatnonzero(shared.decisions == Decision.RECOMPUTE)
    # segments [0..2], [4..6], ...: all anchored at the first backward use of their last member
    assert shared.recompute_at[members].tolist() == np.repeat(p.first_bwd_use[[2, 6, 10, 14]], 3).tolist()
    assert (alone.recompute_at == -1).all()
    chains = resolve_recompute(p, shared.decisions, shared.recompute_at)
    assert all(not c.temporaries for c in chains.values())
    ops = np.concatenate([c.ops for c in chains.values()])
    assert len(ops) == len(set(ops.tolist())) == len(members)
    t_shared, t_alone = (simulate(p, s).recompute_s for s in (shared, alone))
    assert t_shared == pytest.approx(p.op_time_s[np.concatenate([p.recompute_ops[a] for a in members])].sum())
    assert t_shared < t_alone


def test_chen_sqrt_keeps_what_other_segments_read():
    p = residual(6, seed=1)
    s = get_solver("chen_sqrt")(p, 10**12)
    validate(p, s)
    chains = resolve_recompute(p, s.decisions, s.recompute_at)
    assert all(not c.temporaries for c in chains.values())
    run_anchor = {int(a): int(s.recompute_at[a]) for a in np.flatnonzero(s.decisions == Decision.RECOMPUTE)}
    for c in chains.values():  # every source is kept or a member of the same segment (same anchor)
        assert all(s.decisions[x] == Decision.KEEP or run_anchor.get(x) == run_anchor[c.target] for x in c.sources)


def test_chen_sqrt_skips_non_recomputable():
    p = random_dag(50, seed=4, frac_random=0.3)
    s = get_solver("chen_sqrt")(p, 10**12)
    assert not np.any((s.decisions == Decision.RECOMPUTE) & ~p.recomputable)


def test_recompute_all_recomputes_exactly_the_recomputable():
    p = random_dag(50, seed=4, frac_random=0.3)
    s = get_solver("recompute_all")(p, 10**12)
    assert np.array_equal(s.decisions == Decision.RECOMPUTE, p.recomputable)


def test_swap_hidden_swaps_only_activations_whose_gap_covers_both_transfers():
    p = random_dag(200, seed=9)
    s = get_solver("swap_hidden")(p, 10**12)
    cum = np.concatenate([[0.0], np.cumsum(p.op_time_s)])
    gap = cum[p.first_bwd_use] - cum[p.last_fwd_use + 1]
    swapped = s.decisions == Decision.SWAP
    assert np.array_equal(swapped, p.swappable & (gap >= 2 * p.swap_time_s))
    assert 0 < swapped.sum() < p.swappable.sum()  # some hide, some don't
    sim = simulate(p, s)
    assert sim.peak_bytes < _keep_peak(p)
    assert np.all(s.prefetch_at[swapped] > p.fwd_end)
    assert np.all(s.prefetch_at[~swapped] == -1)
