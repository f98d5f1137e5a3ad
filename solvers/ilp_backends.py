"""Solver backends for a `Formulation`: OR-Tools CP-SAT, OR-Tools pywraplp (SCIP / CBC), PuLP (CBC / HiGHS).

Each backend gets the same backend-neutral rows and returns a `BackendResult` in model units, so the
orchestration in ``solvers/ilp.py`` never needs to know which engine ran. What differs:

* CP-SAT needs integers: memory rows are divided by their gcd (exact), time rows are scaled by
  ``CPSAT_TIME_FACTOR`` and rounded *conservatively* (a ``<=`` row rounds its left side up and its right
  side down), and enforced rows become enforcement literals.
* MIP engines get floats: memory rows in units of a power of two (exact), enforced rows as big-M rows
  whose M comes from the variable bounds.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from solvers.ilp_model import INF, Formulation, Row

__all__ = ["BackendResult", "solve_cpsat", "solve_pywraplp", "solve_pulp", "BACKENDS"]

_CPSAT_PRESOLVE_MAX_ROWS = 15_000
CPSAT_TIME_FACTOR = 1000.0  # CP-SAT integer time step = time_unit / 1000 = 1e-7 of the compute time


@dataclass
class BackendResult:
    """What an engine reported, in model units (objective includes the constant)."""

    status: str  # "optimal" | "feasible" | "infeasible" | "unknown" | "error"
    x: np.ndarray | None
    objective: float | None
    bound: float | None
    wall_s: float
    engine: str
    message: str = ""


def _mem_unit(F: Formulation) -> float:
    """Largest power of two keeping the budget above ~1e6 units (exact float division)."""
    k = max(0, int(math.floor(math.log2(max(F.budget, 1) / 1e6))))
    return float(2**k)


def _mip_rows(F: Formulation) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Rows as floats, scaled per kind, with enforced rows turned into big-M rows."""
    mu = _mem_unit(F)
    lb_all, ub_all = np.asarray(F.lb, float), np.asarray(F.ub, float)
    out = []
    for row in F.rows:
        s = 1.0 / mu if row.kind == "mem" else 1.0
        idx, coef, lo, hi = row.idx, row.coef * s, row.lo * s, row.hi * s
        if row.enforce < 0:
            out.append((idx, coef, lo, hi))
            continue
        lb, ub = lb_all[idx], ub_all[idx]
        amin = float(np.where(coef > 0, coef * lb, coef * ub).sum())
        amax = float(np.where(coef > 0, coef * ub, coef * lb).sum())
        z = row.enforce
        if hi < INF and amax > hi:  # a.x + (amax - hi) z <= amax
            out.append((np.append(idx, z), np.append(coef, amax - hi), -INF, amax))
        if lo > -INF and amin < lo:  # a.x - (lo - amin) z >= amin
            out.append((np.append(idx, z), np.append(coef, -(lo - amin)), amin, INF))
    return out


def _status_from_gap(objective: float | None, bound: float | None, proven: bool, rel_gap: float) -> str:
    if objective is None:
        return "unknown"
    if proven:
        return "optimal"
    if bound is not None and objective - bound <= rel_gap * abs(objective) + 1e-9:
        return "optimal"
    return "feasible"


