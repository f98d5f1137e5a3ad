"""Rematerialization with interval variables on CP-SAT (after the idea of Moccasin, Bartan et al., ICML 2023).

Recompute only. On the stage grid of `solvers.checkmate_model`, time has two points per stage ``k``:
``2k`` (its recomputations run) and ``2k+1`` (its op runs). Each free activation ``a`` has up to
``C`` (option ``max_computations``) residency intervals ``[start, end)``: the first, mandatory, from its
creation (start ``2 kc``) to an end between its last forward use and its last backward use; the
others optional, each a recompute at the start of a stage ``s`` in ``(kl, kf]`` (start ``2s``), held
until its end. The last present interval reaches ``2 kb + 2`` and starts by ``2 kf`` (resident for
backward); present ones are ordered and disjoint. A recompute at ``s`` needs each source resident at
``2s``: some interval of the source covers it (or the source is resident there in every plan).
Memory is one ``AddCumulative``: every interval with its bytes, a one-point interval at each recompute
start with the node's scratch (``member_peaks - bytes``), and the fixed memory of the grid as fixed
one-point intervals, under the budget. Cost: compute + each recompute's ops.

Each interval plan is a Checkmate plan of no more cost and memory (the cumulative counts, at a
recompute point, everything any order could hold, and ops shared by two recomputes twice), so with
``C`` bounded this is a *restriction*: its optimum is an upper bound on the Checkmate optimum, not a
lower bound on ours. The returned Schedule is the projection (RECOMPUTE where an activation is
recomputed), simulated (docs/remat_exact.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, Status
from mutwo.simulate import simulate
from mutwo.solver_options import Ge, Gt
from solvers.checkmate_bound import covering_bound
from solvers.checkmate_model import Grid, grid_of
from solvers.options import read_options
from solvers.remat_projection import finished, project

__all__ = ["solve_interval", "IntervalOptions", "IntervalModel", "build_interval_model"]

_COST_STEPS = 10**7  # integer cost unit: compute time / 1e7


@dataclass(frozen=True)
class IntervalOptions:
    """Options of ``remat_interval``: ``max_computations`` (C, >= 2: the first computation plus at most
    C - 1 recomputes per activation), the CP-SAT limits, the grid (as ``checkmate_exact``) and an optional
    recompute-only start plan (a Schedule or solver name) given as a hint."""

    max_computations: Annotated[int, Ge(2)] = 2
    time_limit_s: Annotated[float, Gt(0)] = 60.0
    rel_gap: Annotated[float, Ge(0)] = 1e-6
    threads: Annotated[int, Ge(1)] = 2
    seed: int = 0
    grid: Literal["auto", "ops", "events"] = "auto"
    mode: Literal["recompute"] = "recompute"
    warm_start: Schedule | str | None = "mutwo_greedy"

    def __post_init__(self) -> None:
        if self.mode != "recompute":
            raise ValueError(f"remat_interval is recompute-only: use mode='recompute' (got mode={self.mode!r})")
        if int(self.max_computations) < 2:
            raise ValueError(f"remat_interval: max_computations must be >= 2 (the first computation and at "
                             f"least one recompute), got {self.max_computations}")
        for name, kind in (("max_computations", int), ("time_limit_s", float), ("rel_gap", float),
                           ("threads", int), ("seed", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))


@dataclass
class IntervalModel:
    """The CP-SAT model and the variables to read a plan back."""

    model: object
    grid: Grid
    present: dict[tuple[int, int], object] = field(default_factory=dict)  # (a, j >= 1) -> presence literal
    start: dict[tuple[int, int], object] = field(default_factory=dict)  # (a, j >= 1) -> recompute stage s
    end: dict[tuple[int, int], object] = field(default_factory=dict)  # (a, j) -> exclusive end (time points)
    cost: dict[int, float] = field(default_factory=dict)  # a -> seconds of one recompute
    objective: object = 0  # the recompute cost in integer units of ``unit`` seconds
    unit: float = 1.0
    infeasible: str = ""
    stats: dict = field(default_factory=dict)


def _fixed_profile(p: Problem, g: Grid) -> np.ndarray:
    """Memory at each time point that no decision changes: fixed (+ transient at op points) and the
    activations that are not free, alive there."""
    nonfree = np.zeros(len(g.tau), np.int64)
    for a in np.flatnonzero(~g.free).tolist():
        nonfree[g.kc[a]:g.kb[a] + 1] += int(p.act_bytes[a])
    prof = np.zeros(2 * len(g.tau), np.int64)
    prof[0::2] = p.fixed_bytes[g.tau] - p.op_output_bytes[g.tau] + nonfree
    prof[1::2] = g.base[g.peak_op] + nonfree
    return prof


def _intervals(md, im: IntervalModel, p: Problem, a: int, C: int) -> tuple[list, list]:
    """Residency intervals of free activation ``a`` (the first mandatory, then C - 1 optional recomputes)
    with the ordering and coverage rows; returns [(start, end, presence or None)] and the memory items."""
    g = im.grid
    kc, kl, kf, kb = (int(x[a]) for x in (g.kc, g.kl, g.kf, g.kb))
    top = 2 * kb + 2
    e0 = md.NewIntVar(2 * kl + 2, top, f"e{a}_0")
    ivs = [(2 * kc, e0, None)]
    mem = [(md.NewIntervalVar(2 * kc, e0 - 2 * kc, e0, f"I{a}_0"), int(p.act_bytes[a]))]
    im.end[(a, 0)] = e0
    scratch = int(g.own[a] - p.act_bytes[a])
    prev_p, prev_e = None, e0
    for j in range(1, C):
        pj = md.NewBoolVar(f"p{a}_{j}")
        s = md.NewIntVar(kl + 1, kf, f"s{a}_{j}")
        e = md.NewIntVar(2 * kl + 3, top, f"e{a}_{j}")
        size = md.NewIntVar(1, top - 2 * (kl + 1), f"z{a}_{j}")
        md.Add(size == e - 2 * s)
        mem.append((md.NewOptionalIntervalVar(2 * s, size, e, pj, f"I{a}_{j}"), int(p.act_bytes[a])))
        if scratch > 0:
            mem.append((md.NewOptionalFixedSizeIntervalVar(2 * s, 1, pj, f"T{a}_{j}"), scratch))
        if prev_p is not None:
            md.AddImplication(pj, prev_p)
        md.Add(prev_e <= 2 * s).OnlyEnforceIf(pj)
        md.Add(prev_e == top).OnlyEnforceIf(pj.Not() if prev_p is None else [prev_p, pj.Not()])
        md.Add(s == kf).OnlyEnforceIf(pj.Not())  # absent: pinned (no symmetric copies)
        md.Add(e == 2 * kf + 1).OnlyEnforceIf(pj.Not())
        im.present[(a, j)], im.start[(a, j)], im.end[(a, j)] = pj, s, e
        ivs.append((2 * s, e, pj))
        prev_p, prev_e = pj, e
    md.Add(prev_e == top).OnlyEnforceIf(prev_p)  # the last computation serves backward
    return ivs, mem


def _sources(md, im: IntervalModel, p: Problem, ivs: dict[int, list]) -> None:
    """A recompute of ``a`` at stage s needs every source resident at time point 2s."""
    g = im.grid
    for (a, j), pj in im.present.items():
        s = im.start[(a, j)]
        for u in p.recompute_sources[a].tolist():
            if not g.free[u]:  # resident on [kc, kb] in every plan
                md.Add(s <= int(g.kb[u])).OnlyEnforceIf(pj)
                md.Add(s >= int(g.kc[u])).OnlyEnforceIf(pj)
                continue
            covers = []
            for i, (st, en, pu) in enumerate(ivs[u]):
                c = md.NewBoolVar(f"c{a}_{j}_{u}_{i}")
                md.Add(st <= 2 * s).OnlyEnforceIf(c)
                md.Add(en >= 2 * s + 1).OnlyEnforceIf(c)
                if pu is not None:
                    md.AddImplication(c, pu)
                covers.append(c)
            md.AddBoolOr(covers).OnlyEnforceIf(pj)


def build_interval_model(problem: Problem, budget: int, max_computations: int = 2,
                         grid: str = "auto") -> IntervalModel:
    """The CP-SAT interval model (module docstring); ``infeasible`` says why when the fixed memory alone
    exceeds the budget."""
    from ortools.sat.python import cp_model

    p, C = problem, int(max_computations)
    md = cp_model.CpModel()
    im = IntervalModel(md, grid_of(p, grid))
    prof = _fixed_profile(p, im.grid)
    if prof.max() > budget:
        pt = int(np.argmax(prof))
        op = int(im.grid.peak_op[pt // 2]) if pt % 2 else int(im.grid.tau[pt // 2])
        im.infeasible = f"op {op} ({p.op_names[op]!r}) needs {int(prof.max())} B in every plan"
        return im
    ivs: dict[int, list] = {}
    mem: list = [(md.NewFixedSizeIntervalVar(t, 1, f"F{t}"), int(v)) for t, v in enumerate(prof.tolist()) if v > 0]
    for a in np.flatnonzero(im.grid.free).tolist():
        ivs[a], items = _intervals(md, im, p, a, C)
        mem.extend(items)
        im.cost[a] = float(p.op_time_s[p.recompute_ops[a]].sum())
    _sources(md, im, p, ivs)
    md.AddCumulative([iv for iv, _ in mem], [d for _, d in mem], int(budget))
    unit = max(p.total_compute_s, 1e-12) / _COST_STEPS
    im.objective = sum(int(round(im.cost[a] / unit)) * pj for (a, _), pj in im.present.items())
    im.unit = unit
    md.Minimize(im.objective)
    im.stats = {"stages": len(im.grid.tau), "n_free": len(ivs), "n_intervals": len(mem),
                "n_vars": len(md.Proto().variables), "n_constraints": len(md.Proto().constraints)}
    return im


def _hint(im: IntervalModel, decisions: np.ndarray) -> None:
    """Our plan as a (partial) hint: RECOMPUTE activations dropped after their last forward use and
    recomputed once at their first backward use (chain temporaries are left to the engine)."""
    g, md = im.grid, im.model
    for a in np.flatnonzero(g.free).tolist():
        rec = decisions[a] == Decision.RECOMPUTE
        md.AddHint(im.end[(a, 0)], 2 * int(g.kl[a]) + 2 if rec else 2 * int(g.kb[a]) + 2)
        for (b, j), pj in im.present.items():
            if b == a:
                md.AddHint(pj, bool(rec and j == 1))


def _solve(im: IntervalModel, opts: IntervalOptions, seconds: float):
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.max_time_in_seconds = max(0.1, seconds)
    prm.num_workers = opts.threads
    prm.relative_gap_limit = opts.rel_gap
    prm.absolute_gap_limit = opts.rel_gap * _COST_STEPS  # the objective leaves out the compute time
    prm.random_seed = opts.seed
    st = solver.Solve(im.model)
    return solver, solver.StatusName(st), st in (cp_model.OPTIMAL, cp_model.FEASIBLE)


def solve_interval(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Recompute-only plan from the interval model on CP-SAT; options `IntervalOptions`. Registered as
    ``remat_interval`` by `solvers.checkmate` (the module the installed entry point names)."""
    opts = read_options(IntervalOptions, options, "remat_interval")
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    shown: dict = {"max_computations": opts.max_computations, "grid": opts.grid, "rel_gap": opts.rel_gap}
    from solvers.checkmate import CheckmateOptions, _start

    start, shown["warm_start"] = _start(problem, budget, CheckmateOptions(warm_start=opts.warm_start,
                                                                          seed=opts.seed))
    im = build_interval_model(problem, budget, opts.max_computations, opts.grid)
    shown["model"] = dict(im.stats, build_s=time.perf_counter() - t0)
    if im.infeasible:
        s = Schedule.infeasible(problem, "remat_interval", budget, im.infeasible, options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    cover, how = covering_bound(problem, budget, opts.grid, time_limit_s=min(30.0, 0.1 * opts.time_limit_s))
    shown["covering_bound_s"] = cover
    if cover == float("inf"):
        return _finish(problem, budget, shown, t0, None, status=Status.INFEASIBLE,
                       message=f"no recompute-only plan fits: {how}")
    # the bound holds for this model too (a restriction of the grid); less one rounding step per recompute
    im.model.Add(im.objective >= max(0, int((cover - problem.total_compute_s) / im.unit) - len(im.present)))
    if start is not None:
        _hint(im, start.decisions)
    solver, name, found = _solve(im, opts, opts.time_limit_s - (time.perf_counter() - t0))
    shown["engine_status"] = name
    if not found:
        status = Status.INFEASIBLE if name == "INFEASIBLE" else Status.TIMEOUT
        why = (f"no plan of the interval model (C={opts.max_computations}) fits; a restriction, so a larger "
               f"max_computations or checkmate_exact may still find one" if status == Status.INFEASIBLE
               else f"cp-sat: no plan found ({name})")
        return _finish(problem, budget, shown, t0, None, status=status, message=why)
    model_s = problem.total_compute_s + sum(im.cost[a] for (a, _), pj in im.present.items() if solver.Value(pj))
    shown["interval_objective_s"] = model_s
    # the engine's bound holds for the interval model only (a restriction), not for the Checkmate grid
    shown["interval_bound_s"] = problem.total_compute_s + solver.BestObjectiveBound() * im.unit
    plan, sim, note = _plan(problem, budget, im, solver, start)
    if sim is None:
        return _finish(problem, budget, shown, t0, None, status=Status.INVALID,
                       message=f"interval model {model_s:.9g} s; projection does not fit and repair failed")
    shown["gap"] = max(0.0, 1 - cover / sim.time_s)
    status = Status.OPTIMAL if sim.time_s <= cover * (1 + opts.rel_gap) else Status.FEASIBLE
    msg = (f"interval model (C={opts.max_computations}, a restriction of the Checkmate grid) {name.lower()}: "
           f"{model_s:.9g} s; projection simulates to {sim.time_s:.9g} s, peak {sim.peak_bytes} B{note}; lower "
           f"bound {cover:.9g} s ({how}; for every recompute-only plan)")
    return _finish(problem, budget, shown, t0, plan, status=status, objective=sim.time_s, bound=cover, message=msg)


def _plan(problem: Problem, budget: int, im: IntervalModel, solver, start: Schedule | None):
    """The projection of the engine's solution (RECOMPUTE where recomputed, anchored at its last
    recompute's stage or at its first backward use, `remat_projection`), simulated, repaired if our
    recompute rule needs more memory; the start plan instead when it is faster."""
    recompute = np.zeros(problem.n_act, bool)
    anchors = np.full(problem.n_act, -1, np.int64)
    for (a, j), pj in im.present.items():
        if solver.Value(pj):
            recompute[a] = True
            anchors[a] = max(anchors[a], int(im.grid.tau[solver.Value(im.start[(a, j)])]))
    plan, sim, note = project(problem, budget, recompute, anchors)
    note = f"; {note}"
    if start is not None and (sim is None or simulate(problem, start).time_s < sim.time_s):
        plan, sim = start, simulate(problem, start)
        note += "; the start plan simulates faster than the projection: returned"
    return plan, sim, note


def _finish(problem: Problem, budget: int, shown: dict, t0: float, plan: Schedule | None, **fields) -> Schedule:
    return finished(problem, budget, "remat_interval", shown, t0, plan, **fields)
