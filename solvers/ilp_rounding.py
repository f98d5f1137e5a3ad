"""A plan from the lower bound's relaxation (`solvers.ilp_bound`): round, place the copies back, repair.

The bound's LP is nearly integral on the device-costed Problems (its recompute and swap values are
0 or 1 for all but a few activations) and tight, but it says nothing about *when* a swapped
activation comes back. Here: RECOMPUTE where ``r_a`` exceeds a threshold, SWAP where ``s_a`` does;
a recompute whose chain would read a swapped source that is not back yet is kept instead; each copy
back is issued as late as the host-to-device link allows with no stall (latest first, static op
times), so it holds memory for the shortest time; then `solvers.ilp_repair`'s greedy moves until the
plan fits, once as it is and once with its chains sharing their work (`share_anchors`: a recomputed
source of a chain is anchored with that chain and made once). The fastest fitting plan over a few thresholds is returned (simulated; a start for the
ILPs, never a proof).
"""

from __future__ import annotations

import time

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError, recompute_chain, resolve_recompute
from mutwo.simulate import simulate
from solvers.ilp_bound import IterationBound
from solvers.ilp_repair import repair_schedule
from solvers.modes import may_recompute, may_swap

__all__ = ["latest_prefetch", "round_bound", "share_anchors", "unchecked_overflow", "THRESHOLDS"]

THRESHOLDS = (0.5, 0.3, 0.7)
_REPAIR_STEPS = 60  # greedy repair moves at most
_REPAIR_TRIES = 96
_MORE_CHECKS = 40  # ops added to the relaxation's checks per round (`unchecked_overflow`)
_SHARE_ROUNDS = 8  # passes of `share_anchors` at most (each shares what the last one exposed)  # the largest activations at the peak with a move left, tried per move (each try simulates)


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


def share_anchors(problem: Problem, decisions: np.ndarray) -> np.ndarray:
    """Recompute points at which chains share their work: a RECOMPUTE temporary of a chain is anchored
    at that chain's anchor (when its own chain stays valid there), so it is made once and read, instead
    of being made by the chain and again at its own first backward use (Chen et al.'s segments,
    `mutwo.schedule`'s rule). Repeated until no chain has a temporary that could be shared."""
    ra = np.full(problem.n_act, -1, np.int64)
    dec = np.asarray(decisions).tolist()
    back = problem.first_bwd_use.tolist()
    for _ in range(_SHARE_ROUNDS):
        changed = False
        chains = resolve_recompute(problem, decisions, ra)
        for target in sorted(chains, key=lambda x: back[x]):
            for m in chains[target].temporaries:
                if back[m] <= back[target]:
                    continue
                was = back[m]
                back[m] = back[target]
                try:
                    recompute_chain(problem, m, dec, back)
                except ScheduleError:
                    back[m] = was
                    continue
                ra[m] = back[target]
                changed = True
        if not changed:
            break
    return ra


def _round(problem: Problem, bound: IterationBound, th: float | None, mode: str) -> np.ndarray:
    """Decisions from the relaxation's values above ``th`` (None: its integral point, as it is)."""
    rec, swap = (bound.point_recompute, bound.point_swap) if th is None else (bound.recompute, bound.swap)
    th = 0.5 if th is None else th
    d = np.zeros(problem.n_act, np.int8)
    if may_recompute(mode):
        d[(rec > th) & problem.recomputable] = Decision.RECOMPUTE
    if may_swap(mode):
        d[(swap > th) & problem.swappable & (d == Decision.KEEP)] = Decision.SWAP
    return _valid_decisions(problem, d)


def unchecked_overflow(problem: Problem, budget: int, bound: IterationBound, mode: str = "both",
                       most: int = _MORE_CHECKS) -> np.ndarray:
    """Ops the relaxation did not check where its integral point, as a plan (copies back latest, chains
    shared), holds more than ``budget``: the fullest op of each segment of constant gap membership, at
    most ``most`` (the fullest first). Checking them too can only raise the bound, and moves the next
    point toward a plan that fits."""
    if bound.point_recompute is None:
        return np.zeros(0, np.int64)
    d = _round(problem, bound, None, mode)
    try:
        sim = simulate(problem, Schedule(d, latest_prefetch(problem, d),
                                         recompute_at=share_anchors(problem, d) if may_recompute(mode) else None))
    except ScheduleError:
        return np.zeros(0, np.int64)
    checked = set() if bound.checks is None else set(bound.checks.tolist())
    over = sim.timeline_bytes - budget
    cuts = np.unique(np.concatenate([[0, problem.n_ops], problem.last_fwd_use + 1, problem.first_bwd_use]))
    picks = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        if hi > lo:
            t = lo + int(np.argmax(over[lo:hi]))
            if over[t] > 0 and t not in checked:
                picks.append(t)
    picks = np.asarray(picks, np.int64)
    return picks[np.argsort(-over[picks], kind="stable")[:most]]


def round_bound(problem: Problem, budget: int, bound: IterationBound, mode: str = "both",
                deadline: float | None = None) -> Schedule | None:
    """The fastest fitting plan rounded from ``bound``'s relaxation (module doc), or None; no threshold
    is started, and no repair goes on, after ``deadline`` (a `time.perf_counter` value)."""
    if bound.recompute is None or bound.swap is None:
        return None
    best = None
    tries = ([None] if bound.point_recompute is not None else []) + list(THRESHOLDS)
    for th in tries:
        if deadline is not None and time.perf_counter() > deadline:
            break
        d = _round(problem, bound, th, mode)
        plain, sim = repair_schedule(problem, budget, Schedule(d, latest_prefetch(problem, d)), mode,
                                     max_steps=_REPAIR_STEPS, deadline=deadline, max_tries=_REPAIR_TRIES)
        if sim is None:
            continue
        found = [(sim.time_s, plain)]
        if may_recompute(mode):  # the same decisions with shared chains: faster, may hold more in backward
            shared = Schedule(plain.decisions, plain.prefetch_at, recompute_at=share_anchors(problem, plain.decisions))
            shared, s2 = repair_schedule(problem, budget, shared, mode, max_steps=_REPAIR_STEPS, deadline=deadline,
                                         max_tries=_REPAIR_TRIES)
            if s2 is not None:
                found.append((s2.time_s, shared))
        t, plan = min(found, key=lambda x: x[0])
        if best is None or t < best[0]:
            best = (t, plan)
    return None if best is None else best[1]
