"""μ-TWO Algorithm B (solvers.mutwo_greedy): known choices, budgets, bookkeeping == simulate, oracle."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mutwo_greedy_oracle import oracle  # tests/ is on sys.path under pytest

from mutwo.problem import Problem
from mutwo.registry import get_solver
from mutwo.schedule import Decision, Schedule, Status, resolve_recompute, validate
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual
from solvers import mutwo_greedy
from solvers.mutwo_greedy import algorithm_b, recompute_ratios, solve

K, R, S = Decision.KEEP, Decision.RECOMPUTE, Decision.SWAP


def floor_bytes(p: Problem) -> int:
    return int((p.fixed_bytes + p.op_transient_bytes).max())


def keep_peak(p: Problem) -> int:
    return simulate(p, Schedule.keep_all(p)).peak_bytes


def budgets(p: Problem, fracs=(0.9, 0.6, 0.3, 0.0)) -> list[int]:
    """Budgets between the fixed memory (0.0) and the keep-all peak (1.0)."""
    lo, hi = floor_bytes(p), keep_peak(p)
    return [int(lo + f * (hi - lo)) for f in fracs]


def check(p: Problem, budget: int, mode: str = "both"):
    """Solve, and hold the answer and the solver's bookkeeping against simulate."""
    res = solve(p, budget, mode=mode)
    sched = res.schedule
    validate(p, sched)
    sim = simulate(p, sched)
    assert res.peak_bytes == sim.peak_bytes
    assert np.array_equal(res.timeline, sim.timeline_bytes)
    assert res.time_s == pytest.approx(sim.time_s, rel=1e-12, abs=0)
    assert sched.objective == res.time_s
    assert "differs from simulate" not in sched.message
    if sched.status == Status.FEASIBLE:
        assert sim.peak_bytes <= budget
    else:
        assert sched.status == Status.INFEASIBLE
    return res, sim


# ---------------------------------------------------------------------- hand-made: known best choice
def one_big(bandwidth: float) -> Problem:
    """A (100 B) made at op 0, idle until its backward use at op 9; B (10 B) makes the peak at op 3.

    Forward ops 1-2 are long (5 s), so A's swap-out (100 B / bandwidth) ends before the peak; the
    backward ops are short (0.5 s), so only a fast link hides the copy back. Recomputing A re-runs
    op 0, which takes 0.01 s. Keep-all peak 110 at ops 3..6; with A off the device the peak is 100.
    """
    n, fwd_end = 10, 4
    op_time = np.array([0.01, 5, 5, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5])
    return Problem(
        name="one_big", op_names=[f"op{t}" for t in range(n)], op_time_s=op_time,
        op_transient_bytes=np.zeros(n, np.int64), fixed_bytes=np.zeros(n, np.int64), fwd_end=fwd_end,
        act_names=["A", "B"], act_bytes=[100, 10], created=[0, 3], last_fwd_use=[0, 4],
        first_bwd_use=[9, 5], last_bwd_use=[9, 6], recomputable=[True, False], swappable=[True, False],
        recompute_ops=[np.array([0]), np.array([3])], recompute_sources=[[], []],
        recompute_temp_bytes=[0, 0], host_bandwidth_bytes_per_s=bandwidth)


def test_a_swap_that_hides_fully_is_chosen_over_recompute():
    p = one_big(bandwidth=1000.0)  # 0.1 s each way: hidden behind backward work
    res, sim = check(p, 105)
    assert res.schedule.status == Status.FEASIBLE
    assert res.schedule.decisions.tolist() == [S, K]
    assert [s[:2] for s in res.steps] == [("swap", 0)]
    assert res.steps[0][2] == 0.0  # fully hidden: no overhead
    assert sim.stall_s == 0.0 and sim.recompute_s == 0.0
    assert res.schedule.prefetch_at[0] > 6  # after the peak interval (ops 3..6)
    assert sim.peak_bytes == 100


def test_a_nearly_free_recompute_is_chosen_when_the_swap_would_stall():
    p = one_big(bandwidth=25.0)  # 4 s each way: out before the peak, but backward is only 2.5 s long
    res, sim = check(p, 105)
    assert res.schedule.status == Status.FEASIBLE
    assert res.schedule.decisions.tolist() == [R, K]
    assert res.steps[0][0] == "recompute" and res.steps[0][2] == pytest.approx(0.01)
    assert sim.recompute_s == pytest.approx(0.01) and sim.stall_s == 0.0
    # the swap it turned down would have stalled
    swap_only, swap_sim = check(p, 105, mode="swap")
    assert swap_only.schedule.decisions.tolist() == [S, K] and swap_sim.stall_s > 1.0


