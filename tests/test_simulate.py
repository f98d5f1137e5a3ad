"""simulate: every rule of docs/cost_model.md, checked against numbers worked out by hand.

The tiny problems use 1-second ops (unless stated) and a host link of 10 bytes/s, so a 25-byte
activation takes 2.5 s each way and every expected number below can be checked with pencil and paper.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError, validate
from mutwo.simulate import memory_timeline_frame, simulate
from mutwo.synthetic import random_dag

K, R, S = Decision.KEEP, Decision.RECOMPUTE, Decision.SWAP


def make(n_ops: int, fwd_end: int, acts: list[dict], *, op_time=None, fixed=0, transient=None,
         bandwidth: float = 10.0) -> Problem:
    """A hand-built Problem; each act: bytes, c(reated), lf(u), fb(u), lb(u) [, ops, srcs, temp]."""
    return Problem(
        name="tiny", op_names=[f"op{t}" for t in range(n_ops)],
        op_time_s=np.ones(n_ops) if op_time is None else op_time,
        op_transient_bytes=np.zeros(n_ops, np.int64) if transient is None else transient,
        fixed_bytes=np.full(n_ops, fixed, np.int64) if np.isscalar(fixed) else fixed, fwd_end=fwd_end,
        act_names=[f"a{i}" for i in range(len(acts))], act_bytes=[a["bytes"] for a in acts],
        created=[a["c"] for a in acts], last_fwd_use=[a["lf"] for a in acts],
        first_bwd_use=[a["fb"] for a in acts], last_bwd_use=[a["lb"] for a in acts],
        recomputable=np.ones(len(acts), bool), swappable=np.ones(len(acts), bool),
        recompute_ops=[a.get("ops", [a["c"]]) for a in acts],
        recompute_sources=[a.get("srcs", []) for a in acts],
        recompute_temp_bytes=[a.get("temp", 0) for a in acts], host_bandwidth_bytes_per_s=bandwidth)


def sched(problem: Problem, decisions, prefetch=None) -> Schedule:
    pf = np.full(problem.n_act, -1) if prefetch is None else np.asarray(prefetch)
    return Schedule(np.asarray(decisions, np.int8), pf)


def test_keep_all_peak_counts_fixed_transient_and_live_activations():
    p = make(5, 2, [dict(bytes=10, c=0, lf=1, fb=3, lb=4), dict(bytes=20, c=1, lf=2, fb=3, lb=3)],
             fixed=1, transient=[0, 0, 5, 0, 0])
    sim = simulate(p, Schedule.keep_all(p))
    assert sim.timeline_bytes.tolist() == [11, 31, 36, 31, 11]
    assert (sim.peak_bytes, sim.peak_op) == (36, 2)
    assert sim.time_s == sim.compute_s == 5.0
    assert sim.recompute_s == sim.stall_s == 0.0
    assert sim.op_start_s.tolist() == [0, 1, 2, 3, 4]
    assert np.isnan(sim.swap_out_end_s).all() and np.isnan(sim.prefetch_end_s).all()
    assert sim.fits(36) and not sim.fits(35)


def _recompute_problem():
    # A (10 B) made at op 0, read in backward at op 6; B (100 B) made at op 1 from A, read at op 5.
    return make(7, 3, [dict(bytes=10, c=0, lf=1, fb=6, lb=6),
                       dict(bytes=100, c=1, lf=2, fb=5, lb=5, srcs=[0], temp=7)],
                op_time=[1, 2, 1, 1, 1, 1, 1])


def test_recompute_residency_time_and_temp_bytes():
    p = _recompute_problem()
    sim = simulate(p, sched(p, [K, R]))
    # B resident [1, 2] and [5, 5]; op 5 also holds B's recompute_temp_bytes (7)
    assert sim.timeline_bytes.tolist() == [10, 110, 110, 10, 10, 117, 10]
    assert sim.compute_s == 8 and sim.recompute_s == 2  # B's chain re-runs op 1 (2 s)
    assert sim.time_s == 10
    assert sim.op_start_s.tolist() == [0, 1, 3, 4, 5, 8, 9]  # op 5 waits for its recompute


def test_recompute_chain_regenerates_non_resident_recompute_source_as_temporary():
    p = _recompute_problem()
    sim = simulate(p, sched(p, [R, R]))
    # At op 5, A (anchor 6) is not resident: B's chain re-runs ops 0 and 1 (3 s) and holds A (10 B)
    # plus B's temp (7 B) on top of B itself. A's own chain at op 6 re-runs op 0 (1 s).
    assert sim.timeline_bytes.tolist() == [10, 110, 100, 0, 0, 117, 10]
    assert sim.recompute_s == 4
    assert sim.time_s == 12
    assert sim.op_start_s.tolist() == [0, 1, 3, 4, 5, 9, 11]


def test_recompute_chain_runs_each_op_once():
    # C (anchor 4) reads A and B; B's recompute ops [0, 1] overlap A's [0]: op 0 runs once in C's chain.
    p = make(7, 3, [dict(bytes=10, c=0, lf=2, fb=6, lb=6),
                    dict(bytes=100, c=1, lf=2, fb=5, lb=5, ops=[0, 1], srcs=[0]),
                    dict(bytes=1000, c=2, lf=3, fb=4, lb=4, srcs=[0, 1])],
             op_time=[1, 2, 4, 1, 1, 1, 1])
    sim = simulate(p, sched(p, [R, R, R]))
    # chains: C at 4 runs {0, 1, 2} = 7 s; B at 5 runs {0, 1} = 3 s; A at 6 runs {0} = 1 s
    assert sim.recompute_s == 11
    assert sim.time_s == 11 + 11
    # C's chain at op 4 holds its temporaries A and B (110 B) on top of C
    assert sim.timeline_bytes[4] == 1000 + 110


def test_recompute_anchor_chains_are_separate_and_in_time_before_the_op():
    # Two activations anchored at the same op each pay for their own chain.
    p = make(6, 2, [dict(bytes=5, c=0, lf=1, fb=3, lb=3), dict(bytes=7, c=1, lf=2, fb=3, lb=4, temp=2)],
             op_time=[1, 3, 1, 1, 1, 1])
    sim = simulate(p, sched(p, [R, R]))
    assert sim.recompute_s == 4  # op 0 (1 s) for a0, then op 1 (3 s) for a1
    assert sim.op_start_s[3] == 5 + 4
    assert sim.timeline_bytes[3] == 5 + 7 + 2


def test_swap_out_frees_memory_when_the_transfer_ends():
    p = make(10, 4, [dict(bytes=25, c=0, lf=0, fb=9, lb=9)])
    sim = simulate(p, sched(p, [S], [6]))
    # swap-out issued at end of op 0 (t=1), takes 2.5 s -> ends at 3.5: ops 0..3 start before it
    assert sim.swap_out_end_s[0] == 3.5
    # prefetch issued at op 6 (t=6), ends 8.5; memory reserved from op 6
    assert sim.prefetch_end_s[0] == 8.5
    assert sim.timeline_bytes.tolist() == [25, 25, 25, 25, 0, 0, 25, 25, 25, 25]
    assert sim.stall_s == 0 and sim.time_s == 10


def test_swap_out_ending_exactly_at_an_op_start_frees_before_that_op():
    p = make(10, 4, [dict(bytes=30, c=0, lf=0, fb=9, lb=9)])
    sim = simulate(p, sched(p, [S], [6]))
    assert sim.swap_out_end_s[0] == 4.0  # op 4 starts at exactly 4.0: it no longer holds the bytes
    assert sim.timeline_bytes.tolist() == [30, 30, 30, 30, 0, 0, 30, 30, 30, 30]


def test_swap_out_residency_follows_op_start_times_not_positions():
    # ops 1-3 take no time, so ops 1-4 all start at t=1; the swap-out (issued at t=1, 1 s) ends at 2
    p = make(8, 4, [dict(bytes=10, c=0, lf=1, fb=7, lb=7)], op_time=[1, 0, 0, 0, 1, 1, 1, 1])
    sim = simulate(p, sched(p, [S], [6]))
    assert sim.swap_out_end_s[0] == 2.0
    assert sim.timeline_bytes.tolist() == [10, 10, 10, 10, 10, 0, 10, 10]


def test_link_fifo_contention_in_both_directions():
    # three 20-byte activations (2 s each way); a0, a1 issued together at t=1, a2 at t=2
    p = make(14, 6, [dict(bytes=20, c=0, lf=0, fb=10, lb=10), dict(bytes=20, c=0, lf=0, fb=11, lb=11),
                     dict(bytes=20, c=1, lf=1, fb=13, lb=13)])
    sim = simulate(p, sched(p, [S, S, S], [8, 8, 8]))
    assert sim.swap_out_end_s.tolist() == [3, 5, 7]  # ties by index, then one at a time
    assert sim.prefetch_end_s.tolist() == [10, 12, 14]  # all issued at t=8, served in turn
    # op 11 waits 1 s for a1; op 13 is reached at t=14, exactly when a2 arrives
    assert sim.stall_s == 1
    assert sim.time_s == 15
    assert sim.op_start_s[11] == 12 and sim.op_start_s[13] == 14
    assert sim.timeline_bytes.tolist() == [40, 60, 60, 40, 40, 20, 20, 0, 60, 60, 60, 40, 20, 20]


def test_prefetch_stall_when_issued_too_late():
    p = make(10, 4, [dict(bytes=30, c=0, lf=0, fb=8, lb=9)])
    sim = simulate(p, sched(p, [S], [8]))
    assert sim.prefetch_end_s[0] == 11  # issued at t=8, 3 s
    assert sim.stall_s == 3
    assert sim.op_start_s[8] == 11 and sim.op_start_s[9] == 12
    assert sim.time_s == 13


def test_prefetch_waits_for_the_swap_out_to_end():
    # swap-out issued at end of op 3 (t=4), 5 s -> ends 9; prefetch issued at op 5 (t=5) starts at 9
    p = make(12, 4, [dict(bytes=50, c=0, lf=3, fb=9, lb=10)])
    sim = simulate(p, sched(p, [S], [5]))
    assert sim.swap_out_end_s[0] == 9 and sim.prefetch_end_s[0] == 14
    assert sim.stall_s == 5 and sim.op_start_s[9] == 14
    # the bytes never leave: swap-out ends after the prefetch reservation began
    assert sim.timeline_bytes.tolist() == [50] * 11 + [0]


def test_prefetch_reserves_memory_at_issue_not_arrival():
    p = make(10, 2, [dict(bytes=40, c=0, lf=0, fb=9, lb=9)])
    sim = simulate(p, sched(p, [S], [4]))
    # out: t=1..5 (last op starting before 5 is op 4) -- prefetch issued at op 4 starts at 5, ends 9
    assert sim.swap_out_end_s[0] == 5 and sim.prefetch_end_s[0] == 9
    assert sim.timeline_bytes.tolist() == [40] * 10
    p2 = make(12, 2, [dict(bytes=20, c=0, lf=0, fb=11, lb=11)])
    sim2 = simulate(p2, sched(p2, [S], [7]))
    assert sim2.prefetch_end_s[0] == 9  # arrives at t=9, counted from op 7 on
    assert sim2.timeline_bytes.tolist() == [20, 20, 20, 0, 0, 0, 0, 20, 20, 20, 20, 20]


def test_stall_comes_before_recompute_at_the_same_op():
    p = make(8, 3, [dict(bytes=30, c=0, lf=0, fb=6, lb=6), dict(bytes=10, c=1, lf=1, fb=6, lb=7)],
             op_time=[1, 2, 1, 1, 1, 1, 1, 1])
    sim = simulate(p, sched(p, [S, R], [6, -1]))
    # op 6 reached at t=7: prefetch issued then (3 s) -> stall 3, then recompute op 1 (2 s)
    assert sim.stall_s == 3 and sim.recompute_s == 2
    assert sim.op_start_s[6] == 7 + 3 + 2
    assert sim.time_s == 9 + 3 + 2


def test_swap_and_default_prefetch_hide_the_transfer():
    p = make(12, 4, [dict(bytes=20, c=0, lf=0, fb=10, lb=11)])
    s = Schedule.from_decisions(p, [S])
    assert s.prefetch_at[0] == 8  # latest op whose start leaves 2 s before op 10
    sim = simulate(p, s)
    assert sim.stall_s == 0 and sim.prefetch_end_s[0] == 10


def test_rejects_malformed_schedules():
    p = make(5, 2, [dict(bytes=10, c=0, lf=1, fb=3, lb=4)])
    with pytest.raises(ScheduleError, match="activations"):
        simulate(p, Schedule(np.zeros(2, np.int8), np.full(2, -1)))
    with pytest.raises(ScheduleError, match="undecided"):
        simulate(p, sched(p, [7]))
    with pytest.raises(ScheduleError, match="'a0'"):
        simulate(p, sched(p, [S], [1]))


def test_to_row_and_timeline_frame():
    p = make(5, 2, [dict(bytes=10, c=0, lf=1, fb=3, lb=4)], fixed=3)
    sim = simulate(p, Schedule.keep_all(p))
    row = sim.to_row()
    assert row["peak_bytes"] == 13 and all(np.isscalar(v) for v in row.values())
    df = memory_timeline_frame(p, sim)
    assert list(df.columns[:4]) == ["op", "op_name", "phase", "start_s"]
    assert df["phase"].tolist() == ["fwd", "fwd", "fwd", "bwd", "bwd"]
    assert df["bytes"].tolist() == sim.timeline_bytes.tolist()


_DAG = random_dag(120, seed=7)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_random_decisions_simulate_consistently(seed):
    p = _DAG
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 3, p.n_act).astype(np.int8)
    d[(d == R) & ~p.recomputable] = K
    d[(d == S) & ~p.swappable] = K
    for a in np.flatnonzero(d == R):  # swapped recompute sources are invalid: keep them
        srcs = p.recompute_sources[a]
        d[srcs[d[srcs] == S]] = K
    s = Schedule.from_decisions(p, d)
    sim = simulate(p, s)
    assert sim.timeline_bytes.dtype == np.int64 and len(sim.timeline_bytes) == p.n_ops
    assert np.all(sim.timeline_bytes >= p.fixed_bytes + p.op_transient_bytes)
    assert sim.peak_bytes == sim.timeline_bytes.max()
    assert np.all(np.diff(sim.op_start_s) >= 0)
    assert sim.time_s == pytest.approx(sim.op_start_s[-1] + p.op_time_s[-1])
    assert sim.time_s == pytest.approx(sim.compute_s + sim.recompute_s + sim.stall_s)
    swapped = d == S
    assert np.all(np.isnan(sim.prefetch_end_s[~swapped]))
    # a prefetch never ends before the op that needs it starts
    fbu = p.first_bwd_use[swapped]
    assert np.all(sim.prefetch_end_s[swapped] <= sim.op_start_s[fbu] + 1e-12)
    assert np.all(sim.prefetch_end_s[swapped] >= sim.swap_out_end_s[swapped])
    # in forward nothing is added (no chains run), only released: keep-all bounds it op by op
    keep = simulate(p, Schedule.keep_all(p)).timeline_bytes
    assert np.all(sim.timeline_bytes[: p.fwd_end + 1] <= keep[: p.fwd_end + 1])


def _reference(p: Problem, s: Schedule):
    """A slow, literal reading of docs/cost_model.md (one step per op) to check the vectorised one."""
    from mutwo.schedule import resolve_recompute

    d = s.decisions
    chains = resolve_recompute(p, d, s.recompute_at)
    anchor = {a: c.anchor for a, c in chains.items()}
    swap_t = p.swap_time_s
    swaps = [a for a in range(p.n_act) if d[a] == S]
    clock = stall = rec = d2h = h2d = 0.0
    out_end, pf_end, start = {}, {}, np.zeros(p.n_ops)
    for t in range(p.n_ops):
        for a in sorted(a for a in swaps if s.prefetch_at[a] == t):
            h2d = pf_end[a] = max(clock, h2d, out_end[a]) + swap_t[a]
        for a in (a for a in swaps if p.first_bwd_use[a] == t):
            stall += max(0.0, pf_end[a] - clock)
            clock = max(clock, pf_end[a])
        for a in sorted(c.target for c in chains.values() if c.anchor == t):
            clock += chains[a].time_s
            rec += chains[a].time_s
        start[t] = clock
        clock += p.op_time_s[t]
        for a in sorted(a for a in swaps if p.last_fwd_use[a] == t):
            d2h = out_end[a] = max(clock, d2h) + swap_t[a]
    resident = np.zeros(p.n_ops, np.int64)
    for a in range(p.n_act):
        for t in range(p.created[a], p.last_bwd_use[a] + 1):
            if d[a] == K:
                here = True
            elif d[a] == R:
                here = t <= p.last_fwd_use[a] or t >= anchor[a]
            else:
                here = t <= p.last_fwd_use[a] or start[t] < out_end[a] or t >= s.prefetch_at[a]
            resident[t] += p.act_bytes[a] if here else 0
    mem = p.fixed_bytes + p.op_transient_bytes + resident
    for t in range(p.n_ops):
        # chains at t run one by one before op t allocates its outputs, each on top of earlier targets
        here = sorted((c for c in chains.values() if c.anchor == t), key=lambda c: (p.created[c.target], c.target))
        if not here:
            continue
        held = p.fixed_bytes[t] - p.op_output_bytes[t] + resident[t] - sum(p.act_bytes[c.target] for c in here)
        for c in here:
            mem[t] = max(mem[t], held + c.peak_bytes)
            held += p.act_bytes[c.target]
    return mem, start, stall, rec, out_end, pf_end


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.floats(0.05, 3.0))
def test_matches_literal_reference(seed, n_act, swap_ratio):
    p = random_dag(n_act, seed=seed % 1000, swap_ratio=swap_ratio)
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 3, p.n_act).astype(np.int8)
    d[((d == R) & ~p.recomputable) | ((d == S) & ~p.swappable)] = K
    for a in np.flatnonzero(d == R):
        srcs = p.recompute_sources[a]
        d[srcs[d[srcs] == S]] = K
    pf = np.where(d == S, rng.integers(p.fwd_end + 1, p.first_bwd_use + 1), -1)
    # some recomputed activations are regenerated early (shared), at a random backward op before their use
    early = (d == R) & (rng.random(p.n_act) < 0.5)
    ra = np.where(early, rng.integers(p.fwd_end + 1, p.first_bwd_use + 1), -1)
    s = Schedule(d, pf, recompute_at=ra)
    try:
        validate(p, s)
    except ScheduleError:  # an early chain reads a swapped source before it is back: not a plan
        s = Schedule(d, pf)
    sim = simulate(p, s)
    mem, start, stall, rec, out_end, pf_end = _reference(p, s)
    assert sim.timeline_bytes.tolist() == mem.tolist()
    np.testing.assert_allclose(sim.op_start_s, start, rtol=1e-9, atol=1e-12)
    assert sim.stall_s == pytest.approx(stall, rel=1e-9, abs=1e-12)
    assert sim.recompute_s == pytest.approx(rec, rel=1e-9, abs=1e-12)
    for a, end in out_end.items():
        assert sim.swap_out_end_s[a] == pytest.approx(end) and sim.prefetch_end_s[a] == pytest.approx(pf_end[a])


def test_chain_runs_before_the_op_allocates_its_outputs():
    # op 3 (backward) allocates a 50-byte output (part of fixed[3]); the chain of a0 (20 B + 30 B of
    # intermediates) runs before that output exists, so the two are not stacked.
    fixed = np.array([0, 0, 0, 50, 0])
    p = make(5, 1, [dict(bytes=20, c=0, lf=1, fb=3, lb=3, temp=30)], fixed=fixed)
    p.op_output_bytes = np.array([0, 0, 0, 50, 0])
    sim = simulate(p, sched(p, [R]))
    # while op 3 runs: 50 + 20 = 70; while the chain runs: 0 + 20 + 30 = 50
    assert sim.timeline_bytes.tolist() == [20, 20, 0, 70, 0]
    p.op_output_bytes = np.zeros(5, np.int64)  # unknown outputs: the chain is stacked on them
    assert simulate(p, sched(p, [R])).timeline_bytes[3] == 50 + 20 + 30


def test_chain_temporaries_are_freed_after_their_last_reader():
    # chain a3 at op 6 regenerates a0 -> a1 -> a2 -> a3 (each reads the one before); with each freed
    # after its reader, at most two members are held at once: max(a2 + a3) = 40 + 80
    acts = [dict(bytes=10, c=0, lf=1, fb=9, lb=9), dict(bytes=20, c=1, lf=2, fb=8, lb=8, srcs=[0]),
            dict(bytes=40, c=2, lf=3, fb=7, lb=7, srcs=[1]), dict(bytes=80, c=3, lf=3, fb=6, lb=6, srcs=[2])]
    p = make(10, 3, acts)
    sim = simulate(p, sched(p, [R, R, R, R]))
    assert sim.timeline_bytes[6] == 40 + 80
    assert sim.recompute_s == 4 + 3 + 2 + 1


def test_shared_segment_is_regenerated_once_and_held_until_its_uses():
    # the four-member run of the test above, every member anchored at op 6 (the first backward use of
    # any of them): each chain is just its own op, reading the member made before it
    acts = [dict(bytes=10, c=0, lf=1, fb=9, lb=9), dict(bytes=20, c=1, lf=2, fb=8, lb=8, srcs=[0]),
            dict(bytes=40, c=2, lf=3, fb=7, lb=7, srcs=[1]), dict(bytes=80, c=3, lf=3, fb=6, lb=6, srcs=[2])]
    p = make(10, 3, acts)
    s = Schedule(np.full(4, R, np.int8), np.full(4, -1), recompute_at=[6, 6, 6, -1])
    validate(p, s)
    sim = simulate(p, s)
    assert sim.recompute_s == 4  # each op once, instead of 4 + 3 + 2 + 1
    # all four are back at op 6 and leave after their own last backward use
    assert sim.timeline_bytes[4:].tolist() == [0, 0, 150, 70, 30, 10]
    assert sim.op_start_s[6] == 6 + 4
    from mutwo.schedule import resolve_recompute

    chains = resolve_recompute(p, s.decisions, s.recompute_at)
    assert [c.temporaries for c in chains.values()] == [[], [], [], []]
    assert [c.sources for c in chains.values()] == [[], [0], [1], [2]]


def test_early_recompute_point_must_lie_in_backward_before_the_first_use():
    p = _recompute_problem()
    for ra, msg in (([-1, 6], "no later than its first backward use"), ([-1, 2], "in the backward pass")):
        with pytest.raises(ScheduleError, match=msg):
            validate(p, Schedule(np.array([K, R], np.int8), np.full(2, -1), recompute_at=ra))
        with pytest.raises(ScheduleError, match="is recomputed at op"):
            simulate(p, Schedule(np.array([K, R], np.int8), np.full(2, -1), recompute_at=ra))
    with pytest.raises(ScheduleError, match="only RECOMPUTE activations take one"):
        validate(p, Schedule(np.array([K, R], np.int8), np.full(2, -1), recompute_at=[4, -1]))


def test_chain_memory_followed_op_by_op_with_the_forward_dataflow():
    # forward: op 0 makes A (10 B), op 1 makes a 50-byte temporary T from A, op 2 makes B (100 B) from T.
    # Both recomputed; B's chain at op 5 regenerates A as a temporary: ops 0, 1, 2.
    acts = [dict(bytes=10, c=0, lf=1, fb=6, lb=6), dict(bytes=100, c=2, lf=2, fb=5, lb=5, ops=[1, 2], srcs=[0],
                                                        temp=50)]
    p = make(7, 3, acts)
    member_level = simulate(p, sched(p, [R, R]))
    # member by member: A (10) is held while all of B's intermediates (50) and B (100) are made
    assert member_level.timeline_bytes[5] == 160
    flow = Problem(**{**{k: getattr(p, k) for k in p.__dataclass_fields__},
                      "value_bytes": [10, 50, 100], "value_op": [0, 1, 2], "reads_offsets": [0, 0, 1, 2, 2],
                      "reads": [0, 1], "act_value": [0, 2]})
    sim = simulate(flow, sched(flow, [R, R]))
    # op by op: A is freed once op 1 has read it, T once op 2 has: at most T + B = 150
    assert sim.timeline_bytes[5] == 150
    assert sim.timeline_bytes.tolist() == [10, 10, 100, 0, 0, 150, 10]
    assert sim.time_s == member_level.time_s


def test_recompute_chains_hold_each_re_run_op_s_scratch_while_it_runs():
    # the problem above with in-kernel scratch: op 1 needs 95 B while it runs, op 2 needs 4 B
    acts = [dict(bytes=10, c=0, lf=1, fb=6, lb=6), dict(bytes=100, c=2, lf=2, fb=5, lb=5, ops=[1, 2], srcs=[0],
                                                        temp=50)]
    transient = np.array([0, 95, 4, 0, 0, 0, 0])
    p = make(7, 3, acts, transient=transient)
    flow = Problem(**{**{k: getattr(p, k) for k in p.__dataclass_fields__},
                      "value_bytes": [10, 50, 100], "value_op": [0, 1, 2], "reads_offsets": [0, 0, 1, 2, 2],
                      "reads": [0, 1], "act_value": [0, 2]})
    sim = simulate(flow, sched(flow, [R, R]))
    # op by op at op 5: op 0 holds A (10); op 1 holds A + T (60) + its scratch 95 = 155; op 2 holds
    # T + B (150) + 4 = 154
    assert sim.timeline_bytes[5] == 155
    # forward counts the same scratch at the ops themselves
    assert sim.timeline_bytes[:3].tolist() == [10, 10 + 95, 100 + 4]
    # member rule (no dataflow): making B holds A (10) + B (100) + its intermediates (50) + the largest
    # scratch of B's ops (95); making A holds A + the scratch of op 0 (0)
    assert simulate(p, sched(p, [R, R])).timeline_bytes[5] == 10 + 100 + 50 + 95
    from mutwo.schedule import member_peaks, member_transients

    assert member_transients(p) == [0, 95]
    assert member_peaks(p).tolist() == [10, 100 + 50 + 95]
    assert member_peaks(flow).tolist() == [10, 150 + 4]  # B alone, op by op: max(T + 95, T + B + 4)
    # the caches follow a transient array that was replaced
    p.op_transient_bytes = np.zeros(7, np.int64)
    flow.op_transient_bytes = np.zeros(7, np.int64)
    assert member_peaks(p).tolist() == [10, 150] and member_peaks(flow).tolist() == [10, 150]
    assert simulate(flow, sched(flow, [R, R])).timeline_bytes[5] == 150
