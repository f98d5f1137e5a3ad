"""Optimal KEEP / RECOMPUTE / SWAP plans: one formulation (docs/ilp.md), four registered backends.

``ilp_cpsat`` (OR-Tools CP-SAT), ``ilp_ortools_mip`` (OR-Tools pywraplp, SCIP), ``ilp_pulp_cbc`` and
``ilp_pulp_highs`` (PuLP) all solve the model built by `solvers.ilp_model.build`. The model is exact
for the plans it admits, except where docs/ilp.md says it is conservative, so every answer is checked
with `mutwo.simulate`: a plan that does not fit is repaired (greedy moves until it fits) or rejected,
and the reported objective is the model's value of the plan, which must match the simulated time.
The options and their defaults are `solvers.ilp_options.IlpOptions`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

import solvers.brute_force  # noqa: F401  registers "brute_force" (the registry loads this module)
from mutwo.problem import Problem
from mutwo.registry import available_solvers, get_solver, register_solver, solver_info, solver_options
from mutwo.schedule import Decision, Schedule, ScheduleError, Status
from mutwo.simulate import SimResult, simulate
from mutwo.solver_options import options_from_table
from solvers.ilp_backends import BACKENDS, BackendResult
from solvers.ilp_bound import IterationBound, iteration_bound
from solvers.ilp_model import INF, Formulation, build
from solvers.ilp_options import IlpOptions
from solvers.ilp_repair import repair, repair_schedule
from solvers.ilp_rounding import round_bound, unchecked_overflow
from solvers.options import option_defaults, read_options

__all__ = ["solve_ilp", "repair", "repair_schedule", "ilp_cpsat", "ilp_ortools_mip", "ilp_pulp_cbc", "ilp_pulp_highs", "AGREEMENT",
           "IlpOptions"]

AGREEMENT = 0.01  # objective and simulated time must agree this closely (relative)
_TWO_PHASE_MIN_ACT = 100  # "both"-mode problems with more activations start from a recompute-only solve
_PHASE1_SHARE = 0.3  # of the time limit, at most, for that solve
_MIP_LIMIT_SHARE = 0.8  # of the remaining time handed to SCIP / CBC / HiGHS, which overrun their limits
_FINISH_RESERVE_S = 2.0  # decode, complete and simulate a large plan after the engine returns
_BOUND_SHARE = 0.4  # of the time limit, at most, for the iteration-time lower bound's relaxation (all rounds)
_CHECK_ROUNDS = 3  # re-solves of that relaxation with the ops its point overfills added to its checks
_ROUNDING_SHARE = 0.2  # of the time limit, at most, for a plan rounded from that relaxation
_MODEL_MIN_SHARE = 0.1  # of the time limit, at least, left to build and solve a model; else the start returns
_ROUNDING = 1e-6  # relative slack for an engine's optimality proof (CP-SAT rounds times to 1e-7)
_OPTIONS = set(option_defaults(IlpOptions))  # every ILP option name (``engine``: ilp_ortools_mip's only)
# what the single-engine ILP solvers take, with the values each accepts (IlpOptions' type hints)
_SINGLE_ENGINE = options_from_table(IlpOptions, drop=("engine",))

EngineCall = Callable[[Formulation, float, "np.ndarray | None"], BackendResult]


HEURISTICS = "heuristics"  # warm_start: the fastest fitting plan of every registered heuristic
_START_REPAIRS = 40  # repair moves at most for a given start that does not fit (each simulates every candidate)
_NOT_HEURISTICS = ("brute_force", "checkmate_exact", "remat_interval", "swap_interval")  # exact models (and every ilp_*): too slow to start from


def heuristic_names(mode: str) -> list[str]:
    """Registered solvers that are heuristics (not an ILP or exact solver) that take ``mode`` as an
    option, or whose decisions ``mode`` allows (a solver that declares neither only for ``"both"``): the
    μ-TWO greedy decides RECOMPUTE and SWAP by default but is a recompute-only start with mode="recompute"."""
    allowed = {"both": {"recompute", "swap"}, "recompute": {"recompute"}, "swap": {"swap"}}[mode]

    def fits_mode(name: str) -> bool:
        info = solver_info(name)
        if info.modes is not None and mode in info.modes:  # it is run with mode=mode (_warm_start)
            return True
        return mode == "both" if info.decisions is None else set(info.decisions) <= allowed

    return [n for n in available_solvers() if not n.startswith("ilp_") and n not in _NOT_HEURISTICS
            and fits_mode(n)]


def _fastest_start(problem: Problem, budget: int, mode: str, seed: int) -> tuple[Schedule | None, str]:
    """Every heuristic's plan, simulated: the fastest that fits (ties: the first by name)."""
    best, tried = None, []
    for name in heuristic_names(mode):
        try:
            sched, _ = _warm_start(problem, budget, name, True, mode, seed)
            sim = None if sched is None else simulate(problem, sched)
        except Exception as exc:  # noqa: BLE001 - a failing heuristic (or its invalid plan) is no start
            tried.append(f"{name}: {type(exc).__name__}")
            continue
        if sim is None or not _fits(sim, budget):
            tried.append(f"{name}: none" if sim is None else f"{name}: over budget")
            continue
        tried.append(f"{name}: {sim.time_s:.6g} s")
        if best is None or sim.time_s < best[0]:
            best = (sim.time_s, sched, name)
    if best is None:
        return None, f"no heuristic found a plan ({'; '.join(tried)})"
    return best[1], f"{best[2]} (fastest of {'; '.join(tried)})"


