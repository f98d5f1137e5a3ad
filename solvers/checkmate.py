"""Checkmate-style exact rematerialization ILP (Jain et al., MLSys 2020), recompute only: the reference.

The stage grid is the op sequence (one stage per op; or, for larger problems, one stage per run of ops
between liveness events). Per activation ``a`` and stage ``k``:

  R[k,a]  ``a`` is (re)computed at the start of stage k     S[k,a]  ``a`` stays resident through stage k
  A[k,a]  ``a`` is resident at the start of stage k (kept from stage k-1 or just recomputed)

  A[k,a] <= S[k-1,a] + R[k,a]     S[k,a] <= A[k,a]     R[k,a] <= A[k,a]     R[k,a] <= A[k,s] (s a source)

``a`` must be resident where the Problem uses it (``[created, last_fwd_use]``, ``[first_bwd_use,
last_bwd_use]``). Memory is checked while each stage's ops run (S, at the stage's largest base) and
while each node is recomputed: what stays from before and is not being recomputed, plus the node, its
intermediates and its recomputed inputs -- the least any evaluation order within the stage must hold
(Checkmate fixes one order and frees inputs after their last use; the least-any-order count keeps this
model a relaxation of ours, see below). Cost = compute + every recompute, each op once per stage.

This grid is *more permissive* than our recompute rule (a RECOMPUTE activation is regenerated exactly
at its first backward use, and a chain's temporaries are counted per chain and regenerated per chain):
Checkmate may recompute early and hold, or share one regenerated source between several targets. Every
recompute-only plan of ours is a Checkmate plan with no more memory and no more time, hence

    Checkmate optimum  <=  best recompute-only plan under docs/cost_model.md  (= brute_force(mode="recompute"))

The returned Schedule is the projection (RECOMPUTE where Checkmate drops the activation at some stage),
simulated; ``bound`` is the Checkmate optimum, a proven lower bound for recompute-only plans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.schedule import Decision, Schedule, ScheduleError, Status, member_peaks
from mutwo.simulate import simulate
from mutwo.solver_options import Ge, Gt
from solvers.ilp_backends import BACKENDS
from solvers.ilp_model import INF, Formulation
from solvers.options import read_options

__all__ = ["checkmate_exact", "build_checkmate", "CheckmateOptions", "MAX_ACT"]

MAX_ACT = 60
_OPS_GRID_MAX = 200  # up to this many ops every op is its own stage
_GRIDS = ("auto", "ops", "events")

Key = tuple[int, int]  # (stage, activation)


@dataclass(frozen=True)
class CheckmateOptions:
    """Options of ``checkmate_exact``. ``mode`` must be "recompute"; ``warm_start`` is accepted and not
    used (no start plan for this model), so the ILP solvers' options can be shared."""

    backend: Literal["cpsat", "ortools_mip", "pulp_cbc", "pulp_highs"] = "cpsat"  # solvers.ilp_backends
    time_limit_s: Annotated[float, Gt(0)] = 60.0
    rel_gap: Annotated[float, Ge(0)] = 1e-6
    threads: Annotated[int, Ge(1)] = 2
    seed: int = 0
    grid: Literal["auto", "ops", "events"] = "auto"  # "ops": a stage per op; "events": per run between liveness events
    max_act: Annotated[int, Ge(1)] = MAX_ACT  # refuse larger problems: this is a reference for small graphs
    mode: Literal["recompute"] = "recompute"
    warm_start: Schedule | str | None = None

    def __post_init__(self) -> None:
        if self.mode != "recompute":
            raise ValueError(f"checkmate_exact is recompute-only: use mode='recompute' (got mode={self.mode!r})")
        for name, kind in (("time_limit_s", float), ("rel_gap", float), ("threads", int), ("seed", int),
                           ("max_act", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))


@dataclass
class _Grid:
    """The stage grid and the per-stage view of the Problem."""

    tau: np.ndarray  # first op of each stage
    stop: np.ndarray  # one past the last op of each stage
    kc: np.ndarray  # stage of each activation's creation
    kl: np.ndarray  # ... of its last forward use
    kf: np.ndarray  # ... of its first backward use
    kb: np.ndarray  # ... of its last backward use
    free: np.ndarray  # bool: may be dropped and recomputed (a stage between its uses)
    const: np.ndarray  # bytes resident in every plan per stage (fixed activations; free ones outside their gap)
    base: np.ndarray  # fixed + transient bytes per op


