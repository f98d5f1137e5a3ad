"""The CP-SAT interval model of keep / recompute / swap with the host link (`solvers.swap_interval`).

The model, and what it restricts or relaxes relative to `simulate`, is described in docs/remat_exact.md
("Interval formulation with the host link"). In short:

* One time frame, in integer *ticks*: the static start of op ``t`` rounded to a *step* (``compute /
  time_steps``) times ``2 R`` (``R``: the most ops that start in one step). Op ``t`` owns two *check
  points*, ``chain(t) = st[t] + 2 rank(t)`` (chains anchored at ``t`` run) and ``op(t) = chain(t) + 1``
  (the op runs), on the ops whose keep-all memory exceeds the budget and on the *events* (the first
  backward op, first backward uses of free activations, a start plan's points).
* Per free activation: KEEP / RECOMPUTE / SWAP literals, the *tail start* ``y`` (the chain point where
  its copy back is issued, any backward op, or its recompute anchored, an event) and the *head end*
  ``H``; intervals ``[chain(lf+1), H)`` and ``[y, chain(fb))`` with its bytes on one cumulative.
* The links: swap-outs in issue order (a FIFO tail), copies back in a fixed order (a FIFO tail), each
  issued when its op is reached (`_issue_delay`) and arriving before its first use starts after the
  wait; delays ``D_{k+1} = D_k + W_k +`` the recomputes at event ``k``; minimise ``D_m``.
* Recompute chains: sources resident at the anchor, or regenerated as temporaries (`_chains`).

Its plans are re-priced by `simulate`; its own bound is not a bound for our plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, member_peaks
from mutwo.simulate import simulate
from solvers.modes import may_recompute, may_swap

__all__ = ["Frame", "SwapIntervalModel", "build_swap_interval_model", "frame_of", "decode", "start_point"]

_REFERENCES = 8  # events per copy back whose delay its issue time sees (`_issue_delay`)


@dataclass
class Frame:
    """The time frame, the free activations and the events of one (Problem, budget, mode)."""

    ticks_per_step: int  # 2 (most ops starting in one step)
    rank: np.ndarray  # int64 [n + 1]: each op's rank among those starting in its step
    tick_s: float  # seconds per tick
    st: np.ndarray  # int64 [n + 1]: static start of each op (and the end), ticks
    keep: np.ndarray  # int64 [n]: keep-all memory while each op runs
    hot: np.ndarray  # ops whose keep-all memory exceeds the budget
    free: np.ndarray  # activation ids that get variables
    can_r: np.ndarray  # bool [n_act]: free and may be recomputed
    can_s: np.ndarray  # bool [n_act]: free and may be swapped
    events: np.ndarray  # sorted op positions: fwd_end + 1 and the first backward uses of free activations

    def chain(self, t) -> np.ndarray:
        return self.st[t] + 2 * self.rank[t]

    def event_of(self, t: int) -> int:
        """Index of the event at op ``t`` (which must be one)."""
        return int(np.searchsorted(self.events, t))



def frame_of(p: Problem, budget: int, mode: str, time_steps: int, points: np.ndarray | None = None) -> Frame:
    """The frame; ``points``: more backward ops to make events (a start plan's copy-back and recompute
    points, so that it lies inside the model)."""
    n = p.n_ops
    compute = max(float(p.op_time_s.sum()), 1e-12)
    step = compute / time_steps
    cum = np.concatenate([[0.0], np.cumsum(p.op_time_s)])
    steps = np.rint(cum / step).astype(np.int64)
    # ops that start in one step are told apart by their rank there: 2 rank (+ 1) stays below a step
    first = np.searchsorted(steps, steps, side="left")
    rank = np.arange(n + 1) - first
    tps = 2 * (int(rank.max()) + 1)
    st = steps * tps
    keep = simulate(p, Schedule.keep_all(p)).timeline_bytes
    hot = np.flatnonzero(keep > budget)
    in_gap = np.concatenate([[0], np.cumsum(keep > budget)])
    touches = in_gap[p.first_bwd_use] - in_gap[p.last_fwd_use + 1] > 0
    can_r = touches & p.recomputable & may_recompute(mode)
    can_s = touches & p.swappable & may_swap(mode)
    free = np.flatnonzero(can_r | can_s)
    extra = np.zeros(0, np.int64) if points is None else np.asarray(points, np.int64)
    extra = extra[(extra > p.fwd_end) & (extra < n)]
    events = np.unique(np.concatenate([[p.fwd_end + 1], p.first_bwd_use[free], extra])).astype(np.int64)
    return Frame(tps, rank, step / tps, st, keep, hot, free, can_r, can_s, events)


@dataclass
class SwapIntervalModel:
    """The CP-SAT model and what reads a plan back."""

    model: object
    frame: Frame
    keep: dict[int, object] = field(default_factory=dict)  # a -> KEEP literal
    rec: dict[int, object] = field(default_factory=dict)  # a -> RECOMPUTE literal
    swap: dict[int, object] = field(default_factory=dict)  # a -> SWAP literal
    tail_start: dict[int, object] = field(default_factory=dict)  # a -> y: chain point of its copy back / anchor
    delay: list = field(default_factory=list)  # D_0 .. D_m (ticks)
    objective: object = 0
    infeasible: str = ""
    stats: dict = field(default_factory=dict)


def _must(p: Problem, free: np.ndarray) -> np.ndarray:
    """Bytes resident at each op under every decision of the free activations (the others are KEEP)."""
    n = p.n_ops
    fixed = np.ones(p.n_act, bool)
    fixed[free] = False
    starts = np.concatenate([p.created, p.first_bwd_use, p.last_fwd_use[fixed] + 1])
    stops = np.concatenate([p.last_fwd_use, p.last_bwd_use, p.first_bwd_use[fixed] - 1])
    w = np.concatenate([p.act_bytes, p.act_bytes, p.act_bytes[fixed]]).astype(np.int64)
    ok = starts <= stops
    diff = np.zeros(n + 1, np.int64)
    np.add.at(diff, starts[ok], w[ok])
    np.add.at(diff, stops[ok] + 1, -w[ok])
    return np.cumsum(diff[:n])


def _check_points(p: Problem, f: Frame) -> list[tuple[int, int, int]]:
    """(tick, demand, op) of every check point: op points at hot ops and events, chain points at events."""
    must = _must(p, f.free)
    out = []
    for t in np.union1d(f.hot, f.events).tolist():
        out.append((int(f.chain(t)) + 1, int(p.fixed_bytes[t] + p.op_transient_bytes[t] + must[t]), t))
    for t in f.events.tolist():
        out.append((int(f.chain(t)), int(p.fixed_bytes[t] - p.op_output_bytes[t] + must[t]), t))
    return out


def _decisions(md, im: SwapIntervalModel, a: int) -> None:
    f = im.frame
    im.keep[a] = md.NewBoolVar(f"k{a}")
    lits = [im.keep[a]]
    if f.can_r[a]:
        im.rec[a] = md.NewBoolVar(f"r{a}")
        lits.append(im.rec[a])
    if f.can_s[a]:
        im.swap[a] = md.NewBoolVar(f"s{a}")
        lits.append(im.swap[a])
    md.AddExactlyOne(lits)


def _residency(md, im: SwapIntervalModel, p: Problem, a: int, early: bool) -> tuple[list, object]:
    """Head and tail intervals of ``a`` (and its recompute scratch); returns the memory items and H.

    The tail starts at ``y``, the chain point of the op where the copy back is issued (any backward op
    up to the first use) or the recompute anchored (an event: chain memory is checked there)."""
    from ortools.sat.python import cp_model

    f = im.frame
    lf, fb = int(p.last_fwd_use[a]), int(p.first_bwd_use[a])
    x0, x1 = int(f.chain(lf + 1)), int(f.chain(fb))
    ops = np.arange(p.fwd_end + 1, fb + 1) if a in im.swap else f.events[f.events <= fb]
    y = md.NewIntVarFromDomain(cp_model.Domain.FromValues([int(v) for v in f.chain(ops)]), f"y{a}")
    h = md.NewIntVar(x0, x1, f"h{a}")
    md.Add(h <= y)
    md.Add(h == x1).OnlyEnforceIf(im.keep[a])
    md.Add(y == x1).OnlyEnforceIf(im.keep[a])
    size = int(p.act_bytes[a])
    items = [(md.NewIntervalVar(x0, h - x0, h, f"head{a}"), size), (md.NewIntervalVar(y, x1 - y, x1, f"tail{a}"), size)]
    if a in im.rec:
        md.Add(h == x0).OnlyEnforceIf(im.rec[a])
        if not early:
            md.Add(y == x1).OnlyEnforceIf(im.rec[a])
        elif a in im.swap:  # a recompute is anchored at an event
            anchor = md.NewIntVarFromDomain(
                cp_model.Domain.FromValues([int(v) for v in f.chain(f.events[f.events <= fb])]), f"ya{a}")
            md.Add(y == anchor).OnlyEnforceIf(im.rec[a])
        scratch = int(member_peaks(p)[a] - p.act_bytes[a])
        if scratch > 0:
            items.append((md.NewOptionalFixedSizeIntervalVar(y, 1, im.rec[a], f"scratch{a}"), scratch))
    im.tail_start[a] = y
    return items, h


def _delays(md, im: SwapIntervalModel, p: Problem, rec_ticks: dict[int, int], extra: dict, horizon: int) -> list:
    """D_0 = 0, D_{k+1} = D_k + W_k + recomputes at event k; returns the stall variables W_k (0 where
    no swap waits)."""
    f = im.frame
    m = len(f.events)
    waits_at = {f.event_of(int(p.first_bwd_use[a])) for a in im.swap}
    D = [md.NewConstant(0)] + [md.NewIntVar(0, horizon, f"D{k + 1}") for k in range(m)]
    W = []
    for k in range(m):
        w = md.NewIntVar(0, horizon, f"W{k}") if k in waits_at else md.NewConstant(0)
        recs = [c * lit for a in im.rec if f.event_of(int(p.first_bwd_use[a])) == k
                for c, lit in [(rec_ticks[a], im.rec[a]), *extra[a]]]
        md.Add(D[k + 1] == D[k] + w + sum(recs))
        W.append(w)
    im.delay = D
    return W


def _links(md, im: SwapIntervalModel, p: Problem, heads: dict, W: list, horizon: int, order: str,
           issue_key: np.ndarray | None) -> None:
    """Both host links. Swap-outs are served in issue order (a FIFO tail, as `mutwo.linkmodel`). Copies
    back, in a fixed order (``issue_key``, then activation index; default: first backward use): with
    ``order="issue"`` they are also issued in that order (event indices non-decreasing along it), so the
    FIFO tail is the simulator's queue (up to ties at one event, which it breaks by index); ``"need"``:
    served in that order whatever the issue order (pessimistic where it differs: the link idles);
    ``"any"``: a NoOverlap, any order (hard for the engine on real Problems)."""
    f = im.frame
    tau = {a: int(np.ceil(p.swap_time_s[a] / f.tick_s)) for a in im.swap}
    out_end = {}
    outs, tail = [], 0
    for a in sorted(im.swap, key=lambda a: (int(p.last_fwd_use[a]), a)):
        s = im.swap[a]
        os_ = md.NewIntVar(int(f.st[p.last_fwd_use[a] + 1]), horizon, f"os{a}")
        outs.append(md.NewOptionalIntervalVar(os_, tau[a], os_ + tau[a], s, f"out{a}"))
        md.Add(os_ >= tail).OnlyEnforceIf(s)
        q = md.NewIntVar(0, horizon, f"q{a}")
        md.Add(q >= tail)
        md.Add(q >= os_ + tau[a]).OnlyEnforceIf(s)
        tail = q
        out_end[a] = os_ + tau[a]
        # off from the first check point a step after the swap-out ends (static starts are rounded to a
        # step), or, when that is after the copy back is issued, resident throughout (head meets tail)
        off = md.NewIntVar(0, horizon, f"off{a}")
        md.AddMinEquality(off, [out_end[a] + f.ticks_per_step, im.tail_start[a]])
        md.Add(heads[a] >= off).OnlyEnforceIf(s)
    md.AddNoOverlap(outs)
    backs, tail, last_y = [], 0, 0
    key = p.first_bwd_use if issue_key is None else issue_key
    for a in sorted(im.swap, key=lambda a: (int(key[a]), a)):
        s, fb = im.swap[a], int(p.first_bwd_use[a])
        J = f.event_of(fb)
        y = im.tail_start[a]
        ps = md.NewIntVar(0, horizon, f"ps{a}")
        _issue_delay(md, im, a, ps, J)
        md.Add(ps >= out_end[a]).OnlyEnforceIf(s)
        md.Add(int(f.st[fb]) + im.delay[J] + W[J] >= ps + tau[a]).OnlyEnforceIf(s)
        if order == "any":
            backs.append(md.NewOptionalIntervalVar(ps, tau[a], ps + tau[a], s, f"back{a}"))
            continue
        md.Add(ps >= tail).OnlyEnforceIf(s)
        q = md.NewIntVar(0, horizon, f"b{a}")
        md.Add(q >= tail)
        md.Add(q >= ps + tau[a]).OnlyEnforceIf(s)
        tail = q
        if order == "issue":  # issued in this order too: the FIFO tail is the simulator's queue
            md.Add(y >= last_y).OnlyEnforceIf(s)
            ly = md.NewIntVar(0, horizon, f"ly{a}")
            md.Add(ly >= last_y)
            md.Add(ly >= y).OnlyEnforceIf(s)
            last_y = ly
    if backs:
        md.AddNoOverlap(backs)


def _issue_delay(md, im: SwapIntervalModel, a: int, ps, J: int) -> None:
    """``ps >= y + D_k`` for the last reference event ``k`` at or before the issue op (chain point
    ``y``): the copy back is issued when its op is reached, static start plus the delays before it. The
    references are the ``_REFERENCES`` events nearest before the first use (and the first backward op):
    exact when the issue is at one, else optimistic by the delays since the reference before it. (The
    delay before the first use instead would make a copy wait for stalls it causes itself.)"""
    f = im.frame
    s, y = im.swap[a], im.tail_start[a]
    md.Add(ps >= y).OnlyEnforceIf(s)
    for k in sorted({*range(max(1, J - _REFERENCES + 1), J + 1)}):
        at = md.NewBoolVar(f"r{a}_{k}")
        md.Add(y >= int(f.chain(f.events[k]))).OnlyEnforceIf(at)
        md.Add(y < int(f.chain(f.events[k]))).OnlyEnforceIf(at.Not())
        md.Add(ps >= y + im.delay[k]).OnlyEnforceIf([s, at])


def _chains(md, im: SwapIntervalModel, p: Problem, rec_ticks: dict[int, int], depth: int) -> tuple[dict, list]:
    """What a recompute target's chain needs (`mutwo.schedule.resolve_recompute`): each source resident
    at its anchor -- kept; swapped and back (``fb_s <= E_{j_x} <= lb_s``); or recomputed, anchored no
    later and alive (``le``: ``j_s <= j_x``, ``E_{j_x} <= lb_s``) -- or, when recomputed and not
    resident, regenerated in the chain as a temporary (``T``, to ``depth`` levels; deeper ones must be
    resident). Returns per target the extra recompute terms (ticks, literal) and the temporaries'
    memory: one item at the target's chain point holding the largest, over its temporaries, of the
    temporary's ``member_peaks`` plus the bytes of its sources (held while it is made; a member read by
    a later member than its reader is not counted, so this can under-count where the chain is a DAG:
    `simulate` catches that and the plan is repaired)."""
    f = im.frame
    peaks = member_peaks(p)
    extra: dict[int, list] = {x: [] for x in im.rec}
    mem = []
    resident: dict[tuple[int, int], object] = {}
    for x, rx in im.rec.items():
        member = {x: rx}
        frontier = [x]
        for level in range(depth + 1):
            nxt = []
            for par in frontier:
                for s in p.recompute_sources[par].tolist():
                    alive = int(f.chain(int(p.last_bwd_use[s])))
                    yx = im.tail_start[x]
                    if s in im.swap:
                        md.Add(yx >= int(f.chain(int(p.first_bwd_use[s])))).OnlyEnforceIf([member[par], im.swap[s]])
                        md.Add(yx <= alive).OnlyEnforceIf([member[par], im.swap[s]])
                    if s not in im.rec:
                        continue
                    le = resident.get((x, s))
                    if le is None:
                        le = resident[(x, s)] = md.NewBoolVar(f"le{x}_{s}")
                        md.Add(im.tail_start[s] <= yx).OnlyEnforceIf(le)
                        md.Add(yx <= alive).OnlyEnforceIf(le)
                    if level == depth:
                        md.AddImplication(member[par], le).OnlyEnforceIf(im.rec[s])
                        continue
                    if s not in member:
                        member[s] = md.NewBoolVar(f"t{x}_{s}")
                        nxt.append(s)
                        extra[x].append((rec_ticks[s], member[s]))
                    md.Add(member[s] >= member[par] + im.rec[s] - 1 - le)
            frontier = nxt
        if len(member) > 1:  # the most the chain holds beyond its target's own scratch (see the doc)
            held = md.NewIntVar(0, int(max(peaks[m] + p.act_bytes[p.recompute_sources[m]].sum() for m in member)),
                                f"held{x}")
            for m, t in member.items():
                if m != x:
                    md.Add(held >= int(peaks[m] + p.act_bytes[p.recompute_sources[m]].sum())).OnlyEnforceIf(t)
            mem.append((md.NewOptionalFixedSizeIntervalVar(im.tail_start[x], 1, rx, f"held{x}"), held))
    return extra, mem


def build_swap_interval_model(problem: Problem, budget: int, mode: str = "both", time_steps: int = 5_000,
                              early_anchors: bool = True, max_chain_depth: int = 6, copy_back_order: str = "issue",
                              points: np.ndarray | None = None, issue_key: np.ndarray | None = None
                              ) -> SwapIntervalModel:
    """The model of the module doc; ``infeasible`` says why when some check point is over ``budget``
    under every decision of the model."""
    from ortools.sat.python import cp_model

    p, f = problem, frame_of(problem, int(budget), mode, time_steps, points)
    md = cp_model.CpModel()
    im = SwapIntervalModel(md, f)
    points = _check_points(p, f)
    worst = max(points, key=lambda x: x[1], default=None)
    if worst is not None and worst[1] > budget:
        im.infeasible = f"op {worst[2]} ({p.op_names[worst[2]]!r}) needs {worst[1]} B under every decision of the model"
        return im
    rec_ticks = {int(a): int(round(float(p.op_time_s[p.recompute_ops[a]].sum()) / f.tick_s))
                 for a in f.free if f.can_r[a]}
    horizon = int(f.st[-1] + (max_chain_depth + 1) * sum(rec_ticks.values()) + 2 * np.ceil(p.swap_time_s[f.free] / f.tick_s).sum()
                  + 4 * f.ticks_per_step * (p.n_ops + 1))
    mem = [(md.NewFixedSizeIntervalVar(tick, 1, f"F{i}"), d) for i, (tick, d, _) in enumerate(points) if d > 0]
    heads = {}
    for a in f.free.tolist():
        _decisions(md, im, a)
        items, heads[a] = _residency(md, im, p, a, early_anchors)
        mem.extend(items)
    extra, temporaries = _chains(md, im, p, rec_ticks, max_chain_depth)
    mem.extend(temporaries)
    W = _delays(md, im, p, rec_ticks, extra, horizon)
    _links(md, im, p, heads, W, horizon, copy_back_order, issue_key)
    md.AddCumulative([iv for iv, _ in mem], [d for _, d in mem], int(budget))
    im.objective = im.delay[-1]
    md.Minimize(im.objective)
    im.stats = {"n_free": len(f.free), "n_swap": len(im.swap), "n_recompute": len(im.rec), "n_events": len(f.events),
                "n_temporaries": len(temporaries),
                "n_checks": len(points), "n_intervals": len(mem) + 2 * len(im.swap),
                "n_vars": len(md.Proto().variables), "n_constraints": len(md.Proto().constraints)}
    return im


def start_point(p: Problem, plan: Schedule, a: int) -> int:
    """The op of ``plan``'s copy back or recompute anchor of ``a`` (its first backward use otherwise)."""
    d = int(plan.decisions[a])
    point = {int(Decision.SWAP): int(plan.prefetch_at[a]), int(Decision.RECOMPUTE): int(plan.recompute_at[a])}.get(d, -1)
    return int(p.first_bwd_use[a]) if point < 0 else point


def decode(im: SwapIntervalModel, p: Problem, solver) -> Schedule:
    """The engine's solution as a Schedule: prefetch_at / recompute_at at the ops of the tails' starts."""
    f = im.frame
    d = np.zeros(p.n_act, np.int8)
    pf = np.full(p.n_act, -1, np.int64)
    ra = np.full(p.n_act, -1, np.int64)
    back = np.arange(p.fwd_end + 1, p.n_ops)
    points = f.chain(back)
    for a in f.free.tolist():
        at = int(back[np.searchsorted(points, solver.Value(im.tail_start[a]))])
        if a in im.swap and solver.Value(im.swap[a]):
            d[a], pf[a] = Decision.SWAP, at
        elif a in im.rec and solver.Value(im.rec[a]):
            d[a] = Decision.RECOMPUTE
            ra[a] = at if at < p.first_bwd_use[a] else -1
    return Schedule(d, pf, recompute_at=ra)
