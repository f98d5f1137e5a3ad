"""The compact KEEP / RECOMPUTE / SWAP formulation (docs/ilp.md), as plain backend-neutral data.

`build` runs the named stages: presolve (`ilp_presolve`), candidate points (`ilp_candidates`),
variables (`ilp_variables`), memory rows (`ilp_memory`), link and delay rows (`ilp_link`) and the
objective (`ilp_objective`). The result, a `Formulation`, holds variables, linear rows (some enforced by
a binary: big-M rows in MIP backends, enforcement literals in CP-SAT) and a linear objective, plus the
index to read a plan back (`decode`) and to complete one into a full assignment (`complete`,
`ilp_completion`). Solver backends (`solvers/ilp_backends.py`) never look at the Problem.

Units: times in ``Formulation.time_unit`` seconds (the compute time is ~1e4 units), bytes in bytes. Rows
carry a ``kind`` ("time", "mem", "logic", "cut") so a backend can scale each family on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision
from solvers import ilp_candidates, ilp_link, ilp_memory, ilp_objective, ilp_presolve, ilp_variables
from solvers.ilp_completion import complete, plan_points
from solvers.ilp_options import IlpOptions
from solvers.ilp_presolve import Closure

__all__ = ["Row", "Closure", "Formulation", "build", "INF"]

INF = math.inf


@dataclass
class Row:
    """``lo <= sum(coef * x[idx]) <= hi``, active only when ``x[enforce] == 1`` if ``enforce >= 0``."""

    idx: np.ndarray
    coef: np.ndarray
    lo: float
    hi: float
    kind: str  # "time" | "mem" | "logic" | "cut" (a valid inequality in time units)
    enforce: int = -1


@dataclass
class Formulation:
    """A built model plus everything needed to map between plans and variable values.

    Variable maps (docs/ilp.md, Variables, gives the symbol of each in brackets) go from activations,
    positions or tuples of them to variable indices.
    """

    problem: Problem
    budget: int
    mode: str
    # --- variables
    names: list[str] = field(default_factory=list)
    vtype: list[str] = field(default_factory=list)  # "B" binary, "I" integer, "C" continuous
    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    is_time: list[bool] = field(default_factory=list)  # continuous variables measured in time units
    # --- rows and objective (in time units, plus obj_const)
    rows: list[Row] = field(default_factory=list)
    obj: dict[int, float] = field(default_factory=dict)
    obj_const: float = 0.0
    time_unit: float = 1.0
    # --- index
    free: np.ndarray | None = None  # bool [n_act]: decision not fixed by presolve
    keep_var: dict[int, int] = field(default_factory=dict)  # a -> KEEP (k_a)
    recompute_var: dict[int, int] = field(default_factory=dict)  # a -> RECOMPUTE (r_a)
    swap_var: dict[int, int] = field(default_factory=dict)  # a -> SWAP (s_a)
    # a -> [(g, var)]: the swap-out has ended before op g starts (zg_{a,g})
    swap_out_done_vars: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # a -> [(p, var)]: the copy back is issued at op p (zp_{a,p})
    prefetch_vars: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    chain_member_var: dict[tuple[int, int], int] = field(default_factory=dict)  # (target, member) (c)
    chain_op_var: dict[tuple[int, int], int] = field(default_factory=dict)  # (target, shared op) (u)
    # (a, swap-out points after, prefetch points up to) -> resident on that interval (y)
    interval_resident_var: dict[tuple[int, int, int], int] = field(default_factory=dict)
    gap_resident_bytes_var: dict[int, int] = field(default_factory=dict)  # anchor -> bytes there (RES)
    held_var: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (target, made, held) (h)
    swap_out_tail_var: dict[int, int] = field(default_factory=dict)  # a -> swap-out queue tail (Q)
    copy_back_tail_vars: list[tuple[int, int, int]] = field(default_factory=list)  # (p, a, var), queue order (H)
    delay_var: dict[int, int] = field(default_factory=dict)  # position -> accumulated delay (D)
    stall_var: dict[int, int] = field(default_factory=dict)  # position -> stall
    chains: dict[int, Closure] = field(default_factory=dict)  # target -> what its chain may regenerate
    infeasible: str = ""  # non-empty: proven infeasible before building (the reason)
    stats: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ construction helpers
    def var(self, name: str, vtype: str, lb: float, ub: float, is_time: bool = False) -> int:
        self.names.append(name)
        self.vtype.append(vtype)
        self.lb.append(lb)
        self.ub.append(ub)
        self.is_time.append(is_time)
        return len(self.names) - 1

    def add(self, terms: dict[int, float], lo: float, hi: float, kind: str, enforce: int = -1) -> None:
        terms = {i: c for i, c in terms.items() if c != 0}
        if not terms:
            if lo > 1e-9 or hi < -1e-9:
                raise AssertionError("empty row that cannot hold")
            return
        idx = np.fromiter(terms.keys(), np.int64, len(terms))
        coef = np.fromiter(terms.values(), np.float64, len(terms))
        self.rows.append(Row(idx, coef, lo, hi, kind, enforce))

    @property
    def n_vars(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ plans <-> values
    def decode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decisions and prefetch points of a (rounded) solution vector."""
        m = self.problem.n_act
        d = np.zeros(m, np.int8)
        pf = np.full(m, -1, np.int64)
        for a in np.flatnonzero(self.free):
            a = int(a)
            if a in self.recompute_var and x[self.recompute_var[a]] > 0.5:
                d[a] = Decision.RECOMPUTE
            elif a in self.swap_var and x[self.swap_var[a]] > 0.5:
                d[a] = Decision.SWAP
                pf[a] = max((p for p, v in self.prefetch_vars[a] if x[v] > 0.5), default=-1)
        return d, pf

    def complete(self, decisions: np.ndarray, prefetch_at: np.ndarray) -> tuple[np.ndarray, str]:
        """A full assignment for a plan: every auxiliary variable at its smallest feasible value.

        Returns ``(x, problem)``; ``problem`` is empty when the plan lies inside the model, else a
        sentence saying which restriction it breaks (the assignment is then only a hint).
        """
        return complete(self, np.asarray(decisions), np.asarray(prefetch_at))

    def objective_of(self, x: np.ndarray) -> float:
        """The objective in seconds."""
        return (self.obj_const + sum(c * x[i] for i, c in self.obj.items())) * self.time_unit

    def violation(self, x: np.ndarray) -> float:
        """Largest row violation of ``x`` (scaled: bytes / budget for memory rows, time units else)."""
        worst = 0.0
        for row in self.rows:
            if row.enforce >= 0 and x[row.enforce] < 0.5:
                continue
            v = float(row.coef @ x[row.idx])
            s = 1.0 / max(self.budget, 1) if row.kind == "mem" else 1.0
            worst = max(worst, (row.lo - v) * s, (v - row.hi) * s)
        return worst


