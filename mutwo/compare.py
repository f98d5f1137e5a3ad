"""``python -m mutwo.compare SCENARIO.yaml``: every solver x budget x batch size of one scenario.

For each batch size: build the workload, capture the training step, profile it (disk cache), build the
Problem and simulate keep-all (the reference peak budgets are fractions of). Then for each solver and
budget: solve, validate, simulate (the only source of predictions), and execute feasible schedules for
real unless told not to. A solver that raises is one ``error`` row; the run goes on.

Output, under ``<out>/<scenario>/<run-id>/`` (see results/README.md): results.csv, cells.jsonl (one
line per finished cell, what ``--resume`` reads), schedules/, batch<N>/ (ops.csv, activations.csv,
problem.npz, keep_all.json), plots/, run.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mutwo import report
from mutwo.scenario import Budget, Scenario, ScenarioError, SolverSpec, load_scenario, resolve_device

__all__ = ["main", "build_parser", "run_scenario", "COLUMNS"]

COLUMNS = ["scenario", "model", "batch_size", "device", "solver", "solver_name", "solver_options", "budget",
           "budget_bytes", "budget_fraction", "status", "solve_time_s", "predicted_peak_bytes",
           "predicted_time_s", "predicted_overhead_pct", "recompute_s", "stall_s", "keep_all_peak_bytes",
           "keep_all_time_s", "executed", "execute_note", "measured_peak_bytes", "measured_time_s",
           "measured_overhead_pct", "max_rel_diff", "bitwise_equal", "emulated_swap", "n_keep",
           "n_recompute", "n_swap", "schedule_file", "message"]
FEASIBLE = ("optimal", "feasible")


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mutwo.compare",
        description="Compare activation-memory solvers (keep / recompute / swap) on one scenario: "
                    "solve, simulate and execute every solver x budget x batch size.")
    p.add_argument("scenario", type=Path, help="scenario YAML file (see docs/compare.md)")
    p.add_argument("--solvers", help="comma-separated solver names or labels; replaces the scenario's list")
    p.add_argument("--budgets", help="comma-separated budgets: fractions of the keep-all peak (0.7) or "
                                     "sizes (6GiB, 512MiB)")
    p.add_argument("--batch-sizes", help="comma-separated batch sizes, e.g. 2,4")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the scenario's device")
    p.add_argument("--no-execute", action="store_true", help="simulate only; do not run schedules")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results/)")
    p.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest run of this scenario (or --run-id), skipping finished cells")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _overrides(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Command-line values as scenario keys (validated with the rest of the file)."""
    out: dict[str, Any] = {}
    if args.budgets:
        budgets: list[Any] = []
        for x in _split(args.budgets):
            try:
                budgets.append(float(x))
            except ValueError:
                budgets.append(x)
        out["budgets"] = budgets
    if args.batch_sizes:
        try:
            out["batch_size"] = [int(x) for x in _split(args.batch_sizes)]
        except ValueError:
            raise ScenarioError(f"{path}: --batch-sizes {args.batch_sizes!r} must be comma-separated "
                                f"integers, e.g. 2,4") from None
    if args.device:
        out["device"] = args.device
    return out


def _select_solvers(scenario: Scenario, names: str, path: Path) -> list[dict]:
    """--solvers keeps the scenario's options for names it lists, and adds plain others."""
    known = {s.label: s for s in scenario.solvers} | {s.name: s for s in scenario.solvers if s.label == s.name}
    picked = []
    for name in _split(names):
        spec = known.get(name)
        picked.append(spec.model_dump() if spec else {"name": name})
    if not picked:
        raise ScenarioError(f"{path}: --solvers is empty; name at least one solver")
    return picked


def load(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario, _overrides(args, args.scenario))
    if args.solvers:
        solvers = _select_solvers(scenario, args.solvers, args.scenario)
        scenario = load_scenario(args.scenario, {**_overrides(args, args.scenario), "solvers": solvers})
    if args.no_execute:
        scenario.execute.enabled = False
    return scenario


# ---------------------------------------------------------------------- run folder
def _run_folder(scenario: Scenario, args: argparse.Namespace) -> Path:
    root = args.out / scenario.name
    if args.run_id:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.run_id):
            raise ScenarioError(f"--run-id {args.run_id!r}: use letters, digits, '_', '-' or '.' only")
        return root / args.run_id
    if args.resume and root.exists():
        runs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "run.json").exists())
        if runs:
            return runs[-1]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, k = root / stamp, 1
    while folder.exists():
        folder, k = root / f"{stamp}-{k}", k + 1
    return folder


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-")


