"""mutwo.linkmodel: the host-link queues, and the resumable prefetch walk against a walk from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from mutwo.linkmodel import ISSUE, WAIT, PrefetchEvents, SwapOutQueue, serve_in_order, walk_prefetches


# ---------------------------------------------------------------------- one link, in order
def test_transfers_wait_for_the_link_and_for_their_issue():
    # 0-2 s; issued at 1 but the link is busy until 2: 2-4; issued at 5 on an idle link: 5-6
    assert serve_in_order([0.0, 1.0, 5.0], [2.0, 2.0, 1.0]) == [2.0, 4.0, 6.0]
    assert serve_in_order([0.0], [2.0], free_s=3.0) == [5.0]


def test_re_serving_stops_once_a_transfer_ends_as_before():
    # a transfer put at the front delays the next one, which delays the next; the last starts at
    # its issue time either way, so serving stops there
    before = serve_in_order([1.0, 2.0, 10.0, 11.0], [1.0, 1.0, 1.0, 1.0])
    assert before == [2.0, 3.0, 11.0, 12.0]
    again = serve_in_order([0.0, 1.0, 2.0, 10.0, 11.0], [1.5, 1.0, 1.0, 1.0, 1.0],
                           previous_ends=[np.nan, *before])
    assert again == [1.5, 2.5, 3.5]


def queue_reference(order: list[int], issue: list[float], transfer: list[float]) -> dict[int, float]:
    ends = serve_in_order([issue[a] for a in order], [transfer[a] for a in order])
    return dict(zip(order, ends, strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_swap_out_queue_equals_serving_from_scratch_after_every_add(seed):
    rng = np.random.default_rng(seed)
    m = 40
    last_fwd_use = rng.integers(0, 12, m)
    issue = (last_fwd_use * 1.0 + rng.random(m)).tolist()  # issued when the last forward use ends
    transfer = rng.choice([0.1, 0.5, 2.0, 3.3], m).tolist()
    queue = SwapOutQueue(m, last_fwd_use, issue, transfer)
    ends: dict[int, float] = {}
    for k, a in enumerate(rng.permutation(m)[:30].tolist()):
        waiting = np.array([x for x in range(m) if x not in ends and x != a])
        ahead = [x for x in ends if (last_fwd_use[x], x) < (last_fwd_use[waiting[0]], waiting[0])]
        expected_before = max((ends[x] for x in ahead), default=0.0)
        assert queue.end_before(waiting[:1])[0] == expected_before
        changed = queue.add(a)
        ends.update(changed)
        order = sorted(ends, key=lambda x: (last_fwd_use[x], x))
        assert ends == queue_reference(order, issue, transfer)  # bit for bit
        assert a in changed and queue.acts.tolist() == order
        if k > 5:
            assert queue.ends.tolist() == [ends[x] for x in order]


# ---------------------------------------------------------------------- the prefetch walk
def walk_reference(acts, prefetch_at, first_use, reached, swap_out_end, transfer):
    """The rule of docs/cost_model.md read literally: op by op, issues (by index) before waits."""
    link = delay = 0.0
    arrival, stall_at = {}, {}
    for t in range(len(reached)):
        for a in sorted(a for a, p in zip(acts, prefetch_at, strict=True) if p == t):
            link = arrival[a] = max(reached[t] + delay, link, swap_out_end[a]) + transfer[a]
        for a in sorted(a for a, f in zip(acts, first_use, strict=True) if f == t):
            now = reached[t] + delay
            if arrival[a] > now:
                stall_at[t] = stall_at.get(t, 0.0) + arrival[a] - now
                delay += arrival[a] - now
    return arrival, stall_at, delay


def test_a_copy_back_issued_too_late_stalls_its_first_use():
    # a: swap-out ends at 1.0, copy back issued at op 2 (reached at 2.0) takes 3 s: arrives 5.0; its
    # first use at op 3 is reached at 3.0, so it stalls 2 s. b is issued at op 3 behind a on the link.
    reached = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    acts = np.array([0, 1])
    events = PrefetchEvents.of(acts, np.array([2, 3]), np.array([3, 5]), 2)
    assert events.kind.tolist() == [ISSUE, ISSUE, WAIT, WAIT] and events.act.tolist() == [0, 1, 0, 1]
    walk = walk_prefetches(events, reached, np.array([1.0, 0.5]), [3.0, 1.0])
    assert walk.arrival_s == [5.0, 6.0]  # b starts when a has arrived
    assert walk.stall_s == 2.0
    # b's use at op 5 is reached at 5.0 + 2.0 stall: it has arrived
    assert walk.stall_at_ops(6).tolist() == [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
    assert walk.link_free_before(3, 0) == 5.0 and walk.link_free_before(2, 0) == 0.0


def random_walk_inputs(rng: np.random.Generator):
    n_ops, fwd_end, m = int(rng.integers(12, 40)), 6, int(rng.integers(4, 16))
    reached = np.concatenate([[0.0], np.cumsum(rng.choice([0.5, 1.0, 1.5], n_ops - 1))])
    first_use = rng.integers(fwd_end + 1, n_ops, m)
    prefetch = rng.integers(fwd_end + 1, first_use + 1)
    swap_out_end = rng.random(m) * fwd_end * 1.5
    transfer = rng.choice([0.2, 0.7, 1.0, 2.5, 4.0], m).tolist()
    return n_ops, fwd_end, m, reached, first_use, prefetch, swap_out_end, transfer


def mutate(rng, state, swapped: list[int]) -> None:
    """One change of the kind a solver makes: a new swap, a moved prefetch, recompute time added at
    an op (every later op is reached later), a swap-out that ends at another time."""
    n_ops, fwd_end, m, reached, first_use, prefetch, swap_out_end, _ = state
    kind = rng.integers(4)
    if kind == 0 and len(swapped) < m:
        swapped.append(int(rng.choice([a for a in range(m) if a not in swapped])))
    elif kind == 1:
        a = int(rng.choice(swapped))
        prefetch[a] = rng.integers(fwd_end + 1, first_use[a] + 1)
    elif kind == 2:
        reached[int(rng.integers(fwd_end + 1, n_ops)):] += rng.choice([0.25, 1.0, 3.0])
    else:
        swap_out_end[int(rng.choice(swapped))] += rng.choice([0.5, 2.0])


@pytest.mark.parametrize("seed", range(40))
def test_resumed_walk_equals_a_walk_from_scratch(seed):
    rng = np.random.default_rng(seed)
    state = random_walk_inputs(rng)
    n_ops, _, m, reached, first_use, prefetch, swap_out_end, transfer = state
    swapped = [int(rng.integers(m))]
    previous = None
    for _ in range(25):
        acts = np.array(swapped)
        events = PrefetchEvents.of(acts, prefetch[acts], first_use[acts], m)
        resumed = walk_prefetches(events, reached, swap_out_end, transfer, previous)
        fresh = walk_prefetches(events, reached, swap_out_end, transfer)
        for name in ("reached_s", "ready_s", "link_free_s", "delay_s", "stall_arrival_s", "stall_from_s"):
            assert np.array_equal(getattr(resumed, name), getattr(fresh, name)), name  # bit for bit
        assert [resumed.arrival_s[a] for a in swapped] == [fresh.arrival_s[a] for a in swapped]
        assert np.array_equal(resumed.stall_at_ops(n_ops), fresh.stall_at_ops(n_ops))
        assert fresh.walked == range(len(events.key))
        arrival, stall_at, delay = walk_reference(swapped, prefetch[acts], first_use[acts], reached, swap_out_end,
                                                  transfer)
        assert {a: fresh.arrival_s[a] for a in swapped} == arrival
        assert fresh.stall_s == delay
        assert {t: s for t, s in enumerate(fresh.stall_at_ops(n_ops).tolist()) if s} == stall_at
        previous = resumed
        mutate(rng, state, swapped)


def test_resumed_walks_skip_unchanged_events_at_both_ends():
    """The property above holds on walks that really resume late and stop early, not only on walks
    that redo everything."""
    resumed_late = stopped_early = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        state = random_walk_inputs(rng)
        _, _, m, reached, first_use, prefetch, swap_out_end, transfer = state
        swapped = [int(rng.integers(m))]
        previous = None
        for _ in range(25):
            acts = np.array(swapped)
            events = PrefetchEvents.of(acts, prefetch[acts], first_use[acts], m)
            previous = walk_prefetches(events, reached, swap_out_end, transfer, previous)
            resumed_late += previous.walked.start > 0
            stopped_early += previous.walked.stop < len(events.key)
            mutate(rng, state, swapped)
    assert resumed_late > 100 and stopped_early > 50, (resumed_late, stopped_early)

