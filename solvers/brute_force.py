"""Ground truth for tiny problems: try every KEEP / RECOMPUTE / SWAP vector and simulate it.

Tests use it to check every solver's claim of optimality, so it decides by `mutwo.simulate` alone.
SWAPs use `default_prefetch` (the plan a decision vector names). Two exact prunings keep it fast
without changing the answer: vectors are visited in order of a lower bound on their time (compute
plus each recomputed activation's own ops), stopping once the bound passes the best time found; and a
vector is skipped when even an optimistic peak (every non-KEEP off the device for its whole gap, no
chain temporaries) exceeds the budget, since the simulated peak can only be higher.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.schedule import Decision, Schedule, ScheduleError, Status
from mutwo.simulate import simulate
from mutwo.solver_options import Ge, Gt
from solvers.modes import Mode, check_mode, may_recompute, may_swap
from solvers.options import read_options

__all__ = ["brute_force", "BruteForceOptions", "MAX_ACT"]

MAX_ACT = 12
_TIE = 1e-12  # relative: times this close are equal


@dataclass(frozen=True)
class BruteForceOptions:
    """``seed`` and ``time_limit_s`` are accepted and not used (it is deterministic and always finishes)."""

    mode: Mode = "both"
    max_act: Annotated[int, Ge(1)] = MAX_ACT  # refuse larger problems (3^n plans)
    seed: int = 0
    time_limit_s: Annotated[float, Gt(0)] | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode)
        object.__setattr__(self, "max_act", int(self.max_act))


def _allowed(problem: Problem, mode: str) -> list[list[int]]:
    out = []
    for a in range(problem.n_act):
        codes = [int(Decision.KEEP)]
        if may_recompute(mode) and problem.recomputable[a]:
            codes.append(int(Decision.RECOMPUTE))
        if may_swap(mode) and problem.swappable[a]:
            codes.append(int(Decision.SWAP))
        out.append(codes)
    return out


@register_solver("brute_force", options=BruteForceOptions)
def brute_force(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Fastest fitting vector (ties: fewest non-KEEP, then lexicographic); options `BruteForceOptions`."""
    opts = read_options(BruteForceOptions, options, "brute_force")
    mode, max_act = opts.mode, opts.max_act
    n = problem.n_act
    if n > max_act:
        raise ValueError(f"brute_force enumerates 3^n plans and refuses n_act={n} > {max_act} "
                         f"({3 ** n:,} plans); use an ILP solver, or pass max_act to insist")
    t0 = time.perf_counter()
    budget = int(budget_bytes)
    shown = {"mode": mode}
    vecs = np.array(list(itertools.product(*_allowed(problem, mode))), dtype=np.int8).reshape(-1, n)
    nonkeep = vecs != Decision.KEEP

    # optimistic peak: keep-all minus every non-KEEP's whole gap, no temporaries
    n_ops = problem.n_ops
    pos = np.arange(n_ops)
    base = (problem.fixed_bytes + problem.op_transient_bytes).astype(np.float64)
    live = (problem.created[:, None] <= pos) & (pos <= problem.last_bwd_use[:, None])
    keep_all = base + (problem.act_bytes[:, None] * live).sum(axis=0)
    gapmask = (problem.last_fwd_use[:, None] < pos) & (pos < problem.first_bwd_use[:, None])
    W = problem.act_bytes[:, None].astype(np.float64) * gapmask
    ok = np.zeros(len(vecs), bool)
    for i in range(0, len(vecs), 16384):
        opt = keep_all[None, :] - nonkeep[i:i + 16384].astype(np.float64) @ W
        ok[i:i + 16384] = opt.max(axis=1) <= budget
    cand = np.flatnonzero(ok)
    lb = problem.total_compute_s + ((vecs[cand] == Decision.RECOMPUTE) * problem.recompute_time_s).sum(axis=1)
    nnk = nonkeep[cand].sum(axis=1)
    order = cand[np.lexsort((nnk, lb))]
    lb_sorted = np.sort(lb)

    best = None  # (time, n_nonkeep, tuple, schedule, sim)
    simulated = 0
    for j, v in enumerate(order.tolist()):
        if best is not None and lb_sorted[j] > best[0] * (1 + 1e-9):
            break
        d = vecs[v]
        sched = Schedule.from_decisions(problem, d)
        try:
            sim = simulate(problem, sched)
        except ScheduleError:
            continue
        simulated += 1
        if sim.peak_bytes > budget:
            continue
        key = (sim.time_s, int(nonkeep[v].sum()), tuple(d.tolist()))
        if best is None or _better(key, best[:3]):
            best = (*key, sched, sim)
    note = f"{len(vecs)} plans, {len(cand)} pass the optimistic peak, {simulated} simulated"
    if best is None:
        s = Schedule.infeasible(problem, "brute_force", budget, f"no plan fits ({note})", options=shown)
        s.solve_time_s = time.perf_counter() - t0
        return s
    sched, sim = best[3], best[4]
    sched.solver = "brute_force"
    sched.status = Status.OPTIMAL
    sched.budget_bytes = budget
    sched.objective = sched.bound = sim.time_s
    sched.options = shown
    sched.message = f"optimal: {sim.time_s:.9g} s, peak {sim.peak_bytes} B; {note}"
    sched.solve_time_s = time.perf_counter() - t0
    return sched


def _better(a: tuple, b: tuple) -> bool:
    ta, tb = a[0], b[0]
    if abs(ta - tb) > _TIE * max(abs(ta), abs(tb)):
        return ta < tb
    return a[1:] < b[1:]