def test_budget_below_fixed_memory_is_infeasible_immediately():
    p = random_dag(600, seed=1)
    t0 = time.process_time()
    res = solve(p, floor_bytes(p) - 1)
    assert time.process_time() - t0 < 0.05
    assert res.schedule.status == Status.INFEASIBLE
    assert "fixed memory" in res.schedule.message
    assert (res.schedule.decisions == K).all()


def test_infeasible_returns_the_lowest_peak_reached():
    p = one_big(bandwidth=25.0)
    res, sim = check(p, 50, mode="recompute")  # A's own use at op 9 keeps 100 B: cannot reach 50
    assert res.schedule.status == Status.INFEASIBLE
    assert f"lowest peak reached {sim.peak_bytes} B" in res.schedule.message
    assert sim.peak_bytes == 100


# ---------------------------------------------------------------------- synthetic problems
def with_outputs(p: Problem, seed: int) -> Problem:
    """``p`` with op outputs and workspace, which recompute chains run without (docs/cost_model.md):
    at an anchor, the chains' memory then wins over the op's at some anchors and loses at others."""
    rng = np.random.default_rng(seed)
    n, scale = p.n_ops, int(p.act_bytes.mean())
    outputs = np.minimum(p.fixed_bytes, rng.integers(0, 3 * scale, n))
    transient = np.where(rng.random(n) < 0.3, rng.integers(0, 2 * scale, n), p.op_transient_bytes)
    fields = {k: getattr(p, k) for k in p.__dataclass_fields__}
    return Problem(**{**fields, "name": f"{p.name}+outputs", "op_output_bytes": outputs,
                      "op_transient_bytes": transient})


PROBLEMS = [chain(16), residual(6, seed=3), random_dag(60, seed=0), random_dag(120, seed=4, swap_ratio=2.0),
            random_dag(80, seed=7, swap_ratio=0.2, skip_prob=0.4)]
PROBLEMS_WITH_OUTPUTS = [with_outputs(p, seed) for seed, p in enumerate(PROBLEMS)]


@pytest.mark.parametrize("p", PROBLEMS + PROBLEMS_WITH_OUTPUTS, ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["both", "recompute", "swap"])
def test_feasible_answers_fit_and_bookkeeping_equals_simulate(p, mode):
    for b in budgets(p):
        check(p, b, mode)


def varied_dag(seed: int) -> Problem:
    """Small random DAGs with links from 4x too slow to 5x faster than hiding every swap needs."""
    rng = np.random.default_rng(seed)
    return random_dag(int(rng.integers(5, 45)), seed=seed, swap_ratio=float(rng.choice([0.2, 0.5, 1.5, 4.0])),
                      skip_prob=0.4, frac_unswappable=0.2, frac_random=0.1)


@pytest.mark.parametrize("seed", [*range(0, 38, 3), 16, 39])  # 16, 39: a prefetch walk once stopped early
@pytest.mark.parametrize("outputs", [False, True])
def test_bookkeeping_equals_simulate_on_many_small_problems(seed, outputs):
    p = with_outputs(varied_dag(seed), seed) if outputs else varied_dag(seed)
    for b in budgets(p, (0.8, 0.55, 0.4, 0.15)):
        for mode in ("both", "recompute", "swap"):
            check(p, b, mode)


def random_decisions(seed: int, outputs: bool, swap_prob: float = 0.6):
    """Commit swaps (random prefetch floors) and recomputes in random order (not the greedy's); yield
    the problem, the solver state and its simulation after each one."""
    rng = np.random.default_rng(seed)
    p = random_dag(int(rng.integers(6, 40)), seed=seed, swap_ratio=float(rng.choice([0.5, 2.0, 8.0, 16.0])),
                   skip_prob=0.4)
    if outputs:
        p = with_outputs(p, seed)
    g = mutwo_greedy._Greedy(p, "both")
    for a in rng.permutation(p.n_act).tolist():
        if rng.random() < swap_prob and g.swap_candidate[a] and g.regenerated_by[a] == 0:
            g.commit_swap(a, int(rng.integers(p.fwd_end + 1, p.first_bwd_use[a] + 1)))
        elif g.recompute_candidate[a] and (new := g.try_recompute(a)) is not None:
            g.commit_recompute(a, new)
        else:
            continue
        yield p, g, simulate(p, Schedule(g.decisions(), g.prefetch()))


