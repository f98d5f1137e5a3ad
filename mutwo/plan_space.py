"""Which decisions a plan may use: the one mode vocabulary of every solver, and a scenario's plan space.

A *mode* is a solver option (``"both"``: KEEP, RECOMPUTE and SWAP; ``"recompute"``: KEEP and
RECOMPUTE; ``"swap"``: KEEP and SWAP). A *plan space* is the same choice made once for a whole run
("my setup cannot offload"): `fit_options` turns it into each solver's options, or refuses a solver
that cannot honour it. KEEP is always allowed. Torch-free; `solvers.modes` re-exports the vocabulary.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Mode", "MODES", "DECISIONS", "mode_decisions", "PlanSpace", "fit_options"]

Mode = Literal["both", "recompute", "swap"]
MODES: tuple[str, ...] = typing.get_args(Mode)
DECISIONS = ("recompute", "swap")  # what a solver may decide besides KEEP

_OF_MODE = {"both": frozenset(DECISIONS), "recompute": frozenset({"recompute"}), "swap": frozenset({"swap"})}


def mode_decisions(mode: str) -> frozenset[str]:
    """The decisions besides KEEP that plans of ``mode`` may use."""
    if mode not in _OF_MODE:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return _OF_MODE[mode]


def _shown(decisions: Iterable[str]) -> str:
    named = sorted(d.upper() for d in decisions)
    return " and ".join(named) if named else "KEEP only"


@dataclass(frozen=True)
class PlanSpace:
    """The decisions a run's plans may use besides KEEP (both by default)."""

    recompute: bool = True
    swap: bool = True

    def __post_init__(self) -> None:
        if not (self.recompute or self.swap):
            raise ValueError("a plan space allowing neither recompute nor swap leaves only keep-all; allow at "
                             "least one (plan_space: {recompute: true, swap: false})")

    @classmethod
    def from_mode(cls, mode: str) -> PlanSpace:
        d = mode_decisions(mode)
        return cls(recompute="recompute" in d, swap="swap" in d)

    @property
    def decisions(self) -> frozenset[str]:
        return frozenset(d for d in DECISIONS if getattr(self, d))

    @property
    def mode(self) -> str:
        """The mode naming this space (``both``, ``recompute`` or ``swap``)."""
        return next(m for m, d in _OF_MODE.items() if d == self.decisions)

    def __str__(self) -> str:
        return {"both": "recompute and swap", "recompute": "recompute only", "swap": "swap only"}[self.mode]


def fit_options(solver: str, space: PlanSpace, options: Mapping[str, Any], decisions: frozenset[str] | None,
                modes: tuple[str, ...] | None) -> dict[str, Any]:
    """The options ``solver`` runs with inside ``space``; ValueError (naming the solver and the fix)
    when it cannot stay inside it.

    ``decisions``: what the solver may decide at its default options (None: it does not say);
    ``modes``: the values of its ``mode`` option (None: it has none). A solver with a mode gets the
    space's mode unless its options name one; a mode the options name must lie inside the space.
    """
    out = dict(options)
    allowed = space.decisions
    fix = f"write mode: {space.mode}" if modes is not None and space.mode in modes else f"remove {solver} from solvers"
    if modes is not None and out.get("mode") in MODES:
        asked = mode_decisions(out["mode"])
        if not asked <= allowed:
            raise ValueError(f"{solver} has options mode: {out['mode']}, which makes {_shown(asked)} plans, but "
                             f"plan_space allows {space}; drop the option, or {fix}")
        return out
    if allowed == frozenset(DECISIONS):
        return out
    if modes is not None and space.mode in modes:
        out["mode"] = space.mode
        return out
    if decisions is None:
        raise ValueError(f"{solver} does not declare which decisions it makes, so it cannot be held to plan_space "
                         f"({space}); declare them (register_solver(..., decisions={{'recompute'}}) or a 'mode' "
                         f"option), or remove it from solvers")
    if not decisions <= allowed:
        how = f"its modes are {', '.join(modes)}" if modes is not None else "it has no mode option"
        raise ValueError(f"{solver} makes {_shown(decisions)} plans ({how}), but plan_space allows {space}; "
                         f"remove {solver} from solvers, or allow {_shown(decisions - allowed)} in plan_space")
    return out
