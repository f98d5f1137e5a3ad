"""The Checkmate stage-grid model of `solvers.checkmate`, with an exact presolve (docs/remat_exact.md).

Built as a backend-neutral `Formulation` (solvers/ilp_model.py), so every ILP backend can solve it.
The presolve drops only what cannot change the optimum:

* a memory row whose largest possible left side (keep-all memory there, plus the largest recompute
  scratch of a node that may be recomputed there) is within the budget is not built: it holds for
  every assignment whose auxiliary variables take their least values;
* an activation with no kept row in the stages ``(last forward use, first backward use]`` is fixed
  resident: making it resident there raises only rows that were not built, satisfies every "source
  resident" row, and removes recompute cost. Fixing it removes its own recompute rows, which can cool
  more stages, so this is repeated to a fixed point.

The recompute-memory rows of one stage share the bytes that stay resident while its recomputations run;
that sum is one variable per stage (``M``), so a row per recomputed node has a few terms, not one per
activation in its gap (the same polytope, ~30x fewer nonzeros on ResNet-50).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, member_peaks, resolve_recompute
from solvers.ilp_model import INF, Formulation

__all__ = ["Grid", "grid_of", "build_checkmate", "estimate_size", "plan_values", "GRIDS", "OPS_GRID_MAX"]

OPS_GRID_MAX = 200  # up to this many ops every op is its own stage
GRIDS = ("auto", "ops", "events")

Key = tuple[int, int]  # (stage, activation)


@dataclass
class Grid:
    """The stage grid, the per-stage view of the Problem, and which rows can bind (the presolve)."""

    tau: np.ndarray  # first op of each stage
    stop: np.ndarray  # one past the last op of each stage
    kc: np.ndarray  # stage of each activation's creation
    kl: np.ndarray  # ... of its last forward use
    kf: np.ndarray  # ... of its first backward use
    kb: np.ndarray  # ... of its last backward use
    free: np.ndarray  # bool: may be dropped and recomputed (a stage between its uses, not fixed by presolve)
    const: np.ndarray  # bytes resident in every plan per stage (fixed activations; free ones outside their gap)
    base: np.ndarray  # fixed + transient bytes per op
    peak_op: np.ndarray  # per stage: its op with the largest base (where its op row is checked)
    alive: np.ndarray  # per stage: bytes of every activation alive there (the keep-all activation memory)
    op_hot: np.ndarray  # bool per stage: its op row can bind
    rc_hot: np.ndarray  # bool per stage: some recompute row can bind (for some node recomputed there)
    own: np.ndarray  # per activation: bytes regenerating it alone holds (`member_peaks`)
    n_fixed: int = 0  # activations fixed resident by the presolve


def _stages(problem: Problem, grid: str) -> np.ndarray:
    n = problem.n_ops
    if grid == "ops" or (grid == "auto" and n <= OPS_GRID_MAX):
        return np.arange(n)
    p = problem
    ev = np.concatenate([[0, p.fwd_end + 1], p.created, p.last_fwd_use + 1, p.first_bwd_use,
                         p.first_bwd_use + 1, p.last_bwd_use + 1])
    ev = np.unique(ev)
    return ev[ev < n]


def _const(p: Problem, g: Grid) -> np.ndarray:
    const = np.zeros(len(g.tau), np.int64)
    for a in range(p.n_act):
        b = int(p.act_bytes[a])
        if g.free[a]:
            const[g.kc[a]:g.kl[a] + 1] += b
            const[g.kf[a]:g.kb[a] + 1] += b
        else:
            const[g.kc[a]:g.kb[a] + 1] += b
    return const


def _hot(p: Problem, g: Grid, budget: int) -> None:
    """Which rows can bind: op rows where keep-all memory exceeds the budget; recompute rows where the
    memory before the stage's op, plus the largest scratch of a free node recomputable there, does."""
    g.op_hot = g.base[g.peak_op] + g.alive > budget
    scratch = np.zeros(len(g.tau), np.int64)  # largest own bytes of a free node with R at the stage
    for a in np.flatnonzero(g.free).tolist():
        seg = slice(g.kl[a] + 1, g.kf[a] + 1)
        scratch[seg] = np.maximum(scratch[seg], g.own[a])
    t = g.tau
    before = p.fixed_bytes[t] - p.op_output_bytes[t] + g.alive
    g.rc_hot = (scratch > 0) & (before + scratch > budget)


