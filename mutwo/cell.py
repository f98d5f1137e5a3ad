"""One cell of a comparison: solve -> check -> predict -> execute one solver at one budget, as a `Row`.

Whatever goes wrong is the cell's status, never the end of the run (docs/compare.md, "When things go
wrong"). The solver and the executor are called from here only (`solve`, `execute_plan`), for the
comparison and the benchmarks alike.
"""

from __future__ import annotations

import enum
import gc
import json
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mutwo.schedule import Schedule

if TYPE_CHECKING:
    from mutwo.pipeline import Prepared
    from mutwo.problem import Problem
    from mutwo.scenario import Budget, Scenario, SolverSpec
    from mutwo.simulate import SimResult

__all__ = ["CellStatus", "FEASIBLE", "WORKER_LOST", "Row", "COLUMNS", "results_frame", "CellContext", "Measured", "PlanMemo",
           "cell_key", "gap_to_bound_pct", "run_cell", "batch_oom_row", "measure_reference", "solve", "predict", "execute_plan", "executor",
           "error_text", "is_oom", "release_memory", "schedule_file_name", "not_the_target", "SOLVER", "REFERENCE"]

ExecuteFn = Callable[..., Any]


class CellStatus(str, enum.Enum):
    """A cell's outcome: the solver's own statuses (`mutwo.schedule.Status`) and ``oom``."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"  # no plan fits (the solver says so, or the budget is below the floor)
    TIMEOUT = "timeout"  # the solver's own limit, or killed at its hard limit
    ERROR = "error"  # the solver raised, or its process died
    INVALID = "invalid"  # the plan fails validation, or claims to fit but simulates above the budget
    OOM = "oom"  # executing the plan (or capturing its batch size) ran out of memory
    MEASURED = "measured"  # a PyTorch reference row that ran (kind "reference"; it fails as "error")

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


FEASIBLE = (CellStatus.OPTIMAL.value, CellStatus.FEASIBLE.value)  # plain strings: for pandas .isin too
# the execute_note of a cell whose worker died (a cluster fault, not a result): --resume runs it again
WORKER_LOST = "not executed: its worker was lost"
SOLVER, REFERENCE = "solver", "reference"  # a row's kind: a solver x budget cell, or PyTorch's own saver


# ---------------------------------------------------------------------- the row
@dataclass
class Row:
    """One results.csv row / cells.jsonl line (results/README.md says what each column means)."""

    scenario: str | None = None
    model: str | None = None
    batch_size: int | None = None
    device: str | None = None
    solver: str | None = None
    solver_name: str | None = None
    solver_options: str | None = None
    budget: str | None = None
    budget_bytes: int | None = None
    budget_fraction: float | None = None
    status: CellStatus | None = None
    solve_time_s: float | None = None
    predicted_peak_bytes: int | None = None
    predicted_time_s: float | None = None
    predicted_overhead_pct: float | None = None
    recompute_s: float | None = None
    stall_s: float | None = None
    keep_all_peak_bytes: int | None = None
    keep_all_time_s: float | None = None
    executed: bool | None = None
    execute_note: str | None = None
    measured_peak_bytes: int | None = None
    measured_time_s: float | None = None
    measured_overhead_pct: float | None = None
    max_rel_diff: float | None = None
    bitwise_equal: bool | None = None
    emulated_swap: bool | None = None
    n_keep: int | None = None
    n_recompute: int | None = None
    n_swap: int | None = None
    schedule_file: str | None = None
    message: str | None = None
    kind: str = SOLVER  # or REFERENCE: a PyTorch saver measured beside the solvers (mutwo.references)
    # the allocator meter and the interleaved timing (issue 14); results/README.md says what each means
    emulated_device_peak_bytes: int | None = None  # CPU swap plans only: the peak without live host copies
    op_output_peak_bytes: int | None = None  # diagnostic: op-output storages only, never "measured"
    peak_method: str | None = None
    reference_time_s: float | None = None  # the unmodified step, timed between the plan's iterations
    measured_time_spread_pct: float | None = None
    timing_note: str | None = None  # why a measured time may be off (load, emulated swaps); empty: steady
    torch_threads: int | None = None
    cost_source: str | None = None  # where the predicted times come from: measured:cpu, estimated:h100-sxm, ...
    # 100 (predicted time - the schedule's proven lower bound) / predicted time; None without a bound
    gap_to_bound_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as cells.jsonl stores it: every column, in order, the status as its string."""
        out = {c: getattr(self, c) for c in COLUMNS}
        out["status"] = None if self.status is None else CellStatus(self.status).value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        """A row read back from cells.jsonl (absent columns are None, unknown keys are ignored)."""
        row = cls(**{c: d.get(c) for c in COLUMNS})
        row.kind = row.kind or SOLVER  # lines written before the kind column are all solver cells
        if row.status is not None:
            row.status = CellStatus(row.status)
        return row

    @property
    def key(self) -> str:
        return cell_key(self.batch_size, self.solver, self.budget)


