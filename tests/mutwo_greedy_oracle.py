"""A literal, slow μ-TWO Algorithm B: every step re-derives all its state from the decisions alone.

No incremental bookkeeping: chains come from ``resolve_recompute`` on trial decisions, the memory
timeline, op start times and link queues from a full ``simulate`` per step, validity from
``validate``. ``solvers.mutwo_greedy.solve`` must make exactly the same decisions. Only the shared
definitions (prefetch hiding point, swap overhead, end of the peak run) are imported.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import (
    Decision,
    Schedule,
    ScheduleError,
    latest_hiding_points,
    resolve_recompute,
    validate,
)
from mutwo.simulate import SimResult, simulate
from solvers.mutwo_greedy import peak_run_end, swap_overhead

K, R, S = int(Decision.KEEP), int(Decision.RECOMPUTE), int(Decision.SWAP)


def _valid(problem: Problem, d: np.ndarray) -> bool:
    try:
        validate(problem, Schedule.from_decisions(problem, d))
    except ScheduleError:
        return False
    return True


def _state(p: Problem, d: np.ndarray, lo: np.ndarray, tau: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, SimResult]:
    """Everything the decisions imply, from scratch: the recompute chains, when each op is reached
    (compute and recompute, no stalls), each swap's prefetch point (its latest hiding point, not
    before its lower limit) and the full simulation."""
    n, m = p.n_ops, p.n_act
    chains = resolve_recompute(p, d)
    rec_at = np.zeros(n)
    for ch in chains.values():
        rec_at[ch.anchor] += ch.time_s
    cum = np.empty(n + 1)
    cum[0] = 0.0
    np.cumsum(p.op_time_s + rec_at, out=cum[1:])
    pre = cum[:-1]
    swaps = np.flatnonzero(d == S)
    pf = np.full(m, -1, np.int64)
    pf[swaps] = np.maximum(latest_hiding_points(pre, p.first_bwd_use[swaps], tau[swaps], p.fwd_end), lo[swaps])
    return chains, pre, pf, simulate(p, Schedule(d.copy(), pf))


def _candidates(p: Problem, d: np.ndarray, P: int, allowed: np.ndarray, code: int) -> Iterator[tuple[int, np.ndarray]]:
    """KEEP activations that ``allowed`` lets change, hold bytes and are in their gap at the peak op
    ``P``, whose change to ``code`` leaves the decisions valid: (activation, trial decisions)."""
    lfu, fbu = p.last_fwd_use, p.first_bwd_use
    for c in range(p.n_act):
        if not (d[c] == K and allowed[c] and p.act_bytes[c] > 0 and lfu[c] < P < fbu[c]):
            continue
        trial = d.copy()
        trial[c] = code
        if _valid(p, trial):
            yield c, trial


def _best_recompute(p: Problem, d: np.ndarray, chains: dict, P: int) -> tuple | None:
    """The recompute candidate with the most bytes freed per second of recompute (its own chain time
    times the chains that will re-run it as a source): (-ratio, index, overhead), or None."""
    fbu, lbu = p.first_bwd_use, p.last_bwd_use
    rc = None
    for c, trial in _candidates(p, d, P, p.recomputable, R):
        t_c = resolve_recompute(p, trial)[c].time_s
        cnt = 1 + sum(1 for ch in chains.values()
                      if c in ch.sources and not fbu[c] <= ch.anchor <= lbu[c])
        den = t_c * cnt
        ratio = int(p.act_bytes[c]) / den if den > 0 else float("inf")
        if rc is None or (-ratio, c) < rc[:2]:
            rc = (-ratio, c, t_c * cnt)
    return rc


def _best_swap(p: Problem, d: np.ndarray, sim: SimResult, pf: np.ndarray, pre: np.ndarray, P: int, Pe: int,
               tau: np.ndarray, issue_out: np.ndarray, inactive: np.ndarray) -> tuple | None:
    """The swap candidate with the longest inactive time whose swap-out ends before the peak op:
    (-inactive, index, overhead, lower limit of its prefetch point), or None."""
    lfu, fbu, fe = p.last_fwd_use, p.first_bwd_use, p.fwd_end
    swaps = np.flatnonzero(d == S)
    sw = None
    for s, _ in _candidates(p, d, P, p.swappable, S):
        prev = [sim.swap_out_end_s[q] for q in swaps if (lfu[q], q) < (lfu[s], s)]
        est = max(issue_out[s], max(prev, default=0.0)) + tau[s]
        r = max(int(np.searchsorted(sim.op_start_s, est, side="left")) - 1, int(lfu[s]))
        if r >= P:
            continue
        if sw is None or (-inactive[s], s) < sw[:2]:
            lo_s = min(max(fe + 1, Pe + 1), int(fbu[s]))
            ps = max(int(latest_hiding_points(pre, fbu[[s]], tau[[s]], fe)[0]), lo_s)
            queued = [sim.prefetch_end_s[q] for q in swaps if (pf[q], q) < (ps, s)]
            ov = swap_overhead(sim.op_start_s, p.op_time_s, ps, int(fbu[s]), float(tau[s]),
                               float(max(queued, default=0.0)), float(est))
            sw = (-inactive[s], s, ov, lo_s)
    return sw


def oracle(problem: Problem, budget: int, mode: str = "both") -> tuple[np.ndarray, np.ndarray, list, str]:
    """Return (decisions, prefetch_at, steps, status); steps are (kind, activation, overhead, peak).

    When the candidates run out, the decisions returned are those of the lowest peak reached.
    """
    p = problem
    m, lfu, fbu = p.n_act, p.last_fwd_use, p.first_bwd_use
    tau = p.act_bytes / float(p.host_bandwidth_bytes_per_s)
    cum0 = np.concatenate([[0.0], np.cumsum(p.op_time_s)])
    issue_out = cum0[lfu] + p.op_time_s[lfu]
    inactive = cum0[fbu] - issue_out
    if budget < int((p.fixed_bytes + p.op_transient_bytes).max()):
        return np.zeros(m, np.int8), np.full(m, -1), [], "infeasible"

    d = np.zeros(m, np.int8)
    lo = np.zeros(m, np.int64)
    steps: list = []
    best = None
    while True:
        chains, pre, pf, sim = _state(p, d, lo, tau)
        P, peak = sim.peak_op, sim.peak_bytes
        if best is None or peak < best[0]:
            best = (peak, d.copy(), pf)
        if peak <= budget:
            return d, pf, steps, "feasible"
        Pe = peak_run_end(sim.timeline_bytes, P)
        rc = _best_recompute(p, d, chains, P) if mode in ("both", "recompute") else None
        sw = _best_swap(p, d, sim, pf, pre, P, Pe, tau, issue_out, inactive) if mode in ("both", "swap") else None
        if rc is None and sw is None:
            return best[1], best[2], steps, "infeasible"
        if sw is not None and (rc is None or sw[2] <= rc[2]):
            d[sw[1]] = S
            lo[sw[1]] = sw[3]
            steps.append(("swap", sw[1], sw[2], peak))
        else:
            d[rc[1]] = R
            steps.append(("recompute", rc[1], rc[2], peak))