# ---------------------------------------------------------------------------------------------
def build(problem: Problem, budget: int, options: IlpOptions | None = None, *,
          plan: tuple[np.ndarray, np.ndarray] | None = None) -> Formulation:
    """Build the formulation of docs/ilp.md, stage by stage.

    ``options``: the model's options (``mode``, ``max_chain_depth``, ``exact_positions``,
    ``prefetch``, ``max_candidates``; the rest are the solve's). ``plan``: a (decisions, prefetch_at)
    pair, e.g. the warm start, whose swap-out and prefetch points become candidates too, so that plan
    lies inside the model.
    """
    opts = options if options is not None else IlpOptions()
    budget = int(budget)
    F = Formulation(problem=problem, budget=budget, mode=opts.mode)
    F.time_unit = max(float(problem.op_time_s.sum()), 1e-12) / 1e4
    try:
        pre = ilp_presolve.presolve(problem, budget, opts, F.time_unit)
    except ilp_presolve.NoPlanFits as why:
        F.infeasible = str(why)
        F.free = np.zeros(problem.n_act, bool)
        return F
    F.stats.update(chain_depth=pre.depth, n_free=int(pre.free.sum()), n_fixed_keep=int(problem.n_act - pre.free.sum()))

    points = plan_points(problem, pre.cum, pre.swap, plan, pre.can_s)
    cand = ilp_candidates.candidates(problem, pre, opts, points)
    F.stats["exact_positions"] = cand.exact
    ilp_presolve.drop_lost_swaps(problem, pre, cand.swappable)  # and the closures over what stays free
    F.free, F.chains = pre.free, pre.closures

    checks, n_segments = ilp_memory.check_positions(pre.must, pre.keep_all, cand.bounds, budget)
    chain_hot = ilp_presolve.chain_hot(problem, pre.closures, pre.keep_all, budget)
    F.stats["n_chain_anchors"] = int(chain_hot.sum())
    F.stats["n_segments"] = n_segments
    checks = ilp_memory.prune_dominated(problem, checks, pre.free, pre.must, cand.swap_out_ends,
                                        cand.prefetch_points)
    F.stats["n_checks"] = len(checks)

    ilp_variables.add_decisions(F, pre.can_r, pre.can_s, cand.swap_out_ends, cand.prefetch_points)
    chain_time = ilp_variables.add_chains(F, pre.closures)
    ilp_memory.add_op_rows(F, checks, pre.must)
    ilp_memory.add_chain_rows(F, chain_time, chain_hot, pre.must, pre.base)
    ilp_link.add_link_rows(F, pre.cum, pre.swap, chain_time)
    ilp_objective.set_objective(F, chain_time, pre.cum[problem.n_ops])
    F.stats["n_vars"] = F.n_vars
    F.stats["n_rows"] = len(F.rows)
    F.stats["n_nonzeros"] = int(sum(len(r.idx) for r in F.rows))
    return F