# ---------------------------------------------------------------------------------------------- CP-SAT
def _round_row(F: Formulation, row: Row, f: float) -> tuple[list[int], int | None, int | None]:
    """Integer coefficients and bounds for CP-SAT; conservative for one-sided rows."""
    is_time = F.is_time
    if row.kind == "mem":
        ints = [int(round(c)) for c in row.coef]
        lo = None if row.lo == -INF else math.ceil(row.lo)
        hi = None if row.hi == INF else math.floor(row.hi)
        g = 0
        for c in ints:
            g = math.gcd(g, abs(c))
        if g > 1:
            ints = [c // g for c in ints]
            lo = None if lo is None else -((-lo) // g)
            hi = None if hi is None else hi // g
        return ints, lo, hi
    if row.kind == "logic":
        return ([int(round(c)) for c in row.coef], None if row.lo == -INF else math.ceil(row.lo - 1e-9),
                None if row.hi == INF else math.floor(row.hi + 1e-9))
    if row.kind == "cut":  # valid inequalities: round loosely, never cut off a plan
        ints = [int(round(c)) if is_time[i] else math.floor(c * f + 1e-9)
                for i, c in zip(row.idx.tolist(), row.coef.tolist(), strict=True)]
        return ints, None, math.ceil(row.hi * f - 1e-9) + len(ints)
    one_sided_le = row.lo == -INF and row.hi < INF
    one_sided_ge = row.hi == INF and row.lo > -INF
    ints = []
    for i, c in zip(row.idx.tolist(), row.coef.tolist(), strict=True):
        if is_time[i]:
            ints.append(int(round(c)))
        elif one_sided_le:
            ints.append(math.ceil(c * f - 1e-9))
        elif one_sided_ge:
            ints.append(math.floor(c * f + 1e-9))
        else:
            ints.append(int(round(c * f)))
    if one_sided_le:
        return ints, None, math.floor(row.hi * f + 1e-9)
    if one_sided_ge:
        return ints, math.ceil(row.lo * f - 1e-9), None
    return ints, int(round(row.lo * f)), int(round(row.hi * f))


def _integer_hint(F: Formulation, rounded: list, hint: np.ndarray, f: float) -> list[int]:
    """The hint in CP-SAT's integers, its time variables re-derived from the rounded rows.

    Rounding each row on its own makes the float hint slightly infeasible; CP-SAT would then drop it.
    Every time row's first variable is the one it defines (a queue tail, a delay, a stall), so passes
    that raise it to its row's bound (or set it, for equalities) reach the smallest consistent values.
    """
    h = [int(round(v * f)) if t else int(round(v)) for v, t in zip(hint.tolist(), F.is_time, strict=True)]
    rows = [(row.idx.tolist(), ints, lo, hi, row.enforce) for row, (ints, lo, hi) in zip(F.rows, rounded, strict=True)
            if row.kind == "time" and F.is_time[row.idx[0]] and ints[0] == 1]
    for _ in range(100):
        changed = False
        for idx, ints, lo, hi, enf in rows:
            if enf >= 0 and h[enf] == 0:
                continue
            act = sum(c * h[i] for c, i in zip(ints, idx, strict=True))
            if lo is not None and (act < lo or (lo == hi and act != lo)):
                h[idx[0]] += lo - act
                changed = True
        if not changed:
            break
    return h


def solve_cpsat(F: Formulation, *, time_limit_s: float, rel_gap: float, abs_gap: float, threads: int,
                seed: int, hint: np.ndarray | None, log: bool = False) -> BackendResult:
    """OR-Tools CP-SAT with integer-scaled times and gcd-reduced byte rows."""
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    f = CPSAT_TIME_FACTOR
    md = cp_model.CpModel()
    xs = []
    for name, vt, lb, ub, it in zip(F.names, F.vtype, F.lb, F.ub, F.is_time, strict=True):
        if vt == "B":
            xs.append(md.NewBoolVar(name))
        elif it:
            xs.append(md.NewIntVar(int(math.floor(lb * f)), int(math.ceil(ub * f)), name))
        else:
            xs.append(md.NewIntVar(int(math.floor(lb)), int(math.ceil(ub)), name))
    rounded = [_round_row(F, row, f) for row in F.rows]
    for row, (ints, lo, hi) in zip(F.rows, rounded, strict=True):
        expr = sum(c * xs[i] for c, i in zip(ints, row.idx.tolist(), strict=True) if c)
        lo_v = lo if lo is not None else cp_model.INT_MIN
        hi_v = hi if hi is not None else cp_model.INT_MAX
        ct = md.AddLinearConstraint(expr, lo_v, hi_v)
        if row.enforce >= 0:
            ct.OnlyEnforceIf(xs[row.enforce])
    obj_terms = []
    for i, c in F.obj.items():
        k = int(round(c)) if F.is_time[i] else int(round(c * f))
        if k:
            obj_terms.append(k * xs[i])
    const = F.obj_const * f
    md.Minimize(sum(obj_terms))
    if hint is not None:
        for i, v in enumerate(_integer_hint(F, rounded, hint, f)):
            md.AddHint(xs[i], v)
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.max_time_in_seconds = max(0.1, time_limit_s - (time.perf_counter() - t0))
    prm.num_workers = max(1, int(threads))
    prm.relative_gap_limit = float(rel_gap)
    prm.absolute_gap_limit = float(abs_gap) * f
    prm.random_seed = int(seed)
    prm.log_search_progress = bool(log)
    if len(F.rows) > _CPSAT_PRESOLVE_MAX_ROWS:  # measured: presolve alone took 40 s of 60 at 34k rows
        prm.cp_model_presolve = False
    # no repair_hint: OR-Tools 9.15 aborts the process with it ("heuristics.fixed_search != nullptr",
    # google/or-tools#5025); a plain hint is still followed by the first workers
    st = solver.Solve(md)
    wall = time.perf_counter() - t0
    name = solver.StatusName(st)
    if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        x = np.array([solver.Value(v) for v in xs], float)
        x[np.asarray(F.is_time, dtype=bool)] /= f
        obj = (solver.ObjectiveValue() + const) / f
        bound = (solver.BestObjectiveBound() + const) / f
        status = _status_from_gap(obj, bound, st == cp_model.OPTIMAL, rel_gap)
        return BackendResult(status, x, obj, bound, wall, "cp-sat", name)
    if st == cp_model.INFEASIBLE:
        return BackendResult("infeasible", None, None, None, wall, "cp-sat", name)
    if st == cp_model.MODEL_INVALID:
        return BackendResult("error", None, None, None, wall, "cp-sat", md.Validate())
    return BackendResult("unknown", None, None, None, wall, "cp-sat", name)


# ---------------------------------------------------------------------------------------------- pywraplp
def solve_pywraplp(F: Formulation, *, time_limit_s: float, rel_gap: float, abs_gap: float, threads: int,
                   seed: int, hint: np.ndarray | None, engine: str = "SCIP", log: bool = False) -> BackendResult:
    """OR-Tools linear-solver wrapper (SCIP by default; CBC also ships in the wheel)."""
    from ortools.linear_solver import pywraplp

    t0 = time.perf_counter()
    solver = pywraplp.Solver.CreateSolver(engine)
    if solver is None:
        return BackendResult("error", None, None, None, 0.0, engine.lower(), f"{engine} is not available")
    if log:
        solver.EnableOutput()
    xs = []
    for name, vt, lb, ub in zip(F.names, F.vtype, F.lb, F.ub, strict=True):
        if vt == "B":
            xs.append(solver.BoolVar(name))
        elif vt == "I":
            xs.append(solver.IntVar(lb, ub, name))
        else:
            xs.append(solver.NumVar(lb, ub, name))
    inf = solver.infinity()
    for idx, coef, lo, hi in _mip_rows(F):
        ct = solver.Constraint(-inf if lo == -INF else lo, inf if hi == INF else hi)
        for i, c in zip(idx.tolist(), coef.tolist(), strict=True):
            ct.SetCoefficient(xs[i], c)
    objective = solver.Objective()
    for i, c in F.obj.items():
        objective.SetCoefficient(xs[i], c)
    objective.SetOffset(F.obj_const)
    objective.SetMinimization()
    if hint is not None:
        solver.SetHint(xs, [float(v) for v in hint])
    solver.SetNumThreads(max(1, int(threads)))
    if engine.upper() == "SCIP":
        solver.SetSolverSpecificParametersAsString(
            f"limits/absgap = {abs_gap:.12g}\nrandomization/randomseedshift = {int(seed)}\n")
    remaining = max(0.1, time_limit_s - (time.perf_counter() - t0))
    solver.SetTimeLimit(int(remaining * 1000))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, float(rel_gap))
    st = solver.Solve(params)
    wall = time.perf_counter() - t0
    eng = f"pywraplp-{engine.lower()}"
    if st in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        x = np.array([v.solution_value() for v in xs])
        obj = objective.Value()
        bound = objective.BestBound()
        if not math.isfinite(bound) or bound < 0:  # SCIP reports -1e20-ish before its root bound
            bound = None
        status = _status_from_gap(obj, bound, False, rel_gap)
        return BackendResult(status, x, obj, bound, wall, eng, f"status {st}")
    if st == pywraplp.Solver.INFEASIBLE:
        return BackendResult("infeasible", None, None, None, wall, eng, "infeasible")
    if st in (pywraplp.Solver.ABNORMAL, pywraplp.Solver.MODEL_INVALID):
        return BackendResult("error", None, None, None, wall, eng, f"status {st}")
    return BackendResult("unknown", None, None, None, wall, eng, f"status {st}")


# ---------------------------------------------------------------------------------------------- PuLP
def _pulp_problem(F: Formulation):
    import pulp

    prob = pulp.LpProblem("mutwo", pulp.LpMinimize)
    xs = []
    for name, vt, lb, ub in zip(F.names, F.vtype, F.lb, F.ub, strict=True):
        cat = pulp.LpBinary if vt == "B" else (pulp.LpInteger if vt == "I" else pulp.LpContinuous)
        xs.append(pulp.LpVariable(name, lowBound=lb, upBound=ub, cat=cat))
    for k, (idx, coef, lo, hi) in enumerate(_mip_rows(F)):
        expr = pulp.LpAffineExpression([(xs[i], c) for i, c in zip(idx.tolist(), coef.tolist(), strict=True)])
        if lo == hi:
            prob += pulp.LpConstraint(expr, pulp.LpConstraintEQ, f"r{k}", hi)
        else:
            if hi < INF:
                prob += pulp.LpConstraint(expr, pulp.LpConstraintLE, f"r{k}u", hi)
            if lo > -INF:
                prob += pulp.LpConstraint(expr, pulp.LpConstraintGE, f"r{k}l", lo)
    prob += pulp.LpAffineExpression([(xs[i], c) for i, c in F.obj.items()], constant=F.obj_const)
    return prob, xs


def _parse_cbc_log(text: str) -> tuple[float | None, float | None]:
    """(objective, lower bound) from a CBC log, when it printed them."""
    obj = bound = None
    m = re.findall(r"Objective value:\s*([-+0-9.eE]+)", text)
    if m:
        obj = float(m[-1])
    m = re.findall(r"Lower bound:\s*([-+0-9.eE]+)", text)
    if m:
        bound = float(m[-1])
    if bound is None and re.search(r"Result - Optimal solution found", text):
        bound = obj
    return obj, bound


def solve_pulp(F: Formulation, *, time_limit_s: float, rel_gap: float, abs_gap: float, threads: int,
               seed: int, hint: np.ndarray | None, engine: str = "cbc", log: bool = False) -> BackendResult:
    """PuLP with its bundled CBC (command line, warm start through a .mst file) or HiGHS (highspy)."""
    import pulp

    t0 = time.perf_counter()
    prob, xs = _pulp_problem(F)
    if hint is not None:
        for v, h in zip(xs, hint.tolist(), strict=True):
            v.setInitialValue(round(h) if v.cat != pulp.LpContinuous else h)
    remaining = max(1.0, time_limit_s - (time.perf_counter() - t0))
    eng = f"pulp-{engine}"
    bound = None
    if engine == "cbc":
        rc, text = _run_cbc(prob, hint is not None, remaining, rel_gap, abs_gap, threads, seed, log)
        if rc != 0:
            return BackendResult("error" if rc > 0 else "unknown", None, None, None,
                                 time.perf_counter() - t0, eng,
                                 f"CBC {'exited with status ' + str(rc) if rc > 0 else 'killed at the time limit'}")
        _, bound = _parse_cbc_log(text)
        bound = None if bound is None else bound + F.obj_const  # the engines do not see the constant
    elif engine == "highs":
        named = None if hint is None else {v.name: h for v, h in zip(xs, hint.tolist(), strict=True)}
        solver = _HintedHiGHS(hint=named, msg=log, timeLimit=remaining, gapRel=rel_gap, gapAbs=abs_gap,
                              threads=max(1, int(threads)), random_seed=int(seed))
        prob.solve(solver)
        info = prob.solverModel.getInfo()
        bound = float(info.mip_dual_bound) + F.obj_const if math.isfinite(info.mip_dual_bound) else None
    else:
        raise ValueError(f"unknown PuLP engine {engine!r}")
    wall = time.perf_counter() - t0
    sol = prob.sol_status
    if sol in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        x = np.array([v.varValue if v.varValue is not None else 0.0 for v in xs])
        obj = pulp.value(prob.objective)
        proven = sol == pulp.LpSolutionOptimal and bound is None
        if bound is None and sol == pulp.LpSolutionOptimal:
            bound = obj  # the engine reports it stopped within the gap limits
        status = _status_from_gap(obj, bound, False, rel_gap) if not proven else "optimal"
        return BackendResult(status, x, obj, bound, wall, eng, pulp.LpStatus[prob.status])
    if sol == pulp.LpSolutionInfeasible or prob.status == pulp.LpStatusInfeasible:
        return BackendResult("infeasible", None, None, None, wall, eng, "infeasible")
    return BackendResult("unknown", None, None, None, wall, eng, pulp.LpStatus[prob.status])


def _run_cbc(prob, warm: bool, seconds: float, rel_gap: float, abs_gap: float, threads: int, seed: int,
             log: bool) -> tuple[int, str]:
    """Run PuLP's bundled CBC on ``prob`` under a hard wall-clock limit; load its solution into ``prob``.

    CBC checks its ``-sec`` limit only between phases (root cuts and MIP-start processing on the
    600-activation benchmark ran 2-4x past it), so it gets half the time and is killed at the full
    limit plus a short grace. PuLP writes the MPS / MIP start and reads the solution back.
    Returns (exit status, log); -1 means killed (no solution).
    """
    import pulp

    cmd = pulp.PULP_CBC_CMD(msg=False)
    with tempfile.TemporaryDirectory() as tmp:
        mps, mst, sol = (os.path.join(tmp, f"m.{ext}") for ext in ("mps", "mst", "sol"))
        vs, vnames, cnames, _ = prob.writeMPS(mps, rename=1)
        args = [cmd.path, mps]
        if warm:
            cmd.writesol(mst, prob, vs, vnames, cnames)
            args += ["-mips", mst]
        args += ["-sec", f"{max(1.0, 0.5 * seconds):.1f}", "-ratio", f"{rel_gap:.12g}", "-allow",
                 f"{abs_gap:.12g}", "-threads", str(int(threads)), "-timeMode", "elapsed", "-randomCbcSeed",
                 str(int(seed) + 1), "-solve", "-printingOptions", "all", "-solution", sol]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 5.0)
        except subprocess.TimeoutExpired:
            return -1, ""
        if log:
            print(done.stdout)
        if done.returncode != 0 or not os.path.exists(sol):
            return max(1, done.returncode), done.stdout
        status, values, _, _, _, sol_status = cmd.readsol_MPS(sol, prob, vs, vnames, cnames)
        prob.assignVarsVals(values)
        prob.assignStatus(status, sol_status)
        return 0, done.stdout


def _hinted_highs_class():
    import highspy
    import pulp

    class HintedHiGHS(pulp.HiGHS):
        """PuLP's HiGHS, plus a starting solution handed to highspy before the run."""

        def __init__(self, hint=None, **kw):
            super().__init__(**kw)
            self._hint = hint

        def callSolver(self, lp):  # noqa: N802 - PuLP's name
            if self._hint is not None:  # PuLP orders columns by name: map through var.index
                cols = [0.0] * lp.solverModel.getNumCol()
                for v in lp.variables():
                    cols[v.index] = float(self._hint.get(v.name, 0.0))
                sol = highspy.HighsSolution()
                sol.col_value = cols
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
            lp.solverModel.run()

    return HintedHiGHS


def _HintedHiGHS(**kw):  # noqa: N802 - reads as a class
    return _hinted_highs_class()(**kw)


BACKENDS = {
    "cpsat": solve_cpsat,
    "ortools_mip": solve_pywraplp,
    "pulp_cbc": lambda F, **kw: solve_pulp(F, engine="cbc", **kw),
    "pulp_highs": lambda F, **kw: solve_pulp(F, engine="highs", **kw),
}
