"""μ-TWO Algorithm B: choose greedily between swapping and recomputing until the simulated peak fits.

The project's reference solver (Purandare et al., MLSys 2023, appendix B-G). Each step takes the
cheaper of the best swap and the best recompute that move an activation off the current peak op.
Its incremental state is built from the cost model's own pieces (``mutwo.schedule``'s chain rules,
``mutwo.linkmodel``'s link queues), so its timeline equals ``simulate``'s bit for bit, and it stays
fast (a ResNet-152 Problem in well under a second). The steps, how the state is kept and the
deviations from the paper, with reasons: ``docs/mutwo_greedy.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mutwo.linkmodel import PrefetchEvents, PrefetchWalk, SwapOutQueue, walk_prefetches
from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.schedule import (
    Decision,
    RecomputeChain,
    Schedule,
    ScheduleError,
    Status,
    anchor_cost,
    latest_hiding_points,
    recompute_chain,
)
from mutwo.simulate import last_op_holding, simulate, stall_free_times
from solvers.modes import MODES, Mode, check_mode

__all__ = ["GreedyResult", "GreedyOptions", "solve", "algorithm_b", "mutwo_greedy", "recompute_ratios", "swap_overhead",
           "peak_run_end", "MODES"]

_KEEP, _REC, _SWAP = int(Decision.KEEP), int(Decision.RECOMPUTE), int(Decision.SWAP)


# ---------------------------------------------------------------------- definitions the oracle shares
def swap_overhead(op_start_s: np.ndarray, op_time_s: np.ndarray, prefetch_op: int, first_bwd_use: int,
                  transfer_s: float, link_free_s: float, swap_out_end_s: float) -> float:
    """Stall a copy back issued at ``prefetch_op`` would see at its first backward use (Algorithm C's
    cases).

    Zero when hidden; the uncovered part when partly hidden or held until after the peak interval.
    It starts when the op is reached, its swap-out has ended and the copies issued before it
    (``link_free_s``) have arrived; op start times already hold the current stalls.
    """
    issue = op_start_s[prefetch_op - 1] + op_time_s[prefetch_op - 1]
    arrive = max(issue, link_free_s, swap_out_end_s) + transfer_s
    return max(0.0, float(arrive - (op_start_s[first_bwd_use - 1] + op_time_s[first_bwd_use - 1])))


def peak_run_end(timeline: np.ndarray, p: int) -> int:
    """Last op of the run of ops from ``p`` that sit at the peak value ``timeline[p]``."""
    off = timeline[p:] != timeline[p]
    return int(p + np.argmax(off) - 1) if off.any() else len(timeline) - 1


def _ratio(nbytes: int, chain_time_s: float, count: int) -> float:
    den = chain_time_s * count
    return nbytes / den if den > 0 else float("inf")


# ---------------------------------------------------------------------- result
@dataclass
class GreedyResult:
    """The schedule plus the solver's own bookkeeping, so tests can hold it against ``simulate``."""

    schedule: Schedule
    peak_bytes: int  # predicted peak of `schedule` (-1: not solved, the budget is below fixed memory)
    timeline: np.ndarray  # predicted timeline of `schedule` (empty when not solved)
    time_s: float  # predicted iteration time of `schedule` (nan when not solved)
    steps: list[tuple[str, int, float, int]] = field(default_factory=list)  # (kind, act, overhead, peak)


