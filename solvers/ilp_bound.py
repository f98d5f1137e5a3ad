"""A lower bound on every plan's iteration time that bites where memory forces eviction (docs/ilp.md).

Every plan takes at least the compute time; the full model's LP relaxation gives no more, because a
fractional swap hides its transfer for free. This bound is a separate, small relaxation of *every*
plan (not only those the ILP admits), solved as an LP (or, with ``integral``, a MIP on the decisions
whose proven dual bound is used):

* at each memory check ``t`` (the op with most keep-all memory in a hot segment of constant gap
  membership), the bytes over budget must leave: ``Σ B_a (r_a + g_{a,t}) ≥ keep(t) − budget`` over
  activations in their gap at ``t`` (``r``: RECOMPUTE, ``g``: SWAPped and off the device at ``t``);
* an activation off the device at ``t`` by a swap was sent over the device-to-host link after its
  last forward use (static issue time ``e_a``) and before ``t`` starts, so for every threshold ``e``
  the transfers of those issued at or after ``e`` fit in ``start(t) − e``; it comes back over the
  host-to-device link after ``t`` (and in backward) and before its first backward use, so for every
  ``u`` those needed by ``u`` fit in ``start(u) − reached(max(t + 1, fwd_end + 1))``;
* a recomputed activation's chain may not read a swapped source that is first read in backward after
  the target is (`mutwo.schedule.resolve_recompute` refuses such plans): ``r_a + s_x ≤ 1``;
* start times are the static ones plus the delays (recompute and stall) before them: none in forward,
  at most the total ``Z`` in backward; ``Z ≥ Σ_a recompute_time(a) r_a`` (a chain runs at least its
  target's own ops), and the objective is ``compute + Z``.

Every plan maps to a feasible point (``r``, ``s``, ``g`` from its decisions and simulated residency,
``Z`` = its recompute + stall), so ``compute + Z*`` never exceeds any plan's simulated time; a subset
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
from solvers.modes import may_recompute, may_swap

__all__ = ["IterationBound", "iteration_bound", "check_positions"]

_THRESHOLDS = 16  # link-capacity thresholds per check and direction
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
                 limit_of_key, z: int, z_coef: float, descending: bool, most: int = _THRESHOLDS) -> None:
    """For thresholds ``k`` among the keys: ``Σ_{key ⪰ k} weight · x ≤ limit_of_key(k) + z_coef · Z`` (``⪰``
    is ≥ when ``descending``, else ≤), with one running-sum variable per threshold (linear in size). At
    most ``most`` thresholds, spread over the distinct keys (fewer rows only weaken the bound)."""
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
        rows.add([run[j], z], [1.0, -z_coef], -np.inf, limit_of_key(k))


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


def iteration_bound(problem: Problem, budget_bytes: int, mode: str = "both", *, max_checks: int = 400,
                    integral: bool = False, time_limit_s: float = 20.0) -> IterationBound:
    """The bound of the module doc for ``budget_bytes`` (see `IterationBound`)."""
    t0 = time.perf_counter()
    p, budget = problem, int(budget_bytes)
    compute = float(p.op_time_s.sum())
    keep = simulate(p, Schedule.keep_all(p)).timeline_bytes
    checks = check_positions(p, keep, budget, max_checks)
    if len(checks) == 0:
        return IterationBound(compute, compute, 0, "compute", time.perf_counter() - t0,
                              "keep-all fits: no check over budget")
    unit = max(compute, 1e-12) / 1e4  # time unit (as the ILP's), bytes in MiB: rows near 1..1e4
    cum = np.concatenate([[0.0], np.cumsum(p.op_time_s)]) / unit
    tau = p.swap_time_s / unit
    rec_t = p.recompute_time_s / unit
    size = p.act_bytes / 2**20
    lf, fb = p.last_fwd_use, p.first_bwd_use
    issue = cum[lf + 1]
    can_r = p.recomputable & may_recompute(mode)
    can_s = p.swappable & may_swap(mode)

    V, rows = _Vars(), _Rows()
    z = int(V.new(1, np.inf, 0)[0])
    r_of = dict(zip(np.flatnonzero(can_r).tolist(), V.new(int(can_r.sum()), 1.0, int(integral)).tolist(),
                    strict=True))
    s_of = dict(zip(np.flatnonzero(can_s).tolist(), V.new(int(can_s.sum()), 1.0, int(integral)).tolist(),
                    strict=True))
    # Z covers every recompute; one decision per activation
    rc = np.fromiter(r_of, np.int64, len(r_of))
    rows.add([z, *r_of.values()], [1.0, *(-rec_t[rc])], 0.0, np.inf)
    both = sorted(set(r_of) & set(s_of))
    rows.add_pairs(np.array([r_of[a] for a in both], np.int64), np.array([s_of[a] for a in both], np.int64),
                   1.0, 1.0, -np.inf, 1.0)
    # a recompute may not read a swapped source that is not back yet (`resolve_recompute` refuses it):
    # a source first read in backward after the target's first backward use is never back in time
    pairs = [(r_of[a], s_of[int(x)]) for a in r_of for x in p.recompute_sources[a].tolist()
             if int(x) in s_of and fb[x] > fb[a]]
    if pairs:
        ra, sx = np.array(pairs, np.int64).T
        rows.add_pairs(ra, sx, 1.0, 1.0, -np.inf, 1.0)
    back0 = cum[p.fwd_end + 1]
    if s_of:  # every copy back is issued in backward and is back by its first backward use
        sc = np.fromiter(s_of, np.int64, len(s_of))
        _prefix_rows(rows, V, np.fromiter(s_of.values(), np.int64, len(sc)), tau[sc], fb[sc],
                     lambda u: cum[u] - back0, z, 1.0, descending=False)
    for t in checks.tolist():
        gap = np.flatnonzero((lf < t) & (fb > t) & (can_r | can_s))
        movable = float(size[gap].sum())
        need = (keep[t] - budget) / 2**20
        if movable < need:
            return IterationBound(float("inf"), compute, len(checks), "presolve", time.perf_counter() - t0,
                                  f"op {t} ({p.op_names[t]}) is {keep[t] - budget} B over budget with every "
                                  f"plan: its gap activations that may leave hold only {int(movable * 2**20)} B")
        forward = t <= p.fwd_end
        # a swap can have left by t only if its transfer could end before t starts
        sw = gap[can_s[gap] & ((not forward) | (issue[gap] + tau[gap] <= cum[t]))]
        g = V.new(len(sw), 1.0, 0)
        rows.add_pairs(g, np.array([s_of[a] for a in sw.tolist()], np.int64), 1.0, -1.0, -np.inf, 0.0)
        rg = gap[can_r[gap]]
        rows.add([*(r_of[a] for a in rg.tolist()), *g], [*size[rg], *size[sw]], need, np.inf)
        if len(sw):
            _prefix_rows(rows, V, g, tau[sw], issue[sw], lambda e, t=t: cum[t] - e, z, 0.0 if forward else 1.0,
                         descending=True)
            since = cum[max(t + 1, p.fwd_end + 1)]
            _prefix_rows(rows, V, g, tau[sw], fb[sw], lambda u, since=since: cum[u] - since, z, 1.0,
                         descending=False)
    c = np.zeros(len(V.lb))
    c[z] = 1.0
    integrality = np.asarray(V.integral) if integral else None
    left = max(1.0, time_limit_s - (time.perf_counter() - t0))
    if integral:
        res = milp(c, constraints=rows.constraint(len(V.lb)), bounds=Bounds(V.lb, V.ub), integrality=integrality,
                   options={"time_limit": left, "presolve": True})
    else:
        A = rows.constraint(len(V.lb))
        res = _lp(c, A, V, left)
    elapsed = time.perf_counter() - t0
    method = "mip" if integral else "lp"
    if res.status == 2:  # infeasible relaxation: no plan fits
        return IterationBound(float("inf"), compute, len(checks), method, elapsed,
                              "the bound's relaxation is infeasible: no plan fits this budget")
    extra = getattr(res, "mip_dual_bound", None) if integral else (res.fun if res.status == 0 else None)
    if extra is None or not np.isfinite(extra):
        return IterationBound(compute, compute, len(checks), "compute", elapsed,
                              f"relaxation not solved ({res.message}); compute-time bound only")
    extra = max(0.0, float(extra)) * (1 - _LP_SAFETY) * unit
    values = np.zeros(len(V.lb)) if res.x is None else np.asarray(res.x)
    rec, swap = np.zeros(p.n_act), np.zeros(p.n_act)
    rec[list(r_of)] = values[list(r_of.values())]
    swap[list(s_of)] = values[list(s_of.values())]
    return IterationBound(compute + extra, compute, len(checks), method, elapsed,
                          f"{method} over {len(checks)} checks: compute {compute:.6g} s + {extra:.6g} s",
                          rec if res.x is not None else None, swap if res.x is not None else None)
