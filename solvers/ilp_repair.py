"""Greedy repair of a plan that does not fit: at the simulated peak, the move that lowers it and gives
the fastest plan, until the plan fits (docs/ilp.md, "Verification, repair"). Used for engine answers,
given starts and hints, and plans rounded from the bound's relaxation."""

from __future__ import annotations

import time

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError, default_prefetch
from mutwo.simulate import SimResult, simulate
from solvers.modes import may_recompute, may_swap

__all__ = ["repair", "repair_schedule"]


def _moves(problem: Problem, d: np.ndarray, pf: np.ndarray, ra: np.ndarray, a: int, P: int, mode: str,
           dflt: np.ndarray) -> list[tuple[int, int, int]]:
    """(decision, prefetch point, recompute point) per move that may lower op ``P`` for activation ``a``."""
    out = []
    if d[a] != Decision.RECOMPUTE and problem.recomputable[a] and may_recompute(mode):
        out.append((Decision.RECOMPUTE, -1, -1))
    if d[a] == Decision.KEEP and problem.swappable[a] and may_swap(mode):
        out.append((Decision.SWAP, int(dflt[a]), -1))
    if d[a] == Decision.SWAP and pf[a] != problem.first_bwd_use[a]:
        out.append((Decision.SWAP, int(problem.first_bwd_use[a]), -1))
    if d[a] == Decision.RECOMPUTE and 0 <= ra[a] <= P:  # anchored early, so resident at P: anchor it later
        out.append((Decision.RECOMPUTE, -1, -1))
    return out


def _movable(problem: Problem, d: np.ndarray, pf: np.ndarray, ra: np.ndarray, gap: np.ndarray, P: int,
             mode: str) -> np.ndarray:
    g = gap
    return (((d[g] != Decision.RECOMPUTE) & problem.recomputable[g] & may_recompute(mode))
            | ((d[g] == Decision.KEEP) & problem.swappable[g] & may_swap(mode))
            | ((d[g] == Decision.SWAP) & (pf[g] != problem.first_bwd_use[g]))
            | ((d[g] == Decision.RECOMPUTE) & (ra[g] >= 0) & (ra[g] <= P)))


def repair_schedule(problem: Problem, budget: int, plan: Schedule, mode: str = "both", max_steps: int | None = None,
                    deadline: float | None = None, max_tries: int | None = None) -> tuple[Schedule, SimResult | None]:
    """Greedy: at the simulated peak, take the move that lowers it and gives the fastest plan, until the
    plan fits.

    Moves: RECOMPUTE a KEEP/SWAP activation resident at the peak, SWAP a KEEP one (default prefetch),
    move a SWAP's copy back to its first backward use, or anchor a recompute that is regenerated early
    (``recompute_at``, resident at the peak) at its first backward use. Returns the plan and its
    simulation, or ``None`` for the simulation when no move helps (or ``deadline``, a
    `time.perf_counter` value, passes). ``max_tries``: only the largest that many activations at the
    peak with a move left are tried (each try simulates).
    """
    d, pf, ra = plan.decisions.copy(), plan.prefetch_at.copy(), plan.recompute_at.copy()
    dflt = default_prefetch(problem)
    steps = max_steps if max_steps is not None else 2 * problem.n_act
    sim = simulate(problem, Schedule(d, pf, recompute_at=ra))
    for _ in range(steps):
        if sim.fits(budget):
            return Schedule(d, pf, recompute_at=ra), sim
        if deadline is not None and time.perf_counter() > deadline:
            return Schedule(d, pf, recompute_at=ra), None
        P = sim.peak_op
        best = None
        gap = np.flatnonzero((problem.last_fwd_use < P) & (problem.first_bwd_use > P))
        if max_tries is not None and len(gap) > max_tries:  # the largest that have a move left
            gap = gap[_movable(problem, d, pf, ra, gap, P, mode)]
            gap = gap[np.argsort(-problem.act_bytes[gap], kind="stable")[:max_tries]]
        for a in gap.tolist():
            for code, q, r in _moves(problem, d, pf, ra, a, P, mode, dflt):
                d2, pf2, ra2 = d.copy(), pf.copy(), ra.copy()
                d2[a], pf2[a], ra2[a] = code, q, r
                try:
                    s2 = simulate(problem, Schedule(d2, pf2, recompute_at=ra2))
                except ScheduleError:
                    continue
                if s2.timeline_bytes[P] >= sim.timeline_bytes[P]:
                    continue
                key = (not s2.fits(budget), s2.time_s, s2.peak_bytes)
                if best is None or key < best[0]:
                    best = (key, d2, pf2, ra2, s2)
        if best is None:
            return Schedule(d, pf, recompute_at=ra), None
        _, d, pf, ra, sim = best
    return Schedule(d, pf, recompute_at=ra), (sim if sim.fits(budget) else None)


def repair(problem: Problem, budget: int, d: np.ndarray, pf: np.ndarray, mode: str = "both",
           max_steps: int | None = None, deadline: float | None = None, max_tries: int | None = None
           ) -> tuple[np.ndarray, np.ndarray, SimResult | None]:
    """`repair_schedule` for a plan given as decisions and prefetch points (recompute points at their
    defaults): returns the repaired decisions, prefetch points and simulation (None: no fitting plan)."""
    s, sim = repair_schedule(problem, budget, Schedule(d, pf), mode, max_steps, deadline, max_tries)
    return s.decisions, s.prefetch_at, sim
