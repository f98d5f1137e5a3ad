"""A covering lower bound for recompute-only plans, from the op rows of the Checkmate grid.

At each stage ``k`` the op row of `solvers.checkmate_model` says that the activations dropped there
must free at least the excess of the keep-all memory over the budget:
``sum over a in gap(k) of B_a (1 - S[k,a]) >= base + alive_k - budget``. An activation dropped at any
stage is recomputed at least once before its first backward use, and a recompute of ``a`` costs at
least ``c_a = sum over its ops o of t_o / n_o`` (``n_o``: activations whose recompute re-runs ``o``;
the grid pays a shared op once per stage). So the optimum of

    min sum_a c_a z_a   s.t.   sum_{a in gap(k)} B_a z_a >= excess_k  for every stage k,   z binary

plus the compute time is a lower bound on the Checkmate optimum, hence on every recompute-only plan of
ours (docs/remat_exact.md). It has one variable per activation, so HiGHS (through scipy) solves it in
under a second on ResNet-50; at a time limit its dual bound is used.
"""

from __future__ import annotations

import numpy as np

from mutwo.problem import Problem
from solvers.checkmate_model import grid_of

__all__ = ["covering_bound", "recompute_unit_cost"]


def recompute_unit_cost(p: Problem) -> np.ndarray:
    """Least cost one recompute of each activation adds to the grid's objective (shared ops split)."""
    sharers = np.zeros(p.n_ops)
    for ops in p.recompute_ops:
        sharers[ops] += 1
    return np.array([float((p.op_time_s[ops] / sharers[ops]).sum()) if len(ops) else 0.0
                     for ops in p.recompute_ops])


def covering_bound(problem: Problem, budget: int, grid: str = "auto", time_limit_s: float = 30.0
                   ) -> tuple[float, str]:
    """The bound in seconds and a sentence saying how it was reached (``inf`` when no plan can fit)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    p = problem
    g = grid_of(p, grid)
    excess = (g.base[g.peak_op] + g.alive - int(budget)).astype(float)
    hot = np.flatnonzero(excess > 0)
    compute = p.total_compute_s
    if len(hot) == 0:
        return compute, "keep-all fits: compute time"
    rows, cols, vals = [], [], []
    for r, k in enumerate(hot.tolist()):
        acts = np.flatnonzero(g.free & (g.kl < k) & (k < g.kf))
        rows += [r] * len(acts)
        cols += acts.tolist()
        vals += p.act_bytes[acts].astype(float).tolist()
    A = csr_matrix((vals, (rows, cols)), shape=(len(hot), p.n_act))
    can = np.asarray(A.sum(axis=1)).ravel()
    if np.any(can < excess[hot]):
        k = int(hot[np.argmax(excess[hot] - can)])
        return float("inf"), f"stage {k}: dropping every activation in its gap cannot free enough"
    cost = recompute_unit_cost(p)
    res = milp(cost, constraints=LinearConstraint(A, excess[hot], np.inf), integrality=np.ones(p.n_act),
               bounds=Bounds(0, g.free.astype(float)), options={"time_limit": float(time_limit_s)})
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not np.isfinite(dual):
        dual = res.fun if res.status == 0 else 0.0
    extra = max(0.0, float(dual)) * (1 - 1e-9)  # HiGHS tolerances: never claim more than proven
    how = "optimal" if res.status == 0 else f"status {res.status} ({res.message})"
    return compute + extra, f"covering bound over {len(hot)} memory checks ({how})"
