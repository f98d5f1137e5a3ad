"""The grid of one comparison: every batch size x solver x budget of a scenario, into its run folder,
then the scenario's largest-batch search (`mutwo.search_run`), the figures and report.md.

Cells are appended to cells.jsonl as they finish and every other file is written atomically, so a run
killed at any moment continues with ``--resume`` (docs/compare.md). A batch size that cannot run on
this machine (built on meta, or too large: `mutwo.pipeline.execution_blocker`) is simulated only, as
with ``--no-execute``, and its rows say why.
"""

from __future__ import annotations

import dataclasses
import platform
import shlex
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mutwo import cell, files, hints, pipeline, report, run_folder
from mutwo.cell import CellContext, PlanMemo, Row
from mutwo.pipeline import Prepared
from mutwo.scenario import Scenario

__all__ = ["RunOptions", "RunContext", "Grid", "run_scenario", "local_grid", "versions", "reference_list",
           "cell_context", "measure_keep_all", "REFERENCE_NOTES", "SEARCH_FILE"]

# Set by the command line's SIGTERM handler. The handler raises KeyboardInterrupt too, but Python drops an
# exception raised where it cannot propagate (e.g. inside an at-fork callback while a solver's child is
# forked), so the grid also checks this between cells.
STOP = threading.Event()

