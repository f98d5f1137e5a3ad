"""The cost model: peak memory, memory timeline and iteration time of a Schedule on a Problem.

This is the only implementation of ``docs/cost_model.md`` (with ``mutwo.linkmodel`` for the host links
and ``mutwo.schedule`` for the recompute chains); every reported prediction comes from here, and
solvers call it in their inner loops, so it is vectorised: memory by difference arrays, time by a
cumulative sum, and a Python loop only over swap events and recompute anchors.

"The last op that starts before the swap-out ends" uses ``op_start_s`` (after waits and recomputes)
and is strict: an op starting exactly when the transfer ends no longer holds the activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mutwo.linkmodel import PrefetchEvents, serve_in_order, walk_prefetches
from mutwo.problem import Problem
from mutwo.schedule import (
    Decision,
    RecomputeChain,
    Schedule,
    ScheduleError,
    anchor_cost,
    check_points,
    recompute_anchors,
    resolve_recompute,
)

__all__ = ["SimResult", "simulate", "stall_free_times", "last_op_holding", "memory_timeline_frame"]


@dataclass
class SimResult:
    """What a schedule costs. Per-op arrays have length n_ops; per-activation arrays n_act."""

    peak_bytes: int
    peak_op: int
    timeline_bytes: np.ndarray  # int64 [n_ops]: bytes counted while op t runs
    time_s: float  # compute + recompute + stall
    compute_s: float
    recompute_s: float
    stall_s: float
    op_start_s: np.ndarray  # float [n_ops]: when op t itself starts (after its waits and recomputes)
    swap_out_end_s: np.ndarray  # float [n_act]: nan unless SWAP
    prefetch_end_s: np.ndarray  # float [n_act]: nan unless SWAP

    def fits(self, budget_bytes: int) -> bool:
        return self.peak_bytes <= budget_bytes

    def to_row(self) -> dict:
        """Scalars only, for one row of a results table."""
        return {"peak_bytes": self.peak_bytes, "peak_op": self.peak_op, "time_s": self.time_s,
                "compute_s": self.compute_s, "recompute_s": self.recompute_s, "stall_s": self.stall_s}


def _check_shape(problem: Problem, schedule: Schedule) -> np.ndarray:
    # Only what would silently corrupt the arithmetic; `validate` does the full job.
    d = np.asarray(schedule.decisions)
    if len(d) != problem.n_act or len(schedule.prefetch_at) != problem.n_act or \
            len(schedule.recompute_at) != problem.n_act:
        raise ScheduleError(f"schedule has {len(d)} decisions / {len(schedule.prefetch_at)} prefetch / "
                            f"{len(schedule.recompute_at)} recompute points for {problem.n_act} activations")
    bad = np.flatnonzero((d < Decision.KEEP) | (d > Decision.SWAP))
    if len(bad):
        a = int(bad[0])
        raise ScheduleError(f"activation {problem.act_names[a]!r} (index {a}) is undecided "
                            f"(decision code {int(d[a])})")
    check_points(problem, schedule)
    return d


def stall_free_times(op_time_s: np.ndarray, recompute_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """When each op is reached (its prefetches issued, its waits begin) and when it starts (after the
    recompute chains anchored at it), before any stall: each op is reached when the one before ends."""
    cum = np.empty(len(op_time_s) + 1)
    cum[0] = 0.0
    np.cumsum(op_time_s + recompute_s, out=cum[1:])
    reached = cum[:-1]
    return reached, reached + recompute_s


def last_op_holding(op_start_s: np.ndarray, swap_out_end_s: np.ndarray, last_fwd_use: np.ndarray) -> np.ndarray:
    """Per swapped activation, the last op that starts before its swap-out ends (at least its last
    forward use): until then it is resident."""
    return np.maximum(np.searchsorted(op_start_s, swap_out_end_s, side="left") - 1, last_fwd_use)


def simulate(problem: Problem, schedule: Schedule) -> SimResult:
    """Apply docs/cost_model.md to ``schedule``. Raises ScheduleError for schedules it cannot cost."""
    d = _check_shape(problem, schedule)
    n, m = problem.n_ops, problem.n_act
    op_time = problem.op_time_s

    # --- recompute chains: time and memory at their anchors -------------------------------------
    # Python-int elements: resolve_recompute compares single decisions with Decision members, and an
    # int8 numpy scalar compared with an IntEnum costs ~6 us (vs ~0.1 us); same values, same answer.
    chains = (resolve_recompute(problem, d.astype(object), schedule.recompute_at)
              if np.any(d == Decision.RECOMPUTE) else {})
    rec_at = np.zeros(n)
    chain_excess: dict[int, int] = {}  # chain memory - op memory, at each anchor
    by_anchor: dict[int, list[RecomputeChain]] = {}
    for c in chains.values():
        by_anchor.setdefault(c.anchor, []).append(c)
    for t, group in by_anchor.items():
        rec_at[t], chain_excess[t] = anchor_cost(problem, t, group)

    # --- time: stall-free times, then the host links' stalls -----------------------------------
    pre_begin, op_start = stall_free_times(op_time, rec_at)
    swap_ids = np.flatnonzero(d == Decision.SWAP)
    out_end = np.full(m, np.nan)
    pf_end = np.full(m, np.nan)
    stall_s = 0.0
    if len(swap_ids):
        transfer = problem.swap_time_s.tolist()
        # swap-outs are issued in forward, where nothing stalls: issue times are known up front
        order = swap_ids[np.lexsort((swap_ids, problem.last_fwd_use[swap_ids]))]
        issue = op_start[problem.last_fwd_use[order]] + op_time[problem.last_fwd_use[order]]
        out_end[order] = serve_in_order(issue.tolist(), [transfer[a] for a in order.tolist()])
        events = PrefetchEvents.of(swap_ids, schedule.prefetch_at[swap_ids], problem.first_bwd_use[swap_ids], m)
        walk = walk_prefetches(events, pre_begin, out_end, transfer)
        pf_end[swap_ids] = [walk.arrival_s[a] for a in swap_ids.tolist()]
        stall_s = walk.stall_s
        if stall_s > 0.0:
            op_start = op_start + np.cumsum(walk.stall_at_ops(n))

    timeline = _timeline(problem, schedule, d, op_start, out_end)
    if chain_excess:
        at = np.fromiter(chain_excess, np.int64, len(chain_excess))
        timeline[at] = np.maximum(timeline[at], timeline[at] + np.fromiter(chain_excess.values(), np.int64))
    peak_op = int(np.argmax(timeline)) if n else 0
    compute_s = float(op_time.sum())
    recompute_s = float(rec_at.sum())
    return SimResult(
        peak_bytes=int(timeline[peak_op]) if n else 0, peak_op=peak_op, timeline_bytes=timeline,
        time_s=compute_s + recompute_s + stall_s, compute_s=compute_s, recompute_s=recompute_s,
        stall_s=float(stall_s), op_start_s=op_start, swap_out_end_s=out_end, prefetch_end_s=pf_end)


def _timeline(problem: Problem, schedule: Schedule, d: np.ndarray, op_start: np.ndarray,
              out_end: np.ndarray) -> np.ndarray:
    """Bytes counted while each op runs (chains at anchors aside): one +bytes / -bytes pair per
    resident range."""
    n = problem.n_ops
    keep, rec, swap = d == Decision.KEEP, d == Decision.RECOMPUTE, d == Decision.SWAP
    first_end = np.where(rec, problem.last_fwd_use, problem.last_bwd_use)
    second = rec.copy()
    second_start = np.where(rec, recompute_anchors(problem, d, schedule.recompute_at), problem.first_bwd_use)
    swap_ids = np.flatnonzero(swap)
    if len(swap_ids):
        # resident until the last op that starts before the swap-out ends, then again from the prefetch
        # issue; when those ranges touch or overlap it is one range
        r = last_op_holding(op_start, out_end[swap_ids], problem.last_fwd_use[swap_ids])
        pf = schedule.prefetch_at[swap_ids]
        split = r < pf - 1
        first_end[swap_ids] = np.where(split, r, problem.last_bwd_use[swap_ids])
        second[swap_ids] = split
        second_start[swap_ids] = pf
    live = keep | rec | swap
    starts = np.concatenate([problem.created[live], second_start[second]])
    ends = np.concatenate([first_end[live], problem.last_bwd_use[second]]) + 1
    w = np.concatenate([problem.act_bytes[live], problem.act_bytes[second]]).astype(np.float64)
    diff = np.bincount(starts, weights=w, minlength=n + 1) - np.bincount(ends, weights=w, minlength=n + 1)
    resident = np.rint(np.cumsum(diff[:n])).astype(np.int64)
    return problem.fixed_bytes + problem.op_transient_bytes + resident


def memory_timeline_frame(problem: Problem, sim: SimResult) -> pd.DataFrame:
    """One row per op (position, name, fwd/bwd phase, start time, fixed and total bytes) for plots."""
    pos = np.arange(problem.n_ops)
    return pd.DataFrame({
        "op": pos,
        "op_name": problem.op_names,
        "phase": np.where(pos <= problem.fwd_end, "fwd", "bwd"),
        "start_s": sim.op_start_s,
        "fixed_bytes": problem.fixed_bytes,
        "bytes": sim.timeline_bytes,
    })