# ---------------------------------------------------------------------- the solver state
class _Greedy:
    """Decisions so far and everything Algorithm B reads, kept equal to ``simulate`` of them."""

    def __init__(self, problem: Problem, mode: str):
        p = self.problem = problem
        self.n_ops, self.n_act, self.fwd_end = p.n_ops, p.n_act, int(p.fwd_end)
        self.op_time_s = p.op_time_s
        self.act_bytes, self.act_bytes_list = p.act_bytes, p.act_bytes.tolist()
        self.last_fwd_use, self.first_bwd_use = p.last_fwd_use, p.first_bwd_use
        self.first_bwd_use_list, self.last_bwd_use_list = p.first_bwd_use.tolist(), p.last_bwd_use.tolist()
        self.transfer_s = p.swap_time_s  # one way
        self.transfer_s_list = self.transfer_s.tolist()
        self.compute_s = float(self.op_time_s.sum())
        self.decision = [_KEEP] * self.n_act

        # memory: keep-all timeline (Algorithm G's starting point); what chains add at each anchor
        self.timeline_bytes = simulate(p, Schedule.keep_all(p)).timeline_bytes.copy()
        self.chosen_at_anchor: dict[int, list[int]] = {}  # chosen RECOMPUTE targets by anchor, by index
        self.chain_extra_bytes: dict[int, int] = {}  # max(0, chain memory - op memory) at each anchor

        # time: forward never stalls or recomputes, so swap-out issue times and inactive times are fixed
        self.recompute_s_at = np.zeros(self.n_ops)
        self.reached_s, self.op_start_s = stall_free_times(self.op_time_s, self.recompute_s_at)
        self.stall_s = 0.0
        self.swap_out_issue_s = self.op_start_s[self.last_fwd_use] + self.op_time_s[self.last_fwd_use]
        inactive_s = self.reached_s[self.first_bwd_use] - self.swap_out_issue_s
        self.swap_rank = np.empty(self.n_act, np.int64)  # by inactive time, longest first, then index
        self.swap_rank[np.lexsort((np.arange(self.n_act), -inactive_s))] = np.arange(self.n_act)

        useful = self.act_bytes > 0
        self.recompute_candidate = p.recomputable & useful & (mode in ("both", "recompute"))
        self.swap_candidate = p.swappable & useful & (mode in ("both", "swap"))
        self._init_chains()
        self._init_swaps()

    def _init_chains(self) -> None:
        """Chains of every recompute candidate, with Algorithms E/F's counts and the ratios."""
        m = self.n_act
        self.chains: list[RecomputeChain | None] = [None] * m  # per candidate or chosen RECOMPUTE
        self.chain_readers: list[set[int]] = [set() for _ in range(m)]  # whose chains read it
        self.regenerated_by = np.zeros(m, np.int64)  # chosen chains that would regenerate it (count - 1)
        self.chain_time_s = np.zeros(m)  # its own chain's time, as a candidate
        self.recompute_ratio = np.full(m, -np.inf)
        for a in np.flatnonzero(self.recompute_candidate).tolist():
            self._set_chain(a, self._chain_for(a))
        for a in np.flatnonzero(self.recompute_candidate).tolist():
            self._update_ratio(a)

    def _init_swaps(self) -> None:
        """No swaps yet: empty link queues."""
        m = self.n_act
        self.swapped: list[int] = []  # in the order chosen
        self.prefetch_floor = np.zeros(m, np.int64)  # its copy back is issued no earlier (after the peak
        # interval its swap was chosen to lower)
        self.prefetch_at = np.full(m, -1, np.int64)
        self.release_op = np.zeros(m, np.int64)  # last op holding it before its swap-out ends
        self.swap_out_end_s = np.full(m, np.nan)
        self.swap_out_link = SwapOutQueue(m, self.last_fwd_use, self.swap_out_issue_s.tolist(), self.transfer_s_list)
        self.prefetch_walk = PrefetchWalk.empty(m)

    # ------------------------------------------------------------------ recompute chains
    def _chain_for(self, a: int) -> RecomputeChain | None:
        """``a``'s chain (as RECOMPUTE) under the current decisions; None if it would read a SWAP source
        that is not resident at its anchor."""
        try:
            return recompute_chain(self.problem, a, self.decision, self.first_bwd_use_list)
        except ScheduleError:
            return None

    def _set_chain(self, a: int, chain: RecomputeChain | None) -> None:
        """Install ``a``'s chain, keeping the reader sets and (for chosen ``a``) the counts current."""
        old = self.chains[a]
        old_sources = set(old.sources) if old is not None else set()
        new_sources = set(chain.sources) if chain is not None else set()
        chosen = self.decision[a] == _REC
        t = self.first_bwd_use_list[a]
        for s in old_sources - new_sources:
            self.chain_readers[s].discard(a)
            if chosen and self._off_device_at(s, t):
                self.regenerated_by[s] -= 1
                self._update_ratio(s)
        for s in new_sources - old_sources:
            self.chain_readers[s].add(a)
            if chosen and self._off_device_at(s, t):
                self.regenerated_by[s] += 1
                self._update_ratio(s)
        self.chains[a] = chain
        if chain is not None and not chosen:
            self.chain_time_s[a] = chain.time_s

    def _off_device_at(self, s: int, t: int) -> bool:
        """Whether ``s``, once recomputed or swapped, is off the device at anchor ``t``."""
        return not (self.first_bwd_use_list[s] <= t <= self.last_bwd_use_list[s])

    def _update_ratio(self, a: int) -> None:
        if self.recompute_candidate[a]:
            self.recompute_ratio[a] = _ratio(self.act_bytes_list[a], float(self.chain_time_s[a]),
                                             int(self.regenerated_by[a]) + 1)

    def _drop_recompute_candidate(self, a: int) -> None:
        self.recompute_candidate[a] = False
        self.recompute_ratio[a] = -np.inf
        if self.decision[a] != _REC:
            self._set_chain(a, None)

    def _refresh_anchor(self, t: int) -> None:
        """Recompute time and chain memory at anchor ``t`` from its chains (``anchor_cost``, as
        ``simulate``). The timeline at ``t`` is op memory + ``max(0, chain memory - op memory)``; the
        slice updates move op memory, and the difference depends on the chains alone."""
        members = self.chosen_at_anchor.get(t, [])
        self.recompute_s_at[t], excess = anchor_cost(self.problem, t, [self.chains[a] for a in members])
        extra = max(0, excess)
        self.timeline_bytes[t] += extra - self.chain_extra_bytes.get(t, 0)
        self.chain_extra_bytes[t] = extra

    def _readers_to_rechain(self, c: int) -> list[int]:
        """Readers of ``c`` whose chains must run through it once it is recomputed (Algorithm E)."""
        return sorted(x for x in self.chain_readers[c] if self._off_device_at(c, self.first_bwd_use_list[x]))

    def try_recompute(self, c: int) -> dict[int, RecomputeChain] | None:
        """New chains of the chosen recomputes that would read ``c``; None if one becomes invalid."""
        self.decision[c] = _REC
        try:
            new = {}
            for x in self._readers_to_rechain(c):
                if self.decision[x] == _REC:
                    chain = self._chain_for(x)
                    if chain is None:
                        return None
                    new[x] = chain
            return new
        finally:
            self.decision[c] = _KEEP

    def commit_recompute(self, c: int, new_chosen: dict[int, RecomputeChain]) -> None:
        affected = self._readers_to_rechain(c)
        self.recompute_candidate[c] = False
        self.swap_candidate[c] = False
        self.recompute_ratio[c] = -np.inf
        chain = self.chains[c]
        self.chains[c] = None
        self.decision[c] = _REC
        self._set_chain(c, chain)  # re-enter as chosen: its sources count one more chain (F)
        self.timeline_bytes[self.last_fwd_use[c] + 1: self.first_bwd_use[c]] -= self.act_bytes_list[c]
        t = self.first_bwd_use_list[c]
        members = self.chosen_at_anchor.setdefault(t, [])
        members.append(c)
        members.sort()
        dirty = {t}
        for x in affected:
            if self.decision[x] == _REC:
                self._set_chain(x, new_chosen[x])
                dirty.add(self.first_bwd_use_list[x])
            elif self.recompute_candidate[x]:
                chain = self._chain_for(x)
                if chain is None:
                    self._drop_recompute_candidate(x)
                else:
                    self._set_chain(x, chain)
                    self._update_ratio(x)
        for t in sorted(dirty):
            self._refresh_anchor(t)
        self._retime()

    # ------------------------------------------------------------------ swaps
    def commit_swap(self, s: int, prefetch_floor: int) -> None:
        self.swap_candidate[s] = False
        if self.recompute_candidate[s]:
            self._drop_recompute_candidate(s)
        self.decision[s] = _SWAP
        for x in sorted(self.chain_readers[s]):
            if self._off_device_at(s, self.first_bwd_use_list[x]) and self.recompute_candidate[x]:
                self._drop_recompute_candidate(x)  # its chain would read `s` while it is on the host
        self.prefetch_floor[s] = prefetch_floor
        self.release_op[s] = -1  # nothing freed yet
        self.prefetch_at[s] = 0
        self.swapped.append(s)
        for a, end in self.swap_out_link.add(s).items():
            self.swap_out_end_s[a] = end
        self._retime()

    def _retime(self) -> None:
        """Bring times, prefetch points, the prefetch walk, stalls and swap ranges up to date (as
        ``simulate``; the walk resumes where its inputs changed, see ``walk_prefetches``)."""
        self.reached_s, op_start = stall_free_times(self.op_time_s, self.recompute_s_at)
        self.stall_s = 0.0
        if not self.swapped:
            self.op_start_s = op_start
            return
        ids = np.array(self.swapped, np.int64)
        first_use = self.first_bwd_use[ids]
        prefetch = np.maximum(latest_hiding_points(self.reached_s, first_use, self.transfer_s[ids], self.fwd_end),
                              self.prefetch_floor[ids])
        events = PrefetchEvents.of(ids, prefetch, first_use, self.n_act)
        self.prefetch_walk = walk_prefetches(events, self.reached_s, self.swap_out_end_s, self.transfer_s_list,
                                             self.prefetch_walk)
        self.stall_s = self.prefetch_walk.stall_s
        if self.stall_s > 0.0:
            op_start = op_start + np.cumsum(self.prefetch_walk.stall_at_ops(self.n_ops))
        self.op_start_s = op_start
        release = last_op_holding(op_start, self.swap_out_end_s[ids], self.last_fwd_use[ids])
        self._move_swap_ranges(ids, release, prefetch)

    def _move_swap_ranges(self, ids: np.ndarray, release: np.ndarray, prefetch: np.ndarray) -> None:
        """Move each swap's freed range ``[release+1, prefetch-1]`` where either end changed."""
        changed = np.flatnonzero((release != self.release_op[ids]) | (prefetch != self.prefetch_at[ids]))
        timeline = self.timeline_bytes
        for i in changed.tolist():
            a = int(ids[i])
            nbytes = self.act_bytes_list[a]
            r0, p0 = int(self.release_op[a]), int(self.prefetch_at[a])
            if r0 < p0 - 1:
                timeline[r0 + 1: p0] += nbytes
            r1, p1 = int(release[i]), int(prefetch[i])
            if r1 < p1 - 1:
                timeline[r1 + 1: p1] -= nbytes
            self.release_op[a], self.prefetch_at[a] = r1, p1

    def time_s(self) -> float:
        return self.compute_s + float(self.recompute_s_at.sum()) + self.stall_s

    def decisions(self) -> np.ndarray:
        return np.array(self.decision, np.int8)

    def prefetch(self) -> np.ndarray:
        out = np.full(self.n_act, -1, np.int64)
        ids = np.array(self.swapped, np.int64)
        out[ids] = self.prefetch_at[ids]
        return out

    # ------------------------------------------------------------------ one step of Algorithm B
    def pick_recompute(self, peak_op: int) -> tuple[int, float, dict[int, RecomputeChain]] | None:
        """The recompute candidate freed at ``peak_op`` with the best ratio, its overhead and the new
        chains choosing it would give; candidates that would make the schedule invalid are dropped."""
        while True:
            idx = np.flatnonzero(self.recompute_candidate & (self.last_fwd_use < peak_op)
                                 & (self.first_bwd_use > peak_op))
            if not len(idx):
                return None
            c = int(idx[np.argmax(self.recompute_ratio[idx])])
            new = self.try_recompute(c)
            if new is None:
                self._drop_recompute_candidate(c)
                continue
            return c, float(self.chain_time_s[c]) * (int(self.regenerated_by[c]) + 1), new

    def pick_swap(self, peak_op: int, peak_end: int) -> tuple[int, float, int] | None:
        """The swap candidate off the device at ``peak_op`` with the longest inactive time, its
        overhead and its prefetch floor (after the peak interval ending at ``peak_end``)."""
        idx = np.flatnonzero(self.swap_candidate & (self.regenerated_by == 0) & (self.last_fwd_use < peak_op)
                             & (self.first_bwd_use > peak_op))
        if not len(idx):
            return None
        # its own swap-out: queued behind the swap-outs served before it (nothing after it matters)
        end = np.maximum(self.swap_out_issue_s[idx], self.swap_out_link.end_before(idx)) + self.transfer_s[idx]
        ok = np.flatnonzero(last_op_holding(self.op_start_s, end, self.last_fwd_use[idx]) < peak_op)
        if not len(ok):
            return None
        j = int(ok[np.argmin(self.swap_rank[idx[ok]])])
        s = int(idx[j])
        first_use = self.first_bwd_use_list[s]
        floor = min(max(self.fwd_end + 1, peak_end + 1), first_use)
        hide = latest_hiding_points(self.reached_s, self.first_bwd_use[[s]], self.transfer_s[[s]], self.fwd_end)
        p = max(int(hide[0]), floor)
        link_free = self.prefetch_walk.link_free_before(p, s)  # copies issued before it have arrived
        return s, swap_overhead(self.op_start_s, self.op_time_s, p, first_use, float(self.transfer_s[s]), link_free,
                                float(end[j])), floor


