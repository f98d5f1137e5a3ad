"""A scenario's ``search.largest_batch`` inside a comparison run: the bisection of `mutwo.search`, with
each size prepared by `mutwo.pipeline` (build, capture, profile or estimate, Problem; cached in
``search/<over><n>/``) and each solver judged by `mutwo.cell.run_cell` at the searched memory, the same
cell the grid runs (solve, check, simulate, execute where this machine can).

A probe is one solver at one size; each is appended to ``search/probes.jsonl`` when made, so a resumed
run (``--resume``) makes only the probes it lacks. Keep-all (the unmodified step) is searched beside
the solvers: it fits when its simulated peak, and its measured peak where executed, is within the
memory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mutwo import cell, files, pipeline
from mutwo.cell import FEASIBLE, CellStatus, PlanMemo, Row
from mutwo.report import KEEP_ALL_BAR, fmt_bytes
from mutwo.scenario import Budget
from mutwo.search import MEASURED, PREDICTED, Probe, largest_fitting, outcome_frame

if TYPE_CHECKING:
    from mutwo.pipeline import Prepared
    from mutwo.run import RunContext
    from mutwo.scenario import Scenario

__all__ = ["run_search", "probe_of_row", "keep_all_probe", "PROBES_FILE", "SEARCH_DIR"]

SEARCH_DIR = "search"
PROBES_FILE = "probes.jsonl"


def _point(scenario: Scenario, n: int) -> tuple[Scenario, int, str]:
    """The scenario at searched size ``n``, its batch size, and the folder name of that size."""
    spec = scenario.search.largest_batch
    if spec.over == "batch_size":
        return scenario, n, f"batch_size{n}"
    at_n = scenario.model_copy(update={"model_options": {**scenario.model_options, "seq_len": n}})
    return at_n, scenario.batch_size[0], f"seq_len{n}"


def probe_of_row(label: str, n: int, row: Row, memory_bytes: int, keep_time_s: float | None = None) -> Probe:
    """A solver's cell at the searched memory as a probe: it fits when the solver found a plan
    (optimal / feasible) whose simulated peak is within the memory and which, where executed, ran
    without running out of memory and peaked within it too. With keep-all's predicted step at this size,
    its slowdown (`Probe.judged` holds it against the search's ``max_slowdown``)."""
    executed = bool(row.executed)
    failed = row.status == CellStatus.OOM or str(row.execute_note or "").startswith("execution failed")
    measured = row.measured_peak_bytes if executed else None
    fits = (str(row.status) in FEASIBLE and row.predicted_peak_bytes is not None
            and row.predicted_peak_bytes <= memory_bytes and not failed
            and not (measured is not None and measured > memory_bytes))
    slowdown = (row.predicted_time_s / keep_time_s if row.predicted_time_s is not None and keep_time_s
                else None)
    return Probe(label, n, bool(fits), MEASURED if executed or failed else PREDICTED, row.predicted_peak_bytes,
                 measured, row.predicted_time_s, str(row.status), row.message or row.execute_note or "",
                 slowdown=slowdown)


def keep_all_probe(n: int, prep: Prepared, memory_bytes: int) -> Probe:
    """The unmodified step at size ``n``: fits when its simulated keep-all peak, and its measured peak
    where keep-all was executed, is within the memory."""
    measured = prep.info.get("measured_peak_bytes")
    fits = prep.keep_all_peak_bytes <= memory_bytes and not (measured is not None and measured > memory_bytes)
    note = (f"keep-all peak {fmt_bytes(prep.keep_all_peak_bytes)} predicted"
            + (f", {fmt_bytes(measured)} measured" if measured is not None else ""))
    return Probe(KEEP_ALL_BAR, n, bool(fits), MEASURED if measured is not None else PREDICTED,
                 int(prep.keep_all_peak_bytes), measured, float(prep.keep_all_time_s), "keep-all", note, slowdown=1.0)


def _grid_folder(ctx: RunContext, n: int, bs: int) -> Path | None:
    """The grid's own folder of the searched size, when the grid prepared that very point (same model
    options, same batch size): a size the grid captured is not captured again."""
    sc, spec = ctx.scenario, ctx.scenario.search.largest_batch
    same = bs in sc.batch_size if spec.over == "batch_size" else n == sc.model_options.get("seq_len")
    return ctx.run_dir / f"batch{bs}" if same else None


def _prepare(ctx: RunContext, scenario: Scenario, bs: int, folder: Path, grid: Path | None) -> Prepared | str:
    """Size ``n`` prepared, keep-all measured where it runs here; or why it could not be (out of memory
    while captured or profiled). When nothing will be executed at it (--no-execute, or a point this
    machine cannot run), it is reloaded from ``folder`` or from the grid's ``grid`` folder of the same
    point instead: a reloaded batch has no graph, and needs none."""
    for where in (folder, grid):
        reloaded = pipeline.reload(where, bs) if where is not None else None
        if reloaded is not None and (ctx.cell.execute_fn is None or reloaded.info.get(pipeline.NOT_EXECUTABLE)):
            return reloaded
    try:
        prep = pipeline.prepare_scenario(scenario, bs, ctx.device, ctx.source, status=ctx.status)
    except Exception as exc:
        if not cell.is_oom(exc):
            raise
        cell.release_memory(ctx.device)
        return f"ran out of memory while it was captured and profiled: {type(exc).__name__}: {exc}".strip()
    from mutwo.run import cell_context, measure_keep_all

    measure_keep_all(dataclasses.replace(cell_context(ctx, prep.info), scenario=scenario), prep)
    prep.problem.save(folder / pipeline.PROBLEM_FILE)
    files.write_json(folder / pipeline.KEEP_ALL_FILE, prep.info)
    return prep


def _size_label(nbytes: int) -> str:
    """80GiB, 512MiB, ...: the searched memory as a budget label."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return fmt_bytes(nbytes).replace(" ", "")


def _known(path: Path, over: str, memory_bytes: int, max_slowdown: float | None = None
           ) -> dict[tuple[str, int], Probe]:
    """Probes a previous run made for the same quantity and memory, judged against this run's
    ``max_slowdown``. The file is written back without a line a kill left torn, so probes appended now
    start on a line of their own."""
    lines = files.read_jsonl(path)
    if path.exists():
        files.write_text(path, "".join(json.dumps(files.jsonable(d)) + "\n" for d in lines))
    mine = [Probe.from_dict(d) for d in lines if d.get("over") == over and d.get("memory_bytes") == memory_bytes]
    keep_time = {p.n: p.predicted_time_s for p in mine if p.label == KEEP_ALL_BAR and p.predicted_time_s}
    out = {}
    for p in mine:  # lines written before probes carried their slowdown get it from keep-all's time
        if p.slowdown is None and p.predicted_time_s is not None:
            if p.n not in keep_time:  # each size's keep_all.json read once, whatever the probes at it
                keep_time[p.n] = _cached_keep_time(path.parent / f"{over}{p.n}")
            keep = keep_time[p.n]
            if keep:
                p = dataclasses.replace(p, slowdown=p.predicted_time_s / keep)
        out[(p.label, p.n)] = p.judged(max_slowdown)
    return out


def _cached_keep_time(folder: Path) -> float | None:
    """Keep-all's predicted step at a size the search prepared (its ``keep_all.json``), if there."""
    path = folder / pipeline.KEEP_ALL_FILE
    try:
        return json.loads(path.read_text()).get("keep_all_time_s")
    except (OSError, ValueError):
        return None


def run_search(ctx: RunContext) -> pd.DataFrame:
    """The largest size each solver (and keep-all) fits in the searched memory: search.csv's table."""
    from tqdm.auto import tqdm

    sc = ctx.scenario
    spec = sc.search.largest_batch
    memory = sc.search_memory_bytes()
    label = _size_label(memory)
    solvers = {s.label: s for s in sc.solvers if spec.solvers is None or s.label in spec.solvers}
    root = ctx.run_dir / SEARCH_DIR
    probes_path = root / PROBES_FILE
    budget = Budget(nbytes=memory, label=label)
    grid_bar = ctx.bar
    ctx.bar = tqdm(desc=f"{sc.name}: largest {spec.over} in {label}", unit="probe", disable=ctx.options.quiet,
                   dynamic_ncols=True)

    def judge(n: int, labels: list[str]) -> dict[str, Probe]:
        at_n, bs, name = _point(sc, n)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        prep = _prepare(ctx, at_n, bs, folder, _grid_folder(ctx, n, bs))
        out = {}
        if not isinstance(prep, str):
            from mutwo.run import cell_context

            point_ctx = dataclasses.replace(cell_context(ctx, prep.info), scenario=at_n, run_dir=folder)
            memo = PlanMemo.from_reference(prep.problem, prep.info)
        for lab in labels:
            ctx.status(f"{spec.over} {n}: {lab}")
            if isinstance(prep, str):
                out[lab] = Probe(lab, n, False, MEASURED, status=CellStatus.OOM.value, note=prep)
            elif lab == KEEP_ALL_BAR:
                out[lab] = keep_all_probe(n, prep, memory)
            else:
                row = cell.run_cell(point_ctx, prep, memo, solvers[lab], budget)
                out[lab] = probe_of_row(lab, n, row, memory, prep.keep_all_time_s).judged(spec.max_slowdown)
            files.append_jsonl(probes_path, {"over": spec.over, "memory_bytes": memory, **out[lab].to_dict()})
            ctx.bar.update()
        if not isinstance(prep, str):
            prep.release()
        return out

    try:
        outcomes = largest_fitting([KEEP_ALL_BAR, *solvers], spec.min, spec.max, judge, step=spec.step,
                                   known=_known(probes_path, spec.over, memory, spec.max_slowdown))
    finally:
        ctx.bar.close()
        ctx.bar = grid_bar
    frame = outcome_frame(outcomes, over=spec.over, memory=label, memory_bytes=memory)
    frame.insert(1, "solver_name", [solvers[s].name if s in solvers else "keep_all (unmodified)"
                                    for s in frame["solver"]])
    return frame
