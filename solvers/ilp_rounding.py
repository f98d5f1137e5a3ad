"""A plan from the lower bound's relaxation (`solvers.ilp_bound`): round, place the copies back, repair.

The bound's LP is nearly integral on the device-costed Problems (its recompute and swap values are
0 or 1 for all but a few activations) and tight, but it says nothing about *when* a swapped
activation comes back. Here: RECOMPUTE where ``r_a`` exceeds a threshold, SWAP where ``s_a`` does;
a recompute whose chain would read a swapped source that is not back yet is kept instead; each copy
back is issued as late as the host-to-device link allows with no stall (latest first, static op
times), so it holds memory for the shortest time; then `solvers.ilp.repair`'s greedy moves until the
plan fits. The fastest fitting plan over a few thresholds is returned (simulated; a start for the
ILPs, never a proof).
"""

from __future__ import annotations

import time

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError, recompute_chain
from solvers.ilp_bound import IterationBound
from solvers.modes import may_recompute, may_swap

__all__ = ["latest_prefetch", "round_bound", "THRESHOLDS"]

THRESHOLDS = (0.5, 0.3, 0.7)
_REPAIR_STEPS = 60  # greedy repair moves at most
_REPAIR_TRIES = 96  # the largest activations at the peak with a move left, tried per move (each try simulates)


def latest_prefetch(problem: Problem, decisions: np.ndarray) -> np.ndarray:
    """Per SWAP activation, the latest op at which to issue its copy back so that the copies, served in
    order on one link, all arrive by their first backward uses (static op times); -1 for the others."""
    p = problem
    cum = np.concatenate([[0.0], np.cumsum(p.op_time_s)])
    sw = np.flatnonzero(decisions == Decision.SWAP)
    pf = np.full(p.n_act, -1, np.int64)
    due_next = np.inf
    for a in sw[np.argsort(-p.first_bwd_use[sw], kind="stable")].tolist():
        start = min(cum[p.first_bwd_use[a]], due_next) - float(p.swap_time_s[a])
        due_next = start
        op = int(np.searchsorted(cum[:-1], start, side="right")) - 1
        pf[a] = min(max(op, p.fwd_end + 1), int(p.first_bwd_use[a]))
    return pf


def _valid_decisions(problem: Problem, d: np.ndarray) -> np.ndarray:
    """Keep the recomputed activations whose chains would read a swapped source that is not back
    (`mutwo.schedule.recompute_chain` refuses them), until none does."""
    d = d.copy()
    back = problem.first_bwd_use.tolist()
    changed = True
    while changed:
        changed = False
        dec = d.tolist()
        for a in np.flatnonzero(d == Decision.RECOMPUTE).tolist():
            try:
                recompute_chain(problem, a, dec, back)
            except ScheduleError:
                d[a] = dec[a] = int(Decision.KEEP)
                changed = True
    return d


def round_bound(problem: Problem, budget: int, bound: IterationBound, mode: str = "both",
                deadline: float | None = None) -> Schedule | None:
    """The fastest fitting plan rounded from ``bound``'s relaxation (module doc), or None; no threshold
    is started, and no repair goes on, after ``deadline`` (a `time.perf_counter` value)."""
    from solvers.ilp import repair  # the ILP's repair moves (solvers.ilp imports this module's caller)

    if bound.recompute is None or bound.swap is None:
        return None
    best = None
    for th in THRESHOLDS:
        if deadline is not None and time.perf_counter() > deadline:
            break
        d = np.zeros(problem.n_act, np.int8)
        if may_recompute(mode):
            d[(bound.recompute > th) & problem.recomputable] = Decision.RECOMPUTE
        if may_swap(mode):
            d[(bound.swap > th) & problem.swappable & (d == Decision.KEEP)] = Decision.SWAP
        d = _valid_decisions(problem, d)
        d, pf, sim = repair(problem, budget, d, latest_prefetch(problem, d), mode, max_steps=_REPAIR_STEPS,
                           deadline=deadline, max_tries=_REPAIR_TRIES)
        if sim is not None and (best is None or sim.time_s < best[0]):
            best = (sim.time_s, d, pf)
    if best is None:
        return None
    return Schedule(best[1], best[2])