def _warm_start(problem: Problem, budget: int, warm, insisted: bool, mode: str, seed: int
                ) -> tuple[Schedule | None, str]:
    """The starting plan: a given Schedule, the named solver's answer when it fits, or with
    ``"heuristics"`` the fastest fitting plan of every registered heuristic.

    A solver name that is not registered is an error only when the caller named it (``insisted``);
    the default start is skipped where its solver is absent. A given Schedule that does not fit (e.g.
    the plan of a larger budget in a sweep) is repaired until it fits, or dropped.
    """
    if warm is None:
        return None, ""
    if isinstance(warm, Schedule):
        sim = simulate(problem, warm)
        if _fits(sim, budget):
            return warm, "given schedule"
        fixed, sim = repair_schedule(problem, budget, warm, mode, max_steps=_START_REPAIRS)
        if sim is not None:
            return fixed, "given schedule, repaired to fit"
        return warm, "given schedule (does not fit)"
    if warm == HEURISTICS:
        return _fastest_start(problem, budget, mode, seed)
    try:
        fn = get_solver(warm)
    except KeyError:
        if not insisted:
            return None, ""
        raise
    # pass the mode and seed to a start solver that takes them (a TypeError from inside it is its own)
    accepted = solver_options(warm)
    wanted = {"mode": mode, "seed": seed}
    sched = fn(problem, budget, **{k: v for k, v in wanted.items() if accepted is None or k in accepted})
    if not sched.feasible:
        return None, f"{warm} found no plan"
    return sched, warm


def _with_hint(problem: Problem, budget: int, hint: Schedule, warm: Schedule | None, warm_from: str, mode: str
               ) -> tuple[Schedule | None, str, str]:
    """The start after weighing ``hint`` (option ``hint``) against ``warm``: the hint, repaired until it
    fits (at most ``_START_REPAIRS`` moves), when it is faster; the note says what became of it."""
    if len(hint.decisions) != problem.n_act:
        raise ValueError(f"hint has {len(hint.decisions)} decisions for a Problem of {problem.n_act} activations: "
                         "pass a plan of this Problem (e.g. the same solver's answer at a larger budget)")
    try:
        sim = simulate(problem, hint)
        how = "fits"
        if not _fits(sim, budget):
            hint, sim = repair_schedule(problem, budget, hint, mode, max_steps=_START_REPAIRS)
            how = "repaired to fit"
    except ScheduleError as exc:
        return warm, warm_from, f"dropped: not a valid plan of this Problem ({exc})"
    if sim is None:
        return warm, warm_from, (f"dropped: over budget, and {_START_REPAIRS} repair moves found no plan that "
                                 f"fits")
    warm_sim = None if warm is None else simulate(problem, warm)
    if warm_sim is not None and _fits(warm_sim, budget):
        t_warm = warm_sim.time_s
        if t_warm <= sim.time_s:
            return warm, warm_from, f"{how}, {sim.time_s:.6g} s; not used: the start ({warm_from}) is faster, " \
                                    f"{t_warm:.6g} s"
    return hint, f"hint ({how})", f"{how}, {sim.time_s:.6g} s; used as the start"


