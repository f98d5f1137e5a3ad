"""The host links of the cost model: when each swap-out and each copy back (prefetch) ends, and what
the waits for copies back cost in stalls.

One implementation, shared by ``simulate`` (a walk from scratch per call) and the μ-TWO greedy (an
incremental walk after each decision), so both give the same floats bit for bit: whether a swap-out
ends before an op starts is a float comparison, and a different rounding moves memory. The rules are
in ``docs/cost_model.md`` (Time); the order of events they leave implicit is fixed here:

  * each link serves one transfer at a time, in issue order; transfers issued at the same op are
    served by activation index;
  * at one op, prefetches issued there are issued before the op waits for arrivals.

Torch-free: plain floats and numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ISSUE", "WAIT", "serve_in_order", "SwapOutQueue", "PrefetchEvents", "PrefetchWalk",
           "walk_prefetches"]

ISSUE, WAIT = 0, 1  # prefetch event kinds, in their order at one op


def serve_in_order(issue_s: Iterable[float], transfer_s: Iterable[float], *, free_s: float = 0.0,
                   previous_ends: Sequence[float] | None = None) -> list[float]:
    """End times of transfers on one link, served one at a time in the given order: each starts when
    it is issued and the link is free (from ``free_s`` on).

    With ``previous_ends`` (the ends these transfers had before one was put at the front), it stops at
    the first transfer after the front one that ends as before: from there on everything repeats, so
    only the ends that changed are returned.
    """
    ends: list[float] = []
    free = free_s
    for k, (issue, duration) in enumerate(zip(issue_s, transfer_s, strict=True)):
        free = max(issue, free) + duration
        if previous_ends is not None and k > 0 and free == previous_ends[k]:
            break
        ends.append(free)
    return ends


class SwapOutQueue:
    """The device-to-host link: swap-outs in service order (last forward use, then activation index),
    with their end times, kept up to date as swaps are added one at a time."""

    def __init__(self, n_act: int, last_fwd_use: np.ndarray, issue_s: Sequence[float],
                 transfer_s: Sequence[float]):
        self.n_act = n_act
        self.last_fwd_use = last_fwd_use
        self.issue_s, self.transfer_s = issue_s, transfer_s  # per activation
        self.keys = np.zeros(0, np.int64)  # (last forward use, index), in service order
        self.acts = np.zeros(0, np.int64)
        self.ends = np.zeros(0)

    def key(self, acts: np.ndarray | int) -> np.ndarray | int:
        """Service-order key of a swap-out (unique per activation)."""
        return self.last_fwd_use[acts] * self.n_act + acts

    def add(self, act: int) -> dict[int, float]:
        """Queue ``act``'s swap-out; return the new end time of every swap-out whose end changed."""
        j = int(np.searchsorted(self.keys, self.key(act)))

        def put(arr: np.ndarray, x) -> np.ndarray:  # np.insert, without its overhead
            return np.concatenate((arr[:j], np.array([x], arr.dtype), arr[j:]))

        self.keys = put(self.keys, self.key(act))
        self.acts = put(self.acts, act)
        later = self.acts[j:].tolist()
        ends = serve_in_order((self.issue_s[a] for a in later), (self.transfer_s[a] for a in later),
                              free_s=float(self.ends[j - 1]) if j else 0.0,
                              previous_ends=np.concatenate(([np.nan], self.ends[j:])))
        self.ends = put(self.ends, 0.0)
        self.ends[j:j + len(ends)] = ends
        return dict(zip(later, ends, strict=False))

    def end_before(self, acts: np.ndarray) -> np.ndarray:
        """For activations not queued: when the swap-outs that would be served before each end (0 if none)."""
        pos = np.searchsorted(self.keys, self.key(acts))
        if not len(self.ends):
            return np.zeros(len(acts))
        return np.where(pos > 0, self.ends[np.maximum(pos - 1, 0)], 0.0)