@pytest.mark.parametrize("seed", range(0, 60, 4))
@pytest.mark.parametrize("outputs", [False, True])
def test_incremental_timeline_equals_simulate_after_every_decision(seed, outputs):
    """Algorithm G's slice updates and chain memory at anchors against simulate, after each of random
    decisions."""
    for _, g, sim in random_decisions(seed, outputs):
        assert np.array_equal(sim.timeline_bytes, g.timeline_bytes)
        assert np.array_equal(sim.op_start_s, g.op_start_s)  # bit for bit: swap ranges compare times
        assert sim.time_s == g.time_s()


def test_random_decisions_exercise_every_chain_memory_case():
    """The property test above sees chains with temporaries, several chains at one anchor, and
    anchors where chain memory is above, equal to and below the op's memory."""
    seen = {"temporaries": 0, "shared_anchor": 0, "chain_above": 0, "chain_equal": 0, "chain_below": 0}
    for seed in range(0, 60, 4):
        for outputs in (False, True):
            for p, g, sim in random_decisions(seed, outputs, swap_prob=0.3):
                chains = resolve_recompute(p, g.decisions())
                seen["temporaries"] += sum(1 for c in chains.values() if c.temporaries)
                anchors = [c.anchor for c in chains.values()]
                seen["shared_anchor"] += len(anchors) - len(set(anchors))
                for t in set(anchors):
                    # chain memory by docs/cost_model.md; resident(t) from the greedy's own split
                    resident = g.timeline_bytes[t] - g.chain_extra_bytes[t] - p.fixed_bytes[t] - p.op_transient_bytes[t]
                    here = sorted((c for c in chains.values() if c.anchor == t),
                                  key=lambda c: (p.created[c.target], c.target))
                    done = most = 0
                    for c in here:
                        most = max(most, done + c.peak_bytes)
                        done += p.act_bytes[c.target]
                    chain_mem = p.fixed_bytes[t] - p.op_output_bytes[t] + resident - done + most
                    op_mem = p.fixed_bytes[t] + p.op_transient_bytes[t] + resident
                    assert sim.timeline_bytes[t] == max(op_mem, chain_mem)
                    key = ("chain_above" if chain_mem > op_mem else "chain_equal" if chain_mem == op_mem
                           else "chain_below")
                    seen[key] += 1
    assert all(v > 0 for v in seen.values()), seen


@pytest.mark.parametrize("p", PROBLEMS[:4], ids=lambda p: p.name)
def test_recompute_ratios_are_positive(p):
    ratios = recompute_ratios(p)
    cand = p.recomputable & (p.act_bytes > 0)
    assert cand.sum() > 0
    assert (ratios[cand] > 0).all() and np.isfinite(ratios[cand]).all()
    assert (ratios[~cand] == -np.inf).all()
    own = p.act_bytes[cand] / p.recompute_time_s[cand]  # no source recomputed yet: own ops only
    assert ratios[cand] == pytest.approx(own, rel=1e-12)
    if p.notes.get("generator") != "chain":  # a chain's layers are all alike
        assert len(np.unique(ratios[cand])) > 0.5 * cand.sum()  # they rank candidates, not a constant


@pytest.mark.parametrize("p", [residual(12, seed=1), random_dag(150, seed=2)], ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["both", "recompute", "swap"])
def test_simulated_peak_never_rises_as_the_budget_falls(p, mode):
    lo, hi = floor_bytes(p), keep_peak(p)
    peaks = []
    for b in np.linspace(hi, lo, 15).astype(np.int64):
        res = solve(p, int(b), mode=mode)
        sim = simulate(p, res.schedule)
        if res.schedule.feasible:
            assert sim.peak_bytes <= b
        peaks.append(sim.peak_bytes)
    assert all(x >= y for x, y in zip(peaks, peaks[1:], strict=False)), peaks
    assert peaks[-1] < hi  # it does lower the peak


