"""Schedule: JSON round trip, validation errors that name the activation, recompute chain expansion."""

from __future__ import annotations

import numpy as np
import pytest

from mutwo.problem import Problem
from mutwo.schedule import (
    Decision,
    Schedule,
    ScheduleError,
    Status,
    anchor_cost,
    default_prefetch,
    latest_hiding_points,
    recompute_chain,
    resolve_recompute,
    validate,
)

K, R, S = Decision.KEEP, Decision.RECOMPUTE, Decision.SWAP


def _problem(recomputable=(True, True, True, False)) -> Problem:
    """A chain a0 -> a1 -> a2, plus a3 (dropout-like: neither recomputable nor swappable).

    ops 0..4 forward (4 = loss), 5..10 backward; op i makes a_i. Backward: a3 read at 5, a2 at 6,
    a1 at 7-8, a0 at 9. Recompute sources: a2 reads a1, a1 reads a0.
    """
    return Problem(
        name="toy", op_names=[f"op{t}" for t in range(11)], op_time_s=[1, 2, 3, 1, 1, 1, 1, 1, 1, 1, 1],
        op_transient_bytes=np.zeros(11, np.int64), fixed_bytes=np.zeros(11, np.int64), fwd_end=4,
        act_names=["a0", "a1", "a2", "a3"], act_bytes=[10, 20, 30, 5], created=[0, 1, 2, 3],
        last_fwd_use=[1, 2, 3, 4], first_bwd_use=[9, 7, 6, 5], last_bwd_use=[9, 8, 6, 5],
        recomputable=list(recomputable), swappable=[True, True, True, False],
        recompute_ops=[[0], [1], [2], [3]], recompute_sources=[[], [0], [1], []],
        recompute_temp_bytes=[1, 2, 4, 0], host_bandwidth_bytes_per_s=10.0)


def test_json_round_trip(tmp_path):
    p = _problem()
    s = Schedule.from_decisions(p, [K, R, S, K], solver="x", status=Status.OPTIMAL, budget_bytes=99,
                                solve_time_s=0.5, options={"a": 1}, objective=3.0, bound=2.5, message="hi")
    s.explain(p)
    back = Schedule.from_json(s.to_json())
    assert back.decisions.tolist() == s.decisions.tolist()
    assert back.prefetch_at.tolist() == s.prefetch_at.tolist()
    assert back.status is Status.OPTIMAL and back.recompute_sources == {1: [0]}
    for key in ("solver", "budget_bytes", "solve_time_s", "options", "objective", "bound", "message"):
        assert getattr(back, key) == getattr(s, key)
    assert '"RECOMPUTE"' in s.to_json()  # decisions are readable names
    loaded = Schedule.load(s.save(tmp_path / "s.json"))
    assert loaded.to_dict() == s.to_dict()


def test_recompute_points_round_trip_and_old_files_load():
    p = _problem()
    s = Schedule.from_decisions(p, [K, R, R, K], recompute_at=[5, 6, 6, 5])
    assert s.recompute_at.tolist() == [-1, 6, 6, -1]  # only recomputed activations keep one
    validate(p, s)
    back = Schedule.from_json(s.to_json())
    assert back.recompute_at.tolist() == [-1, 6, 6, -1] and back.plan_key() == s.plan_key()
    assert back.plan_key() != Schedule.from_decisions(p, [K, R, R, K]).plan_key()
    old = s.to_dict()
    del old["recompute_at"]  # written before recompute points existed: regenerated at first use
    assert Schedule.from_dict(old).recompute_at.tolist() == [-1, -1, -1, -1]


def test_from_decisions_fills_only_swap_prefetch_points():
    p = _problem()
    s = Schedule.from_decisions(p, [S, K, S, K], prefetch_at=[7, 8, -1, -1])
    assert s.prefetch_at.tolist() == [7, -1, int(default_prefetch(p)[2]), -1]
    assert s.counts() == {"n_keep": 2, "n_recompute": 0, "n_swap": 2}
    validate(p, s)


