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
from mutwo.schedule import Schedule, Status
from mutwo.simulate import SimResult, simulate
from mutwo.solver_options import Ge, Gt
from solvers.checkmate_bound import covering_bound
from solvers.checkmate_model import build_checkmate, estimate_size, grid_of, plan_values
from solvers.ilp_backends import BACKENDS, BackendResult
from solvers.ilp_model import Formulation
from solvers.options import read_options
from solvers.remat_interval import IntervalOptions, solve_interval
from solvers.remat_projection import finished, project
from solvers.swap_interval import SwapIntervalOptions, solve_swap_interval

__all__ = ["checkmate_exact", "remat_interval", "build_checkmate", "CheckmateOptions", "MAX_ACT", "MAX_VARS"]

MAX_ACT = 1000
MAX_VARS = 2_000_000  # ResNet-50 b32 on the events grid: ~150k before the presolve


@dataclass(frozen=True)
class CheckmateOptions:
    """Options of ``checkmate_exact``. ``mode`` must be "recompute". ``warm_start``: a recompute-only
    plan (a Schedule or a solver name, run with mode="recompute") mapped into the grid as the engine's
    start; None for none. ``presolve``: the exact presolve of `solvers.checkmate_model` (off only to
    compare). ``max_act`` / ``max_vars``: refuse problems (activations) / models (variables) above these.
    ``interval_share``: the share of ``time_limit_s`` the interval model (``remat_interval``, a restriction
    of this grid, O(n) variables) gets first as a primal heuristic; its plan replaces the start when
    faster, and the grid model is built only when the covering bound does not prove it (0: skip)."""

    backend: Literal["cpsat", "ortools_mip", "pulp_cbc", "pulp_highs"] = "cpsat"  # solvers.ilp_backends
    time_limit_s: Annotated[float, Gt(0)] = 60.0
    rel_gap: Annotated[float, Ge(0)] = 1e-6
    threads: Annotated[int, Ge(1)] = 2
    seed: int = 0
    grid: Literal["auto", "ops", "events"] = "auto"  # "ops": a stage per op; "events": per run between liveness events
    max_act: Annotated[int, Ge(1)] = MAX_ACT
    max_vars: Annotated[int, Ge(1)] = MAX_VARS
    presolve: bool = True
    mode: Literal["recompute"] = "recompute"
    warm_start: Schedule | str | None = "mutwo_greedy"
    interval_share: Annotated[float, Ge(0)] = 0.25

    def __post_init__(self) -> None:
        if self.mode != "recompute":
            raise ValueError(f"checkmate_exact is recompute-only: use mode='recompute' (got mode={self.mode!r})")
        if not 0 <= float(self.interval_share) <= 1:
            raise ValueError(f"checkmate_exact: interval_share is a share of time_limit_s, between 0 and 1; got "
                             f"{self.interval_share}")
        for name, kind in (("time_limit_s", float), ("rel_gap", float), ("threads", int), ("seed", int),
                           ("max_act", int), ("max_vars", int), ("presolve", bool), ("interval_share", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))


def _check_size(problem: Problem, budget: int, opts: CheckmateOptions) -> None:
    """Refuse, naming the size and the option, a problem or model too large to build."""
    if problem.n_act > opts.max_act:
        raise ValueError(f"checkmate_exact: n_act={problem.n_act} > max_act={opts.max_act}; pass max_act to "
                         f"insist (the model grows with activations x stages)")
    g = grid_of(problem, opts.grid, budget if opts.presolve else None)
    n = estimate_size(g)
    if n > opts.max_vars:
        raise ValueError(f"checkmate_exact: the model would have ~{n:,} variables ({int(g.free.sum())} free "
                         f"activations x {len(g.tau)} stages) > max_vars={opts.max_vars:,}; pass max_vars to "
                         f"insist, or grid='events' for fewer stages")


def _start(problem: Problem, budget: int, opts: CheckmateOptions) -> tuple[Schedule | None, str]:
    """Our recompute-only start plan (solvers.ilp's warm start: a Schedule, or a solver's fitting plan)."""
    if opts.warm_start is None:
        return None, ""
    from solvers.ilp import _warm_start

    try:
        return _warm_start(problem, budget, opts.warm_start, True, "recompute", opts.seed)
    except Exception as exc:  # noqa: BLE001 - a failing start solver costs the start, not the solve
        return None, f"start {opts.warm_start!r} failed: {type(exc).__name__}: {exc}"


