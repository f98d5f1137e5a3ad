"""The compact KEEP / RECOMPUTE / SWAP formulation (docs/ilp.md), as plain backend-neutral data.

`build` turns a Problem and a budget into a `Formulation`: variables, linear rows (some enforced by a
binary, which MIP backends turn into big-M rows and CP-SAT into enforcement literals) and a linear
objective, plus the index needed to read a plan back (`decode`) and to complete a plan into a full
assignment with every auxiliary variable at its tightest value (`complete`). Solver backends
(`solvers/ilp_backends.py`) never look at the Problem.

Units: times are in ``Formulation.time_unit`` seconds (the compute time is ~1e4 units), bytes are
bytes. Rows carry a ``kind`` ("time", "mem", "logic") so a backend can scale each family on its own.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, default_prefetch, member_peaks

__all__ = ["Row", "Formulation", "build", "MODES"]

MODES = ("full", "recompute", "swap")
INF = math.inf

_EXACT_MAX_OPS = 100  # below this every op position is a boundary and candidate lists are complete
_PAIR_CAP = 12_000  # most (target, chain member) pairs before the chain depth is limited
_G_LEADS = (0.0, 1.0, 2.0, 4.0)  # swap-out queueing delays tried, in units of the activation's transfer
_P_LEADS = (0.0, 0.5, 1.0, 1.5, 2.5, 4.0)  # copy-back leads before the first backward use, same units
_TIME_MARGIN = 1e-4  # time units (1e-8 of the compute time) by which a swap-out must end before an op


@dataclass
class Row:
    """``lo <= sum(coef * x[idx]) <= hi``, active only when ``x[enforce] == 1`` if ``enforce >= 0``."""

    idx: np.ndarray
    coef: np.ndarray
    lo: float
    hi: float
    kind: str  # "time" | "mem" | "logic" | "cut" (a valid inequality in time units)
    enforce: int = -1


@dataclass
class Formulation:
    """A built model plus everything needed to map between plans and variable values."""

    problem: Problem
    budget: int
    mode: str
    # --- variables
    names: list[str] = field(default_factory=list)
    vtype: list[str] = field(default_factory=list)  # "B" binary, "I" integer, "C" continuous
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    is_time: list[bool] = field(default_factory=list)  # continuous variables measured in time units
    # --- rows and objective (in time units, plus obj_const)
    rows: list[Row] = field(default_factory=list)
    obj: dict[int, float] = field(default_factory=dict)
    obj_const: float = 0.0
    time_unit: float = 1.0
    # --- index
    free: np.ndarray | None = None  # bool [n_act]: decision not fixed by presolve
    var_k: dict[int, int] = field(default_factory=dict)
    var_r: dict[int, int] = field(default_factory=dict)
    var_s: dict[int, int] = field(default_factory=dict)
    var_g: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # a -> [(g, var)]
    var_p: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # a -> [(p, var)]
    var_c: dict[tuple[int, int], int] = field(default_factory=dict)  # (target, member) -> var
    var_u: dict[tuple[int, int], int] = field(default_factory=dict)  # (target, shared op) -> var
    var_y: dict[tuple[int, int, int], int] = field(default_factory=dict)  # residency on an interval
    var_res: dict[int, int] = field(default_factory=dict)  # anchor -> bytes of gap residents there
    var_hold: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (target, made, held) -> var
    var_q: dict[int, int] = field(default_factory=dict)  # a -> swap-out completion var
    var_h: list[tuple[int, int, int]] = field(default_factory=list)  # (p, a, var) in H2D queue order
    var_d: dict[int, int] = field(default_factory=dict)  # position -> accumulated delay var
    var_stall: dict[int, int] = field(default_factory=dict)  # position -> stall var
    chains: dict[int, dict] = field(default_factory=dict)  # target -> closure description
    infeasible: str = ""  # non-empty: proven infeasible before building (the reason)
    stats: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ construction helpers
    def var(self, name: str, vtype: str, lb: float, ub: float, is_time: bool = False) -> int:
        self.names.append(name)
        self.vtype.append(vtype)
        self.lb.append(lb)
        self.ub.append(ub)
        self.is_time.append(is_time)
        return len(self.names) - 1

    def add(self, terms: dict[int, float], lo: float, hi: float, kind: str, enforce: int = -1) -> None:
        terms = {i: c for i, c in terms.items() if c != 0}
        if not terms:
            if lo > 1e-9 or hi < -1e-9:
                raise AssertionError("empty row that cannot hold")
            return
        idx = np.fromiter(terms.keys(), np.int64, len(terms))
        coef = np.fromiter(terms.values(), np.float64, len(terms))
        self.rows.append(Row(idx, coef, lo, hi, kind, enforce))

    @property
    def n_vars(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ plans <-> values
    def decode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decisions and prefetch points of a (rounded) solution vector."""
        m = self.problem.n_act
        d = np.zeros(m, np.int8)
        pf = np.full(m, -1, np.int64)
        for a in np.flatnonzero(self.free):
            a = int(a)
            if a in self.var_r and x[self.var_r[a]] > 0.5:
                d[a] = Decision.RECOMPUTE
            elif a in self.var_s and x[self.var_s[a]] > 0.5:
                d[a] = Decision.SWAP
                pf[a] = max((p for p, v in self.var_p[a] if x[v] > 0.5), default=-1)
        return d, pf

    def complete(self, decisions: np.ndarray, prefetch_at: np.ndarray) -> tuple[np.ndarray, str]:
        """A full assignment for a plan: every auxiliary variable at its smallest feasible value.

        Returns ``(x, problem)``; ``problem`` is empty when the plan lies inside the model, else a
        sentence saying which restriction it breaks (the assignment is then only a hint).
        """
        return _complete(self, np.asarray(decisions), np.asarray(prefetch_at))

    def objective_of(self, x: np.ndarray) -> float:
        """The objective in seconds."""
        return (self.obj_const + sum(c * x[i] for i, c in self.obj.items())) * self.time_unit

    def violation(self, x: np.ndarray) -> float:
        """Largest row violation of ``x`` (scaled: bytes / budget for memory rows, time units else)."""
        worst = 0.0
        for row in self.rows:
            if row.enforce >= 0 and x[row.enforce] < 0.5:
                continue
            v = float(row.coef @ x[row.idx])
            s = 1.0 / max(self.budget, 1) if row.kind == "mem" else 1.0
            worst = max(worst, (row.lo - v) * s, (v - row.hi) * s)
        return worst