def test_default_prefetch_hides_transfer_when_possible():
    p = _problem()
    pf = default_prefetch(p)
    # a0 (1 s) before op 9: op 8 starts 1 s earlier; a2 (3 s) before op 6: clipped to first bwd op 5
    assert pf[0] == 8 and pf[2] == 5
    assert np.all((pf > p.fwd_end) & (pf <= p.first_bwd_use))


def test_hiding_points_move_later_when_backward_recomputes():
    p = _problem()
    reached = np.array([0.0, 1, 3, 6, 7, 8, 9, 10, 11, 12, 13])  # profiled ops, nothing else
    assert default_prefetch(p).tolist() == latest_hiding_points(reached, p.first_bwd_use, p.swap_time_s,
                                                                p.fwd_end).tolist()
    first_use, transfer = np.array([9, 9]), np.array([1.0, 6.0])
    # 1 s is hidden behind op 8; 6 s needs op 3, which is in forward: the first backward op, 5
    assert latest_hiding_points(reached, first_use, transfer, p.fwd_end).tolist() == [8, 5]
    # 5 s of recompute before op 7: op 6 starts early enough now
    with_recompute = reached + np.where(np.arange(11) >= 7, 5.0, 0.0)
    assert latest_hiding_points(with_recompute, first_use, transfer, p.fwd_end).tolist() == [8, 6]


@pytest.mark.parametrize("decisions, prefetch, pattern", [
    ([K, K, 5, K], None, r"'a2' \(index 2\) is undecided"),
    ([K, K, K, R], None, r"'a3' \(index 3\) may not be recomputed"),
    ([K, K, K, S], [-1, -1, -1, 5], r"'a3' \(index 3\) may not be swapped"),
    ([S, R, K, K], [9, -1, -1, -1], r"'a1' \(index 1\).*from 'a0' \(index 0\), which is swapped out"),
    ([K, S, K, K], [-1, 3, -1, -1], r"'a1' \(index 1\) is prefetched at op 3"),
    ([K, S, K, K], [-1, 8, -1, -1], r"'a1' \(index 1\) is prefetched at op 8"),
])
def test_validate_names_the_activation(decisions, prefetch, pattern):
    p = _problem()
    pf = np.full(4, -1) if prefetch is None else np.array(prefetch)
    with pytest.raises(ScheduleError, match=pattern):
        validate(p, Schedule(np.array(decisions, np.int8), pf))


def test_validate_rejects_wrong_lengths():
    p = _problem()
    with pytest.raises(ScheduleError, match="3 decisions for 4"):
        validate(p, Schedule(np.zeros(3, np.int8), np.full(3, -1)))
    with pytest.raises(ScheduleError, match="prefetch points"):
        validate(p, Schedule(np.zeros(4, np.int8), np.full(2, -1)))


def test_resolve_recompute_expands_non_resident_recompute_sources():
    p = _problem()
    chains = resolve_recompute(p, [R, R, R, K])
    c2 = chains[2]  # a2 at op 6: a1 (first read at 7) and a0 (at 9) are not back yet
    assert c2.anchor == 6 and c2.ops.tolist() == [0, 1, 2]
    assert c2.temporaries == [0, 1] and c2.sources == []
    # members made in creation order; a0 is freed once a1 is made, a1 once a2 is made:
    # making a2 holds a1 (20) + a2 (30) + a2's intermediates (4)
    assert c2.time_s == 6.0 and c2.peak_bytes == 20 + 30 + 4
    c1 = chains[1]  # a1 at op 7: a0 is still not back
    assert c1.ops.tolist() == [0, 1] and c1.temporaries == [0] and c1.time_s == 3.0
    assert c1.peak_bytes == 10 + 20 + 2
    assert chains[0].ops.tolist() == [0] and chains[0].temporaries == []
    assert chains[0].peak_bytes == 10 + 1


def test_resolve_recompute_stops_at_resident_sources():
    p = _problem()
    chains = resolve_recompute(p, [K, R, R, K])
    # a1 is RECOMPUTE but only back from op 7: it is a temporary of a2's chain at op 6; a0 is kept
    assert chains[2].temporaries == [1] and chains[2].sources == [0]
    chains = resolve_recompute(p, [K, K, R, K])
    assert chains[2].ops.tolist() == [2] and chains[2].sources == [1] and chains[2].peak_bytes == 30 + 4


