"""A lower bound on every plan's iteration time that bites where memory forces eviction (docs/ilp.md).

Every plan takes at least the compute time; the full model's LP relaxation gives no more, because a
fractional swap hides its transfer for free. This bound is a separate, small relaxation of *every*
plan (not only those the ILP admits), solved as an LP (or, with ``integral``, a MIP on the decisions
whose proven dual bound is used):

* at each memory check ``t`` (the op with most keep-all memory in a hot segment of constant gap
  membership), the bytes over budget must leave: ``Σ B_a (off_{a,t} + g_{a,t}) ≥ keep(t) − budget``
  over activations in their gap at ``t`` (``off``: RECOMPUTE and not yet regenerated at ``t``, which
  in backward is at most ``r_a`` and never rises, since a recompute may be anchored early; ``g``:
  SWAPped and off the device at ``t``);
* an activation off the device at ``t`` by a swap was sent over the device-to-host link after its
  last forward use (static issue time ``e_a``) and before ``t`` starts, so for every threshold ``e``
  the transfers of those issued at or after ``e`` fit in ``start(t) − e``; it comes back over the
  host-to-device link after ``t`` (and in backward) and before its first backward use, so for every
  ``u`` those needed by ``u`` fit in ``start(u) − reached(max(t + 1, fwd_end + 1))``. Before a backward
  check the delay is ``D_t ≤ Z − Σ recompute_time(a) off_{a,t}`` (what is recomputed after ``t`` comes
  after it), after it at most ``Z − D_t``;
* a recomputed activation's chain may not read a swapped source that is first read in backward after
  the target is (`mutwo.schedule.resolve_recompute` refuses such plans): ``r_a + s_x ≤ 1``;
* start times are the static ones plus the delays (recompute and stall) before them: none in forward,
  at most the total ``Z`` in backward; ``Z ≥ Σ_a recompute_time(a) r_a`` plus, per chain member that
  is still off at its target's first backward use, the ops only it runs (`solvers.ilp_bound_chains`);
  the objective is ``compute + Z``.

Every plan maps to a feasible point (``r``, ``s``, ``g``, ``off`` from its decisions, anchors and
simulated residency, ``D_t`` its delay before ``t``, ``Z`` = its recompute + stall), so ``compute + Z*`` never exceeds any plan's simulated time; a subset
of checks or thresholds only weakens it, and an infeasible relaxation proves no plan fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from mutwo.problem import Problem
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from solvers.ilp_bound_chains import CHAIN_DEPTH, ChainMember, chain_members
from solvers.modes import may_recompute, may_swap

__all__ = ["IterationBound", "iteration_bound", "check_positions"]

_THRESHOLDS = 16  # link-capacity thresholds per check: copies back (host to device)
# and for swap-outs (device to host), whose rows decide which swaps have left by a check: coarse ones let
# the relaxation's point send out more than the link can carry before the backward pass starts
_OUT_THRESHOLDS = 64
_SWAP_PRICE = 1e-7  # per swap, in time units (1e-11 of compute): the most it takes off the bound is negligible
_INTEGRAL_TOL = 1e-6  # an LP value this close to 0 or 1 counts as integral
_LP_SAFETY = 1e-6  # relative: an LP optimum is accurate to the solver's tolerances, not exactly


@dataclass(frozen=True, eq=False)
class IterationBound:
    """``bound_s`` ≤ the simulated time of every plan that fits ``budget`` (``inf``: none fits).

    ``recompute`` / ``swap``: the relaxation's values of ``r_a`` / ``s_a`` per activation (None when no
    relaxation was solved), from which `solvers.ilp_rounding` makes a plan."""

    bound_s: float
    compute_s: float
    n_checks: int
    method: str  # "lp" | "mip" | "compute" (no check over budget)
    solve_s: float
    message: str = ""
    recompute: np.ndarray | None = None
    swap: np.ndarray | None = None
    # an integral point of the relaxation (`_Relaxation.integral_point`), or None
    point_recompute: np.ndarray | None = None
    point_swap: np.ndarray | None = None
    checks: np.ndarray | None = None  # the ops whose memory the relaxation checked

    @property
    def infeasible(self) -> bool:
        return self.bound_s == float("inf")


def check_positions(problem: Problem, keep_timeline: np.ndarray, budget: int, max_checks: int) -> np.ndarray:
    """Ops over budget under keep-all, one per segment of constant gap membership (the one with most
    memory), at most ``max_checks`` of them (the fullest always, the rest spread over positions)."""
    n = problem.n_ops
    bounds = np.unique(np.concatenate([[0, n], problem.last_fwd_use + 1, problem.first_bwd_use]))
    bounds = bounds[(bounds >= 0) & (bounds <= n)]
    excess = keep_timeline - budget
    picks = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            t = lo + int(np.argmax(excess[lo:hi]))
            if excess[t] > 0:
                picks.append(t)
    picks = np.asarray(picks, np.int64)
    if len(picks) <= max_checks:
        return picks
    top = picks[np.argmax(excess[picks])]
    spread = picks[np.linspace(0, len(picks) - 1, max_checks - 1).round().astype(np.int64)]
    return np.unique(np.concatenate([[top], spread]))


class _Rows:
    """Sparse rows ``lo <= A x <= hi`` collected as coordinate triples."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def add(self, cols, vals, lo: float, hi: float) -> None:
        cols = np.asarray(cols, np.int64)
        self.r.append(np.full(len(cols), len(self.lo), np.int64))
        self.c.append(cols)
        self.v.append(np.asarray(vals, np.float64))
        self.lo.append(lo)
        self.hi.append(hi)

    def add_pairs(self, a_cols: np.ndarray, b_cols: np.ndarray, a_coef: float, b_coef: float, lo: float,
                  hi: float) -> None:
        """One row ``lo <= a_coef x[a] + b_coef x[b] <= hi`` per pair, at once."""
        k = len(a_cols)
        first = len(self.lo)
        ids = np.arange(first, first + k)
        self.r += [ids, ids]
        self.c += [np.asarray(a_cols, np.int64), np.asarray(b_cols, np.int64)]
        self.v += [np.full(k, a_coef), np.full(k, b_coef)]
        self.lo += [lo] * k
        self.hi += [hi] * k

    def constraint(self, n_vars: int) -> LinearConstraint:
        A = sp.csr_array((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
                         shape=(len(self.lo), n_vars))
        return LinearConstraint(A, np.asarray(self.lo), np.asarray(self.hi))


class _Vars:
    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integral: list[int] = []

    def new(self, k: int, ub: float, integral: int) -> np.ndarray:
        first = len(self.lb)
        self.lb += [0.0] * k
        self.ub += [ub] * k
        self.integral += [integral] * k
        return np.arange(first, first + k)


def _prefix_rows(rows: _Rows, V: _Vars, cols: np.ndarray, weights: np.ndarray, keys: np.ndarray,
                 limit_of_key, delay: list[tuple[int, float]], descending: bool, most: int = _THRESHOLDS) -> None:
    """For thresholds ``k`` among the keys: ``Σ_{key ⪰ k} weight · x ≤ limit_of_key(k) + Σ coef · delay_var``
    (``⪰`` is ≥ when ``descending``, else ≤; ``delay``: (variable, coefficient) pairs, the delays that may
    stretch the window), with one running-sum variable per threshold (linear in size). At most ``most``
    thresholds, spread over the distinct keys (fewer rows only weaken the bound)."""
    sign = -1 if descending else 1
    order = np.argsort(sign * keys, kind="stable")
    keys, cols, weights = keys[order], cols[order], weights[order]
    uniq = np.unique(sign * keys) * sign  # in visiting order
    if len(uniq) > most:
        uniq = uniq[np.unique(np.linspace(0, len(uniq) - 1, most).round().astype(np.int64))]
    # bucket j: the keys after threshold j - 1 up to threshold j (included), in visiting order, so the
    # running sum at threshold j holds exactly the keys ⪰ it
    ends = np.searchsorted(sign * keys, sign * uniq, side="right")
    starts = np.concatenate([[0], ends[:-1]])
    run = V.new(len(uniq), np.inf, 0)
    for j, (k, s, e) in enumerate(zip(uniq, starts, ends, strict=True)):
        prev = [run[j - 1]] if j else []
        rows.add([run[j], *prev, *cols[s:e]], [1.0, *([-1.0] if j else []), *(-weights[s:e])], 0.0, np.inf)
        rows.add([run[j], *(v for v, _ in delay)], [1.0, *(-c for _, c in delay)], -np.inf, limit_of_key(k))


def _lp(c: np.ndarray, A: LinearConstraint, V: _Vars, seconds: float):
    """The LP by HiGHS' dual simplex (as ``linprog``: two-sided rows split into ``<=`` / ``==``)."""
    M = sp.csr_array(A.A)
    lo, hi = np.asarray(A.lb), np.asarray(A.ub)
    up = np.isfinite(hi)
    down = np.isfinite(lo)
    A_ub = sp.vstack([M[up], -M[down]]).tocsr()
    b_ub = np.concatenate([hi[up], -lo[down]])
    return linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(V.lb, V.ub, strict=True)), method="highs-ds",
                   options={"time_limit": seconds, "presolve": True})


