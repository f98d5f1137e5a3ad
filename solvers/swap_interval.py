"""Keep / recompute / swap plans from an interval model with the host link on CP-SAT (issue 18).

After the idea of Moccasin (Bartan et al., ICML 2023): O(n) interval and integer variables instead of
the time-indexed model's Booleans per candidate point (`solvers.ilp_model`). The model
(`solvers.swap_interval_model`) puts each activation's residency, its two transfers and the delays of
the backward pass in one integer time frame: a cumulative for memory under the budget, one resource per
link direction. Its plan is projected to a Schedule, priced by `simulate`, repaired if it does not fit
(`solvers.ilp_repair`), and never returned when the start plan is faster.

The bound reported is `solvers.ilp_bound.iteration_bound` (option ``bound="lp"``; valid for every plan)
or the compute time (``bound="none"``); the engine's own bound holds for the interval model only (it is
neither a restriction nor a relaxation of `simulate`) and is shown as ``options["interval_bound_s"]``.
Status OPTIMAL only when the returned plan's simulated time is within ``rel_gap`` of the bound.
``mode="recompute"`` is `remat_interval`'s answer. Registered as ``swap_interval`` from
`solvers.checkmate` (the module the installed entry point names). docs/remat_exact.md has the model,
what it restricts or relaxes, and the comparison with the time-indexed model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, ScheduleError, Status, default_prefetch
from mutwo.simulate import SimResult, simulate
from mutwo.solver_options import Ge, Gt
from solvers.options import read_options
from solvers.remat_projection import finished
from solvers.swap_interval_model import SwapIntervalModel, build_swap_interval_model, decode, start_point

__all__ = ["solve_swap_interval", "SwapIntervalOptions"]

NAME = "swap_interval"
_COMPLETE_SHARE = 0.3  # of what is left, at most, to complete the start plan into a full hint


@dataclass(frozen=True)
class SwapIntervalOptions:
    """Options of ``swap_interval``: the CP-SAT limits, ``mode`` ("both", "swap"; "recompute" is
    ``remat_interval``), ``warm_start`` (a Schedule, a solver name, "heuristics" or None; as the ILPs', and
    their default), ``bound`` ("lp": the ILPs' iteration-time bound, "none": the compute time),
    ``time_steps`` (static op start times are rounded to compute / time_steps), ``early_anchors``
    (recomputes may be anchored at an earlier event, sharing a regenerated run as Chen et al.'s segments),
    ``max_chain_depth`` (levels of recompute sources a chain may regenerate as temporaries) and
    ``copy_back_order`` (the link's order of copies back: "issue", the start plan's issue order, each
    copy issued no earlier than the one before, the simulator's FIFO; "need", served by first backward
    use whatever the issue order; "any", one NoOverlap, any order)."""

    time_limit_s: Annotated[float, Gt(0)] = 60.0
    rel_gap: Annotated[float, Ge(0)] = 0.01
    threads: Annotated[int, Ge(1)] = 2
    seed: int = 0
    mode: Literal["both", "swap", "recompute"] = "both"
    warm_start: Schedule | str | None = "mutwo_greedy"
    bound: Literal["lp", "none"] = "lp"
    time_steps: Annotated[int, Ge(100)] = 5_000
    early_anchors: bool = True
    max_chain_depth: Annotated[int, Ge(0)] = 6
    copy_back_order: Literal["issue", "need", "any"] = "issue"

    def __post_init__(self) -> None:
        if self.mode not in ("both", "swap", "recompute"):
            raise ValueError(f"swap_interval: mode must be 'both', 'swap' or 'recompute', got mode={self.mode!r}")
        if self.copy_back_order not in ("issue", "need", "any"):
            raise ValueError(f"swap_interval: copy_back_order must be 'issue', 'need' or 'any', got "
                             f"copy_back_order={self.copy_back_order!r}")
        if self.bound not in ("lp", "none"):
            raise ValueError(f"swap_interval: bound must be 'lp' or 'none', got bound={self.bound!r}")
        if int(self.time_steps) < 100:
            raise ValueError(f"swap_interval: time_steps must be >= 100 (the resolution of static op start "
                             f"times), got {self.time_steps}")
        for name, low in (("time_limit_s", 0.0), ("rel_gap", -1e-300)):
            if not float(getattr(self, name)) > low:
                raise ValueError(f"swap_interval: {name} must be {'> 0' if low == 0 else '>= 0'}, got "
                                 f"{getattr(self, name)}")
        if int(self.max_chain_depth) < 0:
            raise ValueError(f"swap_interval: max_chain_depth must be >= 0 (0: no chain temporaries), got "
                             f"{self.max_chain_depth}")
        if int(self.threads) < 1:
            raise ValueError(f"swap_interval: threads must be >= 1, got {self.threads}")
        for name, kind in (("time_limit_s", float), ("rel_gap", float), ("threads", int), ("seed", int),
                           ("time_steps", int), ("early_anchors", bool), ("max_chain_depth", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))


def _start(problem: Problem, budget: int, opts: SwapIntervalOptions) -> tuple[Schedule | None, str]:
    if opts.warm_start is None:
        return None, ""
    from solvers.ilp import _warm_start

    start, how = _warm_start(problem, budget, opts.warm_start, True, opts.mode, opts.seed)
    if start is not None and not simulate(problem, start).fits(budget):
        return None, how + " (does not fit: not used)"
    return start, how


def _start_points(problem: Problem, start: Schedule | None) -> tuple[np.ndarray, np.ndarray]:
    """Backward ops to make events (the start's copy-back and recompute points, every latest hiding
    point), and the copy-back order: the start's issue points, the latest hiding point elsewhere."""
    dflt = default_prefetch(problem)
    if start is None:
        return dflt, dflt
    swapped = start.decisions == Decision.SWAP
    key = np.where(swapped, start.prefetch_at, dflt)
    return np.concatenate([start.prefetch_at, start.recompute_at, dflt]), key


def _bound(problem: Problem, budget: int, opts: SwapIntervalOptions) -> tuple[float, str]:
    """(bound, how): valid for every plan; inf when it proves that no plan fits. The ILPs' own bound
    (`solvers.ilp.lower_bound`, with its rounds of extra checks), so both report the same bound."""
    compute = float(problem.op_time_s.sum())
    if opts.bound == "none":
        return compute, "compute time"
    from solvers.ilp import lower_bound
    from solvers.ilp_options import IlpOptions

    lb = lower_bound(problem, budget, IlpOptions(time_limit_s=opts.time_limit_s, mode=opts.mode, bound="lp"))
    if lb.infeasible:
        return float("inf"), lb.message
    return lb.bound_s, f"iteration-time bound ({lb.method}, {lb.n_checks} checks, {lb.solve_s:.2f} s)"


def _finish(problem: Problem, budget: int, shown: dict, t0: float, plan: Schedule | None, **fields) -> Schedule:
    return finished(problem, budget, NAME, shown, t0, plan, **fields)


def _answer(problem: Problem, budget: int, shown: dict, t0: float, plan: Schedule, sim: SimResult, bound: float,
            how: str, rel_gap: float, note: str) -> Schedule:
    gap = max(0.0, (sim.time_s - bound) / sim.time_s) if sim.time_s > 0 else 0.0
    shown["gap"] = gap
    status = Status.OPTIMAL if sim.time_s <= bound * (1 + rel_gap) else Status.FEASIBLE
    msg = (f"{note}; simulated {sim.time_s:.9g} s, peak {sim.peak_bytes} B; lower bound {bound:.9g} s ({how}; "
           f"every plan), gap {gap:.2%}")
    return _finish(problem, budget, shown, t0, plan, status=status, objective=sim.time_s,
                   bound=min(bound, sim.time_s), message=msg)


def _recompute_only(problem: Problem, budget: int, opts: SwapIntervalOptions) -> Schedule:
    from solvers.remat_interval import solve_interval

    s = solve_interval(problem, budget, time_limit_s=opts.time_limit_s, rel_gap=opts.rel_gap,
                       threads=opts.threads, seed=opts.seed, warm_start=opts.warm_start)
    s.solver = NAME
    s.message = f"mode='recompute': remat_interval's answer: {s.message}"
    return s


def solve_swap_interval(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Plan from the interval model with the host link (module doc); options `SwapIntervalOptions`."""
    opts = read_options(SwapIntervalOptions, options, NAME)
    if opts.mode == "recompute":
        return _recompute_only(problem, int(budget_bytes), opts)
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    shown: dict = {"mode": opts.mode, "bound": opts.bound, "rel_gap": opts.rel_gap, "time_limit_s": opts.time_limit_s}
    start, shown["warm_start"] = _start(problem, budget, opts)
    bound, how = _bound(problem, budget, opts)
    shown["lower_bound_s"] = bound
    if bound == float("inf"):
        return _finish(problem, budget, shown, t0, None, status=Status.INFEASIBLE,
                       message=f"no plan fits: {how} (every plan)")
    start_sim = None if start is None else simulate(problem, start)
    if start_sim is not None and start_sim.time_s <= bound * (1 + opts.rel_gap):
        shown["model"] = "not built: the start is within rel_gap of the bound"
        return _answer(problem, budget, shown, t0, start, start_sim, bound, how, opts.rel_gap,
                       f"start plan ({shown['warm_start']}) proven by the bound, no model solved")
    points, key = _start_points(problem, start)
    t_build = time.perf_counter()
    im = build_swap_interval_model(problem, budget, opts.mode, opts.time_steps, opts.early_anchors,
                                   opts.max_chain_depth, opts.copy_back_order, points, key)
    shown["model"] = dict(im.stats, build_s=time.perf_counter() - t_build)
    if im.infeasible and start is None:
        return _finish(problem, budget, shown, t0, None, status=Status.INFEASIBLE,
                       message=f"the interval model has no plan: {im.infeasible} (a restriction of ours in "
                               f"memory: other plans may fit)")
    plan, sim, note = (start, start_sim, f"the start ({shown['warm_start']})") if start is not None else (None, None, "")
    if not im.infeasible:
        found = _run(problem, budget, im, opts, start, t0, shown)
        if found is not None and (sim is None or found[1].time_s < sim.time_s):
            plan, sim, note = found
        elif found is not None:
            note += f"; the model's plan ({found[2]}) is not faster: the start returned"
    if plan is None:
        engine = shown.get("engine_status")
        status, why = {"INFEASIBLE": (Status.INFEASIBLE, "the interval model has no plan (it restricts ours: "
                                                         "not a proof that no plan fits)"),
                       "OPTIMAL": (Status.INVALID, f"its plan does not fit ({shown.get('projection')})"),
                       "FEASIBLE": (Status.INVALID, f"its plan does not fit ({shown.get('projection')})")
                       }.get(engine, (Status.TIMEOUT, f"cp-sat found no plan ({engine})"))
        return _finish(problem, budget, shown, t0, None, status=status, bound=bound,
                       message=f"no plan and no start: {why}; lower bound {bound:.9g} s ({how}; every plan)")
    return _answer(problem, budget, shown, t0, plan, sim, bound, how, opts.rel_gap, note)


def _engine(opts: SwapIntervalOptions, seconds: float):
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.max_time_in_seconds = max(0.5, seconds)
    prm.num_workers = opts.threads
    prm.random_seed = opts.seed
    # CP-SAT's presolve spent the whole limit on the BERT-base model (the reified issue points and
    # chain rules) before loading the hint; without it the hint is the first solution at once
    prm.cp_model_presolve = False
    return solver


def _complete_start(im: SwapIntervalModel, problem: Problem, start: Schedule, opts: SwapIntervalOptions,
                    seconds: float) -> str:
    """Solve the model with the start's decisions and events fixed; its solution, every variable, is
    then the engine's hint. A partial hint (decisions only) left CP-SAT without any solution in 60 s on
    BERT-base, where completing it this way takes ~4 s. Returns what happened (for ``options``)."""
    from ortools.sat.python import cp_model

    fixed = im.model.clone()
    f = im.frame
    for a in f.free.tolist():
        d = int(start.decisions[a])
        lit = (im.keep, im.rec, im.swap)[d].get(a)
        if lit is None:
            return f"no: activation {a}'s decision is not a variable of the model"
        fixed.add(fixed.get_bool_var_from_proto_index(lit.index) == 1)
        y = fixed.get_int_var_from_proto_index(im.tail_start[a].index)
        fixed.add(y == int(f.chain(start_point(problem, start, a))))
    solver = _engine(opts, seconds)
    code = solver.solve(fixed)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return f"no: with its decisions fixed the model is {solver.status_name(code).lower()} after {solver.wall_time:.1f} s"
    values = list(solver.response_proto.solution)
    im.model.clear_hints()
    for i, v in enumerate(values):
        im.model.add_hint(im.model.get_int_var_from_proto_index(i), v)
    return (f"yes: {float(problem.op_time_s.sum()) + solver.objective_value * f.tick_s:.9g} s in the model, "
            f"completed in {solver.wall_time:.1f} s; the engine's hint")


def _run(problem: Problem, budget: int, im: SwapIntervalModel, opts: SwapIntervalOptions, start: Schedule | None,
         t0: float, shown: dict) -> tuple[Schedule, SimResult, str] | None:
    """Solve the model; its plan simulated (repaired if it does not fit), or None without one."""
    from ortools.sat.python import cp_model

    f = im.frame
    compute = float(problem.op_time_s.sum())
    if start is not None:
        left = opts.time_limit_s - (time.perf_counter() - t0)
        shown["start_in_model"] = _complete_start(im, problem, start, opts, _COMPLETE_SHARE * left)
    solver = _engine(opts, opts.time_limit_s - (time.perf_counter() - t0))
    prm = solver.parameters
    prm.relative_gap_limit = 0.0
    prm.absolute_gap_limit = max(1.0, 0.1 * opts.rel_gap * compute / f.tick_s)  # ours is checked by simulate
    t1 = time.perf_counter()
    code = solver.Solve(im.model)
    shown["engine_status"] = solver.StatusName(code)
    shown["engine_wall_s"] = time.perf_counter() - t1
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    shown["interval_objective_s"] = compute + solver.ObjectiveValue() * f.tick_s
    shown["interval_bound_s"] = compute + solver.BestObjectiveBound() * f.tick_s  # the model's only
    plan = decode(im, problem, solver)
    counts = plan.counts()
    try:
        sim = simulate(problem, plan)
    except ScheduleError as exc:  # not expected: the chain rules make every source resident
        shown["projection"] = f"invalid: {exc}"
        return None
    note = (f"interval model {shown['engine_status'].lower()} ({counts['n_recompute']} recompute / "
            f"{counts['n_swap']} swap): {shown['interval_objective_s']:.9g} s in the model")
    if not sim.fits(budget):
        from solvers.ilp_repair import repair_schedule

        over = sim.peak_bytes - budget
        plan, sim = repair_schedule(problem, budget, plan, opts.mode, max_tries=16)
        if sim is None:
            shown["projection"] = f"over budget by {over} B; repair failed"
            return None
        note += f"; over budget by {over} B under simulate, repaired"
    shown["projection"] = note
    return plan, sim, note