# ---------------------------------------------------------------------------------------------
def _cum(problem: Problem) -> np.ndarray:
    cum = np.zeros(problem.n_ops + 1)
    np.cumsum(problem.op_time_s, out=cum[1:])
    return cum


def _range_add(n: int, start: np.ndarray, stop: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum of ``w[i]`` over the inclusive ranges ``[start[i], stop[i]]`` at each of ``n`` positions."""
    ok = stop >= start
    diff = np.zeros(n + 1)
    np.add.at(diff, start[ok], w[ok])
    np.add.at(diff, stop[ok] + 1, -w[ok])
    return np.rint(np.cumsum(diff[:n])).astype(np.int64)


def _chain_closures(problem: Problem, free: np.ndarray, can_r: np.ndarray, can_s: np.ndarray,
                    depth: int | None) -> dict[int, dict]:
    """Every activation a recompute chain of ``a`` may regenerate, within ``depth`` links.

    A source of a member is *open* at ``a``'s anchor when it is free, recomputable or swappable, and
    not resident there whatever its decision (KEEP, or brought back for its own backward use).
    """
    fbu, lbu = problem.first_bwd_use, problem.last_bwd_use
    out: dict[int, dict] = {}
    for a in np.flatnonzero(can_r):
        a = int(a)
        t = int(fbu[a])
        level = {a: 0}
        edges: list[tuple[int, int]] = []  # (member, recomputable open source): source joins if RECOMPUTE
        no_swap: list[tuple[int, int]] = []  # (member, swappable open source): may not be SWAP
        too_deep: list[tuple[int, int]] = []  # (member, source past the depth limit): may not be RECOMPUTE
        queue = deque([a])
        while queue:
            y = queue.popleft()
            for s in problem.recompute_sources[y]:
                s = int(s)
                if not free[s] or (fbu[s] <= t <= lbu[s]):
                    continue
                if can_s[s]:
                    no_swap.append((y, s))
                if not can_r[s]:
                    continue
                if s not in level:
                    if depth is not None and level[y] + 1 > depth:
                        too_deep.append((y, s))
                        continue
                    level[s] = level[y] + 1
                    queue.append(s)
                edges.append((y, s))
        out[a] = {"members": sorted(level), "edges": edges, "no_swap": no_swap, "too_deep": too_deep}
    return out


def _chain_hot(problem: Problem, closures: dict[int, dict], keep_all: np.ndarray, budget: int) -> np.ndarray:
    """Ops where some plan's recompute chains might exceed the budget (docs/cost_model.md, Memory).

    Upper bound: fixed - outputs + every activation alive + the largest chain with all its members
    held at once.
    """
    most = np.zeros(problem.n_ops, np.int64)
    for a, ch in closures.items():
        mem = ch["members"]
        t = int(problem.first_bwd_use[a])
        most[t] = max(most[t], int(problem.recompute_temp_bytes[mem].sum() + problem.act_bytes[mem].sum()))
    act = keep_all - problem.fixed_bytes - problem.op_transient_bytes
    return (most > 0) & (problem.fixed_bytes - problem.op_output_bytes + act + most > budget)


# ---------------------------------------------------------------------------------------------
def build(problem: Problem, budget: int, *, mode: str = "full", max_chain_depth: int | None = -1,
          exact_positions: bool | None = None, max_candidates: int = 6, prefetch: str = "free",
          plan: tuple[np.ndarray, np.ndarray] | None = None) -> Formulation:
    """Build the formulation of docs/ilp.md.

    ``plan``: a (decisions, prefetch_at) pair, e.g. the warm start, whose swap-out and prefetch points
    become candidates too, so that plan lies inside the model.

    ``max_chain_depth``: -1 = automatic (unlimited while small), None = unlimited, k = at most k links.
    ``exact_positions``: every op a boundary and complete candidate lists (default: small problems).
    ``prefetch``: "free" = choose prefetch points; "default" = only `default_prefetch` (as brute force).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if prefetch not in ("free", "default"):
        raise ValueError(f"prefetch must be 'free' or 'default', got {prefetch!r}")
    p = problem
    n, m = p.n_ops, p.n_act
    budget = int(budget)
    F = Formulation(problem=p, budget=budget, mode=mode)
    compute = float(p.op_time_s.sum())
    F.time_unit = tu = max(compute, 1e-12) / 1e4
    cum_s = _cum(p)
    cum = cum_s / tu
    swap = p.swap_time_s / tu
    base = (p.fixed_bytes + p.op_transient_bytes).astype(np.int64)
    created, lfu, fbu, lbu = p.created, p.last_fwd_use, p.first_bwd_use, p.last_bwd_use
    nbytes = p.act_bytes.astype(np.int64)
    exact = n <= _EXACT_MAX_OPS if exact_positions is None else bool(exact_positions)

    gap = fbu - lfu - 1  # positions an activation may leave the device
    can_r = p.recomputable & (mode != "swap") & (gap > 0)
    can_s = p.swappable & (mode != "recompute") & (gap > 0)
    # earliest op that can run without a swapped-out activation: its swap-out alone on the link
    g0 = np.searchsorted(cum, cum[lfu + 1] + swap + _TIME_MARGIN, side="left")
    g0 = np.maximum(g0, lfu + 1)
    pdef = default_prefetch(p)
    can_s &= g0 < fbu

    # --- quick infeasibility: what every plan holds -------------------------------------------------
    free = can_r | can_s
    floor, floor_t = p.peak_floor(movable=free)
    if floor > budget:
        F.infeasible = (f"budget {budget} B is below what every plan holds at op {floor_t} "
                        f"({p.op_names[floor_t]!r}): {floor} B (fixed + transient + activations "
                        f"in use there)")
        F.free = np.zeros(m, bool)
        return F
    keep_all = base + _range_add(n, created, lbu, nbytes.astype(float))

    depth_opt = max_chain_depth
    for _ in range(4):  # presolve to a fixed point (fixing KEEPs shortens chains, which frees positions)
        depth = depth_opt
        if depth_opt == -1:
            depth = None
            closures = _chain_closures(p, free, can_r & free, can_s & free, None)
            pairs = sum(len(c["members"]) for c in closures.values())
            if pairs > _PAIR_CAP:
                depth = 1
                for k in (8, 6, 4, 3, 2):
                    cl = _chain_closures(p, free, can_r & free, can_s & free, k)
                    if sum(len(c["members"]) for c in cl.values()) <= _PAIR_CAP:
                        depth = k
                        break
                closures = _chain_closures(p, free, can_r & free, can_s & free, depth)
        else:
            closures = _chain_closures(p, free, can_r & free, can_s & free, depth)
        hot = (keep_all > budget) | _chain_hot(p, closures, keep_all, budget)  # where a plan may exceed it
        hot_cum = np.concatenate([[0], np.cumsum(hot)])
        in_gap_hot = (hot_cum[fbu] - hot_cum[lfu + 1]) > 0
        newly = free & ~in_gap_hot
        if not newly.any():
            break
        free &= in_gap_hot
    can_r &= free
    can_s &= free
    F.free = free
    F.chains = closures
    F.stats["chain_depth"] = depth
    F.stats["n_free"] = int(free.sum())
    F.stats["n_fixed_keep"] = int(m - free.sum())

    # must-hold bytes given the fixed KEEPs
    must = base + _range_add(n, created, lfu, nbytes.astype(float)) + _range_add(n, fbu, lbu, nbytes.astype(float))
    must += _range_add(n, (lfu + 1)[~free], (fbu - 1)[~free], nbytes[~free].astype(float))

    # --- boundaries and candidates ----------------------------------------------------------------
    plan_g, plan_p = _plan_points(p, cum, swap, plan, can_s)
    fa = np.flatnonzero(free)
    if exact:
        bounds = np.arange(n)
    else:
        ev = [np.array([0, p.fwd_end + 1]), created, lfu[fa] + 1, fbu[fa], fbu[fa] + 1, lbu[fa] + 1]
        sa = np.flatnonzero(can_s)
        ev += [g0[sa], pdef[sa]]
        ev += [np.fromiter(plan_g.values(), np.int64, len(plan_g)), np.fromiter(plan_p.values(), np.int64, len(plan_p))]
        bounds = np.unique(np.concatenate(ev))
        bounds = bounds[(bounds >= 0) & (bounds < n)]
    G: dict[int, list[int]] = {}
    C: dict[int, list[int]] = {}
    cum_b = cum[bounds]
    for a in np.flatnonzero(can_s):
        a = int(a)
        if exact:
            lo_i, hi_i = np.searchsorted(bounds, [g0[a], fbu[a]], side="left")
            gs = bounds[lo_i:hi_i].tolist()
            lo_p, hi_p = np.searchsorted(bounds, [p.fwd_end + 1, fbu[a]], side="left")
            ps = bounds[lo_p:hi_p].tolist() + [int(fbu[a])]
        else:  # a few points, spaced by the activation's own transfer time
            tg = cum[lfu[a] + 1] + swap[a] * (1.0 + np.asarray(_G_LEADS)) + _TIME_MARGIN
            gi = np.searchsorted(cum_b, tg, side="left")
            gs = sorted({int(g0[a])} | {int(bounds[i]) for i in gi if i < len(bounds) and bounds[i] < fbu[a]})
            tp = cum[fbu[a]] - swap[a] * np.asarray(_P_LEADS[:max(1, max_candidates)])
            pi = np.searchsorted(cum_b, tp, side="right") - 1
            ps = sorted({int(pdef[a]), int(fbu[a])}
                        | {int(bounds[i]) for i in pi if i >= 0 and p.fwd_end < bounds[i] <= fbu[a]})
        if prefetch == "default":
            ps = [int(pdef[a])]
        if a in plan_g and plan_g[a] < plan_p[a] and (prefetch == "free" or plan_p[a] == pdef[a]):
            gs = sorted(set(gs) | {plan_g[a]})
            ps = sorted(set(ps) | {plan_p[a]})
        ps = [q for q in ps if q > g0[a]]
        if ps and ps[-1] > gs[0]:
            gs = [g for g in gs if g < ps[-1]]
            G[a], C[a] = gs, ps
        else:
            can_s[a] = False
    F.stats["exact_positions"] = exact
    # an activation that lost its swap option and cannot be recomputed is a fixed KEEP
    lost = free & ~can_r & ~can_s
    if lost.any():
        free &= ~lost
        must += _range_add(n, (lfu + 1)[lost], (fbu - 1)[lost], nbytes[lost].astype(float))
    closures = _chain_closures(p, free, can_r & free, can_s & free, depth)
    F.chains = closures
    F.free = free

    # --- check positions: per segment of constant structure, the op with the largest base ------------
    seg_start = bounds
    seg_stop = np.concatenate([bounds[1:], [n]])
    chain_hot = _chain_hot(p, closures, keep_all, budget)
    F.stats["n_chain_anchors"] = int(chain_hot.sum())
    checks = []
    for s0, s1 in zip(seg_start.tolist(), seg_stop.tolist(), strict=True):
        seg = must[s0:s1]
        c = s0 + int(np.argmax(seg))
        if keep_all[c] > budget:
            checks.append(c)
    checks = np.array(checks, np.int64)
    F.stats["n_segments"] = len(seg_start)
    checks = _prune_dominated(p, checks, free, must, G, C)
    F.stats["n_checks"] = len(checks)

    # --- variables: decisions --------------------------------------------------------------------
    for a in np.flatnonzero(free):
        a = int(a)
        F.var_k[a] = F.var(f"k{a}", "B", 0, 1)
        terms = {F.var_k[a]: 1.0}
        if can_r[a]:
            F.var_r[a] = F.var(f"r{a}", "B", 0, 1)
            terms[F.var_r[a]] = 1.0
        if can_s[a]:
            F.var_s[a] = v = F.var(f"s{a}", "B", 0, 1)
            terms[v] = 1.0
            F.var_g[a] = [(g, F.var(f"g{a}_{g}", "B", 0, 1)) for g in G[a]]
            F.var_p[a] = [(q, F.var(f"p{a}_{q}", "B", 0, 1)) for q in C[a]]
            F.add({v: -1.0, **{z: 1.0 for _, z in F.var_g[a]}}, 0, 0, "logic")
            F.add({v: -1.0, **{z: 1.0 for _, z in F.var_p[a]}}, 0, 0, "logic")
            for q, zq in F.var_p[a]:  # the copy back may not be issued before the swap-out frees
                later = [z for g, z in F.var_g[a] if g > q]
                if later:
                    F.add({zq: 1.0, **{z: 1.0 for z in later}}, -INF, 1, "logic")
        F.add(terms, 1, 1, "logic")

    # --- recompute chains ------------------------------------------------------------------------
    chain_time: dict[int, dict[int, float]] = {}
    for a, ch in closures.items():
        if a not in F.var_r:
            continue
        cv = {a: F.var_r[a]}
        for y in ch["members"]:
            if y != a:
                cv[y] = F.var_c[(a, y)] = F.var(f"c{a}_{y}", "C", 0, 1)
        for y, s in ch["edges"]:  # s joins the chain when y is in it and s is RECOMPUTE
            F.add({F.var_r[s]: 1.0, cv[y]: 1.0, cv[s]: -1.0}, -INF, 1, "logic")
        for y, s in ch["no_swap"]:
            F.add({cv[y]: 1.0, F.var_s[s]: 1.0}, -INF, 1, "logic")
        for y, s in ch["too_deep"]:
            F.add({cv[y]: 1.0, F.var_r[s]: 1.0}, -INF, 1, "logic")
        # time: each op once per chain
        count: dict[int, int] = {}
        for y in ch["members"]:
            for o in p.recompute_ops[y].tolist():
                count[o] = count.get(o, 0) + 1
        tterms: dict[int, float] = {}
        for y in ch["members"]:
            own = [o for o in p.recompute_ops[y].tolist() if count[o] == 1]
            if own:
                tterms[cv[y]] = tterms.get(cv[y], 0.0) + float(p.op_time_s[own].sum()) / tu
        for o, k in count.items():
            if k > 1:
                u = F.var_u[(a, o)] = F.var(f"u{a}_{o}", "C", 0, 1)
                for y in ch["members"]:
                    if o in p.recompute_ops[y]:
                        F.add({cv[y]: 1.0, u: -1.0}, -INF, 0, "logic")
                tterms[u] = float(p.op_time_s[o]) / tu
        chain_time[a] = tterms
        F.chains[a]["vars"] = cv

    # --- memory rows: while each check op runs --------------------------------------------------------
    free_idx = np.flatnonzero(free)

    def gap_terms(c: int) -> dict[int, float]:
        terms: dict[int, float] = {}
        for a in free_idx[(lfu[free_idx] < c) & (c < fbu[free_idx])].tolist():
            v = _resident_var(F, a, c)
            terms[v] = terms.get(v, 0.0) + float(nbytes[a])
        return terms

    for c in checks.tolist():
        F.add(gap_terms(c), -INF, budget - int(must[c]), "mem")

    # --- memory rows: while the chains anchored at an op run (one row per chain and member) ----------
    anchors: dict[int, list[int]] = {}
    for a in chain_time:
        anchors.setdefault(int(fbu[a]), []).append(a)
    for t, targets in sorted(anchors.items()):
        if not chain_hot[t]:
            continue
        targets.sort(key=lambda a: (int(created[a]), a))
        res = F.var_res[t] = F.var(f"RES{t}", "C", 0, float(nbytes.sum()))  # gap residents at t, bytes
        F.add({res: 1.0, **{v: -w for v, w in gap_terms(t).items()}}, 0, 0, "mem")
        const = int(p.fixed_bytes[t] - p.op_output_bytes[t]) + int(must[t] - base[t])
        for j, a in enumerate(targets):
            later = {F.var_r[b]: -float(nbytes[b]) for b in targets[j:]}  # targets not yet made
            for _, terms in _chain_member_rows(F, p, a):
                F.add({res: 1.0, **_merge(later, terms)}, -INF, budget - const, "mem")

    # --- time ------------------------------------------------------------------------------------
    obj: dict[int, float] = {}
    for tterms in chain_time.values():
        for v, w in tterms.items():
            obj[v] = obj.get(v, 0.0) + w
    swappers = sorted(F.var_s)
    horizon = cum[n] + sum(sum(t.values()) for t in chain_time.values()) + 2 * float(swap[swappers].sum()) + 1
    F.stats["horizon_units"] = horizon
    if swappers:
        # swap-outs: one FIFO link, issue order (last forward use, index); forward times are static
        prev = -1
        for a in sorted(swappers, key=lambda a: (int(lfu[a]), a)):
            q = F.var_q[a] = F.var(f"Q{a}", "C", 0, horizon, True)
            sv = F.var_s[a]
            if prev >= 0:
                F.add({q: 1.0, prev: -1.0, sv: -float(swap[a])}, 0, INF, "time")
            F.add({q: 1.0, sv: -float(cum[lfu[a] + 1] + swap[a])}, 0, INF, "time")
            for g, z in F.var_g[a]:
                F.add({q: 1.0}, -INF, float(cum[g]) - _TIME_MARGIN, "time", enforce=z)
            prev = q
        # delays: D(t) = stall + recompute before op t, at every prefetch candidate and anchor
        pos = sorted({q for a in swappers for q, _ in F.var_p[a]} | {int(fbu[a]) for a in swappers})
        for t in sorted({int(fbu[a]) for a in swappers}):
            F.var_stall[t] = F.var(f"stall{t}", "C", 0, horizon, True)
        rec_at: dict[int, dict[int, float]] = {}
        for a, tterms in chain_time.items():
            d = rec_at.setdefault(int(fbu[a]), {})
            for v, w in tterms.items():
                d[v] = d.get(v, 0.0) + w
        # each anchor's recompute and each stall enters the first D after it
        inc: dict[int, dict[int, float]] = {t: {} for t in pos}
        for u, terms_u in list(rec_at.items()) + [(u, {sv: 1.0}) for u, sv in F.var_stall.items()]:
            j = bisect.bisect_right(pos, u)
            if j < len(pos):
                d = inc[pos[j]]
                for v, w in terms_u.items():
                    d[v] = d.get(v, 0.0) - w
        prev_d = -1
        for t in pos:
            dv = F.var_d[t] = F.var(f"D{t}", "C", 0, horizon, True)
            terms = {dv: 1.0, **inc[t]}
            if prev_d >= 0:
                terms[prev_d] = -1.0
            F.add(terms, 0, 0, "time")
            prev_d = dv
        # copies back: one FIFO link, issue order (prefetch op, index)
        seq = sorted((q, a, z) for a in swappers for q, z in F.var_p[a])
        prev = -1
        for q, a, z in seq:
            h = F.var(f"H{a}_{q}", "C", 0, horizon, True)
            F.var_h.append((q, a, h))
            if prev >= 0:
                F.add({h: 1.0, prev: -1.0, z: -float(swap[a])}, 0, INF, "time")
            F.add({h: 1.0, F.var_d[q]: -1.0}, float(cum[q] + swap[a]), INF, "time", enforce=z)
            F.add({h: 1.0, F.var_q[a]: -1.0}, float(swap[a]), INF, "time", enforce=z)
            t = int(fbu[a])
            F.add({F.var_stall[t]: 1.0, F.var_d[t]: 1.0, h: -1.0}, -float(cum[t]), INF, "time", enforce=z)
            prev = h
        for sv in F.var_stall.values():
            obj[sv] = obj.get(sv, 0.0) + 1.0
        _link_cuts(F, swappers, cum, swap)
    F.obj = obj
    F.obj_const = cum[n]
    F.stats["n_vars"] = F.n_vars
    F.stats["n_rows"] = len(F.rows)
    F.stats["n_nonzeros"] = int(sum(len(r.idx) for r in F.rows))
    return F


def _link_cuts(F: Formulation, swappers: list[int], cum: np.ndarray, swap: np.ndarray) -> None:
    """Valid inequalities that make each link's capacity visible to the LP relaxation.

    Without them a fractional swap is free in the relaxation (its stall and swap-out rows are enforced
    by a binary, i.e. big-M), and the bound collapses to the compute time. Work on a FIFO link issued
    in a window must fit in it:

    * copy back, window from prefetch position P to first backward use t: every copy issued at or after
      op P and needed by op t (fbu <= t) fits between T(P) = cum[P] + D(P) and T(t) + stall(t);
    * swap-out, window from issue time e_a to op g: swaps issued from e_a on and done by cum[g] fit.

    One window per (activation, candidate point); rows of kind "cut" (CP-SAT may round them loosely).
    """
    p = F.problem
    fbu, lfu = p.first_bwd_use, p.last_fwd_use
    by_t = sorted(swappers, key=lambda a: int(fbu[a]))
    fb_sorted = [int(fbu[a]) for a in by_t]
    seen: set[tuple[int, int]] = set()
    for a in swappers:
        t = int(fbu[a])
        for q, _ in F.var_p[a]:
            if (q, t) in seen:
                continue
            seen.add((q, t))
            lo, hi = bisect.bisect_left(fb_sorted, q), bisect.bisect_right(fb_sorted, t)
            terms: dict[int, float] = {}
            for b in by_t[lo:hi]:
                for q2, z in F.var_p[b]:
                    if q2 >= q:
                        terms[z] = float(swap[b])
            terms[F.var_stall[t]] = -1.0
            terms[F.var_d[t]] = terms.get(F.var_d[t], 0.0) - 1.0
            if q != t:
                terms[F.var_d[q]] = terms.get(F.var_d[q], 0.0) + 1.0
            F.add(terms, -INF, float(cum[t] - cum[q]), "cut")
    by_e = sorted(swappers, key=lambda a: (int(lfu[a]), a))
    e_sorted = [int(lfu[a]) for a in by_e]
    seen_g: set[tuple[int, int]] = set()
    for a in swappers:
        e = int(lfu[a])
        for g, _ in F.var_g[a]:
            if (e, g) in seen_g:
                continue
            seen_g.add((e, g))
            lo = bisect.bisect_left(e_sorted, e)
            terms = {}
            for b in by_e[lo:]:
                if cum[lfu[b] + 1] >= cum[g]:
                    break
                for g2, z in F.var_g[b]:
                    if g2 <= g:
                        terms[z] = float(swap[b])
            if len(terms) > 1:
                F.add(terms, -INF, float(cum[g] - cum[e + 1]), "cut")


def _plan_points(p: Problem, cum: np.ndarray, swap: np.ndarray, plan, can_s: np.ndarray
                 ) -> tuple[dict[int, int], dict[int, int]]:
    """For a plan's swaps: the first op its swap-out lets run without it (FIFO link), and its prefetch."""
    if plan is None:
        return {}, {}
    d, pf = np.asarray(plan[0]), np.asarray(plan[1])
    sw = [int(a) for a in np.flatnonzero(d == Decision.SWAP) if can_s[a]]
    gs, ps = {}, {}
    free_at = 0.0
    for a in sorted(sw, key=lambda a: (int(p.last_fwd_use[a]), a)):
        free_at = max(free_at, cum[p.last_fwd_use[a] + 1]) + swap[a]
        g = int(np.searchsorted(cum, free_at + _TIME_MARGIN, side="left"))
        if g < p.n_ops and p.fwd_end < pf[a] <= p.first_bwd_use[a]:
            gs[a], ps[a] = max(g, int(p.last_fwd_use[a]) + 1), int(pf[a])
    return gs, ps


def _merge(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def _chain_member_rows(F: Formulation, p: Problem, a: int) -> list[tuple[int, dict[int, float]]]:
    """For each possible member x of ``a``'s chain: the bytes held while x is made, as terms.

    Members are made in creation order; making x holds x, its intermediates, and every earlier member
    y that a member made at or after x still reads (a held-variable h >= c_y + c_z - 1 per such
    reader z). Rows for members not in the chain are implied by the next member's row (docs/ilp.md).
    """
    ch = F.chains[a]
    cv = ch["vars"]
    order = sorted(ch["members"], key=lambda y: (int(p.created[y]), y))
    rank = {y: i for i, y in enumerate(order)}
    readers: dict[int, list[int]] = {}
    for z in order:
        for y in p.recompute_sources[z].tolist():
            if y in rank and y != a:
                readers.setdefault(y, []).append(z)
    rows = []
    own = member_peaks(p)
    for x in order:
        terms = {cv[x]: float(own[x])}
        for y in order[:rank[x]]:
            zs = [z for z in readers.get(y, []) if rank[z] >= rank[x]]
            if not zs:
                continue
            key = (a, x, y)
            h = F.var_hold.get(key)
            if h is None:
                h = F.var_hold[key] = F.var(f"h{a}_{x}_{y}", "C", 0, 1)
                for z in zs:
                    F.add({cv[y]: 1.0, cv[z]: 1.0, h: -1.0}, -INF, 1, "logic")
            terms[h] = terms.get(h, 0.0) + float(p.act_bytes[y])
        rows.append((x, terms))
    return rows


def _resident_var(F: Formulation, a: int, c: int) -> int:
    """The variable that is 1 when ``a`` is resident at gap position ``c``.

    resident = k + sum(z_g: g > c) + sum(z_p: p <= c), constant between candidate points; one
    continuous variable per such interval (defined by an equality row), or ``k`` itself where no
    candidate term applies. Memory rows then carry one term per activation.
    """
    gl = F.var_g.get(a)
    if not gl:
        return F.var_k[a]
    g_after = [z for g, z in gl if g > c]
    p_upto = [z for q, z in F.var_p[a] if q <= c]
    if not g_after and not p_upto:
        return F.var_k[a]
    key = (a, len(g_after), len(p_upto))
    v = F.var_y.get(key)
    if v is None:
        v = F.var_y[key] = F.var(f"y{a}_{len(g_after)}_{len(p_upto)}", "C", 0, 1)
        F.add({v: 1.0, F.var_k[a]: -1.0, **{z: -1.0 for z in g_after + p_upto}}, 0, 0, "logic")
    return v


def _prune_dominated(p: Problem, checks: np.ndarray, free: np.ndarray, must: np.ndarray,
                     G: dict, C: dict, window: int = 8) -> np.ndarray:
    """Drop check positions whose memory can never exceed a nearby check's, for any plan.

    ``c1`` is dominated by ``c2`` when must(c2) - must(c1) plus, for every free activation, the least
    its variable residency can rise from c1 to c2 is >= 0 (see docs/ilp.md). Chain memory has rows of
    its own, so anchors are ordinary positions here.
    """
    if len(checks) < 2:
        return checks
    fa = np.flatnonzero(free)
    lfu, fbu = p.last_fwd_use[fa], p.first_bwd_use[fa]
    nb = p.act_bytes[fa].astype(np.float64)
    ingap = (lfu[None, :] < checks[:, None]) & (checks[:, None] < fbu[None, :])  # [k, f]
    # number of swap-out / copy-back candidates at or before each check, per activation
    gcnt = np.zeros((len(checks), len(fa)), np.int32)
    pcnt = np.zeros((len(checks), len(fa)), np.int32)
    for j, a in enumerate(fa.tolist()):
        if a in G:
            gcnt[:, j] = np.searchsorted(np.asarray(G[a]), checks, side="right")
            pcnt[:, j] = np.searchsorted(np.asarray(C[a]), checks, side="right")
    alive = np.ones(len(checks), bool)
    for i in range(len(checks)):
        lo, hi = max(0, i - window), min(len(checks), i + window + 1)
        for j in range(lo, hi):
            if j == i or not alive[j]:
                continue
            drop = np.zeros(len(fa), bool)
            drop |= ingap[i] & ~ingap[j]
            both = ingap[i] & ingap[j]
            if j > i:
                drop |= both & (gcnt[j] > gcnt[i])
            else:
                drop |= both & (pcnt[i] > pcnt[j])
            if must[checks[j]] - must[checks[i]] - float(nb[drop].sum()) >= 0:
                alive[i] = False
                break
    return checks[alive]


# ---------------------------------------------------------------------------------------------
def _complete(F: Formulation, d: np.ndarray, pf: np.ndarray) -> tuple[np.ndarray, str]:
    p = F.problem
    x = np.zeros(F.n_vars)
    issues = []
    tu = F.time_unit
    cum = _cum(p) / tu
    swap = p.swap_time_s / tu
    for a in range(p.n_act):
        if not F.free[a]:
            if d[a] != Decision.KEEP:
                issues.append(f"activation {a} is fixed KEEP by presolve")
            continue
        code = int(d[a])
        if code == Decision.RECOMPUTE and a not in F.var_r:
            issues.append(f"activation {a} cannot be RECOMPUTE in the model")
            code = Decision.KEEP
        if code == Decision.SWAP and a not in F.var_s:
            issues.append(f"activation {a} cannot be SWAP in the model")
            code = Decision.KEEP
        x[F.var_k[a]] = code == Decision.KEEP
        if a in F.var_r:
            x[F.var_r[a]] = code == Decision.RECOMPUTE
        if a in F.var_s:
            x[F.var_s[a]] = code == Decision.SWAP
    swapped = [a for a in F.var_s if x[F.var_s[a]] > 0.5]
    # swap-outs (FIFO)
    free_at = 0.0
    q_of: dict[int, float] = {}
    for a in sorted(F.var_q, key=lambda a: (int(p.last_fwd_use[a]), a)):
        if x[F.var_s[a]] > 0.5:
            free_at = max(free_at, cum[p.last_fwd_use[a] + 1]) + swap[a]
            q_of[a] = free_at
        x[F.var_q[a]] = free_at
    chosen_p: dict[int, int] = {}
    for a in swapped:
        gs = [(g, z) for g, z in F.var_g[a] if cum[g] - _TIME_MARGIN >= q_of[a]]
        if gs:
            x[gs[0][1]] = 1
        else:
            issues.append(f"swap-out of {a} ends after its last candidate")
            x[F.var_g[a][-1][1]] = 1
        ps = [(q, z) for q, z in F.var_p[a] if q >= pf[a]]
        q, z = ps[0] if ps else F.var_p[a][-1]
        if q != pf[a]:
            issues.append(f"prefetch of {a} at {pf[a]} is not a candidate (using {q})")
        x[z] = 1
        chosen_p[a] = q
    for (a, ng, npp), v in F.var_y.items():
        gz = [z for _, z in F.var_g[a]][len(F.var_g[a]) - ng:]
        pz = [z for _, z in F.var_p[a]][:npp]
        x[v] = x[F.var_k[a]] + x[gz].sum() + x[pz].sum()
    # chains: tight closure values
    for a, ch in F.chains.items():
        if a not in F.var_r or x[F.var_r[a]] < 0.5:
            continue
        on = {a}
        changed = True
        while changed:
            changed = False
            for y, s in ch["edges"]:
                if y in on and s not in on and x[F.var_r[s]] > 0.5:
                    on.add(s)
                    changed = True
        for y in on - {a}:
            x[F.var_c[(a, y)]] = 1
        for (t, o), u in F.var_u.items():
            if t == a and any(o in p.recompute_ops[y] for y in on):
                x[u] = 1
        for y, s in ch["no_swap"]:
            if y in on and x[F.var_s[s]] > 0.5:
                issues.append(f"chain of {a} needs swapped-out {s}")
        for y, s in ch["too_deep"]:
            if y in on and x[F.var_r[s]] > 0.5:
                issues.append(f"chain of {a} is deeper than the model allows")
    for (a, xm, y), h in F.var_hold.items():
        cv = F.chains[a]["vars"]
        rank_x = (int(p.created[xm]), xm)
        x[h] = float(x[cv[y]] > 0.5 and any(
            x[cv[z]] > 0.5 and (int(p.created[z]), z) >= rank_x and y in p.recompute_sources[z]
            for z in F.chains[a]["members"]))
    for t, res in F.var_res.items():
        c = t
        total = 0.0
        for a in np.flatnonzero(F.free).tolist():
            if p.last_fwd_use[a] < c < p.first_bwd_use[a]:
                total += float(p.act_bytes[a]) * x[_resident_var_existing(F, a, c)]
        x[res] = total
    # delays, copies back, stalls: walk positions in order
    if F.var_d:
        rec_at: dict[int, float] = {}
        for a in F.var_r:
            if x[F.var_r[a]] > 0.5 and a in F.chains:
                t = int(p.first_bwd_use[a])
                rec_at[t] = rec_at.get(t, 0.0) + _chain_units(F, x, a)
        h_by_pos: dict[int, list[tuple[int, int, int]]] = {}
        for q, a, h in F.var_h:
            h_by_pos.setdefault(q, []).append((q, a, h))
        arrive: dict[int, float] = {}
        link = 0.0
        delay = 0.0
        stall: dict[int, float] = {}
        events = sorted(set(F.var_d) | set(rec_at) | set(h_by_pos))
        done_rec = set()
        h_iter = iter(F.var_h)
        h_next = next(h_iter, None)
        for t in events:
            # positions before t contributed their stall and recompute already
            # issue copies back at t (in queue order)
            while h_next is not None and h_next[0] == t:
                q, a, h = h_next
                if chosen_p.get(a) == q:
                    start = max(cum[q] + delay, link, q_of[a])
                    link = start + swap[a]
                    arrive[a] = link
                x[h] = link
                h_next = next(h_iter, None)
            if t in F.var_d:
                x[F.var_d[t]] = delay
            if t in F.var_stall:
                w = max([arrive[a] for a in swapped if int(p.first_bwd_use[a]) == t], default=-INF)
                s = max(0.0, w - (cum[t] + delay))
                stall[t] = s
                x[F.var_stall[t]] = s
                delay += s
            if t in rec_at and t not in done_rec:
                delay += rec_at[t]
                done_rec.add(t)
        while h_next is not None:  # pragma: no cover - every H position is an event
            x[h_next[2]] = link
            h_next = next(h_iter, None)
    return x, "; ".join(issues)


def _resident_var_existing(F: Formulation, a: int, c: int) -> int:
    gl = F.var_g.get(a)
    if not gl:
        return F.var_k[a]
    ng = sum(1 for g, _ in gl if g > c)
    npp = sum(1 for q, _ in F.var_p[a] if q <= c)
    return F.var_k[a] if not ng and not npp else F.var_y[(a, ng, npp)]


def _chain_units(F: Formulation, x: np.ndarray, a: int) -> float:
    """Chain time of target ``a`` in time units, from the chain variables already set in ``x``."""
    p = F.problem
    members = [y for y in F.chains[a]["members"] if y == a or x[F.var_c[(a, y)]] > 0.5]
    ops = np.unique(np.concatenate([p.recompute_ops[y] for y in members]))
    return float(p.op_time_s[ops].sum()) / F.time_unit