def cell_key(batch_size: int | None, solver: str | None, budget: str | None) -> str:
    """What identifies a cell in a run: batch size, solver label, budget label."""
    return f"{batch_size}|{solver}|{budget}"


COLUMNS = [f.name for f in fields(Row)]
_INTS = ("budget_bytes", "predicted_peak_bytes", "measured_peak_bytes", "n_keep", "n_recompute", "n_swap",
         "emulated_device_peak_bytes", "op_output_peak_bytes", "torch_threads")
_FLOATS = ("predicted_time_s", "measured_time_s", "predicted_overhead_pct", "measured_overhead_pct",
           "max_rel_diff", "solve_time_s", "reference_time_s", "measured_time_spread_pct", "gap_to_bound_pct")


def results_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """results.csv as a table: one row per cell, `COLUMNS` in order, numeric columns numeric."""
    df = pd.DataFrame([r.to_dict() for r in rows], columns=COLUMNS)
    for c in _INTS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in _FLOATS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


# ---------------------------------------------------------------------- what cells share
@dataclass(frozen=True)
class CellContext:
    """What every cell of a run needs from it."""

    scenario: Scenario
    device: str
    run_dir: Path
    execute_fn: ExecuteFn | None = None  # None: plans are not executed
    execute_note: str = "not executed"  # the rows' execute_note until a plan runs
    debug: bool = False


EMULATED_SWAP_NOTE = ("swaps emulated on CPU: each is a memcpy out and back on the compute thread, which the "
                      "model takes for an overlapped host-link transfer; the measured time includes those copies")


@dataclass(frozen=True)
class Measured:
    """What executing a plan measured (keep_all.json's ``measured``; the row's measured columns)."""

    measured_peak_bytes: int
    measured_time_s: float
    max_rel_diff: float
    bitwise_equal: bool
    emulated_swap: bool
    emulated_device_peak_bytes: int | None = None
    op_output_peak_bytes: int | None = None
    peak_method: str | None = None
    reference_time_s: float | None = None
    measured_overhead_pct: float | None = None  # from the plan / unmodified-step ratios, interleaved
    measured_time_spread_pct: float | None = None
    timing_note: str | None = None
    torch_threads: int | None = None

    @classmethod
    def from_result(cls, res: Any) -> Measured:
        emulated = bool(res.emulated_swap)
        ratio = getattr(res, "time_ratio", None)
        notes = [getattr(res, "timing_note", "") or "", EMULATED_SWAP_NOTE if emulated else ""]
        spread = getattr(res, "time_spread", None)
        return cls(int(res.measured_peak_bytes), float(res.iteration_time_s), float(res.max_rel_diff),
                   bool(getattr(res, "bitwise_equal", False)), emulated,
                   emulated_device_peak_bytes=getattr(res, "emulated_device_peak_bytes", None) if emulated else None,
                   op_output_peak_bytes=getattr(res, "op_output_peak_bytes", None),
                   peak_method=getattr(res, "method", None), reference_time_s=getattr(res, "reference_time_s", None),
                   measured_overhead_pct=None if ratio is None else 100.0 * (float(ratio) - 1.0),
                   measured_time_spread_pct=None if spread is None else 100.0 * float(spread),
                   timing_note="; ".join(n for n in notes if n), torch_threads=getattr(res, "threads", None))

    @classmethod
    def from_dict(cls, d: dict) -> Measured:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PlanMemo:
    """Plans of one batch size already executed, or that ran out of memory, with who ran them first:
    identical plans give identical rewritten graphs, so each is executed once."""

    measured: dict[bytes, tuple[Measured, str]] = field(default_factory=dict)
    oom: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # plan -> (why, who)

    @classmethod
    def from_reference(cls, problem: Problem, info: dict) -> PlanMemo:
        """Seeded with keep-all's own execution (keep_all.json), which identical plans reuse."""
        memo, who = cls(), "the keep-all reference"
        key = Schedule.keep_all(problem, solver="keep_all").plan_key()
        if "measured" in info:
            memo.measured[key] = (Measured.from_dict(info["measured"]), who)
        elif info.get("execute_error", "").startswith("out of memory"):
            memo.oom[key] = (info["execute_error"].removeprefix("out of memory: "), who)
        return memo


