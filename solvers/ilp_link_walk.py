"""Host-link times of one concrete plan, in model time units: the swap-out queue and the copy-back walk.

The ILP needs them twice outside its rows: to place a start plan's swap-out ends among the candidates,
and to complete a plan into the model's least assignment (queue tails, delays, stalls). This is the
seam where `mutwo/linkmodel.py` (the one implementation shared by simulate and the greedy) is meant
to take over; the arithmetic here is the ILP's own copy until then (docs/ilp.md, Objective).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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
    """Device-to-host queue tail after each of ``acts``' turns (one FIFO link, issue order
    (last forward use, index)); only the ``swapped`` ones occupy the link. Forward has no stalls, so
    each swap-out is issued at the static start of the op after its last forward use."""
    on = set(swapped)
    tail = 0.0
    out: dict[int, float] = {}
    for a in sorted(acts, key=lambda a: (int(problem.last_fwd_use[a]), a)):
        if a in on:
            tail = max(tail, cum[problem.last_fwd_use[a] + 1]) + swap[a]
        out[a] = tail
    return out


@dataclass
class CopyBackWalk:
    """The copy-back link and the delays of one plan, each at its least value."""

    tails: list[float]  # host-to-device queue tail after each entry of the copy sequence
    delay: dict[int, float]  # position -> stall + recompute accumulated before that op
    stall: dict[int, float]  # position -> stall at that op


def copy_back_walk(cum: np.ndarray, swap: np.ndarray, copies: Sequence[tuple[int, int]],
                   chosen: Mapping[int, int], swap_out_end: Mapping[int, float],
                   needed_at: Mapping[int, list[int]], delay_positions: Iterable[int],
                   stall_positions: Iterable[int], recompute_at: Mapping[int, float]) -> CopyBackWalk:
    """Walk positions in order, issuing copies back, waiting for them, and running recompute chains.

    ``copies``: every (prefetch candidate, activation) pair in queue order (point, index); a pair
    occupies the link only when ``chosen[activation]`` is that point, and its copy starts once the op
    is reached, the link is free and its own swap-out has ended (``swap_out_end``). ``needed_at``:
    position -> swapped activations first used there. ``recompute_at``: position -> chain time
    anchored there, which delays every later position.
    """
    delay_positions, stall_positions = set(delay_positions), set(stall_positions)
    arrive: dict[int, float] = {}
    tails: list[float] = []
    link = delay = 0.0
    out_delay: dict[int, float] = {}
    out_stall: dict[int, float] = {}
    events = sorted(delay_positions | set(recompute_at) | {q for q, _ in copies})
    k = 0
    for t in events:
        while k < len(copies) and copies[k][0] == t:  # issue the copies back at t, in queue order
            q, a = copies[k]
            if chosen.get(a) == q:
                link = max(cum[q] + delay, link, swap_out_end[a]) + swap[a]
                arrive[a] = link
            tails.append(link)
            k += 1
        if t in delay_positions:
            out_delay[t] = delay
        if t in stall_positions:
            wait = max([arrive[a] for a in needed_at.get(t, [])], default=-np.inf)
            s = max(0.0, wait - (cum[t] + delay))
            out_stall[t] = s
            delay += s
        if t in recompute_at:
            delay += recompute_at[t]
    tails += [link] * (len(copies) - k)  # every copy position is an event: nothing is left here
    return CopyBackWalk(tails, out_delay, out_stall)
