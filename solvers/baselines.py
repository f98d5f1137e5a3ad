"""Baseline solvers: the simple policies every smarter solver has to beat.

Each is a pure, deterministic function ``(problem, budget_bytes, **options) -> Schedule`` and uses
`mutwo.simulate` as its only feasibility oracle. Only chen_sqrt (`ChenSqrtOptions`) and swap_hidden
(`SwapHiddenOptions`) take options; each decorator declares them, so any other is refused, and the
decisions its plans use (keep_all: none; swap_hidden: SWAP; the others: RECOMPUTE).
Budget-free policies (keep_all, recompute_all, chen_sqrt, swap_hidden) make their plan and report
FEASIBLE only if its simulated peak fits. Budget-driven ones (largest_first, knapsack) recompute a
prefix of a candidate order and bisect for the shortest prefix that fits; when none fits they say
INFEASIBLE and give the lowest peak they reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from mutwo.problem import Problem
from mutwo.registry import register_solver
from mutwo.schedule import Decision, Schedule, Status
from mutwo.simulate import SimResult, simulate
from mutwo.solver_options import Ge
from solvers.options import read_options

__all__ = ["keep_all", "recompute_all", "chen_sqrt", "largest_first", "swap_hidden", "knapsack", "ChenSqrtOptions",
           "SwapHiddenOptions"]


@dataclass(frozen=True)
class ChenSqrtOptions:
    """Options of ``chen_sqrt``: ``segments`` runs (None: round(sqrt(n))); ``share``: one regeneration
    per run (the paper's scheme) rather than one per member."""

    segments: Annotated[int, Ge(1)] | None = None
    share: bool = True


@dataclass(frozen=True)
class SwapHiddenOptions:
    """Options of ``swap_hidden``: ``margin`` scales the transfer time an idle gap must cover."""

    margin: Annotated[float, Ge(0)] = 1.0


_GRID = 32  # prefix lengths probed when the longest prefix does not fit (peak need not be monotone)


def _finish(problem: Problem, budget: int, decisions: np.ndarray, name: str, options: dict, *,
            sim: SimResult | None = None, note: str = "", recompute_at: np.ndarray | None = None) -> Schedule:
    """Wrap decisions into a Schedule whose status says whether its simulated peak fits."""
    schedule = Schedule.from_decisions(problem, decisions, recompute_at=recompute_at, solver=name,
                                       budget_bytes=int(budget), options=dict(options))
    sim = sim or simulate(problem, schedule)
    schedule.objective = sim.time_s
    counts = schedule.counts()
    summary = (f"peak {sim.peak_bytes} bytes at op {sim.peak_op}; recompute {counts['n_recompute']}, "
               f"swap {counts['n_swap']}")
    if sim.fits(budget):
        schedule.status = Status.FEASIBLE
        schedule.message = summary + (f"; {note}" if note else "")
    else:
        schedule.status = Status.INFEASIBLE
        schedule.message = f"lowest peak reached {sim.peak_bytes} bytes > budget {int(budget)} bytes ({summary})"
    return schedule


def _prefix_search(problem: Problem, budget: int, order: np.ndarray, name: str, options: dict) -> Schedule:
    """Recompute the shortest prefix of ``order`` whose simulated peak fits the budget.

    Bisection assumes the peak falls as the prefix grows, which holds except where recompute chain
    temporaries push a backward op up; the invariant (lo does not fit, hi fits) still guarantees the
    answer fits. When the full prefix does not fit, a grid of prefix lengths is probed first.
    """
    cache: dict[int, tuple[np.ndarray, SimResult]] = {}

    def probe(k: int) -> tuple[np.ndarray, SimResult]:
        if k not in cache:
            d = np.zeros(problem.n_act, np.int8)
            d[order[:k]] = Decision.RECOMPUTE
            cache[k] = (d, simulate(problem, Schedule(d, np.full(problem.n_act, -1, np.int64))))
        return cache[k]

    def fits(k: int) -> bool:
        return probe(k)[1].fits(budget)

    n = len(order)
    if fits(0):
        return _finish(problem, budget, probe(0)[0], name, options, sim=probe(0)[1], note="keep-all fits")
    lo, hi = 0, n
    if not fits(n):
        grid = sorted(set(np.linspace(0, n, _GRID + 1).round().astype(int).tolist()))
        fitting = [k for k in grid if fits(k)]
        if not fitting:
            best = min(cache, key=lambda k: (cache[k][1].peak_bytes, k))
            return _finish(problem, budget, probe(best)[0], name, options, sim=probe(best)[1])
        hi = fitting[0]
        lo = max(k for k in grid if k < hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    d, sim = probe(hi)
    return _finish(problem, budget, d, name, options, sim=sim, note=f"recomputed {hi} of {n} candidates")


# ---------------------------------------------------------------------------- budget-free
@register_solver("keep_all", options=(), decisions=())
def keep_all(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Keep every activation: the no-savings reference point."""
    return _finish(problem, budget_bytes, np.zeros(problem.n_act, np.int8), "keep_all", options)


@register_solver("recompute_all", options=(), decisions={"recompute"})
def recompute_all(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Recompute every recomputable activation, each at its own first backward use: the most memory
    recompute alone can save (usually), at the highest price — each chain runs back to the nearest
    kept tensor, so on a deep network most of the forward pass re-runs once per activation."""
    d = np.where(problem.recomputable, Decision.RECOMPUTE, Decision.KEEP).astype(np.int8)
    return _finish(problem, budget_bytes, d, "recompute_all", options)


@register_solver("chen_sqrt", options=ChenSqrtOptions, decisions={"recompute"})
def chen_sqrt(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Chen et al. (2016) sqrt(n) checkpointing.

    Along creation order, the recomputable activations are cut into ``segments`` runs (default
    round(sqrt(n))); the last activation of each run is kept as a checkpoint, the others recomputed.
    With ``share`` (the paper's scheme) a run is regenerated once, at the first backward use of any of
    its members, and held until each member's own backward uses: about one extra forward pass in all.
    Members that another run reads (skip connections) are kept too, so every run starts from kept
    tensors.
    ``share=False`` regenerates every member on its own at its first backward use (less memory, and
    quadratic time in the run length).
    """
    opts = read_options(ChenSqrtOptions, options, "chen_sqrt")
    segments, share = opts.segments, opts.share
    cand = np.flatnonzero(problem.recomputable)
    cand = cand[np.lexsort((cand, problem.created[cand]))]
    n = len(cand)
    if segments is None:
        segments = max(1, round(math.sqrt(n)))
    if segments < 1:
        raise ValueError(f"chen_sqrt: segments must be >= 1, got {segments}")
    k = max(1, math.ceil(n / segments)) if n else 1
    d = np.zeros(problem.n_act, np.int8)
    pos = np.arange(n)
    recomputed = (pos + 1) % k != 0
    d[cand[recomputed]] = Decision.RECOMPUTE
    recompute_at = np.full(problem.n_act, -1, np.int64)
    if share:
        run_of = np.full(problem.n_act, -1, np.int64)
        run_of[cand] = pos // k
        # an activation a later run reads (a skip connection) is kept as well: regenerating it inside
        # that run's chains would re-run its own run as temporaries
        for a in cand[recomputed]:
            srcs = problem.recompute_sources[a]
            d[srcs[(d[srcs] == Decision.RECOMPUTE) & (run_of[srcs] != run_of[a])]] = Decision.KEEP
        for run in np.unique(run_of[d == Decision.RECOMPUTE]):
            members = np.flatnonzero((run_of == run) & (d == Decision.RECOMPUTE))
            recompute_at[members] = problem.first_bwd_use[members].min()
    return _finish(problem, budget_bytes, d, "chen_sqrt", {"segments": int(segments), "share": share},
                   recompute_at=recompute_at)


@register_solver("swap_hidden", options=SwapHiddenOptions, decisions={"swap"})
def swap_hidden(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Swap every swappable activation whose idle gap hides both of its transfers.

    The gap is the compute time between the end of its last forward use and the start of its first
    backward use; the copy back cannot start before the copy out ends, so the gap must cover
    ``2 * swap_time * margin``. Link contention is not planned for: the simulator charges it as stall.
    """
    margin = read_options(SwapHiddenOptions, options, "swap_hidden").margin
    cum = np.concatenate([[0.0], np.cumsum(problem.op_time_s)])
    gap = cum[problem.first_bwd_use] - cum[problem.last_fwd_use + 1]
    chosen = problem.swappable & (gap >= 2.0 * margin * problem.swap_time_s)
    d = np.where(chosen, Decision.SWAP, Decision.KEEP).astype(np.int8)
    return _finish(problem, budget_bytes, d, "swap_hidden", {"margin": margin})


# ---------------------------------------------------------------------------- budget-driven
def _candidates(problem: Problem, key: Callable[[np.ndarray], tuple]) -> np.ndarray:
    """Recomputable activations that free something, sorted by ``key`` (lexsort keys, last primary)."""
    cand = np.flatnonzero(problem.recomputable & (problem.act_bytes > 0))
    return cand[np.lexsort(key(cand))]


@register_solver("largest_first", options=(), decisions={"recompute"})
def largest_first(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Recompute the largest recomputable activations first until the budget holds."""
    order = _candidates(problem, lambda c: (c, -problem.act_bytes[c]))
    return _prefix_search(problem, budget_bytes, order, "largest_first", options)


@register_solver("knapsack", options=(), decisions={"recompute"})
def knapsack(problem: Problem, budget_bytes: int, **options) -> Schedule:
    """Greedy knapsack (as in PyTorch's activation_memory_budget): cheapest recompute time per byte
    saved first, until the budget holds."""
    per_byte = problem.recompute_time_s / np.maximum(problem.act_bytes, 1)
    order = _candidates(problem, lambda c: (c, -problem.act_bytes[c], per_byte[c]))
    return _prefix_search(problem, budget_bytes, order, "knapsack", options)
