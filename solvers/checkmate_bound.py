"""A covering lower bound for recompute-only plans, from the op rows of the Checkmate grid.

At each stage ``k`` the op row of `solvers.checkmate_model` says that the activations dropped there
must free at least the excess of the keep-all memory over the budget:
``sum over a in gap(k) of B_a (1 - S[k,a]) >= base + alive_k - budget``. An activation dropped at any
stage is recomputed at least once before its first backward use, and that recompute re-runs every op
of ``recompute_ops[a]``. So each op needed by some dropped activation runs at least once more (the
grid pays an op shared by two recomputes of one stage once; never less than once), and

    min sum_o t_o w_o   s.t.   sum_{a in gap(k)} B_a z_a >= excess_k  for every stage k,
                               w_o >= z_a  for every op o of recompute_ops[a],   z binary

plus the compute time is a lower bound on the Checkmate optimum, hence on every recompute-only plan of
ours (docs/remat_exact.md). Paying each op once for the union of the dropped activations' ops is what
makes it bite: the first version split a shared op's time among the activations that may re-run it
(``t_o / n_o`` each), which is the same bound when nothing is shared and weaker when it is (ResNet-50
b32 at 30% of the range: 17.39 -> 17.72 ms against a best plan of 17.76 ms). One binary per
activation and one continuous variable per op, so HiGHS (through scipy) solves it in under a second on
ResNet-50; at a time limit its dual bound is used.
"""

from __future__ import annotations

import numpy as np

from mutwo.problem import Problem
from solvers.checkmate_model import grid_of

__all__ = ["covering_bound"]


def _rows(p: Problem, free: np.ndarray, kl: np.ndarray, kf: np.ndarray, hot: np.ndarray):
    """The covering rows (one per over-budget stage, over the activations z) and the union rows
    ``w_o - z_a >= 0``, as one sparse matrix over ``[z (n_act), w (n_ops)]``."""
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for r, k in enumerate(hot.tolist()):
        acts = np.flatnonzero(free & (kl < k) & (k < kf))
        rows += [r] * len(acts)
        cols += acts.tolist()
        vals += p.act_bytes[acts].astype(float).tolist()
    r = len(hot)
    for a in np.flatnonzero(free).tolist():
        for o in p.recompute_ops[a].tolist():
            rows += [r, r]
            cols += [p.n_act + o, a]
            vals += [1.0, -1.0]
            r += 1
    return csr_matrix((vals, (rows, cols)), shape=(r, p.n_act + p.n_ops)), len(hot)


def covering_bound(problem: Problem, budget: int, grid: str = "auto", time_limit_s: float = 30.0
                   ) -> tuple[float, str]:
    """The bound in seconds and a sentence saying how it was reached (``inf`` when no plan can fit)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    p = problem
    g = grid_of(p, grid)
    excess = (g.base[g.peak_op] + g.alive - int(budget)).astype(float)
    hot = np.flatnonzero(excess > 0)
    compute = p.total_compute_s
    if len(hot) == 0:
        return compute, "keep-all fits: compute time"
    A, n_cover = _rows(p, g.free, g.kl, g.kf, hot)
    can = np.asarray(A[:n_cover, :p.n_act].sum(axis=1)).ravel()
    if np.any(can < excess[hot]):
        k = int(hot[np.argmax(excess[hot] - can)])
        return float("inf"), f"stage {k}: dropping every activation in its gap cannot free enough"
    lower = np.concatenate([excess[hot], np.zeros(A.shape[0] - n_cover)])
    cost = np.concatenate([np.zeros(p.n_act), p.op_time_s.astype(float)])
    integral = np.concatenate([np.ones(p.n_act), np.zeros(p.n_ops)])  # w_o is integral at an optimum
    upper = np.concatenate([g.free.astype(float), np.ones(p.n_ops)])
    res = milp(cost, constraints=LinearConstraint(A, lower, np.inf), integrality=integral,
               bounds=Bounds(0, upper), options={"time_limit": float(time_limit_s)})
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not np.isfinite(dual):
        dual = res.fun if res.status == 0 else 0.0
    extra = max(0.0, float(dual)) * (1 - 1e-9)  # HiGHS tolerances: never claim more than proven
    how = "optimal" if res.status == 0 else f"status {res.status} ({res.message})"
    return compute + extra, f"covering bound over {len(hot)} memory checks ({how})"