REFERENCE_NOTES = "reference_notes"  # keep_all.json: {label: why a reference has no row}
SEARCH_FILE = "search.csv"  # the largest-batch search's answers, one row per solver


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario (the command line's options)."""

    out: Path = Path("results")
    run_id: str | None = None
    resume: bool = False
    no_plots: bool = False
    quiet: bool = False
    debug: bool = False


@dataclass
class RunContext:
    """One run: the scenario, where it runs, its folder and options, and what its cells share."""

    scenario: Scenario
    source: str  # the scenario file, as given (error messages name it)
    command: str  # the command line, for run.json
    device: str
    run_dir: Path
    options: RunOptions
    cell: CellContext
    bar: Any = None  # tqdm progress bar
    done: dict[str, Row] = field(default_factory=dict)  # finished cells of a resumed run, by Row.key
    rows: list[Row] = field(default_factory=list)
    batches: dict[int, Prepared] = field(default_factory=dict)

    def status(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def write_results(self) -> pd.DataFrame:
        df = cell.results_frame(self.rows)
        files.write_csv(self.run_dir / "results.csv", df)
        return df


def versions() -> dict[str, str]:
    """Python, the platform, and the versions of mutwo and the libraries its results depend on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("mutwo", "torch", "torchvision", "transformers", "numpy", "pandas", "ortools", "pulp",
                "highspy", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def run_scenario(scenario: Scenario, options: RunOptions, argv: list[str], source: str | Path, *,
                 grid: Grid | None = None, device: str | None = None) -> tuple[Path, pd.DataFrame]:
    """Run (or resume) the whole grid; returns the run folder and the results table.

    Everything that can refuse (an existing run without --resume, a resume under changed settings, a
    folder another process holds) is checked before any model is built. A failure or Ctrl-C on the way
    is recorded in run.json (status ``failed`` / ``interrupted``) and re-raised; finished cells stay in
    cells.jsonl for --resume. ``grid`` fills the context's rows (`local_grid` when None: this process;
    `mutwo.executors` has the others), ``device`` is where it runs (None: this machine's, resolved here).
    """
    source = str(source)
    device = device or pipeline.target_device(scenario, source)
    run_dir, previous = run_folder.open_run(scenario, device, options.out, options.run_id, options.resume, source)
    with run_folder.locked(run_dir):
        execute_fn, execute_note = cell.executor(scenario.execute.enabled)
        ctx = RunContext(scenario, source, "python -m mutwo.compare " + shlex.join(argv), device, run_dir, options,
                         CellContext(scenario, device, run_dir, execute_fn, execute_note, options.debug))
        if options.resume:
            ctx.done = run_folder.finished_cells(run_dir)
        return _run_grid(ctx, previous, grid or local_grid)


def _run_info(ctx: RunContext, previous: dict) -> dict:
    """run.json as the run starts."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return {"run_id": ctx.run_dir.name, "scenario": ctx.scenario.model_dump(), "scenario_file": ctx.source,
            "device": ctx.device, "target": ctx.scenario.target, "seed": ctx.scenario.seed, "command": ctx.command,
            "started": previous.get("started", started), "resumed": ctx.options.resume and bool(ctx.done),
            "versions": versions(), "execution_note": ctx.cell.execute_note, "status": "running"}


Grid = Callable[[RunContext], None]  # fills ctx.rows (in grid order) and ctx.batches, appending to cells.jsonl


def local_grid(ctx: RunContext) -> None:
    """Every batch size in this process, one after another: its cells, then its PyTorch references."""
    for bs in ctx.scenario.batch_size:
        _run_batch(ctx, bs)
        _run_references(ctx, bs)


def _run_grid(ctx: RunContext, previous: dict, grid: Grid) -> tuple[Path, pd.DataFrame]:
    from tqdm.auto import tqdm

    sc, run_json = ctx.scenario, ctx.run_dir / run_folder.RUN_FILE
    run_info = _run_info(ctx, previous)
    files.write_json(run_json, run_info)
    files.write_text(ctx.run_dir / "scenario.yaml", Path(ctx.source).read_text())
    n_cells = sum(len(sc.solvers) * len(sc.budgets) + len(reference_list(sc, bs)) for bs in sc.batch_size)
    t_start = time.perf_counter()
    ctx.bar = tqdm(total=n_cells, desc=sc.name, unit="cell", disable=ctx.options.quiet, dynamic_ncols=True)
    search = None
    try:
        grid(ctx)
        ctx.bar.close()
        if sc.search.largest_batch is not None:
            from mutwo import search_run

            search = search_run.run_search(ctx)
            files.write_csv(ctx.run_dir / SEARCH_FILE, search)
    except BaseException as exc:  # Ctrl-C or a bug: say so in run.json, keep what is done, re-raise
        ctx.bar.close()
        ctx.write_results()
        run_info.update({"status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                         "error": f"{type(exc).__name__}: {exc}".strip(), "cells": len(ctx.rows),
                         "stopped": time.strftime("%Y-%m-%d %H:%M:%S")})
        files.write_json(run_json, run_info)
        raise
    df = ctx.write_results()
    keep_all = {bs: b.info for bs, b in ctx.batches.items()}
    plots = [] if ctx.options.no_plots else _figures(ctx, df, keep_all, search)
    blocked = {bs: info[pipeline.NOT_EXECUTABLE] for bs, info in keep_all.items() if info.get(pipeline.NOT_EXECUTABLE)}
    run_info.update({"status": "finished", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "wall_time_s": time.perf_counter() - t_start, "cells": len(ctx.rows),
                     "cells_resumed": sum(r.key in ctx.done for r in ctx.rows), "not_executable": blocked})
    if blocked and ctx.cell.execute_fn is not None:
        run_info["execution_note"] = (
            f"not executed (chosen automatically): {next(iter(blocked.values()))}" if len(blocked) == len(keep_all)
            else f"executed, except batch sizes {', '.join(map(str, blocked))} (chosen automatically: they cannot "
                 f"run here)")
    files.write_json(run_json, run_info)
    report.write_report(ctx.run_dir / "report.md", df, run_info, plots, keep_all, search=search)
    return ctx.run_dir, df


def _figures(ctx: RunContext, df: pd.DataFrame, keep_all: dict[int, dict], search: pd.DataFrame | None) -> list[Path]:
    from mutwo import compare_plots

    problems = {bs: b.problem for bs, b in ctx.batches.items()}
    made = compare_plots.run_figures(df, problems, keep_all, ctx.run_dir)
    if search is not None and len(search):
        made.append(compare_plots.largest_batch_search(search, ctx.run_dir / "plots" / "largest_batch_search.png"))
    return made


def cell_context(ctx: RunContext, info: dict) -> CellContext:
    """The run's CellContext for a batch size whose keep_all.json is ``info``: without an executor, and
    saying why in every row, when the batch size cannot run here (`pipeline.execution_blocker`)."""
    why = info.get(pipeline.NOT_EXECUTABLE)
    if not why or ctx.cell.execute_fn is None:
        return ctx.cell
    return dataclasses.replace(ctx.cell, execute_fn=None, execute_note=f"not executed (chosen automatically): {why}")


def measure_keep_all(cell_ctx: CellContext, prep: Prepared) -> None:
    """Execute keep-all into ``prep.info`` when this batch size runs here, and copy its measured peak
    and time to the top level of keep_all.json."""
    if "measured" not in prep.info and cell_ctx.execute_fn is not None and not prep.info.get(pipeline.NOT_EXECUTABLE):
        cell.measure_reference(cell_ctx, prep)
    if "measured" in prep.info:
        prep.info.update({k: prep.info["measured"][k] for k in ("measured_peak_bytes", "measured_time_s")})


def prepare_batch(ctx: RunContext, bs: int, capture_graph: bool) -> tuple[Prepared, PlanMemo]:
    """Capture, profile and build the Problem of one batch size (or reload it, when resuming a batch
    whose cells are all done), write its tables, and measure keep-all (once per run folder)."""
    folder = ctx.run_dir / f"batch{bs}"
    if not capture_graph:
        reloaded = pipeline.reload(folder, bs)
        if reloaded is not None:
            return reloaded, PlanMemo()
    old = run_folder.read_json(folder / pipeline.KEEP_ALL_FILE)
    # resuming: the profile this batch size started with (the cache key may have changed since: load, threads)
    key = old.get("profile_cache_key") if ctx.options.resume else None
    prep = pipeline.prepare_scenario(ctx.scenario, bs, ctx.device, ctx.source, status=ctx.status, profile_key=key)
    pipeline.save_tables(prep, folder)
    if REFERENCE_NOTES in old:  # resuming: PyTorch references that have no row, and why
        prep.info[REFERENCE_NOTES] = old[REFERENCE_NOTES]
    if "measured" in old:  # resuming: the keep-all execution is already done
        prep.info["measured"] = old["measured"]
    if ctx.cell.execute_fn is not None and not prep.info.get(pipeline.NOT_EXECUTABLE):
        ctx.status(f"b{bs}: execute keep-all")
    measure_keep_all(ctx.cell, prep)
    files.write_json(folder / pipeline.KEEP_ALL_FILE, prep.info)
    return prep, PlanMemo.from_reference(prep.problem, prep.info)


def _prepare_or_oom(ctx: RunContext, bs: int, capture_graph: bool) -> tuple[PlanMemo | None, str | None]:
    """`prepare_batch` into ``ctx.batches``; a batch size that runs out of memory while it is captured or
    profiled gives (None, why) instead."""
    try:
        prep, memo = prepare_batch(ctx, bs, capture_graph)
    except Exception as exc:
        if not cell.is_oom(exc):
            raise
        if ctx.options.debug:
            traceback.print_exc()
        why = f"{type(exc).__name__}: {exc}".strip()
        cell.release_memory(ctx.device)
        return None, why
    ctx.batches[bs] = prep
    return memo, None


def _run_batch(ctx: RunContext, bs: int) -> None:
    """Every cell of one batch size; the oom rows of a batch size that did not fit, and the run goes on.
    The budgets of a solver that takes a ``hint`` are solved from the largest down, so it gets the plan it
    found at the next larger budget (`mutwo.hints`); rows keep the scenario's order."""
    cells = [(spec, b) for spec in ctx.scenario.solvers for b in ctx.scenario.budgets]
    keys = [cell.cell_key(bs, spec.label, b.label) for spec, b in cells]
    todo = [k for k in keys if k not in ctx.done]
    if not todo and not (ctx.run_dir / f"batch{bs}" / pipeline.PROBLEM_FILE).exists():  # done without a Problem
        ctx.rows.extend(ctx.done[k] for k in keys)
        ctx.bar.update(len(cells))
        return
    memo, why = _prepare_or_oom(ctx, bs, capture_graph=bool(todo))
    cell_ctx = cell_context(ctx, ctx.batches[bs].info) if bs in ctx.batches else ctx.cell
    keep_peak = ctx.batches[bs].keep_all_peak_bytes if bs in ctx.batches else None
    sizes = [b.resolve(keep_peak) if (keep_peak or b.nbytes) else None for _, b in cells]
    hinted = [ctx.scenario.solve.hints and hints.takes_hint(spec.name, spec.options) for spec, _ in cells]
    # only solvers that take a hint are reordered: the others keep the scenario's order (and the "same
    # plan as ..." notes a Ray run, which solves in grid order, gives too)
    order = hints.largest_first([spec.label for spec, _ in cells], [z if h else None for z, h in zip(sizes, hinted)])
    sweep, done_rows = hints.SweepHints(), {}
    first_row = len(ctx.rows)
    for i in order:
        if STOP.is_set():  # a stop asked for by a signal whose KeyboardInterrupt Python swallowed
            raise KeyboardInterrupt("stop requested")
        (spec, budget), key = cells[i], keys[i]
        if key in ctx.done:
            row = ctx.done[key]
        else:
            ctx.status(f"b{bs} {spec.label} @ {budget.label}")
            if why is not None:
                row = cell.batch_oom_row(cell_ctx, bs, spec, budget, why)
            else:
                row = cell.run_cell(cell_ctx, ctx.batches[bs], memo, spec, budget,
                                    solve_fn=_hinted_solve(ctx, sweep, spec, sizes[i]))
            run_folder.append_cell(ctx.run_dir, row)
        if hinted[i] and row.status in cell.FEASIBLE and row.schedule_file:
            sweep.record(spec.label, row.budget_bytes, ctx.run_dir / row.schedule_file)
        done_rows[i] = row
        ctx.rows.append(row)
        ctx.bar.update()
    ctx.rows[first_row:] = [done_rows[i] for i in sorted(done_rows)]  # the scenario's order
    ctx.write_results()
    if bs in ctx.batches:
        ctx.batches[bs].release()  # free the model before the next batch size


def _hinted_solve(ctx: RunContext, sweep: hints.SweepHints, spec, budget_bytes: int | None):
    """`cell.solve` with the solver's plan at the next larger budget as its ``hint`` (None: plain solve)."""
    if not ctx.scenario.solve.hints or not hints.takes_hint(spec.name, spec.options):
        return None
    hint = sweep.for_budget(spec.label, budget_bytes)
    return None if hint is None else hints.hinted(cell.solve, hint)


# ---------------------------------------------------------------------- PyTorch's own savers
def reference_list(scenario: Scenario, batch_size: int | None = None) -> list:
    """The `mutwo.references.Reference` s a batch size gets rows for (none when turned off, when nothing
    is executed: they are measured runs, or when ``references.batch_sizes`` leaves ``batch_size`` out)."""
    spec = scenario.references
    if not (spec.enabled and scenario.execute.enabled):
        return []
    if batch_size is not None and not spec.applies_to(batch_size):
        return []
    from mutwo.references import references

    return references(spec.eager, spec.checkpoint, spec.memory_budget, spec.backend)


def _reference_runner(ctx: RunContext, bs: int):
    from mutwo.references import ReferenceRunner
    from mutwo.workload import OptimizerConfig

    sc = ctx.scenario
    return ReferenceRunner(lambda: pipeline.build(sc, bs, ctx.device, ctx.source),
                           OptimizerConfig(sc.optimizer.name, dict(sc.optimizer.options)),
                           iterations=sc.execute.iterations, seed=sc.seed)


def _run_references(ctx: RunContext, bs: int) -> None:
    """The reference rows of one batch size, after its cells (each like a cell: appended to cells.jsonl
    when measured, skipped on --resume when done). A reference that does not apply (checkpoint without a
    known block) has no row: its note goes to keep_all.json and report.md."""
    from mutwo.references import reference_row

    refs = reference_list(ctx.scenario, bs)
    if not refs:
        return
    info_path = ctx.run_dir / f"batch{bs}" / pipeline.KEEP_ALL_FILE
    info = run_folder.read_json(info_path)
    notes: dict[str, str] = dict(info.get(REFERENCE_NOTES, {}))
    if info.get(pipeline.NOT_EXECUTABLE):  # references run the step for real: not here
        notes = {ref.label: f"{ref.label} not run (chosen automatically): this batch size cannot run here"
                 for ref in refs}
        refs = []
        ctx.bar.update(len(notes))
    runner = None
    try:
        for ref in refs:
            key = cell.cell_key(bs, ref.label, None)
            if key in ctx.done or ref.label in notes:
                if key in ctx.done:
                    ctx.rows.append(ctx.done[key])
                ctx.bar.update()
                continue
            ctx.status(f"b{bs} {ref.label}")
            runner = runner or _reference_runner(ctx, bs)
            result = runner.measure(ref)
            if result.status == "skipped":
                notes[ref.label] = result.message
            else:
                row = reference_row(result, scenario=ctx.scenario.name, model=ctx.scenario.model, batch_size=bs,
                                    device=ctx.device, keep_all=info, memory_limit=ctx.scenario.execute.memory_limit)
                row.cost_source = _measured_here(ctx.device)
                run_folder.append_cell(ctx.run_dir, row)
                ctx.rows.append(row)
            ctx.bar.update()
    finally:
        if runner is not None:
            runner.close()
    if notes and info:
        info[REFERENCE_NOTES] = notes
        files.write_json(info_path, info)
        if bs in ctx.batches:
            ctx.batches[bs].info[REFERENCE_NOTES] = notes
    ctx.write_results()


def _measured_here(device: str) -> str:
    """The cost source of what runs on this machine (a reference row): ``measured:cpu`` or
    ``measured:cuda:<GPU name>``, as `mutwo.problem_build.cost_source` words it for a measured profile."""
    from mutwo.problem_build import cost_source

    return cost_source(types.SimpleNamespace(device=device, cost_source=""))