def _interval_start(problem: Problem, budget: int, start: Schedule | None, opts: CheckmateOptions,
                    shown: dict) -> tuple[Schedule | None, str]:
    """The interval model's plan (C = 2, from ``start``) when it is faster than ``start``: a grid plan
    found in seconds where the grid model itself, 100x larger, improves slowly (docs/remat_exact.md)."""
    try:
        iv = solve_interval(problem, budget, time_limit_s=opts.interval_share * opts.time_limit_s,
                            rel_gap=opts.rel_gap, threads=opts.threads, seed=opts.seed, grid=opts.grid,
                            warm_start=start)
    except Exception as exc:  # noqa: BLE001 - a failing heuristic costs its plan, not the exact solve
        shown["interval_start"] = f"failed: {type(exc).__name__}: {exc}"
        return start, "start plan"
    if not iv.feasible:
        shown["interval_start"] = f"{iv.status.value}: {iv.message}"
        return start, "start plan"
    t = iv.objective  # remat_interval's objective is its plan's simulated time
    if start is not None and simulate(problem, start).time_s <= t:
        shown["interval_start"] = f"{t:.9g} s, not faster than the start"
        return start, "start plan"
    shown["interval_start"] = f"{t:.9g} s in {iv.solve_time_s:.1f} s: the start"
    return (Schedule(iv.decisions, iv.prefetch_at, recompute_at=iv.recompute_at),
            f"the interval model's plan (C=2, {iv.solve_time_s:.1f} s)")


def _engine(F: Formulation, idx: dict, start: Schedule | None, opts: CheckmateOptions, seconds: float,
            shown: dict) -> tuple[BackendResult, np.ndarray | None]:
    """Solve F from the start plan (a hint / MIP start); the engine's answer, else the start's values
    when they satisfy the model (the engine found nothing better in time)."""
    hint = None
    if start is not None:
        hint = plan_values(F, idx, start.decisions)
        viol = F.violation(hint)
        shown["start_checkmate_s"] = F.objective_of(hint)
        shown["start_violation"] = viol
        if viol > 1e-9:  # cannot happen for our plans (module docstring); kept as a hint only
            shown["start_note"] = "start plan violates the model; passed as a hint only"
    res = BACKENDS[opts.backend](F, time_limit_s=seconds, rel_gap=opts.rel_gap, abs_gap=0.0,
                                 threads=opts.threads, seed=opts.seed, hint=hint)
    x = None if res.x is None else np.rint(res.x)
    valid_hint = hint is not None and shown.get("start_violation", 1.0) <= 1e-9
    if valid_hint and (x is None or F.objective_of(hint) < F.objective_of(x)):
        x = hint
    return res, x


def _project(problem: Problem, budget: int, x: np.ndarray, idx: dict) -> tuple[Schedule | None, SimResult | None, str]:
    """Our plan from a Checkmate solution: RECOMPUTE where it drops the activation at some stage, anchored
    where Checkmate last regenerates it before its first backward use (or at that use), simulated,
    repaired if our recompute rule needs more memory than the grid counted (`remat_projection`)."""
    recompute = np.zeros(problem.n_act, bool)
    for (_, a), v in idx["S"].items():
        if x[v] < 0.5:
            recompute[a] = True
    anchors = np.full(problem.n_act, -1, np.int64)
    tau = idx["grid"].tau
    for (k, a), v in idx["R"].items():
        if recompute[a] and x[v] > 0.5:
            anchors[a] = max(anchors[a], int(tau[k]))
    return project(problem, budget, recompute, anchors)


def _bound(problem: Problem, res: BackendResult, F: Formulation, cm_obj: float | None, cover: float
           ) -> tuple[float, str]:
    """A proven lower bound for recompute-only plans: the larger of the covering bound and the engine's
    bound (or the optimum when proven to ``rel_gap`` and the engine gives no bound), never above the
    incumbent."""
    if res.bound is not None:
        b, how = max(res.bound * F.time_unit, problem.total_compute_s), f"{res.engine} bound"
    elif cm_obj is not None and res.status == "optimal":
        b, how = cm_obj, "checkmate optimum"
    else:
        b, how = problem.total_compute_s, "compute time"
    if cover > b:
        b, how = cover, "covering bound"
    return (b if cm_obj is None else min(cm_obj, b)), how


