"""``python -m mutwo.compare SCENARIO.yaml``: every solver x budget x batch size of one scenario.

For each batch size: build the workload, capture the training step, profile it (disk cache), build the
Problem and simulate keep-all (the reference peak budgets are fractions of). Then for each solver and
budget: solve, validate, simulate (the only source of predictions), and execute feasible schedules for
real unless told not to.

Faults are rows, not the end of the run: a solver that raises is ``error``, one that runs past its hard
time limit (``solve.timeout_s``: each call runs in a forked child that is killed then) is ``timeout``,
one whose plan fails validation or overshoots the budget it claims to meet is ``invalid``, a budget
below the floor no plan can go under is ``infeasible`` with that floor in the message, and a plan that
runs out of memory when executed (CUDA, or ``execute.memory_limit`` on CPU) is ``oom``. Cells are
appended to cells.jsonl as they finish and every other file is written atomically, so a run killed at
any moment can be continued with ``--resume``.

Output, under ``<out>/<scenario>/<run-id>/`` (see results/README.md): results.csv, cells.jsonl (one
line per finished cell, what ``--resume`` reads), schedules/, batch<N>/ (ops.csv, activations.csv,
problem.npz, keep_all.json), plots/, run.json and report.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
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
from mutwo.scenario import Budget, Scenario, ScenarioError, SolverSpec, load_scenario
from mutwo.schedule import Schedule
from mutwo.workload import resolve_device

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


@contextlib.contextmanager
def _locked(run_dir: Path):
    """Hold run.lock for the run's duration, so two processes cannot write one run folder. A POSIX
    record lock: the kernel drops it when the process dies, even by SIGKILL (a killed run never blocks
    --resume), and forked solver children do not inherit it."""
    with open(run_dir / "run.lock", "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ScenarioError(f"{run_dir} is in use by another mutwo.compare process (pid "
                                f"{f.read().strip() or '?'}); wait for it, or pick another --run-id") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _remove_partial_files(run_dir: Path) -> list[Path]:
    """Temporary files a killed run left mid-write (atomic writes go to *.tmp*, then are renamed)."""
    stale = [p for p in run_dir.rglob("*.tmp*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# what a finished cell depends on, beyond its solver and budget: resuming with any of them changed
# would mix rows of two different experiments in one table
_RESUME_KEYS = ("model", "model_options", "optimizer", "profile", "seed")
_RESUME_EXECUTE_KEYS = ("enabled", "iterations", "warmup", "max_slowdown", "memory_limit")


def _check_resumable(previous: dict, scenario: Scenario, device: str, run_dir: Path, source: str) -> None:
    """Refuse to resume a run whose finished cells were made under other settings (ScenarioError)."""
    old, new = previous.get("scenario") or {}, scenario.model_dump()
    changed = [(k, old[k], new[k]) for k in _RESUME_KEYS if k in old and old[k] != new[k]]
    old_ex = old.get("execute") or {}
    changed += [(f"execute.{k}", old_ex[k], new["execute"][k]) for k in _RESUME_EXECUTE_KEYS
                if k in old_ex and old_ex[k] != new["execute"][k]]
    if previous.get("device") not in (None, device):
        changed.append(("device", previous["device"], device))
    old_solvers = {s["label"]: s for s in old.get("solvers", [])}
    for s in new["solvers"]:
        o = old_solvers.get(s["label"])
        if o is not None and (o["name"], o["options"]) != (s["name"], s["options"]):
            changed.append((f"solver {s['label']!r}", {"name": o["name"], "options": o["options"]},
                            {"name": s["name"], "options": s["options"]}))
    if changed:
        what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in changed)
        raise ScenarioError(f"{source}: cannot --resume {run_dir}: its finished cells were made with other "
                            f"settings ({what}); use the settings it started with, or start a new run "
                            f"(drop --resume, or give another --run-id)")


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
    oom: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # plan -> (why, who): ran out of memory
    floor: tuple[int, int] = (0, 0)  # problem.peak_floor()
    binding: Any = None  # mutwo.problem_build.StorageBinding of problem to graph (needed to execute)

    def __post_init__(self) -> None:
        if self.floor == (0, 0) and self.problem is not None:
            self.floor = self.problem.peak_floor()


def _measurement(res) -> dict:
    return {"measured_peak_bytes": int(res.measured_peak_bytes), "measured_time_s": float(res.iteration_time_s),
            "max_rel_diff": float(res.max_rel_diff), "bitwise_equal": bool(getattr(res, "bitwise_equal", False)),
            "emulated_swap": bool(res.emulated_swap)}


def _floor_note(batch: Batch, budget_bytes: int) -> str:
    floor, t = batch.floor
    if budget_bytes >= floor:
        return ""
    return (f"budget {budget_bytes} B is below the floor: no plan can peak below {floor} B (op {t}: fixed "
            f"+ transient memory + activations in use there)")


def _is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, the CPU guard's MemoryLimitExceeded, or a failed host allocation."""
    import torch

    if isinstance(exc, MemoryError):  # mutwo.memory.MemoryLimitExceeded included
        return True
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release_memory(device: str) -> None:
    """Free what a failed execution held (its tensors hang off the exception's frames until collected)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _execute_guarded(execute_fn, scenario: Scenario, device: str, *args, **kw) -> tuple[Any, str | None]:
    """Run ``execute_fn`` under ``execute.memory_limit``: (result, None), or (None, why) when it ran out
    of memory; memory is released before returning. Other exceptions propagate."""
    from mutwo.memory import memory_limit

    why = None
    try:
        with memory_limit(scenario.execute.memory_limit, device):
            return execute_fn(*args, **kw), None
    except Exception as exc:
        if not _is_oom(exc):
            raise
        why = f"{type(exc).__name__}: {exc}".strip()
    _release_memory(device)
    return None, why


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
    from mutwo.zoo import call_builder

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
    problem, binding = build_problem(graph, prof, name=f"{scenario.name}-b{batch_size}")
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
            "floor_bytes": problem.peak_floor()[0],
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
            res, oom = _execute_guarded(execute_fn, scenario, device, graph, problem, keep, flat,
                                        iterations=scenario.execute.iterations, warmup=scenario.execute.warmup,
                                        seed=scenario.seed, binding=binding)
            if oom is None:
                info["measured"] = _measurement(res)
            else:
                info["execute_error"] = f"out of memory: {oom}"
        except Exception as exc:  # cells still run; measured overheads are then missing
            info["execute_error"] = f"{type(exc).__name__}: {exc}"
    if "measured" in info:
        info.update({k: info["measured"][k] for k in ("measured_peak_bytes", "measured_time_s")})
    report.write_json(info_path, info)
    batch = Batch(batch_size, problem, sim.peak_bytes, sim.time_s, folder, graph, flat, info, binding=binding)
    if "measured" in info:
        batch.measured[keep.plan_key()] = (info["measured"], "the keep-all reference")
    elif info.get("execute_error", "").startswith("out of memory"):
        batch.oom[keep.plan_key()] = (info["execute_error"].removeprefix("out of memory: "),
                                      "the keep-all reference")
    return batch


# ---------------------------------------------------------------------- one cell
def run_cell(scenario: Scenario, batch: Batch, spec: SolverSpec, budget: Budget, device: str, run_dir: Path,
             execute_fn, execute_note: str, debug: bool = False) -> dict:
    """Solve, validate, simulate and (if feasible and enabled) execute one solver at one budget."""
    from mutwo.sandbox import SolverProcessError, SolverTimeout, run_solver
    from mutwo.schedule import ScheduleError, validate
    from mutwo.simulate import simulate

    problem = batch.problem
    budget_bytes = budget.resolve(batch.keep_all_peak_bytes)
    row = _new_row(scenario, batch.batch_size, spec, budget, device, batch.keep_all_peak_bytes,
                   batch.keep_all_time_s, execute_note)
    timeout_s = scenario.timeout_s(spec)
    floor_note = _floor_note(batch, budget_bytes)
    try:
        schedule = run_solver(spec.name, problem, budget_bytes, spec.options, timeout_s=timeout_s)
    except SolverTimeout as exc:  # killed: a result, not the end of the run
        row.update({"status": "timeout", "solve_time_s": exc.timeout_s,
                    "message": f"{exc}; give it longer with solvers[].timeout_s or solve.timeout_s",
                    "execute_note": "not executed: the solver timed out"})
        return _below_floor(row, floor_note)
    except Exception as exc:  # a broken solver is a result, not the end of the run
        if debug:
            print(getattr(exc, "child_traceback", "") or traceback.format_exc(), file=sys.stderr)
        name = exc.type_name if isinstance(exc, SolverProcessError) else type(exc).__name__
        row.update({"status": "error", "message": f"{name}: {exc}".strip(),
                    "execute_note": "not executed: the solver raised"})
        return _below_floor(row, floor_note)
    if not isinstance(schedule, Schedule):
        row.update({"status": "invalid", "message": f"the solver returned {type(schedule).__name__}, expected "
                    f"mutwo.schedule.Schedule", "execute_note": "not executed: invalid schedule"})
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
    if row["status"] == "infeasible" and floor_note:  # the row says how low a budget can go
        row["message"] = f"{floor_note}; {row['message']}" if row["message"] else floor_note
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
    if key in batch.oom:  # the same plan already ran out of memory: it would again
        why, who = batch.oom[key]
        return _oom_row(row, why, f"same plan as {who}")
    if key in batch.measured:  # the same plan already ran (keep-all, or a budget-independent solver)
        measured, who = batch.measured[key]
        note = f"executed: same plan as {who}, measured once"
    else:
        try:
            res, oom = _execute_guarded(execute_fn, scenario, device, batch.graph, problem, schedule, batch.flat,
                                        iterations=scenario.execute.iterations, warmup=scenario.execute.warmup,
                                        seed=scenario.seed, binding=batch.binding)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            row["execute_note"] = f"execution failed: {type(exc).__name__}: {exc}"
            return row
        if oom is not None:
            batch.oom[key] = (oom, f"{spec.label} @ {budget.label}")
            return _oom_row(row, oom)
        measured = _measurement(res)
        batch.measured[key] = (measured, f"{spec.label} @ {budget.label}")
    base_time = batch.info.get("measured_time_s")
    row.update({**measured, "executed": True, "execute_note": note,
                "emulated_swap": measured["emulated_swap"] and bool(row["n_swap"]),
                "measured_overhead_pct": 100.0 * (measured["measured_time_s"] / base_time - 1.0)
                if base_time else None})
    return row


def _below_floor(row: dict, floor_note: str) -> dict:
    """A solver that failed (raised, timed out) at a budget below the floor: the cell is infeasible all
    the same, proven by the floor; what the solver did stays in the message."""
    if floor_note:
        row.update({"status": "infeasible", "message": f"{floor_note}; the solver did not say so: its "
                    f"{'call timed out' if row['status'] == 'timeout' else 'call raised'}: {row['message']}"})
    return row


def _oom_row(row: dict, why: str, same: str = "") -> dict:
    """The row of a plan that ran out of memory when executed (its predictions stay)."""
    said = row["status"]
    row.update({"status": "oom", "execute_note": "execution ran out of memory" + (f" ({same})" if same else ""),
                "message": f"the solver said {said} (predicted peak {row['predicted_peak_bytes']} B), but "
                           f"executing the plan ran out of memory: {why}"})
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


def _new_row(scenario: Scenario, batch_size: int, spec: SolverSpec, budget: Budget, device: str,
             keep_all_peak_bytes: int | None, keep_all_time_s: float | None, execute_note: str) -> dict:
    """A results row with what is known before the solver runs."""
    budget_bytes = budget.resolve(keep_all_peak_bytes) if keep_all_peak_bytes or budget.nbytes else None
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update({"scenario": scenario.name, "model": scenario.model, "batch_size": batch_size,
                "device": device, "solver": spec.label, "solver_name": spec.name,
                "solver_options": json.dumps(spec.options, sort_keys=True), "budget": budget.label,
                "budget_bytes": budget_bytes,
                "budget_fraction": budget_bytes / keep_all_peak_bytes
                if budget_bytes is not None and keep_all_peak_bytes else None,
                "keep_all_peak_bytes": keep_all_peak_bytes, "keep_all_time_s": keep_all_time_s,
                "executed": False, "execute_note": execute_note, "message": ""})
    return row


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_scenario(scenario: Scenario, args: argparse.Namespace, argv: list[str]) -> tuple[Path, pd.DataFrame]:
    """Run (or resume) the whole grid; returns the run folder and the results table.

    Everything that can refuse (an existing run without --resume, a resume under changed settings, a
    folder another process holds) is checked before any model is built. A failure or Ctrl-C on the way
    is recorded in run.json (status ``failed`` / ``interrupted``) and re-raised; finished cells stay in
    cells.jsonl for --resume.
    """
    source = str(args.scenario)
    try:
        device = resolve_device(scenario.device)
    except ValueError as exc:  # device: cuda without a GPU, worded like the file's other errors
        raise ScenarioError(f"{source}: field 'device': {exc}") from None
    run_dir = _run_folder(scenario, args)
    previous = _read_json(run_dir / "run.json")
    cells_path = run_dir / "cells.jsonl"
    if not args.resume and (previous or cells_path.exists()):
        raise ScenarioError(f"{run_dir} already holds a run; continue it with --resume, or pick another "
                            f"--run-id")
    if args.resume and previous:
        _check_resumable(previous, scenario, device, run_dir, source)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):
        return _run_grid(scenario, args, argv, source, device, run_dir, previous)


def _run_grid(scenario: Scenario, args: argparse.Namespace, argv: list[str], source: str, device: str,
              run_dir: Path, previous: dict) -> tuple[Path, pd.DataFrame]:
    from tqdm.auto import tqdm

    cells_path = run_dir / "cells.jsonl"
    done: dict[str, dict] = {}
    if args.resume:
        _remove_partial_files(run_dir)
        finished = report.read_jsonl(cells_path)
        done = {_cell_key(r["batch_size"], r["solver"], r["budget"]): r for r in finished}
        # drop a torn last line (killed mid-write) so appended cells start on a line of their own
        report.write_text(cells_path, "".join(json.dumps(r) + "\n" for r in finished))
    execute_fn, execute_note = _executor(scenario)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
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
    try:
        for bs in scenario.batch_size:
            _run_batch(scenario, args, bs, device, run_dir, source, done, rows, batches, execute_fn,
                       execute_note, bar)
    except BaseException as exc:  # Ctrl-C or a bug: say so in run.json, keep what is done, re-raise
        bar.close()
        report.write_csv(run_dir / "results.csv", _frame(rows))
        run_info.update({"status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                         "error": f"{type(exc).__name__}: {exc}".strip(), "cells": len(rows),
                         "stopped": time.strftime("%Y-%m-%d %H:%M:%S")})
        report.write_json(run_dir / "run.json", run_info)
        raise
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


def _run_batch(scenario: Scenario, args: argparse.Namespace, bs: int, device: str, run_dir: Path, source: str,
               done: dict[str, dict], rows: list[dict], batches: dict[int, Batch], execute_fn, execute_note: str,
               bar) -> None:
    """Every cell of one batch size. A batch size that runs out of memory while it is captured or
    profiled gives ``oom`` rows for its cells, and the run goes on with the next one."""
    cells = [(spec, b) for spec in scenario.solvers for b in scenario.budgets]
    todo = [(spec, b) for spec, b in cells if _cell_key(bs, spec.label, b.label) not in done]
    if not todo and not (run_dir / f"batch{bs}" / "problem.npz").exists():  # finished without a Problem
        rows.extend(done[_cell_key(bs, spec.label, b.label)] for spec, b in cells)
        bar.update(len(cells))
        return
    why = None
    try:
        batches[bs] = prepare_batch(scenario, bs, device, run_dir, capture_graph=bool(todo),
                                    execute_fn=execute_fn, source=source,
                                    status=lambda text: bar.set_postfix_str(text, refresh=True))
    except Exception as exc:
        if not _is_oom(exc):
            raise
        if args.debug:
            traceback.print_exc()
        why = f"{type(exc).__name__}: {exc}".strip()
    if why is not None:
        _release_memory(device)
    for spec, budget in cells:
        key = _cell_key(bs, spec.label, budget.label)
        if key in done:
            rows.append(done[key])
            bar.update()
            continue
        bar.set_postfix_str(f"b{bs} {spec.label} @ {budget.label}", refresh=True)
        if why is not None:
            row = _new_row(scenario, bs, spec, budget, device, None, None,
                           "not executed: the batch size did not fit")
            row.update({"status": "oom", "message": f"batch size {bs} ran out of memory while it was captured "
                        f"and profiled (the keep-all step must fit to be profiled): {why}"})
        else:
            row = run_cell(scenario, batches[bs], spec, budget, device, run_dir, execute_fn, execute_note,
                           args.debug)
        report.append_jsonl(run_dir / "cells.jsonl", row)
        rows.append(row)
        bar.update()
    report.write_csv(run_dir / "results.csv", _frame(rows))
    if bs in batches:
        batches[bs].graph = batches[bs].flat = None  # free the model before the next batch size


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
    """Entry point; returns the exit status: 0 ok, 2 bad scenario or arguments, 1 the run failed,
    130 interrupted. Errors are one line on stderr (``--debug``: the traceback)."""
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
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"interrupted; finished cells are kept: continue with python -m mutwo.compare {args.scenario} "
              f"--resume (and the same options)", file=sys.stderr)
        return 130
    except Exception as exc:
        from mutwo.capture import CaptureError

        if args.debug:
            raise
        text = "; ".join(str(exc).splitlines())
        if isinstance(exc, CaptureError):
            print(f"error: {text}", file=sys.stderr)
        else:
            print(f"error: the run failed: {type(exc).__name__}: {text} (run.json records it; --debug shows "
                  f"the traceback; --resume continues after the finished cells)", file=sys.stderr)
        return 1
    _print_summary(df, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

