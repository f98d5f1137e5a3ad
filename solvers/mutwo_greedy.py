"""μ-TWO Algorithm B: choose greedily between swapping and recomputing until the simulated peak fits.

Reference: Purandare, Wasay, Idreos, Jain, "μ-TWO: 3× Faster Multi-Model Training with Orchestration
and Memory Optimization", MLSys 2023 (appendix: B the scheduler, C swap overlap, E/F recompute source
and count updates, G memory simulation). This is the project's reference solver, so every step is a
definition the test oracle (``tests/mutwo_greedy_oracle.py``) re-derives from scratch each step.

One step (repeated until the peak fits the budget, or no candidate can lower it: INFEASIBLE)
  1. Peak op ``P`` = first argmax of the memory timeline; peak interval ``[P, Pe]`` = the run of ops
     from ``P`` that sit at the peak value.
  2. Swap candidate: the swappable KEEP activation with the largest inactive time (end of its last
     forward use to the start of its first backward use) among those that would be off the device at
     ``P`` (its swap-out, queued behind earlier ones on the link, ends before ``P`` starts; its first
     backward use is after ``P``). Its prefetch point is the latest op that still hides the copy back
     behind backward work (Algorithm C), but never inside the peak interval. Overhead = the stall its
     copy back would cause, i.e. Algorithm C's cases: 0 when fully hidden; the uncovered part when
     partly hidden (even the first backward op is too late, or the link is still busy with copies
     issued before it) or when it must wait until after the peak interval.
  3. Recompute candidate: the recomputable KEEP activation freed at ``P`` with the largest recompute
     ratio ``bytes / total recompute time``; total recompute time = (time of its chain, running through
     already recomputed sources that are not resident at its anchor) x (recompute count: 1 + the
     chosen recomputes whose chains would have to regenerate it). That product is its overhead.
  4. The cheaper of the two is applied (a tie goes to the swap: it costs no compute). Then: chains of
     activations that read the new RECOMPUTE activation now run through it and need its sources
     (Algorithm E); its sources count one more chain (Algorithm F); every prefetch point is moved to
     the latest op that hides it given the recompute time now in backward; link queues, stalls and
     the timeline are brought up to date (Algorithm G).

Speed: the timeline is an int64 numpy array changed by slices (a recompute frees
``[last_fwd_use+1, first_bwd_use-1]``, a swap ``[r+1, prefetch_at-1]``). At an anchor the timeline is
``max(op memory, chain memory)``; both count the same fixed and resident bytes, so the chains add
``max(0, chain memory - op memory)`` there, which depends only on the chains anchored at that op
(their ``chain_peak``, the targets' bytes, the op's outputs and workspace) and is recomputed when one
of them changes. Only chains that read the new RECOMPUTE activation are re-walked; candidate choice is
a masked argmax. Link timing is one walk over prefetch events per decision, resumed from the first
event whose inputs changed and stopped once it is back in step with the previous walk. It uses the
same floating-point operations as ``mutwo.simulate``, so both give identical timelines (whether a
swap-out ends "before" an op starts is a float comparison). ``verify=True`` (default) confirms the
final answer with ``simulate``.

Deviations from the paper, and why (the paper's appendix as the issue describes it)
  * Budget-independent choices: the peak interval is the run at the peak value, not "ops over the
    limit". Every budget then walks the same decision sequence and stops at the first state that fits,
    so a smaller budget can never give a higher peak.
  * Candidates must be freed at the current peak op (added here): a decision that cannot lower the
    peak only adds overhead.
  * Inactive time is measured on profiled compute (a fixed order, as profiled); the recompute time
    already in backward is used for the prefetch points, where it gives room to hide copies.
  * Chains follow our cost model exactly (``resolve_recompute``): a recomputed source is regenerated
    only if it is not resident at the anchor, and chain ops run once. The paper's count x time
    product is kept as the overhead (it ignores ops shared between chains).
  * Swap overhead also counts the copies already queued on the link before this one (the overlap
    cases look at compute only): with many swaps the link, not compute, is what stalls. The delay it
    adds to copies queued after it is not counted; the simulated time includes it.
  * A choice that would make the schedule invalid (a recompute chain reading a swapped-out source,
    which our cost model forbids) is dropped; the algorithm as described has no rule for it.
  * When the walk choosing both kinds finds no plan, the recompute-only and swap-only walks are run
    too and the fastest plan that fits is returned (``options["walk"]`` says which). A swap taken early
    at no cost can leave a later peak that only a recompute of that activation could lower; on
    ResNet-18 (batch 32, 64x64) the walk choosing both stopped above 0.88 of the keep-all peak while the
    recompute-only walk reached 0.83. ``algorithm_b`` is the walk alone.
  * ``seed`` is accepted for a uniform solver interface; ties are broken by activation index, so the
    result does not depend on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.schedule import Decision, Schedule, Status, chain_peak
from mutwo.simulate import simulate

__all__ = ["GreedyResult", "solve", "algorithm_b", "mutwo_greedy", "recompute_ratios", "hide_points", "swap_overhead",
           "peak_run_end", "MODES"]

MODES = ("both", "recompute", "swap")
_KEEP, _REC, _SWAP = int(Decision.KEEP), int(Decision.RECOMPUTE), int(Decision.SWAP)


# ---------------------------------------------------------------------- shared definitions
def hide_points(pre: np.ndarray, fbu: np.ndarray, tau: np.ndarray, fwd_end: int) -> np.ndarray:
    """Latest op whose start leaves ``tau`` seconds before the first backward use (Algorithm C).

    ``pre[t]`` is when op ``t`` is reached, counting recompute but not stalls; never before the first
    backward op, never after the first backward use.
    """
    need = pre[fbu] - tau
    p = np.searchsorted(pre, need, side="right") - 1
    return np.clip(p, fwd_end + 1, fbu).astype(np.int64)


def swap_overhead(op_start: np.ndarray, op_time: np.ndarray, p: int, fbu: int, tau: float,
                  link_free: float, out_end: float) -> float:
    """Stall a copy back issued at op ``p`` would see at its first backward use (Algorithm C's cases).

    Zero when hidden; the uncovered part when partly hidden or held until after the peak interval.
    It starts when op ``p`` is reached, its swap-out has ended and the copies issued before it
    (``link_free``) have arrived; op start times already hold the current stalls.
    """
    issue = op_start[p - 1] + op_time[p - 1]
    arrive = max(issue, link_free, out_end) + tau
    return max(0.0, float(arrive - (op_start[fbu - 1] + op_time[fbu - 1])))


def peak_run_end(timeline: np.ndarray, p: int) -> int:
    """Last op of the run of ops from ``p`` that sit at the peak value ``timeline[p]``."""
    off = timeline[p:] != timeline[p]
    return int(p + np.argmax(off) - 1) if off.any() else len(timeline) - 1


def _ratio(nbytes: int, rtime: float, cnt: int) -> float:
    den = rtime * cnt
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


@dataclass
class _Chain:
    ops: np.ndarray
    srcs: list[int]
    time_s: float
    peak_bytes: int  # most it holds at once while it runs, its target included (``chain_peak``)
    blocked: bool  # needs a SWAP source that is not resident at the anchor


# ---------------------------------------------------------------------- the solver state
class _Greedy:
    def __init__(self, problem: Problem, mode: str):
        p = self.problem = problem
        n, m = p.n_ops, p.n_act
        self.n, self.m, self.fwd_end = n, m, int(p.fwd_end)
        self.op_time = p.op_time_s
        self.nbytes = p.act_bytes
        self.lfu, self.fbu, self.lbu = p.last_fwd_use, p.first_bwd_use, p.last_bwd_use
        self.fbu_l, self.lbu_l = self.fbu.tolist(), self.lbu.tolist()
        self.nbytes_l = self.nbytes.tolist()
        self.tau = self.nbytes / float(p.host_bandwidth_bytes_per_s)
        self.tau_l = self.tau.tolist()
        self.rops = p.recompute_ops
        self.rsrc = [s.tolist() for s in p.recompute_sources]
        self.created_l = p.created.tolist()
        # chain memory at anchor t minus op memory at t, less the chains' own term (docs/cost_model.md):
        # the op's outputs and workspace are not allocated yet while its chains run
        self.chain_base_l = (-p.op_output_bytes - p.op_transient_bytes).tolist()
        self.compute_s = float(self.op_time.sum())

        # keep-all timeline (Algorithm G's starting point)
        diff = np.zeros(n + 1, np.int64)
        np.add.at(diff, p.created, self.nbytes)
        np.add.at(diff, self.lbu + 1, -self.nbytes)
        self.floor = p.fixed_bytes + p.op_transient_bytes
        self.timeline = self.floor + np.cumsum(diff[:n])

        # static times: forward never stalls or recomputes, so swap-out issue times are fixed
        pre0 = np.concatenate([[0.0], np.cumsum(self.op_time)[:-1]])  # as simulate: cum[:-1]
        self.issue_out = pre0[self.lfu] + self.op_time[self.lfu]
        self.issue_out_l = self.issue_out.tolist()
        inactive = pre0[self.fbu] - self.issue_out
        order = np.lexsort((np.arange(m), -inactive))
        self.rank = np.empty(m, np.int64)
        self.rank[order] = np.arange(m)

        self.d = [_KEEP] * m
        self.rec_at = np.zeros(n)
        self.anchor_members: dict[int, list[int]] = {}  # chosen targets by anchor, by index
        self.anchor_extra: dict[int, int] = {}  # what the chains add to the timeline at each anchor
        self.pre = pre0.copy()
        self.op_start = pre0.copy()
        self.delay = 0.0

        # recompute candidates (Algorithms E/F state)
        useful = self.nbytes > 0
        self.rc_active = p.recomputable & useful & (mode in ("both", "recompute"))
        self.sw_active = p.swappable & useful & (mode in ("both", "swap"))
        self.chains: list[_Chain | None] = [None] * m
        self.readers: list[set[int]] = [set() for _ in range(m)]
        self.dep = np.zeros(m, np.int64)  # chosen chains that would regenerate it (count - 1)
        self.rtime = np.zeros(m)
        self.ratio = np.full(m, -np.inf)
        for a in np.flatnonzero(self.rc_active).tolist():
            self._set_chain(a, self._walk(a))
        for a in np.flatnonzero(self.rc_active).tolist():
            self._update_ratio(a)

        # swaps
        self.swaps: list[int] = []
        self.lo = np.zeros(m, np.int64)
        self.pf = np.full(m, -1, np.int64)
        self.r = np.zeros(m, np.int64)
        self.out_end = np.full(m, np.nan)
        self.d2h_keys = np.zeros(0, np.int64)  # swap-out queue order (lfu, index), ids, end times
        self.d2h_ids = np.zeros(0, np.int64)
        self.d2h_ends = np.zeros(0)
        self.arrive = [float("nan")] * m  # prefetch arrival per swapped activation
        # last walk over prefetch events: key, pre, ready; link-free and delay before each event (one
        # more entry: after the last); for a wait that stalled, the arrival and the wait start (else 0)
        self.ev = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(1), np.zeros(1), np.zeros(0),
                   np.zeros(0))
        self.h2d_keys = np.zeros(0, np.int64)  # prefetch queue order (prefetch op, index) and the
        self.h2d_free = np.zeros(0)  # link-free time after each (running max of arrivals)

    # ------------------------------------------------------------------ recompute chains
    def _walk(self, a: int) -> _Chain:
        """The chain ``resolve_recompute`` would give ``a`` (as RECOMPUTE) under the current decisions."""
        t = self.fbu_l[a]
        d = self.d
        parts = [self.rops[a]]
        temps: list[int] = []
        srcs: list[int] = []
        blocked = False
        seen = {a}
        stack = [a]
        while stack:
            x = stack.pop()
            for s in self.rsrc[x]:
                if s in seen:
                    continue
                seen.add(s)
                if d[s] == _KEEP or self.fbu_l[s] <= t <= self.lbu_l[s]:
                    srcs.append(s)
                elif d[s] == _REC:
                    parts.append(self.rops[s])
                    temps.append(s)
                    stack.append(s)
                else:
                    blocked = True
                    srcs.append(s)
        ops = np.unique(np.concatenate(parts)) if len(parts) > 1 else np.unique(parts[0])
        return _Chain(ops, srcs, float(self.op_time[ops].sum()), chain_peak(self.problem, a, temps), blocked)

    def _set_chain(self, a: int, ch: _Chain | None) -> None:
        """Install ``a``'s chain, keeping the reader sets and (for chosen ``a``) the counts current."""
        old = self.chains[a]
        old_srcs = set(old.srcs) if old is not None else set()
        new_srcs = set(ch.srcs) if ch is not None else set()
        chosen = self.d[a] == _REC
        t = self.fbu_l[a]
        for s in old_srcs - new_srcs:
            self.readers[s].discard(a)
            if chosen and self._nonres_if_moved(s, t):
                self.dep[s] -= 1
                self._update_ratio(s)
        for s in new_srcs - old_srcs:
            self.readers[s].add(a)
            if chosen and self._nonres_if_moved(s, t):
                self.dep[s] += 1
                self._update_ratio(s)
        self.chains[a] = ch
        if ch is not None and not chosen:
            self.rtime[a] = ch.time_s

    def _nonres_if_moved(self, s: int, t: int) -> bool:
        """Whether ``s``, once recomputed or swapped, is off the device at anchor ``t``."""
        return not (self.fbu_l[s] <= t <= self.lbu_l[s])

    def _update_ratio(self, a: int) -> None:
        if self.rc_active[a]:
            self.ratio[a] = _ratio(self.nbytes_l[a], float(self.rtime[a]), int(self.dep[a]) + 1)

    def _drop_rc(self, a: int) -> None:
        self.rc_active[a] = False
        self.ratio[a] = -np.inf
        if self.d[a] != _REC:
            self._set_chain(a, None)

    def _refresh_anchor(self, t: int) -> None:
        """Recompute time and chain memory at anchor ``t`` from its chains (as ``simulate``).

        The timeline at ``t`` is ``max(op memory, chain memory)``. Both count ``fixed + resident(t)``,
        so ``chain memory - op memory`` (``-outputs - workspace - targets + most held``) does not
        depend on what is resident, and the slice updates move both alike: the timeline at ``t`` is
        op memory + ``max(0, chain memory - op memory)``, kept in ``anchor_extra``.
        """
        members = self.anchor_members.get(t, [])
        s = 0.0
        for a in members:  # index order, as simulate sums chain times (same floats, same bits)
            s += self.chains[a].time_s
        self.rec_at[t] = s
        done = most = 0
        created = self.created_l
        for a in sorted(members, key=lambda x: (created[x], x)):  # each on top of the targets before it
            most = max(most, done + self.chains[a].peak_bytes)
            done += self.nbytes_l[a]
        extra = max(0, self.chain_base_l[t] + most - done)
        self.timeline[t] += extra - self.anchor_extra.get(t, 0)
        self.anchor_extra[t] = extra

    def _affected(self, c: int) -> list[int]:
        """Readers of ``c`` whose chains must run through it once it is recomputed (Algorithm E)."""
        return sorted(x for x in self.readers[c] if self._nonres_if_moved(c, self.fbu_l[x]))

    def _try_recompute(self, c: int) -> dict[int, _Chain] | None:
        """New chains of the chosen recomputes that would read ``c``; None if one becomes invalid."""
        self.d[c] = _REC
        try:
            new = {}
            for x in self._affected(c):
                if self.d[x] == _REC:
                    ch = self._walk(x)
                    if ch.blocked:
                        return None
                    new[x] = ch
            return new
        finally:
            self.d[c] = _KEEP

    def _commit_recompute(self, c: int, new_chosen: dict[int, _Chain]) -> None:
        affected = self._affected(c)
        self.rc_active[c] = False
        self.sw_active[c] = False
        self.ratio[c] = -np.inf
        ch = self.chains[c]
        self.chains[c] = None
        self.d[c] = _REC
        self._set_chain(c, ch)  # re-enter as chosen: its sources count one more chain (F)
        self.timeline[self.lfu[c] + 1: self.fbu[c]] -= self.nbytes_l[c]
        t = self.fbu_l[c]
        members = self.anchor_members.setdefault(t, [])
        members.append(c)
        members.sort()
        dirty = {t}
        for x in affected:
            if self.d[x] == _REC:
                self._set_chain(x, new_chosen[x])
                dirty.add(self.fbu_l[x])
            elif self.rc_active[x]:
                nch = self._walk(x)
                if nch.blocked:
                    self._drop_rc(x)
                else:
                    self._set_chain(x, nch)
                    self._update_ratio(x)
        for t in sorted(dirty):
            self._refresh_anchor(t)
        self._retime()

    # ------------------------------------------------------------------ swaps
    def _commit_swap(self, s: int, lo: int) -> None:
        self.sw_active[s] = False
        if self.rc_active[s]:
            self._drop_rc(s)
        self.d[s] = _SWAP
        for x in sorted(self.readers[s]):
            if self._nonres_if_moved(s, self.fbu_l[x]) and self.rc_active[x]:
                self._drop_rc(x)  # its chain would read `s` while it is on the host
        self.lo[s] = lo
        self.r[s] = -1  # nothing freed yet
        self.pf[s] = 0
        self.swaps.append(s)
        self._d2h_insert(s)
        self._retime()

    def _d2h_insert(self, s: int) -> None:
        """Queue ``s``'s swap-out (order: last forward use, then index); re-time later ones until one
        ends as before. Same float operations as ``simulate``'s FIFO, so the ends are identical."""
        key = int(self.lfu[s]) * self.m + s
        j = int(np.searchsorted(self.d2h_keys, key))

        def put(arr: np.ndarray, x) -> np.ndarray:  # np.insert, without its overhead
            return np.concatenate((arr[:j], np.array([x], arr.dtype), arr[j:]))

        self.d2h_keys = put(self.d2h_keys, key)
        self.d2h_ids = put(self.d2h_ids, s)
        ends = put(self.d2h_ends, 0.0)  # entries after j still hold their old ends
        free = float(ends[j - 1]) if j else 0.0
        for i, a in enumerate(self.d2h_ids[j:].tolist(), start=j):
            issue = self.issue_out_l[a]
            start = issue if issue > free else free
            free = start + self.tau_l[a]
            if i > j and free == ends[i]:
                break
            ends[i] = free
            self.out_end[a] = free
        self.d2h_ends = ends

    def _retime(self) -> None:
        """Bring times, prefetch points, the prefetch queue, stalls and swap ranges up to date.

        Mirrors ``simulate``: one walk over prefetch issues and waits in (op, issue-before-wait,
        index) order. The walk resumes at the first event whose inputs changed since the last call,
        from the link-free time and delay saved there, and stops where the rest would repeat the last
        walk: same events and inputs from there on, same link-free time and delay, and every copy in
        flight arriving as before.
        """
        cum = np.empty(self.n + 1)
        cum[0] = 0.0
        np.cumsum(self.op_time + self.rec_at, out=cum[1:])
        self.pre = pre = cum[:-1]
        op_start = pre + self.rec_at
        self.delay = 0.0
        if not self.swaps:
            self.op_start = op_start
            return
        ids = np.array(self.swaps, np.int64)
        k = len(ids)
        lfu, fbu = self.lfu[ids], self.fbu[ids]
        pf = np.maximum(hide_points(pre, fbu, self.tau[ids], self.fwd_end), self.lo[ids])
        ev_op = np.concatenate([pf, fbu])
        ev_kind = np.repeat(np.array([0, 1]), k)
        ev_act = np.concatenate([ids, ids])
        ev_key = (ev_op * 2 + ev_kind) * self.m + ev_act  # unique: sorting it is simulate's order
        order = np.argsort(ev_key)
        ev_key, ev_op, ev_kind, ev_act = ev_key[order], ev_op[order], ev_kind[order], ev_act[order]
        ev_pre = pre[ev_op]
        ev_ready = np.where(ev_kind == 0, self.out_end[ev_act], 0.0)
        old_key, old_pre, old_ready, old_lf, old_delay, old_arr, old_now = self.ev
        L = min(len(ev_key), len(old_key))
        diff = (ev_key[:L] != old_key[:L]) | (ev_pre[:L] != old_pre[:L]) | (ev_ready[:L] != old_ready[:L])
        j = int(np.argmax(diff)) if diff.any() else L
        # where the new suffix equals the old one event for event (shifted by the events added), a
        # walk that reaches it in the old state would repeat the old walk: stop there
        shift = len(ev_key) - len(old_key)
        if 0 <= shift <= len(ev_key) and len(old_key):
            same = ((ev_key[shift:] == old_key) & (ev_pre[shift:] == old_pre)
                    & (ev_ready[shift:] == old_ready))
            tail = np.logical_and.accumulate(same[::-1])[::-1]  # tail[i]: new[shift+i:] == old[i:]
            first = int(np.argmax(tail)) if tail.any() else len(old_key)
            tail_from = max(shift + first, j + 1)
        else:
            tail_from = len(ev_key) + 1
        link_free, delay = float(old_lf[j]), float(old_delay[j])
        arrive, dur = self.arrive, self.tau_l
        lf_out, delay_out, arr_out, now_out = [], [], [], []
        pending = set()  # copies whose arrival changed in this walk and not yet waited for
        e = j
        stop = len(ev_key)
        for pre_t, ready, kind, a in zip(ev_pre[j:].tolist(), ev_ready[j:].tolist(), ev_kind[j:].tolist(),
                                         ev_act[j:].tolist(), strict=True):
            if (e >= tail_from and not pending and link_free == old_lf[e - shift]
                    and delay == old_delay[e - shift]):
                stop = e
                break
            now = pre_t + delay
            stalled = False
            if kind == 0:
                start = max(now, link_free, ready)
                link_free = start + dur[a]
                if link_free != arrive[a]:
                    pending.add(a)
                arrive[a] = link_free
            else:
                pending.discard(a)
                if arrive[a] > now:
                    stalled = True
                    delay += arrive[a] - now
            lf_out.append(link_free)
            delay_out.append(delay)
            arr_out.append(arrive[a] if stalled else 0.0)  # a stall's arrival and wait start
            now_out.append(now if stalled else 0.0)
            e += 1
        o = stop - shift  # old index of the first event not walked
        ev_lf = np.concatenate([old_lf[: j + 1], lf_out, old_lf[o + 1:]])
        ev_delay = np.concatenate([old_delay[: j + 1], delay_out, old_delay[o + 1:]])
        ev_arr = np.concatenate([old_arr[:j], arr_out, old_arr[o:]])
        ev_now = np.concatenate([old_now[:j], now_out, old_now[o:]])
        delay = float(ev_delay[-1])
        self.ev = (ev_key, ev_pre, ev_ready, ev_lf, ev_delay, ev_arr, ev_now)
        self.delay = delay
        issued = ev_kind == 0
        self.h2d_keys = ev_op[issued] * self.m + ev_act[issued]
        self.h2d_free = np.maximum.accumulate(np.array(arrive)[ev_act[issued]])
        if delay > 0.0:
            stalls = np.flatnonzero(ev_arr > 0.0)
            stall_at: dict[int, float] = {}
            for op, arr, now in zip(ev_op[stalls].tolist(), ev_arr[stalls].tolist(), ev_now[stalls].tolist(),
                                    strict=True):
                stall_at[op] = stall_at.get(op, 0.0) + arr - now  # as simulate, to the last bit
            stall = np.zeros(self.n)
            stall[list(stall_at)] = list(stall_at.values())
            op_start = op_start + np.cumsum(stall)
        self.op_start = op_start
        r = np.maximum(np.searchsorted(op_start, self.out_end[ids], side="left") - 1, lfu)
        # move each swap's freed range [r+1, pf-1] where r or pf changed
        changed = np.flatnonzero((r != self.r[ids]) | (pf != self.pf[ids]))
        tl = self.timeline
        for i in changed.tolist():
            a = int(ids[i])
            b = self.nbytes_l[a]
            r0, p0 = int(self.r[a]), int(self.pf[a])
            if r0 < p0 - 1:
                tl[r0 + 1: p0] += b
            r1, p1 = int(r[i]), int(pf[i])
            if r1 < p1 - 1:
                tl[r1 + 1: p1] -= b
            self.r[a], self.pf[a] = r1, p1

    def time_s(self) -> float:
        return self.compute_s + float(self.rec_at.sum()) + self.delay

    def decisions(self) -> np.ndarray:
        return np.array(self.d, np.int8)

    def prefetch(self) -> np.ndarray:
        out = np.full(self.m, -1, np.int64)
        ids = np.array(self.swaps, np.int64)
        out[ids] = self.pf[ids]
        return out

    # ------------------------------------------------------------------ one step of Algorithm B
    def pick_recompute(self, P: int) -> tuple[int, float, dict[int, _Chain]] | None:
        while True:
            idx = np.flatnonzero(self.rc_active & (self.lfu < P) & (self.fbu > P))
            if not len(idx):
                return None
            c = int(idx[np.argmax(self.ratio[idx])])
            new = self._try_recompute(c)
            if new is None:
                self._drop_rc(c)
                continue
            return c, float(self.rtime[c]) * (int(self.dep[c]) + 1), new

    def pick_swap(self, P: int, Pe: int) -> tuple[int, float, int] | None:
        idx = np.flatnonzero(self.sw_active & (self.dep == 0) & (self.lfu < P) & (self.fbu > P))
        if not len(idx):
            return None
        # its own swap-out: queued behind the swap-outs ordered before it (nothing after it matters)
        pos = np.searchsorted(self.d2h_keys, self.lfu[idx] * self.m + idx)
        prev_end = np.where(pos > 0, self.d2h_ends[np.maximum(pos - 1, 0)] if len(self.d2h_ends) else 0.0,
                            0.0)
        est = np.maximum(self.issue_out[idx], prev_end) + self.tau[idx]
        r = np.maximum(np.searchsorted(self.op_start, est, side="left") - 1, self.lfu[idx])
        ok = np.flatnonzero(r < P)
        if not len(ok):
            return None
        j = int(ok[np.argmin(self.rank[idx[ok]])])
        s = int(idx[j])
        fbu = self.fbu_l[s]
        lo = min(max(self.fwd_end + 1, Pe + 1), fbu)
        p = max(int(hide_points(self.pre, self.fbu[[s]], self.tau[[s]], self.fwd_end)[0]), lo)
        # the copies issued before it on the host-to-device link (FIFO, by (op, index))
        k = int(np.searchsorted(self.h2d_keys, p * self.m + s))
        link_free = float(self.h2d_free[k - 1]) if k else 0.0
        return s, swap_overhead(self.op_start, self.op_time, p, fbu, float(self.tau[s]), link_free,
                                float(est[j])), lo


# ---------------------------------------------------------------------- entry points
def solve(problem: Problem, budget_bytes: int, *, mode: str = "both", seed: int = 0,
          verify: bool = True) -> GreedyResult:
    """Run Algorithm B and return the schedule with the solver's own predicted peak, timeline and time.

    In "both" mode a walk can get stuck where a one-kind walk does not (a swap chosen early, at no cost,
    leaves an activation that only recomputing could have moved off a later peak). When the "both" walk
    finds no plan, the recompute-only and swap-only walks are tried too and the fastest plan that fits
    is returned, its message saying which walk made it; ``steps`` and the bookkeeping are that walk's.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
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
        P = int(np.argmax(g.timeline))
        peak = int(g.timeline[P])
        if best is None or peak < best[0]:
            best = (peak, g.decisions(), g.prefetch(), g.timeline.copy(), g.time_s())
        if peak <= budget:
            status, message = Status.FEASIBLE, f"predicted peak {peak} B after {len(steps)} decisions"
            break
        rc = g.pick_recompute(P)
        sw = g.pick_swap(P, peak_run_end(g.timeline, P))
        if rc is None and sw is None:
            status = Status.INFEASIBLE
            message = (f"no candidate can lower the peak at op {P} ({peak} B > budget {budget} B); "
                       f"lowest peak reached {best[0]} B")
            break
        if sw is not None and (rc is None or sw[1] <= rc[1]):
            g._commit_swap(sw[0], sw[2])
            steps.append(("swap", sw[0], sw[1], peak))
        else:
            g._commit_recompute(rc[0], rc[2])
            steps.append(("recompute", rc[0], rc[1], peak))

    if status == Status.FEASIBLE:
        peak_b, dec, pf, tl, t_s = peak, g.decisions(), g.prefetch(), g.timeline.copy(), g.time_s()
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


@register_solver("mutwo_greedy", options={"mode": "both", "seed": 0, "verify": True})
def mutwo_greedy(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """μ-TWO Algorithm B. Options: ``mode`` ("both" | "recompute" | "swap"), ``seed``, ``verify``."""
    return solve(problem, budget_bytes, **options).schedule


def recompute_ratios(problem: Problem) -> np.ndarray:
    """Initial recompute ratio (bytes / recompute time) per activation; -inf where not a candidate."""
    return _Greedy(problem, "recompute").ratio.copy()
