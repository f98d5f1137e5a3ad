"""Hints across a sweep's budgets: the plan a solver found at a larger budget starts it at the next
smaller one.

A plan that fits budget b is often one or two moves from a good plan at b - δ, and an exact solver
(the ILPs) that starts from it has an incumbent at once instead of after its heuristics. The grid
(`mutwo.run`) therefore solves each solver's budgets of one batch size from the largest down and hands
a solver that declares a ``hint`` option the fitting plan it returned at the nearest larger budget.
A user's own ``hint`` option wins, and ``solve.hints: false`` turns it off (cells then do not depend
on each other). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mutwo.registry import solver_options
from mutwo.schedule import Schedule

__all__ = ["HINT_OPTION", "takes_hint", "largest_first", "SweepHints", "hinted"]

HINT_OPTION = "hint"


def takes_hint(name: str, options: dict) -> bool:
    """Whether solver ``name`` declares a ``hint`` option and the scenario did not set one itself."""
    if HINT_OPTION in options:
        return False
    declared = solver_options(name)
    return declared is not None and HINT_OPTION in declared


def largest_first(labels: Sequence[str], budget_bytes: Sequence[int | None]) -> list[int]:
    """The order to solve cells ``(labels[i], budget_bytes[i])`` in: each label's cells together, where
    the label first appears, budgets from the largest down (sizes not known last, in their order)."""
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)

    def key(i: int) -> tuple:
        b = budget_bytes[i]
        return first[labels[i]], b is None, -(b or 0), i

    return sorted(range(len(labels)), key=key)


class SweepHints:
    """The fitting plans each solver label returned so far in one batch size, by budget."""

    def __init__(self) -> None:
        self._plans: dict[str, list[tuple[int, Path]]] = {}

    def record(self, label: str, budget_bytes: int | None, schedule_path: Path | None) -> None:
        """Remember a fitting plan (saved at ``schedule_path`` by the cell) of ``label`` at a budget."""
        if budget_bytes is not None and schedule_path is not None and schedule_path.is_file():
            self._plans.setdefault(label, []).append((int(budget_bytes), schedule_path))

    def for_budget(self, label: str, budget_bytes: int | None) -> Schedule | None:
        """The plan ``label`` returned at the smallest recorded budget above ``budget_bytes``; None if none."""
        if budget_bytes is None:
            return None
        larger = [(b, p) for b, p in self._plans.get(label, []) if b > budget_bytes]
        if not larger:
            return None
        try:
            return Schedule.load(min(larger, key=lambda bp: bp[0])[1])
        except Exception:  # an unreadable old schedule file is no reason to stop: solve without the hint
            return None


def hinted(solve: Callable[..., Schedule], hint: Schedule) -> Callable[..., Schedule]:
    """``solve`` (`mutwo.cell.solve`'s arguments) with ``hint`` added to the solver's options; the
    scenario's options (and the row's ``solver_options``) stay as written."""

    def call(name: str, problem, budget_bytes: int, options: dict | None = None, **kwargs) -> Schedule:
        return solve(name, problem, budget_bytes, {**(options or {}), HINT_OPTION: hint}, **kwargs)

    return call
