"""A rematerialization model's solution as one of our recompute-only plans.

Checkmate's grid and the interval model may regenerate an activation earlier than its first backward
use and hold it, or regenerate a prefix once for several targets. Our recompute rule expresses that
with early anchors (``Schedule.recompute_at``, docs/cost_model.md): an activation regenerated at op t
stays resident from t, and a later chain reads it instead of regenerating it. Projecting with only
first-use anchors throws that sharing away (each target then regenerates its whole prefix), which on
ResNet-50 made the projected plans slower than the greedy's. So both projections are tried — the
model's own regeneration points as anchors, and first-use anchors — each repaired if our rule needs
more memory than the model counted, and the faster fitting one is kept.
"""

from __future__ import annotations

import time

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError
from mutwo.simulate import SimResult, simulate

__all__ = ["project", "finished"]


def project(problem: Problem, budget: int, recompute: np.ndarray, anchors: np.ndarray | None
            ) -> tuple[Schedule | None, SimResult | None, str]:
    """The fastest fitting plan among RECOMPUTE-where-``recompute`` with the model's regeneration ops
    ``anchors`` (per activation, -1: none; moved into the backward pass, no later than the first
    backward use) and with first-use anchors. (None, None, why) when neither fits after repair."""
    d = np.where(np.asarray(recompute, bool), Decision.RECOMPUTE, Decision.KEEP).astype(np.int8)
    none = np.full(problem.n_act, -1, np.int64)
    candidates = [("first-use anchors", none)]
    if anchors is not None:
        at = np.asarray(anchors, np.int64)
        at = np.where(at >= 0, np.clip(at, problem.fwd_end + 1, problem.first_bwd_use), -1)
        at = np.where((d == Decision.RECOMPUTE) & (at < problem.first_bwd_use), at, -1)
        if (at >= 0).any():
            candidates.insert(0, ("the model's regeneration points as anchors", at))
    best: tuple[Schedule, SimResult, str] | None = None
    notes = []
    for how, ra in candidates:
        plan, sim, note = _fitting(problem, budget, Schedule(d, none.copy(), recompute_at=ra))
        notes.append(f"{how}: {note}")
        if sim is not None and (best is None or sim.time_s < best[1].time_s):
            best = (plan, sim, how)
    if best is None:
        return None, None, "; ".join(notes)
    return best[0], best[1], f"projected with {best[2]} ({'; '.join(notes)})"


def _fitting(problem: Problem, budget: int, plan: Schedule) -> tuple[Schedule, SimResult | None, str]:
    try:
        sim = simulate(problem, plan)
    except ScheduleError as exc:  # recompute-only plans are valid; a bad anchor would say so here
        return plan, None, f"invalid ({exc})"
    if sim.peak_bytes <= budget:
        return plan, sim, f"fits, {sim.time_s:.6g} s"
    from solvers.ilp_repair import repair_schedule

    fixed, sim = repair_schedule(problem, budget, plan, mode="recompute")
    return fixed, sim, ("over budget under our recompute rule, repaired" if sim is not None else
                        "over budget under our recompute rule, repair failed")


def finished(problem: Problem, budget: int, solver: str, shown: dict, t0: float, plan: Schedule | None,
             **fields) -> Schedule:
    """The answer of an interval or rematerialization solver: ``plan`` (decisions and points) or, without one,
    keep-all carrying the status and message; ``solve_time_s`` counted from ``t0``."""
    if plan is None:
        s = Schedule.keep_all(problem, solver=solver, budget_bytes=budget, options=shown, **fields)
    else:
        s = Schedule(plan.decisions, plan.prefetch_at, recompute_at=plan.recompute_at, solver=solver,
                     budget_bytes=budget, options=shown, **fields)
    s.solve_time_s = time.perf_counter() - t0
    return s