def test_resolve_recompute_swap_source_resident_in_its_backward_range_is_fine():
    # s is swapped but back for its backward uses 4..6; a chain anchored inside that range may read it.
    p = Problem(
        name="t", op_names=[f"op{t}" for t in range(8)], op_time_s=np.ones(8),
        op_transient_bytes=np.zeros(8, np.int64), fixed_bytes=np.zeros(8, np.int64), fwd_end=3,
        act_names=["s", "r"], act_bytes=[4, 4], created=[0, 1], last_fwd_use=[1, 2], first_bwd_use=[4, 5],
        last_bwd_use=[6, 5], recomputable=[True, True], swappable=[True, True], recompute_ops=[[0], [1]],
        recompute_sources=[[], [0]], recompute_temp_bytes=[0, 0])
    chains = resolve_recompute(p, [S, R])
    assert chains[1].sources == [0]
    validate(p, Schedule.from_decisions(p, [S, R]))


def test_recompute_chain_of_one_target_is_the_chain_a_schedule_would_give_it():
    p = _problem()
    back = p.first_bwd_use.tolist()
    # a2 still KEEP: its chain as if recomputed now, with a1 recomputed (a temporary at op 6)
    alone = recompute_chain(p, 2, [K, R, K, K], back)
    whole = resolve_recompute(p, [K, R, R, K])[2]
    for name in ("target", "anchor", "temporaries", "sources", "time_s", "peak_bytes"):
        assert getattr(alone, name) == getattr(whole, name), name
    assert alone.ops.tolist() == whole.ops.tolist() == [1, 2]
    with pytest.raises(ScheduleError, match=r"'a2' \(index 2\) is recomputed at op 6 from 'a0' \(index 0\)"):
        recompute_chain(p, 2, [S, R, K, K], back)  # a1's regeneration reads a0 while it is swapped out


def test_chains_see_a_problem_whose_arrays_were_replaced():
    p = _problem()
    assert resolve_recompute(p, [K, R, R, K])[2].temporaries == [1]  # a1 not back at op 6
    p.last_bwd_use = np.array([9, 8, 6, 5])
    p.recompute_sources = [np.array([]), np.array([0]), np.array([0]), np.array([])]  # a2 reads a0 now
    assert resolve_recompute(p, [K, R, R, K])[2].temporaries == [] and resolve_recompute(p, [K, R, R, K])[2].sources == [0]


def test_anchor_cost_sums_times_and_stacks_chains_in_creation_order():
    # a1 regenerated early at op 6 (a2's first use) from kept a0: 2 s, holding 20 B + 2 B of
    # intermediates; then a2 from resident a1: 3 s, 30 B + 4 B on top of a1's 20 B
    p = _problem()
    chains = resolve_recompute(p, [K, R, R, K], recompute_at=[-1, 6, -1, -1])
    assert [c.anchor for c in chains.values()] == [6, 6]
    # most held: 20 + 30 + 4 = 54 B; the op itself counts both targets (50 B): 4 B more
    assert anchor_cost(p, 6, chains.values()) == (5.0, 4)
    assert anchor_cost(p, 6, reversed(list(chains.values()))) == (5.0, 4)  # order given does not matter
    fields = {k: getattr(p, k) for k in p.__dataclass_fields__}
    outputs = Problem(**{**fields, "fixed_bytes": np.full(11, 50), "op_output_bytes": np.eye(1, 11, 6, int)[0] * 10,
                         "op_transient_bytes": np.eye(1, 11, 6, int)[0] * 3})
    # the chains run before op 6 allocates its 10 B of outputs and 3 B of workspace: 9 B fewer than the op
    assert anchor_cost(outputs, 6, chains.values()) == (5.0, -9)


def test_feasible_and_infeasible_constructors():
    p = _problem()
    s = Schedule.infeasible(p, "x", 10, "too small")
    assert not s.feasible and s.status is Status.INFEASIBLE and s.decisions.tolist() == [0, 0, 0, 0]
    assert Schedule.keep_all(p).feasible
