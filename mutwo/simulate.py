"""The cost model: peak memory, memory timeline and iteration time of a Schedule on a Problem.

This is the only implementation of ``docs/cost_model.md``; every reported prediction comes from here,
and solvers call it in their inner loops, so it is vectorised: memory by difference arrays, time by a
cumulative sum, and a Python loop only over swap events (each swap-out, prefetch issue and wait).

Ordering conventions the spec leaves implicit:
  * transfers on one link are served in issue order; transfers issued at the same op are served by
    activation index. Issue times never decrease along the op order, so "issue order" is the op order.
  * at one op, prefetches issued there are issued before the op waits for arrivals.
  * "the last op that starts before the swap-out ends" uses ``op_start_s`` (after waits and recomputes)
    and is strict: an op starting exactly when the transfer ends no longer holds the activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mutwo.problem import Problem
from mutwo.schedule import (
    Decision,
    Schedule,
    ScheduleError,
    check_points,
    recompute_anchors,
    resolve_recompute,
)

__all__ = ["SimResult", "simulate", "memory_timeline_frame"]


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


def _fifo(issue: list[float], ready: list[float], dur: list[float]) -> list[float]:
    """End times of transfers on one link, served one at a time in the given order."""
    free = 0.0
    ends = []
    for i, r, d in zip(issue, ready, dur, strict=True):
        start = i if i > free else free
        if r > start:
            start = r
        free = start + d
        ends.append(free)
    return ends


def simulate(problem: Problem, schedule: Schedule) -> SimResult:
    """Apply docs/cost_model.md to ``schedule``. Raises ScheduleError for schedules it cannot cost."""
    d = _check_shape(problem, schedule)
    n, m = problem.n_ops, problem.n_act
    op_time = problem.op_time_s
    nbytes = problem.act_bytes

    # --- recompute chains: time and temporaries at their anchors --------------------------------
    # Python-int elements: resolve_recompute compares single decisions with Decision members, and an
    # int8 numpy scalar compared with an IntEnum costs ~6 us (vs ~0.1 us); same values, same answer.
    chains = (resolve_recompute(problem, d.astype(object), schedule.recompute_at)
              if np.any(d == Decision.RECOMPUTE) else {})
    rec_at = np.zeros(n)
    if chains:
        anchors = np.fromiter((c.anchor for c in chains.values()), np.int64, len(chains))
        rec_at = np.bincount(anchors, weights=[c.time_s for c in chains.values()], minlength=n)

    # --- time without stalls: each op's pre-phase begins when the previous op ends ----------------
    cum = np.empty(n + 1)
    cum[0] = 0.0
    np.cumsum(op_time + rec_at, out=cum[1:])
    pre_begin = cum[:-1]  # when op t is reached (prefetches issued, waits begin)
    op_start = pre_begin + rec_at

    swap_ids = np.flatnonzero(d == Decision.SWAP)
    out_end = np.full(m, np.nan)
    pf_end = np.full(m, np.nan)
    stall_s = 0.0
    if len(swap_ids):
        swap_t = nbytes[swap_ids] / float(problem.host_bandwidth_bytes_per_s)
        lfu = problem.last_fwd_use[swap_ids]
        fbu = problem.first_bwd_use[swap_ids]
        pf = schedule.prefetch_at[swap_ids]

        # Swap-outs are issued in forward, where nothing stalls: issue times are known up front.
        order = np.lexsort((swap_ids, lfu))
        issue = (op_start[lfu] + op_time[lfu])[order]
        out_end[swap_ids[order]] = _fifo(issue.tolist(), [0.0] * len(order), swap_t[order].tolist())

        # Backward: walk prefetch issues and waits in op order (issues before waits at one op),
        # carrying the stall accumulated so far.
        k = len(swap_ids)
        ev_op = np.concatenate([pf, fbu])
        ev_kind = np.repeat(np.array([0, 1]), k)
        ev_idx = np.concatenate([np.arange(k), np.arange(k)])
        order = np.lexsort((swap_ids[ev_idx], ev_kind, ev_op))
        pre = pre_begin.tolist()
        ready = out_end[swap_ids].tolist()
        dur = swap_t.tolist()
        link_free = 0.0
        delay = 0.0
        arrive = [0.0] * k
        stall_at: dict[int, float] = {}
        for op, kind, i in zip(ev_op[order].tolist(), ev_kind[order].tolist(), ev_idx[order].tolist(),
                                  strict=True):
            now = pre[op] + delay
            if kind == 0:
                start = max(now, link_free, ready[i])
                link_free = arrive[i] = start + dur[i]
            elif arrive[i] > now:
                stall_at[op] = stall_at.get(op, 0.0) + arrive[i] - now
                delay += arrive[i] - now
        pf_end[swap_ids] = arrive
        stall_s = delay
        if stall_at:
            stall = np.zeros(n)
            stall[list(stall_at)] = list(stall_at.values())
            op_start = op_start + np.cumsum(stall)

    # --- memory: one +bytes / -bytes pair per resident range ---------------------------------------
    keep, rec, swap = d == Decision.KEEP, d == Decision.RECOMPUTE, d == Decision.SWAP
    first_end = np.where(rec, problem.last_fwd_use, problem.last_bwd_use)
    second = rec.copy()
    second_start = np.where(rec, recompute_anchors(problem, d, schedule.recompute_at), problem.first_bwd_use)
    if len(swap_ids):
        # Resident until the last op that starts before the swap-out ends, then again from the prefetch
        # issue; when those ranges touch or overlap it is one range.
        r = np.searchsorted(op_start, out_end[swap_ids], side="left") - 1
        r = np.maximum(r, problem.last_fwd_use[swap_ids])
        pf = schedule.prefetch_at[swap_ids]
        split = r < pf - 1
        first_end[swap_ids] = np.where(split, r, problem.last_bwd_use[swap_ids])
        second[swap_ids] = split
        second_start[swap_ids] = pf
    live = keep | rec | swap
    starts = np.concatenate([problem.created[live], second_start[second]])
    ends = np.concatenate([first_end[live], problem.last_bwd_use[second]]) + 1
    w = np.concatenate([nbytes[live], nbytes[second]]).astype(np.float64)
    diff = np.bincount(starts, weights=w, minlength=n + 1) - np.bincount(ends, weights=w, minlength=n + 1)
    resident = np.rint(np.cumsum(diff[:n])).astype(np.int64)
    timeline = problem.fixed_bytes + problem.op_transient_bytes + resident
    if chains:
        timeline = np.maximum(timeline, _chain_memory(problem, chains, resident))

    peak_op = int(np.argmax(timeline)) if n else 0
    compute_s = float(op_time.sum())
    recompute_s = float(rec_at.sum())
    return SimResult(
        peak_bytes=int(timeline[peak_op]) if n else 0, peak_op=peak_op, timeline_bytes=timeline,
        time_s=compute_s + recompute_s + stall_s, compute_s=compute_s, recompute_s=recompute_s,
        stall_s=float(stall_s), op_start_s=op_start, swap_out_end_s=out_end, prefetch_end_s=pf_end)


def _chain_memory(problem: Problem, chains: dict, resident: np.ndarray) -> np.ndarray:
    """Memory while the chains anchored at each op run (before the op allocates its outputs and
    workspace): chains run in creation order, each on top of the targets finished before it."""
    out = np.zeros(problem.n_ops, np.int64)
    by_anchor: dict[int, list] = {}
    for c in chains.values():
        by_anchor.setdefault(c.anchor, []).append(c)
    nbytes = problem.act_bytes
    for t, group in by_anchor.items():
        group.sort(key=lambda c: (int(problem.created[c.target]), c.target))
        done = most = 0
        for c in group:
            most = max(most, done + c.peak_bytes)
            done += int(nbytes[c.target])
        base = int(problem.fixed_bytes[t] - problem.op_output_bytes[t] + resident[t]) - done
        out[t] = base + most
    return out


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