def _stages(problem: Problem, grid: str) -> np.ndarray:
    n = problem.n_ops
    if grid == "ops" or (grid == "auto" and n <= _OPS_GRID_MAX):
        return np.arange(n)
    p = problem
    ev = np.concatenate([[0, p.fwd_end + 1], p.created, p.last_fwd_use + 1, p.first_bwd_use,
                         p.first_bwd_use + 1, p.last_bwd_use + 1])
    ev = np.unique(ev)
    return ev[ev < n]


def _grid(p: Problem, grid: str) -> _Grid:
    tau = _stages(p, grid)
    stop = np.concatenate([tau[1:], [p.n_ops]])
    stage_of = np.searchsorted(tau, np.arange(p.n_ops), side="right") - 1
    kc, kl = stage_of[p.created], stage_of[p.last_fwd_use]
    kf, kb = stage_of[p.first_bwd_use], stage_of[p.last_bwd_use]
    free = p.recomputable & (kf - kl > 1)
    const = np.zeros(len(tau), np.int64)
    for a in range(p.n_act):
        b = int(p.act_bytes[a])
        if free[a]:
            const[kc[a]:kl[a] + 1] += b
            const[kf[a]:kb[a] + 1] += b
        else:
            const[kc[a]:kb[a] + 1] += b
    base = (p.fixed_bytes + p.op_transient_bytes).astype(np.int64)
    return _Grid(tau, stop, kc, kl, kf, kb, free, const, base)


def _residency(F: Formulation, g: _Grid) -> tuple[dict[Key, int], dict[Key, int], dict[Key, int]]:
    """S (stays through stage k), A (resident at its start), R ((re)computed at its start), and the
    rows A <= S_prev + R, S <= A, R <= A, R <= A of each source."""
    p = F.problem
    S: dict[Key, int] = {}
    A: dict[Key, int] = {}
    R: dict[Key, int] = {}
    for a in np.flatnonzero(g.free).tolist():
        for k in range(g.kl[a] + 1, g.kf[a]):
            S[(k, a)] = F.var(f"S{k}_{a}", "B", 0, 1)
            A[(k, a)] = F.var(f"A{k}_{a}", "B", 0, 1)
        for k in range(g.kl[a] + 1, g.kf[a] + 1):
            R[(k, a)] = F.var(f"R{k}_{a}", "B", 0, 1)
    for a in np.flatnonzero(g.free).tolist():
        for k in range(g.kl[a] + 1, g.kf[a] + 1):
            prev = S.get((k - 1, a))  # None: resident (k-1 == kl) -> constraint trivially holds
            r = R[(k, a)]
            if k < g.kf[a]:
                if prev is not None:
                    F.add({A[(k, a)]: 1.0, prev: -1.0, r: -1.0}, -INF, 0, "logic")
                F.add({S[(k, a)]: 1.0, A[(k, a)]: -1.0}, -INF, 0, "logic")
                F.add({r: 1.0, A[(k, a)]: -1.0}, -INF, 0, "logic")
            elif prev is not None:  # resident again from its first backward use
                F.add({prev: 1.0, r: 1.0}, 1, INF, "logic")
            for s in p.recompute_sources[a].tolist():
                v = A.get((k, s))  # None: s is always resident at the start of stage k
                if v is not None:
                    F.add({r: 1.0, v: -1.0}, -INF, 0, "logic")
    return S, A, R