# ---------------------------------------------------------------------- the calls out
def solve(name: str, problem: Problem, budget_bytes: int, options: dict | None = None, *,
          timeout_s: float | None = None) -> Schedule:
    """The solver's Schedule (with ``timeout_s``: in a forked child killed at the limit; it raises
    `mutwo.sandbox.SolverTimeout` then, and the solver's exception when it raised)."""
    from mutwo.sandbox import run_solver

    return run_solver(name, problem, budget_bytes, options, timeout_s=timeout_s)


def gap_to_bound_pct(time_s: float, bound_s: float | None) -> float | None:
    """How far (percent of ``time_s``) a plan's simulated time is from a proven lower bound on every
    plan's time; None without a bound."""
    if bound_s is None or not time_s > 0 or bound_s != bound_s:
        return None
    return max(0.0, 100.0 * (time_s - bound_s) / time_s)


def predict(problem: Problem, schedule: Schedule) -> SimResult:
    """Validate the plan (ScheduleError names the activation), record its recompute sources for the
    JSON, and simulate it: the only source of predicted figures."""
    from mutwo.schedule import validate
    from mutwo.simulate import simulate

    validate(problem, schedule)
    schedule.explain(problem)
    return simulate(problem, schedule)


def executor(enabled: bool) -> tuple[ExecuteFn | None, str]:
    """The execute function, or None and why schedules will not be run."""
    if not enabled:
        return None, "not executed (--no-execute / execute.enabled: false)"
    try:
        from mutwo.execute import execute
    except ImportError as exc:
        return None, f"not executed: mutwo.execute is not available ({exc})"
    return execute, "executed"


def execute_plan(execute_fn: ExecuteFn, batch: Prepared, schedule: Schedule, *, iterations: int, warmup: int,
                 seed: int = 0, max_attempts: int = 3) -> Any:
    """Run ``schedule`` on the batch's captured step for real (``execute_fn``: `executor`'s), checked
    against the batch's shared reference runs; while the machine's load moves, up to ``max_attempts``
    times as many iterations are timed."""
    return execute_fn(batch.graph, batch.problem, schedule, batch.flat, binding=batch.binding,
                      iterations=iterations, warmup=warmup, seed=seed, max_attempts=max_attempts,
                      references=batch.references)