def _proven_start(problem: Problem, budget: int, start: Schedule | None, cover: float, how: str,
                  opts: CheckmateOptions, shown: dict, t0: float, what: str = "start plan") -> Schedule | None:
    """The start plan when the covering bound already proves it within ``rel_gap`` (no model is built),
    or INFEASIBLE when the bound proves that no recompute-only plan fits."""
    if cover == float("inf"):
        return _finish(problem, budget, shown, t0, status=Status.INFEASIBLE,
                       message=f"no recompute-only plan fits: {how}")
    if start is None:
        return None
    t = simulate(problem, start).time_s
    if t > cover * (1 + opts.rel_gap):
        return None
    shown["gap"] = max(0.0, (t - cover) / t)
    return _finish(problem, budget, shown, t0, plan=start, status=Status.OPTIMAL,
                   objective=t, bound=cover, message=f"{what} ({t:.9g} s) proven within {shown['gap']:.3%} "
                   f"of the lower bound {cover:.9g} s ({how}); no model built")


def _finish(problem: Problem, budget: int, shown: dict, t0: float, plan: Schedule | None = None,
            **fields) -> Schedule:
    return finished(problem, budget, "checkmate_exact", shown, t0, plan, **fields)


@register_solver("checkmate_exact", options=CheckmateOptions)
def checkmate_exact(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Solve the Checkmate grid exactly; options `CheckmateOptions`."""
    opts = read_options(CheckmateOptions, options, "checkmate_exact")
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    _check_size(problem, budget, opts)
    shown: dict = {"backend": opts.backend, "rel_gap": opts.rel_gap, "grid": opts.grid, "presolve": opts.presolve}
    start, shown["warm_start"] = _start(problem, budget, opts)
    cover, how = covering_bound(problem, budget, opts.grid, time_limit_s=min(30.0, 0.1 * opts.time_limit_s))
    shown["covering_bound_s"] = cover
    done = _proven_start(problem, budget, start, cover, how, opts, shown, t0)
    if done is not None:
        return done
    if opts.interval_share > 0:
        start, what = _interval_start(problem, budget, start, opts, shown)
        done = _proven_start(problem, budget, start, cover, how, opts, shown, t0, what)
        if done is not None:
            return done
    F, idx = build_checkmate(problem, budget, opts.grid, opts.presolve)
    shown["model"] = dict(F.stats, build_s=time.perf_counter() - t0)
    if F.infeasible:
        s = Schedule.infeasible(problem, "checkmate_exact", budget, F.infeasible, options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    res, x = _engine(F, idx, start, opts, opts.time_limit_s - (time.perf_counter() - t0), shown)
    shown["engine"] = res.engine
    shown["engine_status"] = f"{res.status} ({res.message})"
    cm_obj = None if x is None else F.objective_of(x)
    bound, bound_from = _bound(problem, res, F, cm_obj, cover)
    shown["bound_from"] = bound_from
    if x is None:
        status = Status.INFEASIBLE if res.status == "infeasible" else Status.TIMEOUT
        why = ("no recompute-only plan fits (Checkmate's grid admits every plan of our recompute rule)"
               if status == Status.INFEASIBLE else f"{res.engine}: no plan found ({res.message}); lower bound "
               f"{bound:.9g} s ({bound_from})")
        return _finish(problem, budget, shown, t0, status=status, message=why,
                       bound=bound if status == Status.TIMEOUT else None)
    shown["checkmate_objective_s"] = cm_obj
    shown["gap"] = (cm_obj - bound) / cm_obj if cm_obj > 0 else 0.0
    plan, sim, note = _project(problem, budget, x, idx)
    if start is not None and (sim is None or simulate(problem, start).time_s < sim.time_s):
        plan, sim, note = start, simulate(problem, start), (note + "; " if note else "") + \
            "the start plan simulates faster than the projection: returned"
    if sim is None:
        return _finish(problem, budget, shown, t0, plan=plan, status=Status.INVALID, bound=bound,
                       message=f"Checkmate {cm_obj:.6g} s; {note}; no fitting projection")
    # optimal among recompute-only plans (to rel_gap) when the plan's time meets the bound
    status = Status.OPTIMAL if sim.time_s <= bound * (1 + opts.rel_gap) else Status.FEASIBLE
    msg = (f"Checkmate {res.status}: {cm_obj:.9g} s, lower bound {bound:.9g} s ({bound_from}; for every "
           f"recompute-only plan); projection simulates to {sim.time_s:.9g} s, peak {sim.peak_bytes} B"
           + (f"; {note}" if note else ""))
    return _finish(problem, budget, shown, t0, plan=plan, status=status, objective=sim.time_s, bound=bound,
                   message=msg)


# the interval formulation (solvers/remat_interval.py), registered here so that the entry points an
# installed copy declares stay those of pyproject.toml (a new module would need a reinstall)
remat_interval = register_solver("remat_interval", options=IntervalOptions)(solve_interval)

# the interval formulation with the host link (solvers/swap_interval.py), registered here for the same reason
swap_interval = register_solver("swap_interval", options=SwapIntervalOptions)(solve_swap_interval)