def _recompute_cost(F: Formulation, R: dict[Key, int], by_stage: dict[int, list[int]]) -> dict[int, float]:
    """Objective terms: every recompute, each op once per stage (a shared-op variable W where shared)."""
    p = F.problem
    obj: dict[int, float] = {}
    for k, acts in by_stage.items():
        count: dict[int, int] = {}
        for a in acts:
            for o in p.recompute_ops[a].tolist():
                count[o] = count.get(o, 0) + 1
        for a in acts:
            own = [o for o in p.recompute_ops[a].tolist() if count[o] == 1]
            if own:
                obj[R[(k, a)]] = float(p.op_time_s[own].sum()) / F.time_unit
        for o, c in count.items():
            if c > 1:
                w = F.var(f"W{k}_{o}", "C", 0, 1)
                for a in acts:
                    if o in p.recompute_ops[a]:
                        F.add({R[(k, a)]: 1.0, w: -1.0}, -INF, 0, "logic")
                obj[w] = float(p.op_time_s[o]) / F.time_unit
    return obj


def _op_memory_rows(F: Formulation, g: _Grid, S: dict[Key, int], in_gap: dict[int, list[int]]) -> None:
    """Memory while each stage's op runs: what stays resident through the stage (S), at its largest base."""
    p = F.problem
    for k in range(len(g.tau)):
        t0, t1 = int(g.tau[k]), int(g.stop[k])
        t = t0 + int(np.argmax(g.base[t0:t1]))
        rhs = F.budget - int(g.base[t]) - int(g.const[k])
        if rhs < 0:
            F.infeasible = f"op {t} ({p.op_names[t]!r}) needs {int(g.base[t] + g.const[k])} B in every plan"
            continue
        F.add({S[(k, a)]: float(p.act_bytes[a]) for a in in_gap.get(k, [])}, -INF, rhs, "mem")


def _recompute_memory_rows(F: Formulation, g: _Grid, A: dict[Key, int], R: dict[Key, int],
                           in_gap: dict[int, list[int]], by_stage: dict[int, list[int]]) -> None:
    """Memory while a stage's recomputations run (before its op allocates outputs and workspace).

    What was resident and is not being recomputed (P >= A - R), plus the node being made, its
    intermediates and its recomputed inputs: what any evaluation order must hold at that moment.
    """
    p = F.problem
    P: dict[Key, int] = {}
    for (k, a), av in A.items():
        P[(k, a)] = F.var(f"P{k}_{a}", "C", 0, 1)
        F.add({P[(k, a)]: 1.0, av: -1.0, R[(k, a)]: 1.0}, 0, INF, "logic")
    own = member_peaks(p)
    for k, acts in by_stage.items():
        t = int(g.tau[k])
        common: dict[int, float] = {P[(k, a)]: float(p.act_bytes[a]) for a in in_gap.get(k, [])}
        for a in acts:
            if g.kf[a] == k:  # resident from here on (in const) but not until it is made
                common[R[(k, a)]] = common.get(R[(k, a)], 0.0) - float(p.act_bytes[a])
        rhs = F.budget - int(p.fixed_bytes[t] - p.op_output_bytes[t]) - int(g.const[k])
        for i in acts:
            terms = dict(common)
            terms[R[(k, i)]] = terms.get(R[(k, i)], 0.0) + float(own[i])
            for s_ in p.recompute_sources[i].tolist():
                if (k, s_) in R:
                    y = F.var(f"Y{k}_{s_}_{i}", "C", 0, 1)
                    F.add({R[(k, s_)]: 1.0, R[(k, i)]: 1.0, y: -1.0}, -INF, 1, "logic")
                    terms[y] = terms.get(y, 0.0) + float(p.act_bytes[s_])
            if rhs < 0 and not any(terms.values()):
                F.infeasible = F.infeasible or (f"op {t} ({p.op_names[t]!r}) needs more than the budget while "
                                                f"its recomputations run, in every plan")
                continue
            F.add(terms, -INF, rhs, "mem")


def build_checkmate(problem: Problem, budget: int, grid: str = "auto") -> tuple[Formulation, dict]:
    """The stage-indexed model as a backend-neutral Formulation, plus its index."""
    if grid not in _GRIDS:
        raise ValueError(f"grid must be one of {_GRIDS}, got {grid!r}")
    p = problem
    F = Formulation(problem=p, budget=int(budget), mode="recompute")
    F.time_unit = max(float(p.op_time_s.sum()), 1e-12) / 1e4
    g = _grid(p, grid)
    S, A, R = _residency(F, g)
    by_stage: dict[int, list[int]] = {}
    for (k, a) in R:
        by_stage.setdefault(k, []).append(a)
    F.obj = _recompute_cost(F, R, by_stage)
    in_gap: dict[int, list[int]] = {}
    for (k, a) in S:
        in_gap.setdefault(k, []).append(a)
    _op_memory_rows(F, g, S, in_gap)
    _recompute_memory_rows(F, g, A, R, in_gap, by_stage)
    F.obj_const = float(p.op_time_s.sum()) / F.time_unit
    F.free = g.free
    F.stats = {"stages": len(g.tau), "n_vars": F.n_vars, "n_rows": len(F.rows), "n_free": int(g.free.sum())}
    return F, {"S": S, "R": R, "A": A, "free": g.free}