def _cell_key(batch_size: int, solver: str, budget: str) -> str:
    return f"{batch_size}|{solver}|{budget}"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("mutwo", "torch", "torchvision", "transformers", "numpy", "pandas", "ortools", "pulp",
                "highspy", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------------- one batch size
@dataclass
class Batch:
    """Everything the cells of one batch size share."""

    batch_size: int
    problem: Any  # mutwo.problem.Problem
    keep_all_peak_bytes: int
    keep_all_time_s: float
    folder: Path
    graph: Any = None  # TrainGraph, when captured in this process (needed to execute)
    flat: list | None = None
    info: dict = field(default_factory=dict)  # keep_all.json: reference figures, measured ones included
    measured: dict[bytes, tuple[dict, str]] = field(default_factory=dict)  # plan -> (measurement, who)


def _measurement(res) -> dict:
    return {"measured_peak_bytes": int(res.measured_peak_bytes), "measured_time_s": float(res.iteration_time_s),
            "max_rel_diff": float(res.max_rel_diff), "bitwise_equal": bool(getattr(res, "bitwise_equal", False)),
            "emulated_swap": bool(res.emulated_swap)}


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_batch(scenario: Scenario, batch_size: int, device: str, run_dir: Path, *, capture_graph: bool,
                  execute_fn, source: str, status=lambda text: None) -> Batch:
    """Capture, profile and build the Problem of one batch size (or reload it, when resuming a batch
    whose cells are all done), write its tables, and measure keep-all."""
    from mutwo.problem import Problem
    from mutwo.schedule import Schedule
    from mutwo.simulate import simulate

    folder = run_dir / f"batch{batch_size}"
    info_path = folder / "keep_all.json"
    if not capture_graph and (folder / "problem.npz").exists() and info_path.exists():
        problem = Problem.load(folder / "problem.npz")
        info = json.loads(info_path.read_text())
        return Batch(batch_size, problem, info["keep_all_peak_bytes"], info["keep_all_time_s"], folder,
                     info=info)

    from mutwo.capture import OptimizerConfig, capture, flat_state
    from mutwo.problem_build import activation_table, build_problem
    from mutwo.profile import profile
    from mutwo.scenario import call_builder

    _seed(scenario.seed)
    status(f"b{batch_size}: build {scenario.model}")
    workload = call_builder(scenario, batch_size, device, source)
    opt = OptimizerConfig(scenario.optimizer.name, dict(scenario.optimizer.options))
    status(f"b{batch_size}: capture")
    t0 = time.perf_counter()
    graph = capture(workload, opt)
    capture_s = time.perf_counter() - t0
    flat, _, _ = flat_state(workload, opt)
    status(f"b{batch_size}: profile")
    prof = profile(graph, flat, runs=scenario.profile.runs, warmup=scenario.profile.warmup, progress=False)
    problem = build_problem(graph, prof, name=f"{scenario.name}-b{batch_size}")
    problem.notes.update({"scenario": scenario.name, "batch_size": batch_size})
    report.write_csv(folder / "ops.csv", prof.ops_frame(graph))
    report.write_csv(folder / "activations.csv", activation_table(problem))
    folder.mkdir(parents=True, exist_ok=True)
    problem.save(folder / "problem.npz")
    keep = Schedule.keep_all(problem, solver="keep_all")
    sim = simulate(problem, keep)
    old = json.loads(info_path.read_text()) if info_path.exists() else {}
    info = {"batch_size": batch_size, "keep_all_peak_bytes": sim.peak_bytes, "keep_all_time_s": sim.time_s,
            "fixed_peak_bytes": int(problem.fixed_bytes.max()), "act_bytes_total": int(problem.act_bytes.sum()),
            **{k: v for k, v in problem.summary().items() if k.startswith("n_")},
            "capture_s": capture_s, "profile_s": prof.profile_time_s,
            "profile_measured_peak_bytes": prof.measured_peak_bytes,
            "profile_iteration_time_s": prof.iteration_time_s, "peak_method": prof.peak_method,
            "bandwidth_bytes_per_s": prof.host_bandwidth_bytes_per_s, "bandwidth_source": prof.bandwidth_source}
    if "measured" in old:  # resuming: the keep-all execution is already done
        info["measured"] = old["measured"]
    elif execute_fn is not None:
        status(f"b{batch_size}: execute keep-all")
        try:
            res = execute_fn(graph, problem, keep, flat, iterations=scenario.execute.iterations,
                             warmup=scenario.execute.warmup, seed=scenario.seed)
            info["measured"] = _measurement(res)
        except Exception as exc:  # cells still run; measured overheads are then missing
            info["execute_error"] = f"{type(exc).__name__}: {exc}"
    if "measured" in info:
        info.update({k: info["measured"][k] for k in ("measured_peak_bytes", "measured_time_s")})
    report.write_json(info_path, info)
    batch = Batch(batch_size, problem, sim.peak_bytes, sim.time_s, folder, graph, flat, info)
    if "measured" in info:
        batch.measured[keep.plan_key()] = (info["measured"], "the keep-all reference")
    return batch


# ---------------------------------------------------------------------- one cell
def run_cell(scenario: Scenario, batch: Batch, spec: SolverSpec, budget: Budget, device: str, run_dir: Path,
             execute_fn, execute_note: str, debug: bool = False) -> dict:
    """Solve, validate, simulate and (if feasible and enabled) execute one solver at one budget."""
    from mutwo.registry import get_solver
    from mutwo.schedule import ScheduleError, validate
    from mutwo.simulate import simulate

    problem = batch.problem
    budget_bytes = budget.resolve(batch.keep_all_peak_bytes)
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update({"scenario": scenario.name, "model": scenario.model, "batch_size": batch.batch_size,
                "device": device, "solver": spec.label, "solver_name": spec.name,
                "solver_options": json.dumps(spec.options, sort_keys=True), "budget": budget.label,
                "budget_bytes": budget_bytes, "budget_fraction": budget_bytes / batch.keep_all_peak_bytes,
                "keep_all_peak_bytes": batch.keep_all_peak_bytes, "keep_all_time_s": batch.keep_all_time_s,
                "executed": False, "execute_note": execute_note, "message": ""})
    try:
        schedule = get_solver(spec.name)(problem, budget_bytes, **spec.options)
    except Exception as exc:  # a broken solver is a result, not the end of the run
        if debug:
            traceback.print_exc()
        row.update({"status": "error", "message": f"{type(exc).__name__}: {exc}".strip(),
                    "execute_note": "not executed: the solver raised"})
        return row
    row.update({"status": schedule.status.value, "solve_time_s": float(schedule.solve_time_s),
                "message": schedule.message, **schedule.counts()})
    file = run_dir / "schedules" / f"{batch.batch_size}_{_safe(spec.label)}_{_safe(budget.label)}.json"
    row["schedule_file"] = str(file.relative_to(run_dir))
    try:
        validate(problem, schedule)
        schedule.explain(problem)
        sim = simulate(problem, schedule)
    except Exception as exc:  # ScheduleError, or arrays so malformed the checks themselves fail
        if debug and not isinstance(exc, ScheduleError):
            traceback.print_exc()
        row.update({"status": "invalid", "message": f"invalid schedule: {type(exc).__name__}: {exc}",
                    "execute_note": "not executed: invalid schedule"})
        report.write_text(file, schedule.to_json())
        return row
    report.write_text(file, schedule.to_json())
    row.update({"predicted_peak_bytes": sim.peak_bytes, "predicted_time_s": sim.time_s,
                "predicted_overhead_pct": 100.0 * (sim.time_s / batch.keep_all_time_s - 1.0)
                if batch.keep_all_time_s > 0 else None,
                "recompute_s": sim.recompute_s, "stall_s": sim.stall_s})
    if row["status"] in FEASIBLE and sim.peak_bytes > budget_bytes:
        row.update({"status": "invalid", "message": f"the solver said {row['status']}, but the simulated peak "
                    f"{sim.peak_bytes} bytes exceeds the budget {budget_bytes} bytes; {schedule.message}"})
    if row["status"] not in FEASIBLE:
        if execute_fn is not None:
            row["execute_note"] = f"not executed: {row['status']}"
        return row
    if execute_fn is None:
        return row
    if batch.graph is None:
        row["execute_note"] = "not executed: no captured graph in this process"
        return row
    limit = scenario.execute.max_slowdown
    if limit is not None and batch.keep_all_time_s > 0 and sim.time_s > limit * batch.keep_all_time_s:
        row["execute_note"] = (f"not executed: predicted {sim.time_s / batch.keep_all_time_s:.1f}x the keep-all "
                               f"time (execute.max_slowdown: {limit:g})")
        return row
    key = schedule.plan_key()
    note = "executed"
    if key in batch.measured:  # the same plan already ran (keep-all, or a budget-independent solver)
        measured, who = batch.measured[key]
        note = f"executed: same plan as {who}, measured once"
    else:
        try:
            res = execute_fn(batch.graph, problem, schedule, batch.flat, iterations=scenario.execute.iterations,
                             warmup=scenario.execute.warmup, seed=scenario.seed)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            row["execute_note"] = f"execution failed: {type(exc).__name__}: {exc}"
            return row
        measured = _measurement(res)
        batch.measured[key] = (measured, f"{spec.label} @ {budget.label}")
    base_time = batch.info.get("measured_time_s")
    row.update({**measured, "executed": True, "execute_note": note,
                "emulated_swap": measured["emulated_swap"] and bool(row["n_swap"]),
                "measured_overhead_pct": 100.0 * (measured["measured_time_s"] / base_time - 1.0)
                if base_time else None})
    return row


# ---------------------------------------------------------------------- the run
def _executor(scenario: Scenario) -> tuple[Any, str]:
    """The execute function, or None and why schedules will not be run."""
    if not scenario.execute.enabled:
        return None, "not executed (--no-execute / execute.enabled: false)"
    try:
        from mutwo.execute import execute
    except ImportError as exc:
        return None, f"not executed: mutwo.execute is not available ({exc})"
    return execute, "executed"


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("budget_bytes", "predicted_peak_bytes", "measured_peak_bytes", "n_keep", "n_recompute", "n_swap"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in ("predicted_time_s", "measured_time_s", "predicted_overhead_pct", "measured_overhead_pct",
              "max_rel_diff", "solve_time_s"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def _make_plots(df: pd.DataFrame, batches: dict[int, Batch], run_dir: Path) -> list[Path]:
    from mutwo import compare_plots
    from mutwo.schedule import Schedule

    out = run_dir / "plots"
    made = [compare_plots.overhead_vs_peak(df, out / "overhead_vs_peak.png"),
            compare_plots.solve_times(df, out / "solve_times.png")]
    for bs, batch in sorted(batches.items()):
        cells = df[(df["batch_size"] == bs) & df["schedule_file"].notna()]
        if cells.empty:
            continue
        budget = _timeline_budget(cells)
        chosen = cells[(cells["budget"] == budget) & (cells["status"] != "invalid")]
        schedules = {}
        for r in chosen.itertuples():
            label = r.solver if r.status in FEASIBLE else f"{r.solver} ({r.status})"
            schedules[label] = Schedule.load(run_dir / r.schedule_file)
        budget_bytes = int(chosen["budget_bytes"].iloc[0]) if len(chosen) else None
        if schedules:
            made.append(compare_plots.plan_timelines(
                batch.problem, schedules, budget_bytes, out / f"timeline_b{bs}.png",
                title=f"batch {bs}, budget {budget} ({report.fmt_bytes(budget_bytes)}): simulated memory"))
    if len(batches) > 1:
        keep = pd.DataFrame([{**b.info, "batch_size": bs} for bs, b in sorted(batches.items())])
        made.append(compare_plots.batch_scaling(df, keep, out / "batch_scaling.png"))
    largest = compare_plots.largest_batch(df, out / "largest_batch.png", {bs: b.info for bs, b in batches.items()})
    if largest is not None:
        made.append(largest)
    return made


def _timeline_budget(cells: pd.DataFrame) -> str:
    """The budget whose plans are most worth seeing: the tightest at which some solver other than
    keep-all found a plan (memory pressure shows differences); else the tightest with any plan."""
    ok = cells[cells["status"].isin(FEASIBLE)]
    for pool in (ok[ok["n_recompute"].fillna(0) + ok["n_swap"].fillna(0) > 0], ok, cells):
        if len(pool):
            return pool.sort_values("budget_bytes")["budget"].iloc[0]
    return cells["budget"].iloc[0]


def run_scenario(scenario: Scenario, args: argparse.Namespace, argv: list[str]) -> tuple[Path, pd.DataFrame]:
    """Run (or resume) the whole grid; returns the run folder and the results table."""
    from tqdm.auto import tqdm

    source = str(args.scenario)
    device = resolve_device(scenario.device)
    run_dir = _run_folder(scenario, args)
    run_dir.mkdir(parents=True, exist_ok=True)
    cells_path = run_dir / "cells.jsonl"
    done: dict[str, dict] = {}
    if args.resume:
        finished = report.read_jsonl(cells_path)
        done = {_cell_key(r["batch_size"], r["solver"], r["budget"]): r for r in finished}
        # drop a torn last line (killed mid-write) so appended cells start on a line of their own
        report.write_text(cells_path, "".join(json.dumps(r) + "\n" for r in finished))
    execute_fn, execute_note = _executor(scenario)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    previous = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    run_info = {"run_id": run_dir.name, "scenario": scenario.model_dump(), "scenario_file": source,
                "device": device, "seed": scenario.seed, "command": "python -m mutwo.compare " + shlex.join(argv),
                "started": previous.get("started", started), "resumed": args.resume and bool(done),
                "versions": _versions(), "execution_note": execute_note, "status": "running"}
    report.write_json(run_dir / "run.json", run_info)
    report.write_text(run_dir / "scenario.yaml", Path(source).read_text())

    grid = [(bs, spec, budget) for bs in scenario.batch_size for spec in scenario.solvers
            for budget in scenario.budgets]
    rows: list[dict] = []
    batches: dict[int, Batch] = {}
    t_start = time.perf_counter()
    bar = tqdm(total=len(grid), desc=scenario.name, unit="cell", disable=args.quiet, dynamic_ncols=True)
    for bs in scenario.batch_size:
        todo = [(spec, b) for (b_bs, spec, b) in grid if b_bs == bs
                and _cell_key(bs, spec.label, b.label) not in done]
        batches[bs] = prepare_batch(scenario, bs, device, run_dir, capture_graph=bool(todo),
                                    execute_fn=execute_fn, source=source,
                                    status=lambda text: bar.set_postfix_str(text, refresh=True))
        for spec in scenario.solvers:
            for budget in scenario.budgets:
                key = _cell_key(bs, spec.label, budget.label)
                if key in done:
                    rows.append(done[key])
                    bar.update()
                    continue
                bar.set_postfix_str(f"b{bs} {spec.label} @ {budget.label}", refresh=True)
                row = run_cell(scenario, batches[bs], spec, budget, device, run_dir, execute_fn,
                               execute_note, args.debug)
                report.append_jsonl(cells_path, row)
                rows.append(row)
                bar.update()
        report.write_csv(run_dir / "results.csv", _frame(rows))
        batches[bs].graph = batches[bs].flat = None  # free the model before the next batch size
    bar.close()

    df = _frame(rows)
    report.write_csv(run_dir / "results.csv", df)
    plots = [] if args.no_plots else _make_plots(df, batches, run_dir)
    run_info.update({"status": "finished", "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "wall_time_s": time.perf_counter() - t_start, "cells": len(rows),
                     "cells_resumed": sum(_cell_key(r["batch_size"], r["solver"], r["budget"]) in done
                                          for r in rows)})
    report.write_json(run_dir / "run.json", run_info)
    report.write_report(run_dir / "report.md", df, run_info, plots, {bs: b.info for bs, b in batches.items()})
    return run_dir, df


def _print_summary(df: pd.DataFrame, run_dir: Path) -> None:
    table = report.summary_frame(df)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500,
                           "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    best = report.best_per_budget(df)
    if len(best):
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.float_format", "{:.4g}".format):
            print("\nbest feasible solver per budget:")
            print(best.to_string(index=False))
    print(f"\nresults: {run_dir}  (report.md, results.csv, plots/)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad scenario or arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        scenario = load(args)
        run_dir, df = run_scenario(scenario, args, argv)
    except ScenarioError as exc:
        if args.debug:
            raise
        print("error: " + "; ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except Exception as exc:
        from mutwo.capture import CaptureError

        if args.debug or not isinstance(exc, CaptureError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_summary(df, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

