"""ILP stage 2, positions: the boundaries where residency can change, and per swappable activation the
ops its swap-out may end before and the ops its copy back may be issued at (docs/ilp.md, Candidates)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mutwo.problem import Problem
from solvers.ilp_link_walk import TIME_MARGIN
from solvers.ilp_options import IlpOptions
from solvers.ilp_presolve import Presolved

__all__ = ["EXACT_MAX_OPS", "Candidates", "candidates"]

EXACT_MAX_OPS = 100  # up to this many ops every op position is a boundary and candidate lists are complete
_SWAP_OUT_LEADS = (0.0, 1.0, 2.0, 4.0)  # swap-out queueing delays tried, in the activation's transfer times
_COPY_BACK_LEADS = (0.0, 0.5, 1.0, 1.5, 2.5, 4.0)  # copy-back leads before the first backward use, same units


@dataclass
class Candidates:
    exact: bool  # every op a boundary and complete candidate lists
    bounds: np.ndarray  # sorted boundary positions
    swap_out_ends: dict[int, list[int]]  # a -> ops g its swap-out may have ended before (G_a)
    prefetch_points: dict[int, list[int]]  # a -> ops its copy back may be issued at (C_a)
    swappable: np.ndarray  # bool: may still be SWAP (has candidates on both sides)


def _boundaries(problem: Problem, pre: Presolved, exact: bool, points: tuple[dict[int, int], dict[int, int]]
                ) -> np.ndarray:
    """Positions where some residency indicator can change; the swap points of ``points`` included."""
    p, n = problem, problem.n_ops
    if exact:
        return np.arange(n)
    fa = np.flatnonzero(pre.free)
    lfu, fbu = p.last_fwd_use, p.first_bwd_use
    ev = [np.array([0, p.fwd_end + 1]), p.created, lfu[fa] + 1, fbu[fa], fbu[fa] + 1, p.last_bwd_use[fa] + 1]
    sa = np.flatnonzero(pre.can_s)
    ev += [pre.first_free_op[sa], pre.default_prefetch[sa]]
    ev += [np.fromiter(pt.values(), np.int64, len(pt)) for pt in points]
    bounds = np.unique(np.concatenate(ev))
    return bounds[(bounds >= 0) & (bounds < n)]


def _spaced_points(problem: Problem, pre: Presolved, bounds: np.ndarray, a: int, max_candidates: int
                   ) -> tuple[list[int], list[int]]:
    """A few swap-out ends and copy-back points of ``a``, spaced by its own transfer time."""
    p, cum, swap, g0 = problem, pre.cum, pre.swap, pre.first_free_op
    fbu = p.first_bwd_use
    cum_b = cum[bounds]
    tg = cum[p.last_fwd_use[a] + 1] + swap[a] * (1.0 + np.asarray(_SWAP_OUT_LEADS)) + TIME_MARGIN
    gi = np.searchsorted(cum_b, tg, side="left")
    gs = sorted({int(g0[a])} | {int(bounds[i]) for i in gi if i < len(bounds) and bounds[i] < fbu[a]})
    tp = cum[fbu[a]] - swap[a] * np.asarray(_COPY_BACK_LEADS[:max(1, max_candidates)])
    pi = np.searchsorted(cum_b, tp, side="right") - 1
    ps = sorted({int(pre.default_prefetch[a]), int(fbu[a])}
                | {int(bounds[i]) for i in pi if i >= 0 and p.fwd_end < bounds[i] <= fbu[a]})
    return gs, ps


def _all_points(problem: Problem, pre: Presolved, bounds: np.ndarray, a: int) -> tuple[list[int], list[int]]:
    """Every boundary from ``a``'s first possible swap-out end, and every backward one up to its use."""
    fbu = problem.first_bwd_use
    lo_i, hi_i = np.searchsorted(bounds, [pre.first_free_op[a], fbu[a]], side="left")
    lo_p, hi_p = np.searchsorted(bounds, [problem.fwd_end + 1, fbu[a]], side="left")
    return bounds[lo_i:hi_i].tolist(), bounds[lo_p:hi_p].tolist() + [int(fbu[a])]


def candidates(problem: Problem, pre: Presolved, options: IlpOptions,
               points: tuple[dict[int, int], dict[int, int]]) -> Candidates:
    """Boundaries and candidate points; ``points`` (a start plan's swap-out ends and prefetch points)
    join them so that plan lies inside the model. A swap with no copy-back point after a swap-out end
    frees nothing and is dropped."""
    exact = problem.n_ops <= EXACT_MAX_OPS if options.exact_positions is None else bool(options.exact_positions)
    bounds = _boundaries(problem, pre, exact, points)
    plan_g, plan_p = points
    swappable = pre.can_s.copy()
    G: dict[int, list[int]] = {}
    C: dict[int, list[int]] = {}
    for a in np.flatnonzero(pre.can_s):
        a = int(a)
        if exact:
            gs, ps = _all_points(problem, pre, bounds, a)
        else:
            gs, ps = _spaced_points(problem, pre, bounds, a, options.max_candidates)
        if options.prefetch == "default":
            ps = [int(pre.default_prefetch[a])]
        if a in plan_g and plan_g[a] < plan_p[a] and (options.prefetch == "free"
                                                      or plan_p[a] == pre.default_prefetch[a]):
            gs = sorted(set(gs) | {plan_g[a]})
            ps = sorted(set(ps) | {plan_p[a]})
        ps = [q for q in ps if q > pre.first_free_op[a]]
        if ps and ps[-1] > gs[0]:
            G[a], C[a] = [g for g in gs if g < ps[-1]], ps
        else:
            swappable[a] = False
    return Candidates(exact, bounds, G, C, swappable)