@register_solver("checkmate_exact", options=CheckmateOptions)
def checkmate_exact(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Solve the Checkmate grid exactly; options `CheckmateOptions`."""
    opts = read_options(CheckmateOptions, options, "checkmate_exact")
    if problem.n_act > opts.max_act:
        raise ValueError(f"checkmate_exact is a reference for small graphs: n_act={problem.n_act} > {opts.max_act}")
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    shown = {"backend": opts.backend, "rel_gap": opts.rel_gap, "grid": opts.grid}
    F, idx = build_checkmate(problem, budget, opts.grid)
    shown["model"] = dict(F.stats)
    if F.infeasible:
        s = Schedule.infeasible(problem, "checkmate_exact", budget, F.infeasible, options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    res = BACKENDS[opts.backend](F, time_limit_s=opts.time_limit_s, rel_gap=opts.rel_gap, abs_gap=0.0,
                                 threads=opts.threads, seed=opts.seed, hint=None)
    shown["engine"] = res.engine
    if res.x is None:
        status = Status.INFEASIBLE if res.status == "infeasible" else Status.TIMEOUT
        why = ("no recompute-only plan fits (Checkmate's grid admits every plan of our recompute rule)"
               if status == Status.INFEASIBLE else f"{res.engine}: no plan found ({res.message})")
        s = Schedule.keep_all(problem, solver="checkmate_exact", status=status, budget_bytes=budget,
                              options=shown, message=why)
        s.solve_time_s = time.perf_counter() - t0
        return s
    x = np.rint(res.x)
    cm_obj = F.objective_of(x)
    cm_bound = cm_obj if res.status == "optimal" else min(cm_obj, (res.bound or 0.0) * F.time_unit)
    shown["checkmate_objective_s"] = cm_obj
    d = np.zeros(problem.n_act, np.int8)
    for (_, a), v in idx["S"].items():
        if x[v] < 0.5:
            d[a] = Decision.RECOMPUTE
    pf = np.full(problem.n_act, -1, np.int64)
    note = ""
    try:
        sim = simulate(problem, Schedule(d, pf))
    except ScheduleError as exc:  # pragma: no cover - recompute-only plans are always valid
        sim, note = None, f"projection invalid: {exc}"
    if sim is not None and sim.peak_bytes > budget:
        from solvers.ilp import repair

        note = f"projection peak {sim.peak_bytes} B > budget under our recompute rule; repaired"
        d, pf, sim = repair(problem, budget, d, pf, mode="recompute")
    if sim is None:
        s = Schedule(d, pf, solver="checkmate_exact", status=Status.INVALID, budget_bytes=budget, options=shown,
                     bound=cm_bound, message=f"Checkmate optimum {cm_obj:.6g} s; {note}; no fitting projection")
        s.solve_time_s = time.perf_counter() - t0
        return s
    same = abs(sim.time_s - cm_obj) <= 1e-9 * sim.time_s
    status = Status.OPTIMAL if (res.status == "optimal" and same) else Status.FEASIBLE
    msg = (f"Checkmate {res.status}: {cm_obj:.9g} s (lower bound for recompute-only plans); projection "
           f"simulates to {sim.time_s:.9g} s, peak {sim.peak_bytes} B" + (f"; {note}" if note else ""))
    s = Schedule(d, pf, solver="checkmate_exact", status=status, budget_bytes=budget, options=shown,
                 objective=sim.time_s, bound=cm_bound, message=msg)
    s.solve_time_s = time.perf_counter() - t0
    return s
