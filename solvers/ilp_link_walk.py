"""Host-link times of one concrete plan, in model time units: the swap-out queue and the copy-back walk.

The ILP needs them twice outside its rows: to place a start plan's swap-out ends among the candidates,
and to complete a plan into the model's least assignment (queue tails, delays, stalls). Both are
`mutwo/linkmodel.py`'s walks, the ones simulate and the greedy use, run on the model's own terms: an op
is reached at its static start plus the recompute before it (``cum[t] + D[t]`` in the rows, stalls
aside), in time units. So a stall is its waits added one after another, as simulate adds them, and
the values satisfy the rows to rounding (docs/ilp.md, Objective).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mutwo.linkmodel import ISSUE, PrefetchEvents, serve_in_order, walk_prefetches
from mutwo.problem import Problem

__all__ = ["TIME_MARGIN", "static_starts", "swap_out_tails", "CopyBackWalk", "copy_back_walk"]

TIME_MARGIN = 1e-4  # time units (1e-8 of the compute time) by which a swap-out must end before an op


def static_starts(problem: Problem) -> np.ndarray:
    """Start time of each op, and the end of the last, in seconds: compute only, no recompute or stall."""
    cum = np.zeros(problem.n_ops + 1)
    np.cumsum(problem.op_time_s, out=cum[1:])
    return cum


def swap_out_tails(problem: Problem, cum: np.ndarray, swap: np.ndarray, acts: Iterable[int],
                   swapped: Iterable[int]) -> dict[int, float]:
    """Device-to-host queue tail after each of ``acts``' turns (issue order (last forward use, index));
    only the ``swapped`` ones occupy the link. Forward has no stalls, so each swap-out is issued at
    the static start ``cum`` of the op after its last forward use."""
    lfu = problem.last_fwd_use
    order = sorted(acts, key=lambda a: (int(lfu[a]), a))
    on = set(swapped)
    served = [a for a in order if a in on]
    ends = dict(zip(served, serve_in_order(cum[lfu[served] + 1].tolist(), swap[served].tolist()), strict=True))
    tail = 0.0
    out: dict[int, float] = {}
    for a in order:
        out[a] = tail = ends.get(a, tail)
    return out


@dataclass
class CopyBackWalk:
    """The copy-back link and the delays of one plan, each at its least value."""

    tails: list[float]  # host-to-device queue tail after each entry of the copy sequence
    delay: np.ndarray  # float [n_ops]: stall + recompute accumulated before each op
    stall: np.ndarray  # float [n_ops]: stall at each op (its waits, one after another)


def copy_back_walk(problem: Problem, cum: np.ndarray, swap: np.ndarray, copies: Sequence[tuple[int, int]],
                   chosen: Mapping[int, int], swap_out_end: Mapping[int, float], recompute: np.ndarray
                   ) -> CopyBackWalk:
    """Issue the chosen copies back, wait for them and run the recompute chains, in op order.

    ``cum``: static op starts and ``swap``: transfer times, both in time units. ``copies``: every
    (prefetch candidate, activation) pair in queue order (point, index); a pair occupies the link only
    when ``chosen[activation]`` is that point. ``swap_out_end``: per swapped activation. ``recompute``:
    per op, the chain time anchored there, which delays every later op.
    """
    p = problem
    acts = np.array(sorted(chosen), np.int64)
    events = PrefetchEvents.of(acts, np.array([chosen[a] for a in acts.tolist()], np.int64),
                               p.first_bwd_use[acts], p.n_act)
    recomputed_before = np.concatenate(([0.0], np.cumsum(recompute)[:-1]))
    ready = np.full(p.n_act, np.nan)
    ready[acts] = [swap_out_end[a] for a in acts.tolist()]
    walk = walk_prefetches(events, cum[:-1] + recomputed_before, ready, swap.tolist())
    tails = [walk.arrival_s[a] if chosen.get(a) == q else walk.link_free_before(q, a) for q, a in copies]
    first_event = np.searchsorted(events.key, (np.arange(p.n_ops) * 2 + ISSUE) * p.n_act)  # at op t or later
    return CopyBackWalk(tails, walk.delay_s[first_event] + recomputed_before, walk.stall_at_ops(p.n_ops))