class _Relaxation:
    """The LP of the module doc, built row by row (variables: ``Z``, ``r``, ``s``, per check the swaps
    ``g`` and recomputes ``off`` that are off the device there, per chain pair ``w``)."""

    def __init__(self, p: Problem, budget: int, mode: str, integral: bool, keep: np.ndarray, chain_depth: int):
        self.p, self.budget, self.keep, self.integral = p, budget, keep, int(integral)
        compute = float(p.op_time_s.sum())
        self.unit = max(compute, 1e-12) / 1e4  # time unit (as the ILP's), bytes in MiB: rows near 1..1e4
        self.cum = np.concatenate([[0.0], np.cumsum(p.op_time_s)]) / self.unit
        self.tau = p.swap_time_s / self.unit
        self.size = p.act_bytes / 2**20
        self.issue = self.cum[p.last_fwd_use + 1]
        self.can_r = p.recomputable & may_recompute(mode)
        self.can_s = p.swappable & may_swap(mode)
        self.chain_depth = chain_depth
        self.V, self.rows = _Vars(), _Rows()
        self.z = int(self.V.new(1, np.inf, 0)[0])
        self.r_of = dict(zip(np.flatnonzero(self.can_r).tolist(),
                             self.V.new(int(self.can_r.sum()), 1.0, self.integral).tolist(), strict=True))
        self.s_of = dict(zip(np.flatnonzero(self.can_s).tolist(),
                             self.V.new(int(self.can_s.sum()), 1.0, self.integral).tolist(), strict=True))
        self.off_of: dict[tuple[int, int], int] = {}  # (activation, backward op) -> recomputed and off there
        self.z_terms: list[tuple[int, float]] = [(self.r_of[a], float(p.recompute_time_s[a]) / self.unit)
                                                 for a in self.r_of]

    def decisions(self) -> None:
        """One decision per activation; no chain reading a swapped source that is not back yet
        (`resolve_recompute` refuses it): a source first read in backward after the target is never
        back in time; every copy back is issued in backward and is back by its first backward use."""
        p, r_of, s_of, fb = self.p, self.r_of, self.s_of, self.p.first_bwd_use
        both = sorted(set(r_of) & set(s_of))
        self.rows.add_pairs(np.array([r_of[a] for a in both], np.int64), np.array([s_of[a] for a in both], np.int64),
                            1.0, 1.0, -np.inf, 1.0)
        pairs = [(r_of[a], s_of[int(x)]) for a in r_of for x in p.recompute_sources[a].tolist()
                 if int(x) in s_of and fb[x] > fb[a]]
        if pairs:
            ra, sx = np.array(pairs, np.int64).T
            self.rows.add_pairs(ra, sx, 1.0, 1.0, -np.inf, 1.0)
        if s_of:
            sc = np.fromiter(s_of, np.int64, len(s_of))
            back0 = self.cum[p.fwd_end + 1]
            _prefix_rows(self.rows, self.V, np.fromiter(s_of.values(), np.int64, len(sc)), self.tau[sc], fb[sc],
                         lambda u: self.cum[u] - back0, [(self.z, 1.0)], descending=False)

    def residency(self, checks: np.ndarray, members: list[ChainMember]) -> None:
        """``off_{a,t}`` for a recomputable ``a`` at each backward op ``t`` of its gap that a check or a
        chain pair names: its anchor is later than ``t`` (a recompute may be anchored anywhere in
        backward up to ``fb_a``, and is resident from its anchor on), so ``off ≤ r_a`` and ``off`` never
        rises from one such op to a later one."""
        p = self.p
        where: dict[int, set[int]] = {}
        for t in checks[checks > p.fwd_end].tolist():
            for a in np.flatnonzero((p.last_fwd_use < t) & (p.first_bwd_use > t) & self.can_r).tolist():
                where.setdefault(a, set()).add(t)
        for m in members:
            where.setdefault(m.member, set()).add(m.at)
        for a, ts in where.items():
            ts = sorted(ts)
            ids = self.V.new(len(ts), 1.0, 0)
            prev = np.concatenate([[self.r_of[a]], ids[:-1]])
            self.rows.add_pairs(ids, prev, 1.0, -1.0, -np.inf, 0.0)
            self.off_of.update({(a, t): int(i) for t, i in zip(ts, ids, strict=True)})

    def chains(self, members: list[ChainMember]) -> None:
        """``w_{a,m} ≥ w_{a,parent} + off_{m,fb_a} − 1``, priced at the member's own ops in ``Z``."""
        w_of: dict[tuple[int, int], int] = {}
        for m in members:
            parent = self.r_of[m.target] if m.parent == m.target else w_of[(m.target, m.parent)]
            w = int(self.V.new(1, 1.0, 0)[0])
            w_of[(m.target, m.member)] = w
            self.rows.add([w, parent, self.off_of[(m.member, m.at)]], [1.0, -1.0, -1.0], -1.0, np.inf)
            if m.extra_s > 0:
                self.z_terms.append((w, m.extra_s / self.unit))

    def check(self, t: int) -> str:
        """The covering row at check ``t`` and its link rows; a message when no plan can cover it."""
        p, V, rows = self.p, self.V, self.rows
        lf, fb, can_r, can_s, size, tau, cum = p.last_fwd_use, p.first_bwd_use, self.can_r, self.can_s, self.size, \
            self.tau, self.cum
        gap = np.flatnonzero((lf < t) & (fb > t) & (can_r | can_s))
        movable = float(size[gap].sum())
        need = (self.keep[t] - self.budget) / 2**20
        if movable < need:
            return (f"op {t} ({p.op_names[t]}) is {self.keep[t] - self.budget} B over budget with every "
                    f"plan: its gap activations that may leave hold only {int(movable * 2**20)} B")
        forward = t <= p.fwd_end
        # a swap can have left by t only if its transfer could end before t starts
        sw = gap[can_s[gap] & ((not forward) | (self.issue[gap] + tau[gap] <= cum[t]))]
        g = V.new(len(sw), 1.0, 0)
        rows.add_pairs(g, np.array([self.s_of[a] for a in sw.tolist()], np.int64), 1.0, -1.0, -np.inf, 0.0)
        rg = gap[can_r[gap]].tolist()
        off = [self.r_of[a] if forward else self.off_of[(a, t)] for a in rg]
        rows.add([*off, *g], [*size[rg], *size[sw]], need, np.inf)
        if not forward:  # the delay before t: Z less what is recomputed at or after t (`delay_before`)
            before = self.delay_before(t, rg)
        if len(sw):
            _prefix_rows(rows, V, g, tau[sw], self.issue[sw], lambda e, t=t: cum[t] - e,
                         [] if forward else [(before, 1.0)], descending=True, most=_OUT_THRESHOLDS)
            since = cum[max(t + 1, p.fwd_end + 1)]
            _prefix_rows(rows, V, g, tau[sw], fb[sw], lambda u, since=since: cum[u] - since,
                         [(self.z, 1.0)] + ([] if forward else [(before, -1.0)]), descending=False)
        return ""

    def delay_before(self, t: int, gap_r: list[int]) -> int:
        """``D_t``: recompute and stall before backward op ``t``. The total ``Z`` is at least ``D_t`` plus
        the recomputes anchored after ``t`` (those off the device at ``t``), so ``D_t ≤ Z − Σ rec off``;
        a swap-out must end by ``start(t) ≤ static(t) + D_t``, and after ``t`` the copies back have at
        most ``Z − D_t`` of delay to hide in."""
        d = int(self.V.new(1, np.inf, 0)[0])
        rec = self.p.recompute_time_s / self.unit
        self.rows.add([self.z, d, *(self.off_of[(a, t)] for a in gap_r)], [1.0, -1.0, *(-rec[gap_r])], 0.0, np.inf)
        return d

    def solve(self, seconds: float):
        cols, coefs = zip(*self.z_terms, strict=True) if self.z_terms else ((), ())
        self.rows.add([self.z, *cols], [1.0, *(-np.asarray(coefs))], 0.0, np.inf)  # Z covers every recompute
        self.c = np.zeros(len(self.V.lb))
        self.c[self.z] = 1.0
        # a swap that frees nothing at any check costs nothing above; a tiny price keeps it out of the
        # solution the rounding reads (it would clog the link), and is taken off the bound
        self.c[list(self.s_of.values())] = _SWAP_PRICE
        self.A = self.rows.constraint(len(self.V.lb))
        if self.integral:
            return milp(self.c, constraints=self.A, bounds=Bounds(self.V.lb, self.V.ub),
                        integrality=np.asarray(self.V.integral), options={"time_limit": seconds, "presolve": True})
        return _lp(self.c, self.A, self.V, seconds)

    def integral_point(self, x: np.ndarray, seconds: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The LP's solution made integral: its integral decisions fixed, the fractional ones solved as a
        small MIP over the same rows (a start for the rounding, never part of the bound). None when that
        MIP has no solution in ``seconds``."""
        lb, ub = np.asarray(self.V.lb, float), np.asarray(self.V.ub, float)
        integrality = np.zeros(len(lb))
        dec = np.fromiter([*self.r_of.values(), *self.s_of.values()], np.int64)
        v = x[dec]
        whole = (np.abs(v - np.rint(v)) <= _INTEGRAL_TOL)
        lb[dec[whole]] = ub[dec[whole]] = np.rint(v[whole])
        integrality[dec[~whole]] = 1
        res = milp(self.c, constraints=self.A, bounds=Bounds(lb, ub), integrality=integrality,
                   options={"time_limit": seconds, "presolve": True})
        if res.x is None:
            return None
        rec, swap = np.zeros(self.p.n_act), np.zeros(self.p.n_act)
        rec[list(self.r_of)] = np.rint(res.x[list(self.r_of.values())])
        swap[list(self.s_of)] = np.rint(res.x[list(self.s_of.values())])
        return rec, swap


def iteration_bound(problem: Problem, budget_bytes: int, mode: str = "both", *, max_checks: int = 400,
                    integral: bool = False, time_limit_s: float = 20.0, chain_depth: int = CHAIN_DEPTH,
                    with_point: bool = False, extra_checks: np.ndarray | None = None) -> IterationBound:
    """The bound of the module doc for ``budget_bytes`` (see `IterationBound`); ``chain_depth``: sources
    followed from each recompute target for the chain rows (0: none); ``with_point``: also an integral
    point of the LP (``point_recompute`` / ``point_swap``) within what is left of ``time_limit_s``."""
    t0 = time.perf_counter()
    p, budget = problem, int(budget_bytes)
    compute = float(p.op_time_s.sum())
    keep = simulate(p, Schedule.keep_all(p)).timeline_bytes
    checks = check_positions(p, keep, budget, max_checks)
    if extra_checks is not None and len(extra_checks):
        extra = np.asarray(extra_checks, np.int64)
        checks = np.union1d(checks, extra[keep[extra] > budget])
    if len(checks) == 0:
        return IterationBound(compute, compute, 0, "compute", time.perf_counter() - t0,
                              "keep-all fits: no check over budget")
    R = _Relaxation(p, budget, mode, integral, keep, chain_depth)
    members = chain_members(p, R.can_r, chain_depth) if chain_depth > 0 else []
    R.decisions()
    R.residency(checks, members)
    R.chains(members)
    for t in checks.tolist():
        why = R.check(t)
        if why:
            return IterationBound(float("inf"), compute, len(checks), "presolve", time.perf_counter() - t0, why)
    res = R.solve(max(1.0, time_limit_s - (time.perf_counter() - t0)))
    elapsed = time.perf_counter() - t0
    method = "mip" if integral else "lp"
    if res.status == 2:  # infeasible relaxation: no plan fits
        return IterationBound(float("inf"), compute, len(checks), method, elapsed,
                              "the bound's relaxation is infeasible: no plan fits this budget")
    extra = getattr(res, "mip_dual_bound", None) if integral else (res.fun if res.status == 0 else None)
    if extra is None or not np.isfinite(extra):
        return IterationBound(compute, compute, len(checks), "compute", elapsed,
                              f"relaxation not solved ({res.message}); compute-time bound only")
    extra = max(0.0, float(extra) - _SWAP_PRICE * len(R.s_of)) * (1 - _LP_SAFETY) * R.unit
    if res.x is None:
        return IterationBound(compute + extra, compute, len(checks), method, elapsed,
                              f"{method} over {len(checks)} checks: compute {compute:.6g} s + {extra:.6g} s",
                              checks=checks)
    values = np.asarray(res.x)
    rec, swap = np.zeros(p.n_act), np.zeros(p.n_act)
    rec[list(R.r_of)] = values[list(R.r_of.values())]
    swap[list(R.s_of)] = values[list(R.s_of.values())]
    left = time_limit_s - (time.perf_counter() - t0)
    point = R.integral_point(values, left) if with_point and not integral and left > 0.5 else None
    return IterationBound(compute + extra, compute, len(checks), method, time.perf_counter() - t0,
                          f"{method} over {len(checks)} checks: compute {compute:.6g} s + {extra:.6g} s",
                          rec, swap, *(point or (None, None)), checks=checks)