def test_recompute_makes_the_peak_fall_on_a_chain():
    p = chain(16)
    lo, hi = floor_bytes(p), keep_peak(p)
    res, sim = check(p, lo + (hi - lo) // 2, "recompute")
    assert res.schedule.status == Status.FEASIBLE and sim.peak_bytes < hi
    assert (res.schedule.decisions == R).sum() >= 4


def test_modes_restrict_decisions():
    p = random_dag(120, seed=4, swap_ratio=2.0)
    b = budgets(p, (0.4,))[0]
    both = solve(p, b, mode="both").schedule.decisions
    rec = solve(p, b, mode="recompute").schedule.decisions
    swp = solve(p, b, mode="swap").schedule.decisions
    assert (both == R).any() and (both == S).any()
    assert not (rec == S).any() and (rec == R).any()
    assert not (swp == R).any() and (swp == S).any()
    with pytest.raises(ValueError, match="mode"):
        solve(p, b, mode="offload")


def test_registered_and_deterministic():
    p = random_dag(100, seed=5)
    b = budgets(p, (0.5,))[0]
    fn = get_solver("mutwo_greedy")
    first = fn(p, b)
    assert first.solver == "mutwo_greedy" and first.budget_bytes == b and first.options["mode"] == "both"
    for seed in (0, 1, 123):
        again = fn(p, b, seed=seed)
        assert np.array_equal(again.decisions, first.decisions)
        assert np.array_equal(again.prefetch_at, first.prefetch_at)
        assert again.objective == first.objective and again.status == first.status
    with pytest.raises(TypeError, match="unknown options"):
        fn(p, b, budget_fraction=0.5)


# ---------------------------------------------------------------------- the oracle
ORACLE_PROBLEMS = [chain(8), residual(3, seed=2), random_dag(12, seed=3), random_dag(20, seed=1),
                   random_dag(24, seed=8, swap_ratio=4.0, skip_prob=0.4, frac_unswappable=0.2),
                   random_dag(30, seed=5, swap_ratio=0.3), random_dag(36, seed=11, skip_prob=0.5),
                   residual(5, seed=4, host_bandwidth_bytes_per_s=1e9), chain(10, host_bandwidth_bytes_per_s=2e9)]
ORACLE_PROBLEMS += [with_outputs(p, seed) for seed, p in enumerate(ORACLE_PROBLEMS[2:6])]


@pytest.mark.parametrize("p", ORACLE_PROBLEMS, ids=lambda p: p.name)
def test_same_decisions_as_the_literal_oracle(p):
    for b in budgets(p, (0.8, 0.5, 0.2)):
        for mode in ("both", "recompute", "swap"):
            res = algorithm_b(p, b, mode=mode)
            d, pf, steps, status = oracle(p, b, mode)
            assert [s[:2] for s in res.steps] == [s[:2] for s in steps]
            assert [s[2] for s in res.steps] == pytest.approx([s[2] for s in steps], rel=1e-12, abs=0)
            assert np.array_equal(res.schedule.decisions, d)
            assert np.array_equal(res.schedule.prefetch_at, pf)
            assert res.schedule.status.value == status


# ---------------------------------------------------------------------- speed
def test_resnet152_sized_problem_solves_in_under_a_second():
    p = random_dag(600, seed=0)  # ~3,900 ops
    b = int(0.5 * keep_peak(p))
    best = float("inf")
    for _ in range(3):  # best of three, in CPU time: the machine may be shared
        t0 = time.process_time()
        res = solve(p, b, verify=False)
        best = min(best, time.process_time() - t0)
    assert res.schedule.status == Status.FEASIBLE
    assert best < 1.0


def test_both_mode_falls_back_to_a_one_kind_walk_that_fits():
    """A free swap taken early can leave a later peak only recomputing could lower: there the walk
    choosing both finds no plan while the recompute-only walk does. The solver then returns it."""
    p = random_dag(40, seed=0, swap_ratio=0.3)
    b = budgets(p, (0.2,))[0]
    assert not algorithm_b(p, b, "both").schedule.feasible
    alone = algorithm_b(p, b, "recompute").schedule
    assert alone.feasible
    s = solve(p, b, mode="both").schedule
    assert s.feasible and simulate(p, s).peak_bytes <= b
    assert np.array_equal(s.decisions, alone.decisions) and "recompute-only walk" in s.message
    assert s.options["mode"] == "both" and s.options["walk"] == "recompute"


@pytest.mark.parametrize("p", [random_dag(60, seed=3), residual(6, seed=2)], ids=lambda p: p.name)
def test_both_mode_fits_wherever_a_one_kind_mode_fits(p):
    for b in budgets(p, np.linspace(0.05, 0.95, 10)):
        both = solve(p, b, mode="both").schedule
        if any(solve(p, b, mode=m).schedule.feasible for m in ("recompute", "swap")):
            assert both.feasible