def grid_of(p: Problem, grid: str = "auto", budget: int | None = None) -> Grid:
    """The stage grid; with ``budget``, the presolve (hot rows; activations fixed resident)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    tau = _stages(p, grid)
    stop = np.concatenate([tau[1:], [p.n_ops]])
    stage_of = np.searchsorted(tau, np.arange(p.n_ops), side="right") - 1
    kc, kl = stage_of[p.created], stage_of[p.last_fwd_use]
    kf, kb = stage_of[p.first_bwd_use], stage_of[p.last_bwd_use]
    base = (p.fixed_bytes + p.op_transient_bytes).astype(np.int64)
    peak_op = np.array([int(t0 + np.argmax(base[t0:t1])) for t0, t1 in zip(tau, stop, strict=True)], np.int64)
    alive = np.zeros(len(tau), np.int64)
    for a in range(p.n_act):
        alive[kc[a]:kb[a] + 1] += int(p.act_bytes[a])
    n = len(tau)
    g = Grid(tau, stop, kc, kl, kf, kb, p.recomputable & (kf - kl > 1), np.zeros(n, np.int64), base, peak_op,
             alive, np.ones(n, bool), np.ones(n, bool), np.asarray(member_peaks(p), np.int64))
    if budget is not None:
        _fix_resident(p, g, int(budget))
    g.const = _const(p, g)
    return g


def _fix_resident(p: Problem, g: Grid, budget: int) -> None:
    """Fix resident every free activation with no hot stage in ``(kl, kf]``, to a fixed point."""
    n0 = int(g.free.sum())
    while True:
        _hot(p, g, budget)
        hot = np.concatenate([[0], np.cumsum(g.op_hot | g.rc_hot)])  # hot stages before each stage
        cold = g.free & (hot[g.kf + 1] - hot[g.kl + 1] == 0)
        if not cold.any():
            break
        g.free = g.free & ~cold
    g.n_fixed = n0 - int(g.free.sum())


def estimate_size(g: Grid) -> int:
    """Variables the model will have (S, A, R per free activation and stage; P where rows can bind)."""
    gap = (g.kf - g.kl)[g.free]
    rc = np.concatenate([[0], np.cumsum(g.rc_hot)])
    p_vars = (rc[g.kf] - rc[g.kl + 1])[g.free]
    return int(3 * gap.sum() - 2 * len(gap) + p_vars.sum())


def _residency(F: Formulation, g: Grid) -> tuple[dict[Key, int], dict[Key, int], dict[Key, int]]:
    """S (stays through stage k), A (resident at its start), R ((re)computed at its start), and the
    rows A <= S_prev + R, S <= A, R <= A, R <= A of each source."""
    p = F.problem
    S: dict[Key, int] = {}
    A: dict[Key, int] = {}
    R: dict[Key, int] = {}
    for a in np.flatnonzero(g.free).tolist():
        for k in range(g.kl[a] + 1, g.kf[a]):
            S[(k, a)] = F.var(f"S{k}_{a}", "B", 0, 1)
            A[(k, a)] = F.var(f"A{k}_{a}", "B", 0, 1)
        for k in range(g.kl[a] + 1, g.kf[a] + 1):
            R[(k, a)] = F.var(f"R{k}_{a}", "B", 0, 1)
    for a in np.flatnonzero(g.free).tolist():
        for k in range(g.kl[a] + 1, g.kf[a] + 1):
            prev = S.get((k - 1, a))  # None: resident (k-1 == kl) -> constraint trivially holds
            r = R[(k, a)]
            if k < g.kf[a]:
                if prev is not None:
                    F.add({A[(k, a)]: 1.0, prev: -1.0, r: -1.0}, -INF, 0, "logic")
                F.add({S[(k, a)]: 1.0, A[(k, a)]: -1.0}, -INF, 0, "logic")
                F.add({r: 1.0, A[(k, a)]: -1.0}, -INF, 0, "logic")
            elif prev is not None:  # resident again from its first backward use
                F.add({prev: 1.0, r: 1.0}, 1, INF, "logic")
            for s in p.recompute_sources[a].tolist():
                v = A.get((k, s))  # None: s is always resident at the start of stage k
                if v is not None:
                    F.add({r: 1.0, v: -1.0}, -INF, 0, "logic")
    return S, A, R


def _recompute_cost(F: Formulation, R: dict[Key, int], by_stage: dict[int, list[int]]) -> dict[int, float]:
    """Objective terms: every recompute, each op once per stage (a shared-op variable W where shared)."""
    p = F.problem
    obj: dict[int, float] = {}
    for k, acts in by_stage.items():
        count: dict[int, int] = {}
        for a in acts:
            for o in p.recompute_ops[a].tolist():
                count[o] = count.get(o, 0) + 1
        for a in acts:
            own = [o for o in p.recompute_ops[a].tolist() if count[o] == 1]
            if own:
                obj[R[(k, a)]] = float(p.op_time_s[own].sum()) / F.time_unit
        for o, c in count.items():
            if c > 1:
                w = F.var(f"W{k}_{o}", "C", 0, 1)
                for a in acts:
                    if o in p.recompute_ops[a]:
                        F.add({R[(k, a)]: 1.0, w: -1.0}, -INF, 0, "logic")
                obj[w] = float(p.op_time_s[o]) / F.time_unit
    return obj


def _op_memory_rows(F: Formulation, g: Grid, S: dict[Key, int], in_gap: dict[int, list[int]]) -> None:
    """Memory while each stage's op runs: what stays resident through the stage (S), at its largest base;
    only where it can bind."""
    p = F.problem
    for k in range(len(g.tau)):
        t = int(g.peak_op[k])
        rhs = F.budget - int(g.base[t]) - int(g.const[k])
        if rhs < 0:
            F.infeasible = f"op {t} ({p.op_names[t]!r}) needs {int(g.base[t] + g.const[k])} B in every plan"
            continue
        if g.op_hot[k]:
            F.add({S[(k, a)]: float(p.act_bytes[a]) for a in in_gap.get(k, [])}, -INF, rhs, "mem")


def _held_while_recomputing(F: Formulation, g: Grid, k: int, A: dict[Key, int], R: dict[Key, int],
                            acts_k: list[int], gap_k: list[int]) -> int:
    """M_k >= what stays resident and is not being recomputed at stage k (P >= A - R), less the
    activations back from here on (in const) that are being made here."""
    p = F.problem
    terms: dict[int, float] = {}
    for a in gap_k:
        pv = F.var(f"P{k}_{a}", "C", 0, 1)
        F.add({pv: 1.0, A[(k, a)]: -1.0, R[(k, a)]: 1.0}, 0, INF, "logic")
        terms[pv] = float(p.act_bytes[a])
    low = 0.0
    for a in acts_k:
        if g.kf[a] == k:
            terms[R[(k, a)]] = -float(p.act_bytes[a])
            low -= float(p.act_bytes[a])
    m = F.var(f"M{k}", "C", low, float(sum(c for c in terms.values() if c > 0)))
    terms[m] = -1.0
    F.add(terms, -INF, 0, "mem")
    return m


def _recompute_memory_rows(F: Formulation, g: Grid, A: dict[Key, int], R: dict[Key, int],
                           in_gap: dict[int, list[int]], by_stage: dict[int, list[int]]) -> None:
    """Memory while a stage's recomputations run (before its op allocates outputs and workspace).

    What was resident and is not being recomputed (M_k), plus the node being made, its intermediates
    and its recomputed inputs: what any evaluation order must hold at that moment. Only rows that can
    bind (their largest left side exceeds the budget) are built.
    """
    p = F.problem
    for k, acts in by_stage.items():
        if not g.rc_hot[k]:
            continue
        t = int(g.tau[k])
        rhs = F.budget - int(p.fixed_bytes[t] - p.op_output_bytes[t]) - int(g.const[k])
        ub = int(p.fixed_bytes[t] - p.op_output_bytes[t]) + int(g.alive[k])
        hot = [i for i in acts if ub + int(g.own[i]) > F.budget]
        if not hot:
            continue
        m = _held_while_recomputing(F, g, k, A, R, acts, in_gap.get(k, []))
        for i in hot:
            terms = {m: 1.0, R[(k, i)]: float(g.own[i])}
            for s_ in p.recompute_sources[i].tolist():
                if (k, s_) in R:
                    y = F.var(f"Y{k}_{s_}_{i}", "C", 0, 1)
                    F.add({R[(k, s_)]: 1.0, R[(k, i)]: 1.0, y: -1.0}, -INF, 1, "logic")
                    terms[y] = terms.get(y, 0.0) + float(p.act_bytes[s_])
            F.add(terms, -INF, rhs, "mem")


def build_checkmate(problem: Problem, budget: int, grid: str = "auto", presolve: bool = True
                    ) -> tuple[Formulation, dict]:
    """The stage-indexed model as a backend-neutral Formulation, plus its index (S, R, A, free, grid).

    ``presolve=False`` builds every row and keeps every activation free (for tests of the presolve)."""
    p = problem
    F = Formulation(problem=p, budget=int(budget), mode="recompute")
    F.time_unit = max(float(p.op_time_s.sum()), 1e-12) / 1e4
    g = grid_of(p, grid, int(budget) if presolve else None)
    S, A, R = _residency(F, g)
    by_stage: dict[int, list[int]] = {}
    for (k, a) in R:
        by_stage.setdefault(k, []).append(a)
    F.obj = _recompute_cost(F, R, by_stage)
    in_gap: dict[int, list[int]] = {}
    for (k, a) in S:
        in_gap.setdefault(k, []).append(a)
    _op_memory_rows(F, g, S, in_gap)
    _recompute_memory_rows(F, g, A, R, in_gap, by_stage)
    F.obj_const = float(p.op_time_s.sum()) / F.time_unit
    F.free = g.free
    F.stats = {"stages": len(g.tau), "n_vars": F.n_vars, "n_rows": len(F.rows),
               "n_nonzeros": int(sum(len(r.idx) for r in F.rows)), "n_free": int(g.free.sum()),
               "n_fixed_resident": g.n_fixed, "hot_op_stages": int(g.op_hot.sum()),
               "hot_recompute_stages": int(g.rc_hot.sum())}
    return F, {"S": S, "R": R, "A": A, "free": g.free, "grid": g}


def plan_values(F: Formulation, idx: dict, decisions: np.ndarray) -> np.ndarray:
    """A full assignment for one of our recompute-only plans: each RECOMPUTE target and its chain's
    regenerated sources are (re)computed at the target's first-backward-use stage, dropped right after
    the last forward use; auxiliary variables at their least values. Used as a start (hint / MIP start)."""
    p, g = F.problem, idx["grid"]
    S, A, R = idx["S"], idx["A"], idx["R"]
    made: set[Key] = set()
    for a, chain in resolve_recompute(p, decisions).items():
        k = int(g.kf[a])
        for x in [a, *chain.temporaries]:
            if (k, x) in R:
                made.add((k, x))
    x = np.zeros(F.n_vars)
    for (k, a), v in R.items():
        x[v] = float((k, a) in made)
    for (k, a), v in S.items():
        keep = decisions[a] != Decision.RECOMPUTE or not g.free[a]
        x[v] = float(keep)
        x[A[(k, a)]] = float(keep or (k, a) in made)
    _least_aux(F, x)
    return x


def _least_aux(F: Formulation, x: np.ndarray) -> None:
    """Set the continuous variables (P, M, W, Y) to the least values their defining rows allow; each is
    defined by rows in which it is the only continuous variable (W, Y, P) or by one row (M)."""
    cont = np.array([t == "C" for t in F.vtype])
    for row in F.rows:  # P >= A - R, Y >= R_s + R_i - 1, W >= R: one continuous variable, coefficient +-1
        if row.kind != "logic":
            continue
        mask = cont[row.idx]
        if mask.sum() != 1:
            continue
        j = int(row.idx[mask][0])
        c = float(row.coef[mask][0])
        rest = float(row.coef[~mask] @ x[row.idx[~mask]])
        need = (row.lo - rest) / c if c > 0 else (rest - row.hi) / -c
        x[j] = max(x[j], need, F.lb[j])
    for row in F.rows:  # M_k >= sum B P - sum B R: the row's continuous variable with coefficient -1
        if row.kind == "mem" and np.any(row.coef == -1.0) and F.names[int(row.idx[row.coef == -1.0][0])][0] == "M":
            j = int(row.idx[row.coef == -1.0][0])
            mask = row.idx != j
            x[j] = max(F.lb[j], float(row.coef[mask] @ x[row.idx[mask]]))