def error_text(exc: BaseException) -> str:
    """``Type: message`` of a solver's exception (the child's type when it raised in a forked child)."""
    from mutwo.sandbox import SolverProcessError

    name = exc.type_name if isinstance(exc, SolverProcessError) else type(exc).__name__
    return f"{name}: {exc}".strip()


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, the CPU guard's MemoryLimitExceeded, or a failed host allocation."""
    import torch

    if isinstance(exc, MemoryError):  # mutwo.memory.MemoryLimitExceeded included
        return True
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def release_memory(device: str) -> None:
    """Free what a failed execution held (its tensors hang off the exception's frames until collected)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _execute_guarded(ctx: CellContext, batch: Prepared, schedule: Schedule) -> tuple[Any, str | None]:
    """Execute under ``execute.memory_limit``: (result, None), or (None, why) when it ran out of memory
    (memory released before returning). Other exceptions propagate."""
    from mutwo.memory import memory_limit
    from mutwo.timing import threads_for, torch_threads

    ex = ctx.scenario.execute
    try:
        with memory_limit(ex.memory_limit, ctx.device), torch_threads(threads_for(ctx.device, ex.threads)):
            return execute_plan(ctx.execute_fn, batch, schedule, iterations=ex.iterations, warmup=ex.warmup,
                                seed=ctx.scenario.seed), None
    except Exception as exc:
        if not is_oom(exc):
            raise
        why = f"{type(exc).__name__}: {exc}".strip()
    release_memory(ctx.device)
    return None, why


def measure_reference(ctx: CellContext, batch: Prepared) -> None:
    """Execute keep-all, the reference of measured overheads: ``batch.info`` gets ``measured``, or
    ``execute_error`` when it failed or ran out of memory (the cells still run)."""
    keep = Schedule.keep_all(batch.problem, solver="keep_all")
    try:
        res, oom = _execute_guarded(ctx, batch, keep)
        if oom is None:
            batch.info["measured"] = Measured.from_result(res).as_dict()
        else:
            batch.info["execute_error"] = f"out of memory: {oom}"
    except Exception as exc:  # measured overheads are then missing
        batch.info["execute_error"] = f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- one cell
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def schedule_file_name(batch_size: int, solver: str, budget: str) -> str:
    """Where a cell's Schedule goes, relative to the run folder."""
    return f"schedules/{batch_size}_{_safe(solver)}_{_safe(budget)}.json"


def new_row(ctx: CellContext, batch_size: int, spec: SolverSpec, budget: Budget, keep_all_peak_bytes: int | None,
            keep_all_time_s: float | None, execute_note: str) -> Row:
    """A row with what is known before the solver runs."""
    budget_bytes = budget.resolve(keep_all_peak_bytes) if keep_all_peak_bytes or budget.nbytes else None
    return Row(scenario=ctx.scenario.name, model=ctx.scenario.model, batch_size=batch_size, device=ctx.device,
               solver=spec.label, solver_name=spec.name, solver_options=json.dumps(spec.options, sort_keys=True),
               budget=budget.label, budget_bytes=budget_bytes,
               budget_fraction=budget_bytes / keep_all_peak_bytes
               if budget_bytes is not None and keep_all_peak_bytes else None,
               keep_all_peak_bytes=keep_all_peak_bytes, keep_all_time_s=keep_all_time_s, executed=False,
               execute_note=execute_note, message="")


def batch_oom_row(ctx: CellContext, batch_size: int, spec: SolverSpec, budget: Budget, why: str) -> Row:
    """A cell of a batch size that ran out of memory while it was captured or profiled."""
    row = new_row(ctx, batch_size, spec, budget, None, None, "not executed: the batch size did not fit")
    row.status = CellStatus.OOM
    row.message = (f"batch size {batch_size} ran out of memory while it was captured and profiled (the "
                   f"keep-all step must fit to be profiled): {why}")
    return row


def _floor_note(batch: Prepared, budget_bytes: int) -> str:
    floor, t = batch.floor
    if budget_bytes >= floor:
        return ""
    return (f"budget {budget_bytes} B is below the floor: no plan can peak below {floor} B (op {t}: fixed "
            f"+ transient memory + activations in use there)")


def _below_floor(row: Row, floor_note: str) -> Row:
    """A solver that failed (raised, timed out) at a budget below the floor: the cell is infeasible all
    the same, proven by the floor; what the solver did stays in the message."""
    if floor_note:
        did = "call timed out" if row.status == CellStatus.TIMEOUT else "call raised"
        row.status = CellStatus.INFEASIBLE
        row.message = f"{floor_note}; the solver did not say so: its {did}: {row.message}"
    return row


