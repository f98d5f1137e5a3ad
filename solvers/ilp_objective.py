"""ILP stage 6, objective: the predicted iteration time, in the terms `simulate` uses.

compute (a constant) + every chain's recompute time + every stall (docs/ilp.md, Objective).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from solvers.ilp_model import Formulation

__all__ = ["set_objective"]


def set_objective(F: Formulation, chain_time: dict[int, dict[int, float]], compute: float) -> None:
    """Minimise ``compute`` + chain times + stalls (time units)."""
    obj: dict[int, float] = {}
    for tterms in chain_time.values():
        for v, w in tterms.items():
            obj[v] = obj.get(v, 0.0) + w
    for sv in F.stall_var.values():
        obj[sv] = obj.get(sv, 0.0) + 1.0
    F.obj = obj
    F.obj_const = compute