@dataclass(frozen=True)
class PrefetchEvents:
    """The prefetch issues and waits of the swapped activations, in walk order: by op, issues before
    waits, then activation index (``key`` encodes that order and is unique)."""

    key: np.ndarray  # int64 [E]: (op * 2 + kind) * n_act + act, ascending
    op: np.ndarray  # int64 [E]: the op the event happens before
    kind: np.ndarray  # int64 [E]: ISSUE or WAIT
    act: np.ndarray  # int64 [E]: the swapped activation
    n_act: int

    @classmethod
    def of(cls, acts: np.ndarray, prefetch_at: np.ndarray, first_bwd_use: np.ndarray, n_act: int) -> PrefetchEvents:
        """Events of swapped activations ``acts`` (copies back issued at ``prefetch_at``, waited for at
        ``first_bwd_use``; both per entry of ``acts``)."""
        k = len(acts)
        op = np.concatenate([prefetch_at, first_bwd_use]).astype(np.int64)
        kind = np.repeat(np.array([ISSUE, WAIT], np.int64), k)
        act = np.concatenate([acts, acts]).astype(np.int64)
        key = (op * 2 + kind) * n_act + act
        order = np.argsort(key)
        return cls(key[order], op[order], kind[order], act[order], n_act)

    def issue_key(self, op: int, act: int) -> int:
        return (op * 2 + ISSUE) * self.n_act + act


@dataclass(frozen=True)
class PrefetchWalk:
    """One walk over prefetch events: its inputs per event (so a later walk can find where they
    changed) and the link state before each event (so it can resume there)."""

    events: PrefetchEvents
    reached_s: np.ndarray  # float [E]: when the event's op is reached, recompute counted, stalls not
    ready_s: np.ndarray  # float [E]: an issue's swap-out end; 0 for a wait
    link_free_s: np.ndarray  # float [E+1]: when the host-to-device link is free before event e; [E]: after all
    delay_s: np.ndarray  # float [E+1]: stall accumulated before event e; [E]: in all
    stall_arrival_s: np.ndarray  # float [E]: for a wait that stalled, the arrival it waited for; else 0
    stall_from_s: np.ndarray  # float [E]: for a wait that stalled, when it began waiting; else 0
    arrival_s: list[float]  # per activation in `events`: when its copy back arrives (others: nan or stale)
    walked: range = range(0)  # the events this walk went through (the others it took from the last walk)

    @property
    def stall_s(self) -> float:
        return float(self.delay_s[-1])

    def stall_at_ops(self, n_ops: int) -> np.ndarray:
        """Stall before each op (the waits at one op summed in event order)."""
        stall_at: dict[int, float] = {}
        stalled = np.flatnonzero(self.stall_arrival_s > 0.0)
        for op, arrival, since in zip(self.events.op[stalled].tolist(), self.stall_arrival_s[stalled].tolist(),
                                      self.stall_from_s[stalled].tolist(), strict=True):
            stall_at[op] = stall_at.get(op, 0.0) + arrival - since
        stall = np.zeros(n_ops)
        stall[list(stall_at)] = list(stall_at.values())
        return stall

    def link_free_before(self, op: int, act: int) -> float:
        """When the copies back issued before a (not yet walked) copy back of ``act`` at ``op`` have
        all arrived."""
        return float(self.link_free_s[int(np.searchsorted(self.events.key, self.events.issue_key(op, act)))])

    @classmethod
    def empty(cls, n_act: int) -> PrefetchWalk:
        """The walk before any swap: the link free, no delay."""
        none = np.zeros(0, np.int64)
        return cls(PrefetchEvents(none, none, none, none, n_act), np.zeros(0), np.zeros(0), np.zeros(1), np.zeros(1),
                   np.zeros(0), np.zeros(0), [float("nan")] * n_act)


def walk_prefetches(events: PrefetchEvents, reached_s: np.ndarray, swap_out_end_s: np.ndarray,
                    transfer_s: Sequence[float], previous: PrefetchWalk | None = None) -> PrefetchWalk:
    """Walk prefetch issues and waits in order, carrying the host-to-device link and the stall so far.

    An issue at op ``t`` starts when op ``t`` is reached (``reached_s[t]`` plus the stall so far), the
    link is free and the activation's swap-out has ended; a wait at ``t`` stalls until the arrival.
    With ``previous`` (the last walk, from which these events differ by a few changes), the walk
    resumes at the first event whose inputs changed and stops where the rest would repeat it; the
    answer is the same as a walk from scratch.
    """
    reached = reached_s[events.op]
    ready = np.where(events.kind == ISSUE, swap_out_end_s[events.act], 0.0)
    if previous is None:  # from scratch: nothing to compare with
        previous = PrefetchWalk.empty(events.n_act)
        start, repeat_from, shift = 0, len(events.key) + 1, len(events.key)
    else:
        start, repeat_from, shift = _resume_point(events, reached, ready, previous)
    walked = _walk(events, reached, ready, transfer_s, previous, start, repeat_from, shift)
    return _splice(events, reached, ready, previous, start, shift, *walked)