# ---------------------------------------------------------------------- entry points
def solve(problem: Problem, budget_bytes: int, *, mode: str = "both", seed: int = 0,
          verify: bool = True) -> GreedyResult:
    """Run Algorithm B and return the schedule with the solver's own predicted peak, timeline and time.

    In "both" mode a walk can get stuck where a one-kind walk does not (a swap chosen early, at no cost,
    leaves an activation that only recomputing could have moved off a later peak). When the "both" walk
    finds no plan, the recompute-only and swap-only walks are tried too and the fastest plan that fits
    is returned, its message saying which walk made it; ``steps`` and the bookkeeping are that walk's.
    """
    check_mode(mode)
    t0 = time.perf_counter()
    result = algorithm_b(problem, budget_bytes, mode, seed, verify)
    if mode == "both" and result.schedule.status == Status.INFEASIBLE and result.peak_bytes >= 0:
        others = [algorithm_b(problem, budget_bytes, m, seed, verify) for m in ("recompute", "swap")]
        fits = [r for r in others if r.schedule.feasible]
        # the fastest plan that fits; when none does, the lowest peak any walk reached (so a lower
        # budget never reports a higher peak)
        best = (min(fits, key=lambda r: (r.schedule.objective, r.peak_bytes)) if fits else
                min([result, *others], key=lambda r: r.peak_bytes))
        if best is not result:
            best.schedule.options["mode"] = "both"
            best.schedule.message = (f"{best.schedule.message} (the {best.schedule.options['walk']}-only walk; "
                                     f"the walk choosing both got stuck: {result.schedule.message})")
            result = best
    result.schedule.solve_time_s = time.perf_counter() - t0
    return result


