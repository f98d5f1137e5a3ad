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

import numpy as np

from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.schedule import Decision, Schedule, ScheduleError, Status, member_peaks
from mutwo.simulate import simulate
from solvers.ilp_backends import BACKENDS
from solvers.ilp_model import INF, Formulation

__all__ = ["checkmate_exact", "build_checkmate", "MAX_ACT"]

MAX_ACT = 60
# what checkmate_exact takes (name -> default); the registry refuses any other. ``warm_start`` is
# accepted and not used (no start plan for this model), so the ILP solvers' options can be shared.
_OPTIONS = {"backend": "cpsat", "time_limit_s": 60.0, "rel_gap": 1e-6, "threads": 2, "seed": 0, "grid": "auto",
            "max_act": MAX_ACT, "mode": "recompute", "warm_start": None}
_OPS_GRID_MAX = 200  # up to this many ops every op is its own stage


def _stages(problem: Problem, grid: str) -> np.ndarray:
    n = problem.n_ops
    if grid == "ops" or (grid == "auto" and n <= _OPS_GRID_MAX):
        return np.arange(n)
    p = problem
    ev = np.concatenate([[0, p.fwd_end + 1], p.created, p.last_fwd_use + 1, p.first_bwd_use,
                         p.first_bwd_use + 1, p.last_bwd_use + 1])
    ev = np.unique(ev)
    return ev[ev < n]


def build_checkmate(problem: Problem, budget: int, grid: str = "auto") -> tuple[Formulation, dict]:
    """The stage-indexed model as a backend-neutral Formulation, plus its index."""
    p = problem
    n, m = p.n_ops, p.n_act
    F = Formulation(problem=p, budget=int(budget), mode="recompute")
    F.time_unit = tu = max(float(p.op_time_s.sum()), 1e-12) / 1e4
    tau = _stages(p, grid)
    K = len(tau)
    stop = np.concatenate([tau[1:], [n]])
    stage_of = np.searchsorted(tau, np.arange(n), side="right") - 1
    base = (p.fixed_bytes + p.op_transient_bytes).astype(np.int64)
    kc, kl = stage_of[p.created], stage_of[p.last_fwd_use]
    kf, kb = stage_of[p.first_bwd_use], stage_of[p.last_bwd_use]
    free = p.recomputable & (kf - kl > 1)

    # constant residency per stage (fixed activations whole life; free ones outside their gap)
    const = np.zeros(K, np.int64)
    for a in range(m):
        b = int(p.act_bytes[a])
        if free[a]:
            const[kc[a]:kl[a] + 1] += b
            const[kf[a]:kb[a] + 1] += b
        else:
            const[kc[a]:kb[a] + 1] += b
    S: dict[tuple[int, int], int] = {}
    A: dict[tuple[int, int], int] = {}
    R: dict[tuple[int, int], int] = {}
    for a in np.flatnonzero(free).tolist():
        for k in range(kl[a] + 1, kf[a]):
            S[(k, a)] = F.var(f"S{k}_{a}", "B", 0, 1)
            A[(k, a)] = F.var(f"A{k}_{a}", "B", 0, 1)
        for k in range(kl[a] + 1, kf[a] + 1):
            R[(k, a)] = F.var(f"R{k}_{a}", "B", 0, 1)

    def avail(k: int, s: int) -> int | None:
        """Variable for "s resident at the start of stage k", or None when it always is."""
        return A.get((k, s))

    for a in np.flatnonzero(free).tolist():
        for k in range(kl[a] + 1, kf[a] + 1):
            prev = S.get((k - 1, a))  # None: resident (k-1 == kl) -> constraint trivially holds
            r = R[(k, a)]
            if k < kf[a]:
                if prev is not None:
                    F.add({A[(k, a)]: 1.0, prev: -1.0, r: -1.0}, -INF, 0, "logic")
                F.add({S[(k, a)]: 1.0, A[(k, a)]: -1.0}, -INF, 0, "logic")
                F.add({r: 1.0, A[(k, a)]: -1.0}, -INF, 0, "logic")
            elif prev is not None:  # resident again from its first backward use
                F.add({prev: 1.0, r: 1.0}, 1, INF, "logic")
            for s in p.recompute_sources[a].tolist():
                v = avail(k, s)
                if v is not None:
                    F.add({r: 1.0, v: -1.0}, -INF, 0, "logic")

    # recompute cost, each op once per stage
    obj: dict[int, float] = {}
    by_stage: dict[int, list[int]] = {}
    for (k, a) in R:
        by_stage.setdefault(k, []).append(a)
    for k, acts in by_stage.items():
        count: dict[int, int] = {}
        for a in acts:
            for o in p.recompute_ops[a].tolist():
                count[o] = count.get(o, 0) + 1
        for a in acts:
            own = [o for o in p.recompute_ops[a].tolist() if count[o] == 1]
            if own:
                obj[R[(k, a)]] = float(p.op_time_s[own].sum()) / tu
        for o, c in count.items():
            if c > 1:
                w = F.var(f"W{k}_{o}", "C", 0, 1)
                for a in acts:
                    if o in p.recompute_ops[a]:
                        F.add({R[(k, a)]: 1.0, w: -1.0}, -INF, 0, "logic")
                obj[w] = float(p.op_time_s[o]) / tu

    # memory while each stage's op runs: what stays resident through the stage (S), at its largest base
    in_gap: dict[int, list[int]] = {}
    for (k, a) in S:
        in_gap.setdefault(k, []).append(a)
    for k in range(K):
        t0, t1 = int(tau[k]), int(stop[k])
        t = t0 + int(np.argmax(base[t0:t1]))
        rhs = F.budget - int(base[t]) - int(const[k])
        if rhs < 0:
            F.infeasible = f"op {t} ({p.op_names[t]!r}) needs {int(base[t] + const[k])} B in every plan"
            continue
        F.add({S[(k, a)]: float(p.act_bytes[a]) for a in in_gap.get(k, [])}, -INF, rhs, "mem")
    # memory while a stage's recomputations run (before its op allocates outputs and workspace): what
    # was resident and is not being recomputed (P >= A - R), plus the node being made, its
    # intermediates and its recomputed inputs -- what any evaluation order must hold at that moment
    P: dict[tuple[int, int], int] = {}
    for (k, a), av in A.items():
        P[(k, a)] = F.var(f"P{k}_{a}", "C", 0, 1)
        F.add({P[(k, a)]: 1.0, av: -1.0, R[(k, a)]: 1.0}, 0, INF, "logic")
    own = member_peaks(p)
    for k, acts in by_stage.items():
        t = int(tau[k])
        common: dict[int, float] = {P[(k, a)]: float(p.act_bytes[a]) for a in in_gap.get(k, [])}
        for a in acts:
            if kf[a] == k:  # resident from here on (in const) but not until it is made
                common[R[(k, a)]] = common.get(R[(k, a)], 0.0) - float(p.act_bytes[a])
        rhs = F.budget - int(p.fixed_bytes[t] - p.op_output_bytes[t]) - int(const[k])
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
    F.obj = obj
    F.obj_const = float(p.op_time_s.sum()) / tu
    F.free = free
    F.stats = {"stages": K, "n_vars": F.n_vars, "n_rows": len(F.rows), "n_free": int(free.sum())}
    return F, {"S": S, "R": R, "A": A, "free": free}


