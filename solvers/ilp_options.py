"""The options of the ILP solvers and of the model they build, each with its default, stated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from mutwo.schedule import Schedule
from mutwo.solver_options import Ge, Gt
from solvers.modes import Mode, check_mode

__all__ = ["IlpOptions", "PREFETCH"]

PREFETCH = ("free", "default")


@dataclass(frozen=True)
class IlpOptions:
    """Options of ``ilp_cpsat``, ``ilp_ortools_mip``, ``ilp_pulp_cbc`` and ``ilp_pulp_highs`` (docs/ilp.md).

    The field order is the order the registry shows them in; the type hints are the values a scenario
    may give (checked when it loads, `mutwo.solver_options`).
    """

    time_limit_s: Annotated[float, Gt(0)] = 60.0
    rel_gap: Annotated[float, Ge(0)] = 0.01
    threads: Annotated[int, Ge(1)] = 2
    # a Schedule (repaired to fit when it does not), a solver name, "heuristics" (the fastest plan of every
    # registered heuristic), or None
    warm_start: Schedule | str | None = "mutwo_greedy"
    # a plan from a related solve (the same solver at a larger budget of a sweep): repaired until it fits,
    # and the start when it is faster than warm_start's (which is still computed); None: no hint
    hint: Schedule | None = None
    seed: int = 0
    mode: Mode = "both"
    max_chain_depth: Annotated[int, Ge(-1)] | None = -1  # -1 automatic (unlimited while small), None unlimited
    exact_positions: bool | None = None  # every op a boundary, complete candidates (None: small problems)
    prefetch: Literal["free", "default"] = "free"  # "default": only default_prefetch (brute force's plans)
    max_candidates: Annotated[int, Ge(1)] = 6  # copy-back leads tried per activation
    two_phase: bool | None = None  # recompute-only solve first (None: large "both" problems)
    log: bool = False  # engine log on stdout
    bound: Literal["lp", "mip", "none"] = "lp"  # the iteration-time lower bound (solvers.ilp_bound) or none
    bound_checks: Annotated[int, Ge(1)] = 80  # memory checks that bound's relaxation takes at most
    engine: Literal["SCIP", "CBC"] = "SCIP"  # ilp_ortools_mip only

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.prefetch not in PREFETCH:
            raise ValueError(f"prefetch must be 'free' or 'default', got {self.prefetch!r}")
        for name, kind in (("time_limit_s", float), ("rel_gap", float), ("threads", int), ("seed", int),
                           ("max_candidates", int), ("log", bool), ("bound_checks", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))


# what the single-engine ILP solvers take (the registry refuses any other); ilp_ortools_mip adds engine