def algorithm_b(problem: Problem, budget_bytes: int, mode: str = "both", seed: int = 0,
                verify: bool = True) -> GreedyResult:
    """One walk of Algorithm B restricted to ``mode``, exactly as described (no fallback)."""
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    options = {"mode": mode, "seed": seed, "walk": mode}
    floor = int((problem.fixed_bytes + problem.op_transient_bytes).max()) if problem.n_ops else 0
    if budget < floor:
        sched = Schedule.infeasible(problem, "mutwo_greedy", budget,
                                    f"budget {budget} B is below the fixed memory {floor} B (fixed + transient)",
                                    options=options)
        sched.solve_time_s = time.perf_counter() - t0
        return GreedyResult(sched, -1, np.zeros(0, np.int64), float("nan"))
    g = _Greedy(problem, mode)

    steps: list[tuple[str, int, float, int]] = []
    best = None  # (peak, decisions, prefetch, timeline, time) of the lowest peak seen
    while True:
        P = int(np.argmax(g.timeline_bytes))
        peak = int(g.timeline_bytes[P])
        if best is None or peak < best[0]:
            best = (peak, g.decisions(), g.prefetch(), g.timeline_bytes.copy(), g.time_s())
        if peak <= budget:
            status, message = Status.FEASIBLE, f"predicted peak {peak} B after {len(steps)} decisions"
            break
        rc = g.pick_recompute(P)
        sw = g.pick_swap(P, peak_run_end(g.timeline_bytes, P))
        if rc is None and sw is None:
            status = Status.INFEASIBLE
            message = (f"no candidate can lower the peak at op {P} ({peak} B > budget {budget} B); "
                       f"lowest peak reached {best[0]} B")
            break
        if sw is not None and (rc is None or sw[1] <= rc[1]):
            g.commit_swap(sw[0], sw[2])
            steps.append(("swap", sw[0], sw[1], peak))
        else:
            g.commit_recompute(rc[0], rc[2])
            steps.append(("recompute", rc[0], rc[1], peak))

    if status == Status.FEASIBLE:
        peak_b, dec, pf, tl, t_s = peak, g.decisions(), g.prefetch(), g.timeline_bytes.copy(), g.time_s()
    else:
        peak_b, dec, pf, tl, t_s = best
    sched = Schedule(dec, pf, solver="mutwo_greedy", status=status, budget_bytes=budget, options=options,
                     objective=t_s, message=message)
    if verify:
        sim = simulate(problem, sched)
        if sim.peak_bytes != peak_b or not np.isclose(sim.time_s, t_s, rtol=1e-9, atol=0.0):
            sched.message += (f" [bookkeeping differs from simulate: peak {peak_b} vs {sim.peak_bytes},"
                              f" time {t_s} vs {sim.time_s}]")
            sched.objective = sim.time_s
            if sched.feasible and sim.peak_bytes > budget:
                sched.status = Status.INFEASIBLE
    sched.solve_time_s = time.perf_counter() - t0
    return GreedyResult(sched, peak_b, tl, t_s, steps)


@dataclass(frozen=True)
class GreedyOptions:
    """Options of ``mutwo_greedy``: `solve`'s keyword arguments (``mode`` also sets its decisions)."""

    mode: Mode = "both"
    seed: int = 0
    verify: bool = True


@register_solver("mutwo_greedy", options=GreedyOptions)
def mutwo_greedy(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """μ-TWO Algorithm B. Options: ``mode`` ("both" | "recompute" | "swap"), ``seed``, ``verify``."""
    return solve(problem, budget_bytes, **options).schedule


def recompute_ratios(problem: Problem) -> np.ndarray:
    """Initial recompute ratio (bytes / recompute time) per activation; -inf where not a candidate."""
    return _Greedy(problem, "recompute").recompute_ratio.copy()
