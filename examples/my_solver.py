"""An example solver (docs/solvers.md): recompute the activations that free the most bytes per second
of recompute until the plan fits. Run it without installing anything:

    python -m mutwo.compare scenarios/toy_mlp.yaml --solvers keep_all,examples.my_solver:cheapest_first
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule, Status
from mutwo.simulate import simulate
from mutwo.solver_options import Ge


def cheapest_first(problem: Problem, budget_bytes: int, *, limit: Annotated[int, Ge(0)] | None = None) -> Schedule:
    """Recompute activations in order of recompute seconds per byte until the simulated peak fits."""
    cand = np.flatnonzero(problem.recomputable & (problem.act_bytes > 0))
    order = cand[np.argsort(problem.recompute_time_s[cand] / problem.act_bytes[cand], kind="stable")][:limit]
    decisions = np.zeros(problem.n_act, np.int8)
    for step in range(len(order) + 1):  # step 0: keep all
        decisions[order[:step]] = Decision.RECOMPUTE
        plan = Schedule.from_decisions(problem, decisions, options={"limit": limit})
        sim = simulate(problem, plan)  # the one cost model: peak bytes and iteration time
        if sim.fits(budget_bytes):
            plan.status, plan.objective = Status.FEASIBLE, sim.time_s
            return plan
    plan.status, plan.message = Status.INFEASIBLE, f"lowest peak reached {sim.peak_bytes} B"
    return plan


cheapest_first.decisions = {"recompute"}  # what its plans contain besides KEEP (for plan_space)