def _oom_row(row: Row, why: str, same: str = "") -> Row:
    """The row of a plan that ran out of memory when executed (its predictions stay)."""
    said = row.status
    row.status = CellStatus.OOM
    row.execute_note = "execution ran out of memory" + (f" ({same})" if same else "")
    row.message = (f"the solver said {said} (predicted peak {row.predicted_peak_bytes} B), but executing "
                   f"the plan ran out of memory: {why}")
    return row


def _solve_cell(ctx: CellContext, batch: Prepared, spec: SolverSpec, row: Row, floor_note: str,
                solve_fn: Callable[..., Schedule] | None = None) -> Schedule | None:
    """The solver's plan, or None with the row finished (timeout, error, not a Schedule)."""
    from mutwo.sandbox import SolverTimeout

    try:
        schedule = (solve_fn or solve)(spec.name, batch.problem, row.budget_bytes, spec.options,
                                       timeout_s=ctx.scenario.timeout_s(spec))
    except SolverTimeout as exc:  # killed: a result, not the end of the run
        row.status, row.solve_time_s = CellStatus.TIMEOUT, exc.timeout_s
        row.message = f"{exc}; give it longer with solvers[].timeout_s or solve.timeout_s"
        row.execute_note = "not executed: the solver timed out"
        _below_floor(row, floor_note)
        return None
    except Exception as exc:  # a broken solver is a result, not the end of the run
        if ctx.debug:
            print(getattr(exc, "child_traceback", "") or traceback.format_exc(), file=sys.stderr)
        row.status, row.message = CellStatus.ERROR, error_text(exc)
        row.execute_note = "not executed: the solver raised"
        _below_floor(row, floor_note)
        return None
    if not isinstance(schedule, Schedule):
        row.status = CellStatus.INVALID
        row.message = f"the solver returned {type(schedule).__name__}, expected mutwo.schedule.Schedule"
        row.execute_note = "not executed: invalid schedule"
        return None
    row.status, row.solve_time_s, row.message = CellStatus(schedule.status.value), float(schedule.solve_time_s), \
        schedule.message
    for k, v in schedule.counts().items():
        setattr(row, k, v)
    return schedule


def _predict_cell(ctx: CellContext, batch: Prepared, schedule: Schedule, row: Row, floor_note: str) -> SimResult | None:
    """Check and simulate the plan, save it, and judge the solver's claim; None: invalid (row finished)."""
    from mutwo.schedule import ScheduleError

    row.schedule_file = schedule_file_name(batch.batch_size, row.solver, row.budget)
    try:
        sim = predict(batch.problem, schedule)
    except Exception as exc:  # ScheduleError, or arrays so malformed the checks themselves fail
        if ctx.debug and not isinstance(exc, ScheduleError):
            traceback.print_exc()
        row.status, row.message = CellStatus.INVALID, f"invalid schedule: {type(exc).__name__}: {exc}"
        row.execute_note = "not executed: invalid schedule"
        schedule.save(ctx.run_dir / row.schedule_file)
        return None
    schedule.save(ctx.run_dir / row.schedule_file)
    keep_time = batch.keep_all_time_s
    row.predicted_peak_bytes, row.predicted_time_s = sim.peak_bytes, sim.time_s
    row.predicted_overhead_pct = 100.0 * (sim.time_s / keep_time - 1.0) if keep_time > 0 else None
    row.recompute_s, row.stall_s = sim.recompute_s, sim.stall_s
    row.gap_to_bound_pct = gap_to_bound_pct(sim.time_s, schedule.bound)
    if row.status in FEASIBLE and sim.peak_bytes > row.budget_bytes:
        row.message = (f"the solver said {row.status}, but the simulated peak {sim.peak_bytes} bytes exceeds "
                       f"the budget {row.budget_bytes} bytes; {schedule.message}")
        row.status = CellStatus.INVALID
    if row.status == CellStatus.INFEASIBLE and floor_note:  # the row says how low a budget can go
        row.message = f"{floor_note}; {row.message}" if row.message else floor_note
    return sim