def _resume_point(events: PrefetchEvents, reached: np.ndarray, ready: np.ndarray,
                  previous: PrefetchWalk) -> tuple[int, int, int]:
    """Where a walk must start (the first event whose inputs differ from ``previous``'s), from which
    event on the rest may repeat ``previous`` (the events and inputs are the same up to the end,
    shifted by ``shift`` events added), and that shift."""
    old = previous
    n_new, n_old = len(events.key), len(old.events.key)
    common = min(n_new, n_old)
    differs = ((events.key[:common] != old.events.key[:common]) | (reached[:common] != old.reached_s[:common])
               | (ready[:common] != old.ready_s[:common]))
    start = int(np.argmax(differs)) if differs.any() else common
    shift = n_new - n_old
    if shift < 0 or not n_old:
        return start, n_new + 1, shift
    same = ((events.key[shift:] == old.events.key) & (reached[shift:] == old.reached_s)
            & (ready[shift:] == old.ready_s))
    same_to_end = np.logical_and.accumulate(same[::-1])[::-1]  # [i]: new[shift+i:] == old[i:]
    first = int(np.argmax(same_to_end)) if same_to_end.any() else n_old
    return start, max(shift + first, start + 1), shift


def _walk(events: PrefetchEvents, reached: np.ndarray, ready: np.ndarray, transfer_s: Sequence[float],
          previous: PrefetchWalk, start: int, repeat_from: int, shift: int) -> tuple:
    """The event loop from ``start``: stops at the first event from ``repeat_from`` on where the link,
    the delay and every copy still in flight are as in ``previous``. Returns the arrivals, the event
    it stopped at, the link-free time and delay after each walked event, and the waits that stalled
    (event, arrival, wait start)."""
    old_link_free, old_delay = previous.link_free_s, previous.delay_s
    link_free, delay = float(old_link_free[start]), float(old_delay[start])
    arrival = list(previous.arrival_s)
    link_out, delay_out, stalls = [], [], []
    pending = set()  # copies whose arrival changed in this walk and not yet waited for
    stop = len(events.key)
    for e, reached_t, ready_t, kind, a in zip(range(start, stop), reached[start:].tolist(), ready[start:].tolist(),
                                              events.kind[start:].tolist(), events.act[start:].tolist(), strict=True):
        if (e >= repeat_from and not pending and link_free == old_link_free[e - shift]
                and delay == old_delay[e - shift]):
            stop = e
            break
        now = reached_t + delay
        if kind == ISSUE:
            link_free = max(now, link_free, ready_t) + transfer_s[a]
            if link_free != arrival[a]:
                pending.add(a)
            arrival[a] = link_free
        else:
            pending.discard(a)
            if arrival[a] > now:
                stalls.append((e, arrival[a], now))
                delay += arrival[a] - now
        link_out.append(link_free)
        delay_out.append(delay)
    return arrival, stop, link_out, delay_out, stalls


def _splice(events: PrefetchEvents, reached: np.ndarray, ready: np.ndarray, previous: PrefetchWalk, start: int,
            shift: int, arrival: list[float], stop: int, link_out: list[float], delay_out: list[float],
            stalls: list[tuple[int, float, float]]) -> PrefetchWalk:
    """The new walk: ``previous`` before ``start``, the walked events, ``previous`` again after ``stop``."""
    old = previous
    resume = stop - shift  # the old index of the first event not walked
    stall_arrival, stall_from = np.zeros(stop - start), np.zeros(stop - start)
    if stalls:
        at, arrivals, since = zip(*stalls, strict=True)
        stall_arrival[np.array(at) - start], stall_from[np.array(at) - start] = arrivals, since
    walked_link_free = np.fromiter(link_out, np.float64, len(link_out))  # faster than from a list
    walked_delay = np.fromiter(delay_out, np.float64, len(delay_out))
    return PrefetchWalk(
        events, reached, ready,
        link_free_s=np.concatenate([old.link_free_s[:start + 1], walked_link_free, old.link_free_s[resume + 1:]]),
        delay_s=np.concatenate([old.delay_s[:start + 1], walked_delay, old.delay_s[resume + 1:]]),
        stall_arrival_s=np.concatenate([old.stall_arrival_s[:start], stall_arrival, old.stall_arrival_s[resume:]]),
        stall_from_s=np.concatenate([old.stall_from_s[:start], stall_from, old.stall_from_s[resume:]]),
        arrival_s=arrival, walked=range(start, stop))
