"""Plan one Problem under one memory budget.

`solve` is the public call (``mutwo.solve``): a budget as bytes, a fraction of the keep-all peak or a
size such as ``"6GiB"``, one solver by name, the Schedule it returns. `fit` is what training with a
plan needs: a plan that fits and its simulated cost, or a `BudgetError` saying how low a budget can
go (the Problem's floor) and the lowest plan the solver found. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mutwo.problem import Problem
    from mutwo.schedule import Schedule
    from mutwo.simulate import SimResult

__all__ = ["BudgetLike", "budget_bytes", "keep_all", "solve", "fit", "Fitted", "BudgetError"]

BudgetLike = int | float | str  # bytes (an int above 1), a fraction of keep-all in (0, 1], or "6GiB"


def keep_all(problem: Problem) -> SimResult:
    """The simulated keep-all plan: what fractional budgets are fractions of."""
    from mutwo.schedule import Schedule
    from mutwo.simulate import simulate

    return simulate(problem, Schedule.keep_all(problem, solver="keep_all"))


def budget_bytes(budget: BudgetLike, keep_all_peak_bytes: int) -> int:
    """``budget`` in bytes: an int above 1 is bytes, a number in (0, 1] a fraction of
    ``keep_all_peak_bytes``, a string a fraction or a size (``"6GiB"``, binary units)."""
    from mutwo.scenario import Budget

    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 1:
        return int(budget)
    try:
        parsed = Budget.model_validate(budget)
    except Exception as exc:  # pydantic's ValidationError: its first message is the useful part
        errors = getattr(exc, "errors", None)
        text = errors()[0]["msg"].removeprefix("Value error, ") if callable(errors) else str(exc)
        raise ValueError(f"budget={budget!r}: {text}; or give bytes as an int") from None
    return parsed.resolve(keep_all_peak_bytes)


def solve(problem: Problem, budget: BudgetLike, solver: str = "mutwo_greedy", *, timeout_s: float | None = None,
          **options: Any) -> Schedule:
    """Solver ``solver``'s plan for ``problem`` under ``budget`` (bytes, a fraction of the keep-all peak,
    or a size like ``"6GiB"``), with its ``options`` (checked first: an unknown one is a ValueError
    naming what it takes). ``timeout_s``: run it in a child process killed at that limit. The Schedule
    is the solver's, whatever its status; `mutwo.simulate` gives its predicted peak and time."""
    from mutwo.registry import check_solver_options
    from mutwo.sandbox import run_solver

    check_solver_options(solver, options)
    return run_solver(solver, problem, budget_bytes(budget, keep_all(problem).peak_bytes), options,
                      timeout_s=timeout_s)


class BudgetError(ValueError):
    """No plan fits the budget: the message gives the floor and the lowest plan the solver found."""

    def __init__(self, message: str, budget_bytes: int, floor_bytes: int, lowest_peak_bytes: int | None) -> None:
        super().__init__(message)
        self.budget_bytes, self.floor_bytes, self.lowest_peak_bytes = budget_bytes, floor_bytes, lowest_peak_bytes


@dataclass
class Fitted:
    """A plan that fits its budget, and its simulated cost (`mutwo.simulate`, the only prediction)."""

    schedule: Schedule
    sim: SimResult


def _predict(problem: Problem, schedule: Schedule) -> SimResult:
    from mutwo.schedule import validate
    from mutwo.simulate import simulate

    validate(problem, schedule)
    schedule.explain(problem)
    return simulate(problem, schedule)


def fit(problem: Problem, budget: int, solver: str, options: dict[str, Any] | None = None, *,
        timeout_s: float | None = None) -> Fitted:
    """``solver``'s plan under ``budget`` bytes, checked and simulated; `BudgetError` when the budget is
    below the Problem's floor or the plan does not fit, naming the lowest plan the solver finds when
    asked for the floor itself (the budget to ask for instead)."""
    from mutwo.sandbox import run_solver

    options = dict(options or {})
    floor, at = problem.peak_floor()
    said = ""
    if budget >= floor:
        schedule = run_solver(solver, problem, budget, options, timeout_s=timeout_s)
        if schedule.feasible:
            sim = _predict(problem, schedule)
            if sim.peak_bytes <= budget:
                return Fitted(schedule, sim)
            said = f"{solver} said {schedule.status.value} but its plan simulates at {sim.peak_bytes} B; "
        else:
            said = f"{solver} found no plan ({schedule.message}); "
    raise _budget_error(problem, budget, floor, at, solver, options, timeout_s, said)


def _budget_error(problem: Problem, budget: int, floor: int, at: int, solver: str, options: dict,
                  timeout_s: float | None, said: str) -> BudgetError:
    """The error for a budget no plan meets, with the lowest plan ``solver`` finds at the floor."""
    from mutwo.sandbox import run_solver

    keep = keep_all(problem).peak_bytes
    share = (lambda b: f"{b / keep:.3g} of keep-all") if keep else (lambda b: "")
    below = (f"the budget is below the floor of {floor} B ({share(floor)}): at op {at} "
             f"({problem.op_names[at]}) the fixed memory, its transient memory and the activations it uses are "
             f"resident under any plan" if budget < floor else f"the floor is {floor} B ({share(floor)})")
    lowest_peak = None
    try:
        lowest = run_solver(solver, problem, floor, options, timeout_s=timeout_s)
        lowest_peak = _predict(problem, lowest).peak_bytes
        counts = lowest.counts()
        found = (f"the lowest plan {solver} found peaks at {lowest_peak} B ({share(lowest_peak)}; "
                 f"{counts['n_recompute']} recomputed, {counts['n_swap']} swapped): ask for a budget of at least "
                 f"{lowest_peak} B")
    except Exception as exc:  # the solver cannot plan at the floor either: say so, keep the floor
        found = f"{solver} found no plan at the floor either ({type(exc).__name__}: {exc})"
    return BudgetError(f"budget {budget} B ({share(budget)}) cannot be met: {said}{below}; {found}", budget, floor,
                       lowest_peak)