def _why_not_executed(ctx: CellContext, batch: Prepared, row: Row, sim: SimResult) -> str | None:
    """Why a plan is not run (None: run it, or the note stays as it is: nothing to execute with)."""
    if row.status not in FEASIBLE:
        return f"not executed: {row.status}" if ctx.execute_fn is not None else row.execute_note
    if ctx.execute_fn is None:
        return row.execute_note
    if batch.graph is None:
        return "not executed: no captured graph in this process"
    limit, keep_time = ctx.scenario.execute.max_slowdown, batch.keep_all_time_s
    if limit is not None and keep_time > 0 and sim.time_s > limit * keep_time:
        return (f"not executed: predicted {sim.time_s / keep_time:.1f}x the keep-all time "
                f"(execute.max_slowdown: {limit:g})")
    return None


def _execute_cell(ctx: CellContext, batch: Prepared, memo: PlanMemo, schedule: Schedule, row: Row) -> Row:
    """Run the plan (once per distinct plan of the batch size) and fill the measured columns."""
    key, who = schedule.plan_key(), f"{row.solver} @ {row.budget}"
    if key in memo.oom:  # the same plan already ran out of memory: it would again
        why, first = memo.oom[key]
        return _oom_row(row, why, f"same plan as {first}")
    note = "executed"
    if key in memo.measured:  # the same plan already ran (keep-all, or a budget-independent solver)
        measured, first = memo.measured[key]
        note = f"executed: same plan as {first}, measured once"
    else:
        try:
            res, oom = _execute_guarded(ctx, batch, schedule)
        except Exception as exc:
            if ctx.debug:
                traceback.print_exc()
            row.execute_note = f"execution failed: {type(exc).__name__}: {exc}"
            return row
        if oom is not None:
            memo.oom[key] = (oom, who)
            return _oom_row(row, oom)
        measured = Measured.from_result(res)
        memo.measured[key] = (measured, who)
    for k, v in measured.as_dict().items():
        setattr(row, k, v)
    row.executed, row.execute_note = True, note
    row.emulated_swap = measured.emulated_swap and bool(row.n_swap)
    elsewhere = not_the_target(batch.problem.cost_source, ctx.device)
    if elsewhere:  # memory and correctness hold on any device; this machine's times say nothing of the target's
        row.measured_overhead_pct = None
        row.execute_note = f"{row.execute_note}; {elsewhere}"
    return row


def not_the_target(cost_source: str, device: str) -> str:
    """Why measured times are not compared with predicted ones ("" when they are): the predictions are
    estimated for another device than the one that ran the plan."""
    if not (cost_source or "").startswith("estimated:"):
        return ""
    target = cost_source.removeprefix("estimated:")
    return (f"ran on {device}, not on the target {target}: memory and correctness checked, times not compared "
            f"(predicted times are estimated for {target}; measured_overhead_pct left empty)")


def run_cell(ctx: CellContext, batch: Prepared, memo: PlanMemo, spec: SolverSpec, budget: Budget, *,
             solve_fn: Callable[..., Schedule] | None = None) -> Row:
    """Solve, validate, simulate and (if feasible and enabled) execute one solver at one budget.
    ``solve_fn`` (`solve`'s arguments) stands in for `solve`: `mutwo.ray_executor` gives the outcome of
    a call made on another worker."""
    row = new_row(ctx, batch.batch_size, spec, budget, batch.keep_all_peak_bytes, batch.keep_all_time_s,
                  ctx.execute_note)
    row.cost_source = batch.problem.cost_source
    floor_note = _floor_note(batch, row.budget_bytes)
    schedule = _solve_cell(ctx, batch, spec, row, floor_note, solve_fn)
    if schedule is None:
        return row
    sim = _predict_cell(ctx, batch, schedule, row, floor_note)
    if sim is None:
        return row
    why_not = _why_not_executed(ctx, batch, row, sim)
    if why_not is not None:
        row.execute_note = why_not
        return row
    return _execute_cell(ctx, batch, memo, schedule, row)
