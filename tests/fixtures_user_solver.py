"""Solvers named by ``module:function`` in tests (``tests.fixtures_user_solver:recompute_share``), not
registered by anyone: the scenario's name imports and registers them."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, Status
from mutwo.simulate import simulate
from mutwo.solver_options import Ge, Le

NOT_A_FUNCTION = 3


def recompute_share(problem: Problem, budget_bytes: int, *,
                    share: Annotated[float, Ge(0), Le(1)] = 0.5) -> Schedule:
    """Recompute the first ``share`` of the recomputable activations (in creation order)."""
    cand = np.flatnonzero(problem.recomputable)
    d = np.zeros(problem.n_act, np.int8)
    d[cand[: int(round(share * len(cand)))]] = Decision.RECOMPUTE
    s = Schedule.from_decisions(problem, d, options={"share": share})
    s.status = Status.FEASIBLE if simulate(problem, s).fits(budget_bytes) else Status.INFEASIBLE
    return s


recompute_share.decisions = {"recompute"}  # what it may decide besides KEEP: runs under plan_space recompute


def one_argument(problem: Problem) -> Schedule:
    """Not a solver: it takes no budget."""
    return Schedule.keep_all(problem)


def hint_echo(problem: Problem, budget_bytes: int, *, hint: Schedule | None = None) -> Schedule:
    """The recompute-only greedy's plan, saying in its message which budget's plan came as its ``hint``
    (the grid passes the plan of the next larger budget: `mutwo.hints`)."""
    from mutwo.registry import get_solver

    s = get_solver("mutwo_greedy")(problem, budget_bytes, mode="recompute")
    s.message = "no hint" if hint is None else f"hint from budget {hint.budget_bytes}"
    return s


hint_echo.decisions = {"recompute"}