def _fits(sim: SimResult, budget: int) -> bool:
    return int(sim.peak_bytes) <= int(budget)


def lower_bound(problem: Problem, budget: int, opts: IlpOptions) -> IterationBound:
    """The iteration-time lower bound the options ask for (`solvers.ilp_bound`; the compute time with
    ``bound="none"``): it holds for every plan, in or out of the model.

    Rounds within ``_BOUND_SHARE`` of the time limit: the relaxation's integral point, as a plan, is
    simulated, and the ops it overfills that were not checked are checked in the next round (a
    relaxation of more checks is never weaker, and its point is closer to a plan that fits)."""
    compute = float(problem.op_time_s.sum())
    if opts.bound == "none":
        return IterationBound(compute, compute, 0, "compute", 0.0, "compute-time bound (bound='none')")
    start = time.perf_counter()
    deadline = start + _BOUND_SHARE * opts.time_limit_s
    kw = {"max_checks": opts.bound_checks, "integral": opts.bound == "mip", "with_point": True}
    lb = iteration_bound(problem, budget, opts.mode, time_limit_s=_BOUND_SHARE * opts.time_limit_s, **kw)
    extra = np.zeros(0, np.int64)
    for _ in range(_CHECK_ROUNDS):
        left = deadline - time.perf_counter()
        if lb.infeasible or lb.point_recompute is None or left < 1.5 * lb.solve_s:  # the next one is larger
            break
        more = unchecked_overflow(problem, budget, lb, opts.mode)
        if not len(more):
            break
        extra = np.union1d(extra, more)
        nxt = iteration_bound(problem, budget, opts.mode, time_limit_s=left, extra_checks=extra, **kw)
        if nxt.infeasible:
            return nxt
        if nxt.method != lb.method:  # not solved in time: the last round stands
            break
        lb = dataclasses.replace(nxt, bound_s=max(nxt.bound_s, lb.bound_s))
    return dataclasses.replace(lb, solve_s=time.perf_counter() - start)  # every round's time


def _start_from_bound(problem: Problem, budget: int, mode: str, lb: IterationBound, warm: Schedule | None,
                      warm_from: str, seconds: float) -> tuple[Schedule | None, str]:
    """The plan rounded from the bound's relaxation (`solvers.ilp_rounding`, within ``seconds``) when it
    is faster than the start (or there is none)."""
    rounded = round_bound(problem, budget, lb, mode, time.perf_counter() + seconds)
    if rounded is None:
        return warm, warm_from
    t = simulate(problem, rounded).time_s
    if warm is not None and simulate(problem, warm).time_s <= t:
        return warm, warm_from
    given = f"{simulate(problem, warm).time_s:.6g} s" if warm is not None else "no plan"
    return rounded, (f"{warm_from or 'none'}, replaced by the bound's relaxation, rounded ({t:.6g} s against "
                     f"{given})")


def _proven_by_bound(problem: Problem, budget: int, warm: Schedule | None, rel_gap: float,
                     lb: IterationBound) -> tuple[SimResult, dict, str] | None:
    """The start plan, when it already fits and is within ``rel_gap`` of the lower bound.

    The bound holds for every plan (the compute time at least: recompute and stall are never negative),
    so building and solving the model would only spend the time limit confirming it.
    """
    if warm is None:
        return None
    sim = simulate(problem, warm)
    gap = max(0.0, (sim.time_s - lb.bound_s) / sim.time_s) if sim.time_s > 0 else 0.0
    if not _fits(sim, budget) or gap > rel_gap:
        return None
    # the relaxation can prove no more than the compute time (swaps that hide): say which bound it is
    which = ("compute-time bound" if lb.method == "compute" or lb.bound_s <= lb.compute_s
             else f"iteration-time bound ({lb.method})")
    shown = {"gap": gap, "simulated_time_s": sim.time_s, "simulated_peak_bytes": int(sim.peak_bytes),
             "engine": f"none ({which})"}
    msg = (f"start plan proven within {gap:.2%} of optimal (gap {gap:.2%} to the {which}, {lb.bound_s:.6g} s; "
           f"no plan is faster), so no model was solved: objective {sim.time_s:.6g} s; peak {sim.peak_bytes} B")
    return sim, shown, msg