@register_solver("checkmate_exact", options=_OPTIONS)
def checkmate_exact(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Solve the Checkmate grid exactly. Options: ``backend`` ("cpsat" | "ortools_mip" | "pulp_cbc" |
    "pulp_highs"), ``time_limit_s`` (60), ``rel_gap`` (1e-6), ``threads`` (2), ``seed``, ``grid``
    ("auto" | "ops" | "events"), ``max_act`` (60)."""
    if options.get("mode", "recompute") != "recompute":
        raise ValueError("checkmate_exact is recompute-only (mode='recompute')")
    max_act = int(options.get("max_act", MAX_ACT))
    if problem.n_act > max_act:
        raise ValueError(f"checkmate_exact is a reference for small graphs: n_act={problem.n_act} > {max_act}")
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    backend = options.get("backend", "cpsat")
    rel_gap = float(options.get("rel_gap", 1e-6))
    shown = {"backend": backend, "rel_gap": rel_gap, "grid": options.get("grid", "auto")}
    F, idx = build_checkmate(problem, budget, options.get("grid", "auto"))
    shown["model"] = dict(F.stats)
    if F.infeasible:
        s = Schedule.infeasible(problem, "checkmate_exact", budget, F.infeasible, options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    res = BACKENDS[backend](F, time_limit_s=float(options.get("time_limit_s", 60.0)), rel_gap=rel_gap,
                           abs_gap=0.0, threads=int(options.get("threads", 2)),
                           seed=int(options.get("seed", 0)), hint=None)
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