def solve_ilp(problem: Problem, budget_bytes: int, backend: str, **options) -> Schedule:
    """Build, warm-start, solve with ``backend``, verify with `simulate`, repair or reject."""
    opts = read_options(IlpOptions, options, "solve_ilp")
    t0 = time.perf_counter()
    solver_name = f"ilp_{backend}"
    budget = int(budget_bytes)
    shown = {k: v for k, v in options.items() if k not in ("warm_start", "hint")}
    shown.update(time_limit_s=opts.time_limit_s, rel_gap=opts.rel_gap, threads=opts.threads, seed=opts.seed,
                 mode=opts.mode)

    warm, warm_from = _warm_start(problem, budget, opts.warm_start, "warm_start" in options, opts.mode, opts.seed)
    if opts.hint is not None:
        warm, warm_from, shown["hint"] = _with_hint(problem, budget, opts.hint, warm, warm_from, opts.mode)
    lb = lower_bound(problem, budget, opts)
    shown["lower_bound"] = {"bound_s": lb.bound_s, "method": lb.method, "n_checks": lb.n_checks,
                            "solve_s": lb.solve_s}
    if lb.infeasible:
        s = Schedule.infeasible(problem, solver_name, budget, f"{lb.message} (every plan: lower bound)",
                                options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    warm, warm_from = _start_from_bound(problem, budget, opts.mode, lb, warm, warm_from,
                                        _ROUNDING_SHARE * opts.time_limit_s)
    proven = _proven_by_bound(problem, budget, warm, opts.rel_gap, lb)
    if proven is not None:
        shown.update(warm_start=warm_from, warm_start_time_s=proven[0].time_s, **proven[1])
        s = Schedule(warm.decisions, warm.prefetch_at, recompute_at=warm.recompute_at, solver=solver_name,
                     status=Status.OPTIMAL, budget_bytes=budget, options=shown, objective=proven[0].time_s,
                     bound=min(lb.bound_s, proven[0].time_s), message=proven[2])
        s.solve_time_s = time.perf_counter() - t0
        return s
    run = _engine_call(backend, opts, opts.rel_gap * float(problem.op_time_s.sum()))

    # phase 1 (large "both"-mode problems): the recompute-only model, whose relaxation is strong, gives a
    # starting plan; the full model's relaxation is weak (docs/ilp.md) and rarely beats its start alone
    two_phase = opts.two_phase
    if two_phase is None:
        two_phase = opts.mode == "both" and problem.n_act > _TWO_PHASE_MIN_ACT
    if two_phase and opts.mode == "both" and _left(opts, t0) < (_PHASE1_SHARE + _MODEL_MIN_SHARE) * opts.time_limit_s:
        two_phase, shown["phase1"] = False, "skipped: too little of the time limit left"
    if two_phase and opts.mode == "both":
        phase1 = _phase1(problem, budget, opts, warm, run, _PHASE1_SHARE * opts.time_limit_s)
        shown["phase1"] = phase1[2] if phase1 else "no recompute-only plan"
        if phase1 is not None and (warm is None or phase1[3] < simulate(problem, warm).time_s):
            warm = Schedule(phase1[0], phase1[1])
            warm_from = "phase 1 (recompute-only model)"

    if _left(opts, t0) < _MODEL_MIN_SHARE * opts.time_limit_s:  # a build alone can take many seconds
        return _out_of_time(problem, budget, warm, warm_from, lb.bound_s, solver_name, shown, opts, t0)
    plan = None if warm is None else (warm.decisions, warm.prefetch_at)
    F = build(problem, budget, opts, plan=plan)
    shown["model"] = dict(F.stats)
    if not F.infeasible and F.obj and lb.bound_s > lb.compute_s:  # the engine's bound starts at ours
        # as a "<=" cut (CP-SAT rounds cuts loosely): -(objective terms) <= constant - bound
        F.add({i: -c for i, c in F.obj.items()}, -INF, F.obj_const - lb.bound_s / F.time_unit, "cut")
    if F.infeasible:
        s = Schedule.infeasible(problem, solver_name, budget, F.infeasible, options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    hint = None
    if warm is not None:
        hint, issue = F.complete(warm.decisions, warm.prefetch_at)
        shown["warm_start"] = warm_from + (f" (outside the model: {issue})" if issue else "")
        shown["warm_start_time_s"] = simulate(problem, warm).time_s

    remaining = opts.time_limit_s - (time.perf_counter() - t0)
    if backend != "cpsat":  # MIP engines check their limit only between phases (docs/ilp.md)
        remaining = _MIP_LIMIT_SHARE * remaining - _FINISH_RESERVE_S * (problem.n_act > _TWO_PHASE_MIN_ACT)
    res = run(F, max(1.0, remaining), hint)
    shown["engine"] = res.engine
    shown["engine_status"] = res.message
    shown["engine_wall_s"] = res.wall_s
    if res.x is None and hint is not None and res.status != "infeasible" and F.violation(hint) <= 1e-7:
        # the engine's incumbent is its start when it returns before loading it (CP-SAT's presolve)
        res = BackendResult("feasible", hint, None, res.bound, res.wall_s, res.engine,
                            f"{res.message}; no better plan than its start ({warm_from})")
    if res.x is None:  # a timeout keeps a fitting start that lies outside the model (not the engine's incumbent)
        return _no_worse_than_start(problem, budget, _no_plan(problem, budget, F, res, solver_name, shown, t0,
                                                              lb.bound_s), warm, warm_from, t0, lb.bound_s)
    s = _finish(problem, budget, F, res, solver_name, shown, opts.rel_gap, t0, lb.bound_s)
    return _no_worse_than_start(problem, budget, s, warm, warm_from, t0, lb.bound_s)


def _left(opts: IlpOptions, t0: float) -> float:
    """Seconds of ``time_limit_s`` left."""
    return opts.time_limit_s - (time.perf_counter() - t0)


def _out_of_time(problem: Problem, budget: int, warm: Schedule | None, warm_from: str, bound_s: float,
                 solver_name: str, shown: dict, opts: IlpOptions, t0: float) -> Schedule:
    """The start plan (FEASIBLE), or TIMEOUT without one, when the start, the bound and its rounding have
    spent the time limit: building the model is not started (on a 7B Llama at batch 20 the start took
    30-40 s, the bound 24 s, and a 270k-variable model 15-20 s more to build before the engine ran)."""
    spent = f"{time.perf_counter() - t0:.1f} s of the {opts.time_limit_s:g} s time limit spent before the model"
    sim = None if warm is None else simulate(problem, warm)
    if sim is None or not _fits(sim, budget):
        s = Schedule.keep_all(problem, solver=solver_name, status=Status.TIMEOUT, budget_bytes=budget,
                              options=shown, bound=bound_s,
                              message=f"{spent}, and no fitting start plan; lower bound reached {bound_s:.6g} s")
    else:
        bound = min(bound_s, sim.time_s)
        s = Schedule(warm.decisions, warm.prefetch_at, recompute_at=warm.recompute_at, solver=solver_name,
                     status=Status.FEASIBLE, budget_bytes=budget,
                     options={**shown, "warm_start": warm_from, "gap": (sim.time_s - bound) / sim.time_s},
                     objective=sim.time_s, bound=bound,
                     message=f"{spent}: start plan ({warm_from}) returned, {sim.time_s:.6g} s; iteration-time "
                             f"lower bound {bound:.6g} s (a larger time_limit_s lets the model run)")
    s.solve_time_s = time.perf_counter() - t0
    return s


def _engine_call(backend: str, opts: IlpOptions, abs_gap_s: float) -> EngineCall:
    """``run(F, seconds, hint)``: one engine call with the solve's options; a crash becomes a result."""
    engine_kw = {"engine": opts.engine} if backend == "ortools_mip" else {}

    def run(F: Formulation, seconds: float, hint: np.ndarray | None) -> BackendResult:
        t_run = time.perf_counter()
        try:
            return BACKENDS[backend](F, time_limit_s=seconds, rel_gap=opts.rel_gap, abs_gap=abs_gap_s / F.time_unit,
                                     threads=opts.threads, seed=opts.seed, hint=hint, log=opts.log, **engine_kw)
        except Exception as exc:  # an engine crash (CBC binary, highspy) must not lose the start plan
            return BackendResult("error", None, None, None, time.perf_counter() - t_run, backend,
                                 f"{type(exc).__name__}: {exc}")

    return run


def _no_plan(problem: Problem, budget: int, F: Formulation, res: BackendResult, solver_name: str, shown: dict,
             t0: float, bound_s: float) -> Schedule:
    """The Schedule when the engine returned no plan: infeasible, an engine error, or a timeout."""
    if res.status == "infeasible":
        why = ("no plan fits within the model" + ("" if F.stats.get("exact_positions") else
               " (its candidate prefetch / swap-out points and chain depth restrict plans)"))
        s = Schedule.infeasible(problem, solver_name, budget, why, options=shown)
    elif res.status == "error":
        s = Schedule.keep_all(problem, solver=solver_name, status=Status.ERROR, budget_bytes=budget,
                              options=shown, message=f"{res.engine} failed: {res.message}")
    else:
        engine_bound = -INF if res.bound is None else res.bound * F.time_unit
        s = Schedule.keep_all(problem, solver=solver_name, status=Status.TIMEOUT, budget_bytes=budget,
                              options=shown, bound=max(bound_s, engine_bound),
                              message=f"{res.engine}: no plan found ({res.message}); lower bound reached "
                                      f"{max(bound_s, engine_bound):.6g} s")
    s.solve_time_s = time.perf_counter() - t0
    return s


def _no_worse_than_start(problem: Problem, budget: int, s: Schedule, warm: Schedule | None, warm_from: str,
                         t0: float, bound_s: float | None = None) -> Schedule:
    """The start plan when it fits and is faster than the model's answer.

    That happens when the start lies outside the model: its chain-memory rows are conservative (member
    rule, docs/ilp.md), so a plan that fits under ``simulate`` may not fit there. The model's bound says
    nothing about plans outside it; only the iteration-time bound (which holds for every plan) is kept.
    """
    if warm is None or not (s.feasible or s.status == Status.TIMEOUT):
        return s
    sim = simulate(problem, warm)
    # faster by more than float noise (the model's objective and simulate agree to ~1e-15)
    if not _fits(sim, budget) or (s.feasible and s.objective is not None
                                  and sim.time_s >= s.objective * (1 - 1e-9)):
        return s
    bound = min(float(problem.op_time_s.sum()) if bound_s is None else bound_s, sim.time_s)
    out = Schedule(warm.decisions, warm.prefetch_at, recompute_at=warm.recompute_at, solver=s.solver,
                   status=Status.FEASIBLE, budget_bytes=budget, options={**s.options, "gap": (sim.time_s - bound)
                                                                         / sim.time_s},
                   objective=sim.time_s, bound=bound,
                   message=(f"start plan ({warm_from}) kept: {sim.time_s:.6g} s, "
                            + ("the model gave no plan" if s.status == Status.TIMEOUT else
                               "faster than the model's answer")
                            + f" ({s.message}); it lies outside the model (conservative chain memory), so only the "
                            f"iteration-time bound {bound:.6g} s holds"))
    out.solve_time_s = time.perf_counter() - t0
    return out


def _phase1(problem: Problem, budget: int, opts: IlpOptions, warm: Schedule | None, run: EngineCall,
            seconds: float):
    """Solve the recompute-only model; return (decisions, prefetch, note, simulated time) if it fits."""
    t0 = time.perf_counter()
    plan = None
    if warm is not None:  # its swaps recomputed instead (recomputing frees more), if that still fits
        d = warm.decisions.copy()
        d[(d == Decision.SWAP) & problem.recomputable] = Decision.RECOMPUTE
        d[d == Decision.SWAP] = Decision.KEEP
        pf = np.full(problem.n_act, -1, np.int64)
        try:
            if _fits(simulate(problem, Schedule(d, pf)), budget):
                plan = (d, pf)
        except ScheduleError:
            pass
    F1 = build(problem, budget, dataclasses.replace(opts, mode="recompute"), plan=plan)
    if F1.infeasible:
        return None
    hint = None if plan is None else F1.complete(*plan)[0]
    r1 = run(F1, max(1.0, seconds - (time.perf_counter() - t0)), hint)
    if r1.x is None:
        return None
    d1, pf1 = F1.decode(np.rint(r1.x))
    try:
        sim = simulate(problem, Schedule(d1, pf1))
    except ScheduleError:
        return None
    if not _fits(sim, budget):
        return None
    note = f"{r1.engine} {r1.status}: {sim.time_s:.6g} s in {time.perf_counter() - t0:.1f} s"
    return d1, pf1, note, sim.time_s


def _finish(problem: Problem, budget: int, F: Formulation, res: BackendResult, solver_name: str, shown: dict,
            rel_gap: float, t0: float, bound_s: float) -> Schedule:
    """Turn an engine's solution into a verified Schedule (see module doc)."""
    d, pf = F.decode(np.rint(res.x))
    x, issue = F.complete(d, pf)
    objective = F.objective_of(x)
    # no plan is faster than the iteration-time bound (the compute time at least): a weaker engine bound is
    # raised to it, and it stands in for an engine that reported none
    engine_bound = -INF if res.bound is None else res.bound * F.time_unit
    bound = min(max(engine_bound, bound_s), objective)
    status = Status.OPTIMAL if res.status == "optimal" else Status.FEASIBLE
    notes = []
    if issue:
        notes.append(f"decoded plan leaves the model: {issue}")
        status = Status.FEASIBLE
    try:
        sim = simulate(problem, Schedule(d, pf))
    except ScheduleError as exc:
        sim = None
        notes.append(f"plan invalid: {exc}")
    if sim is None or not _fits(sim, budget):
        if sim is not None:
            notes.append(f"simulated peak {sim.peak_bytes} B > budget; repaired")
        d, pf, sim = repair(problem, budget, d, pf, F.mode) if sim is not None else (d, pf, None)
        status = Status.FEASIBLE
        if sim is None:
            s = Schedule(d, pf, solver=solver_name, status=Status.INVALID, budget_bytes=budget,
                         options=shown, message="; ".join(notes + ["rejected: repair found no plan that fits"]))
            s.solve_time_s = time.perf_counter() - t0
            return s
        x, issue = F.complete(d, pf)
        objective = F.objective_of(x)
    if abs(objective - sim.time_s) > AGREEMENT * sim.time_s:
        notes.append(f"model objective {objective:.6g} s disagrees with simulate {sim.time_s:.6g} s; "
                     "reporting the simulated time")
        objective = sim.time_s
        status = Status.FEASIBLE
    gap = None if bound is None else max(0.0, (objective - bound) / objective)
    # an engine's proof holds for its own (for CP-SAT: integer-rounded) model; allow that rounding
    if status == Status.OPTIMAL and (gap is None or gap > rel_gap + _ROUNDING):
        status = Status.FEASIBLE
    shown["gap"] = gap
    shown["simulated_time_s"] = sim.time_s
    shown["simulated_peak_bytes"] = int(sim.peak_bytes)
    c = {k: int(v) for k, v in zip(("keep", "recompute", "swap"), np.bincount(d, minlength=3), strict=True)}
    msg = (f"{res.engine} {res.status}: objective {objective:.6g} s, bound "
           f"{'n/a' if bound is None else f'{bound:.6g} s'}, gap {'n/a' if gap is None else f'{gap:.2%}'}; "
           f"peak {sim.peak_bytes} B; keep {c['keep']} recompute {c['recompute']} swap {c['swap']}")
    s = Schedule(d, pf, solver=solver_name, status=status, budget_bytes=budget, options=shown,
                 objective=objective, bound=bound, message="; ".join([msg] + notes))
    s.solve_time_s = time.perf_counter() - t0
    return s


@register_solver("ilp_cpsat", options=_SINGLE_ENGINE)
def ilp_cpsat(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """The formulation on OR-Tools CP-SAT (integer-scaled times, parallel portfolio)."""
    return solve_ilp(problem, budget_bytes, "cpsat", **options)


@register_solver("ilp_ortools_mip", options=IlpOptions)
def ilp_ortools_mip(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """The formulation on OR-Tools pywraplp (SCIP, or CBC with ``engine="CBC"``)."""
    return solve_ilp(problem, budget_bytes, "ortools_mip", **options)


@register_solver("ilp_pulp_cbc", options=_SINGLE_ENGINE)
def ilp_pulp_cbc(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """The formulation through PuLP on its bundled CBC."""
    return solve_ilp(problem, budget_bytes, "pulp_cbc", **options)


@register_solver("ilp_pulp_highs", options=_SINGLE_ENGINE)
def ilp_pulp_highs(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """The formulation through PuLP on HiGHS."""
    return solve_ilp(problem, budget_bytes, "pulp_highs", **options)
