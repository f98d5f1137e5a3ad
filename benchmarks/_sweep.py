"""Solve, simulate and execute many plans on one real model: the engine behind ``fidelity`` and
``quality``. Identical plans (same decisions and prefetch points) are executed once and shared, since
they give identical rewritten graphs. Peak ratios are over the executed keep-all plan (the unmodified
graph); time ratios over the unmodified graph timed right after each plan's execution."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmarks._common import ModelConfig

__all__ = ["SolverRun", "Prepared", "prepare", "default_solvers", "sweep", "plan_key"]

STEADY = 0.10  # bracketing baselines within 10%, iterations within 20%: the load did not change
RETRY_MAX_S = 10.0  # plans slower than this per iteration (ResNet-152 recompute-all: ~80 s) run once


@dataclass(frozen=True)
class SolverRun:
    """A registered solver with options, under a label (``mutwo_greedy[recompute]``)."""

    label: str
    name: str
    options: dict = field(default_factory=dict)

    @property
    def recompute_only(self) -> bool:
        return self.options.get("mode") == "recompute" or self.name in ("recompute_all", "chen_sqrt",
                                                                         "checkmate_exact", "keep_all")


@dataclass
class Prepared:
    """A captured, profiled model and its Problem (plus what executing needs)."""

    cfg: ModelConfig
    graph: object  # TrainGraph
    flat: list
    problem: object  # Problem
    keep_peak: int  # simulated keep-all peak (bytes): budgets are fractions of it
    keep_time: float
    info: dict
    binding: object = None  # StorageBinding of problem to graph (execute needs it)


def prepare(cfg: ModelConfig, runs: int = 3, warmup: int = 1) -> Prepared:
    """Capture one training step (plain SGD: no optimizer state, so activations set the peak) and
    profile it afresh (no disk cache: the profile must see the machine as it is during the run)."""
    from mutwo.capture import OptimizerConfig, capture, flat_state
    from mutwo.problem_build import build_problem
    from mutwo.profile import profile
    from mutwo.schedule import Schedule
    from mutwo.simulate import simulate
    from mutwo.zoo import build_workload

    wl = build_workload(cfg.zoo, cfg.batch, **cfg.options)
    opt = OptimizerConfig("sgd", {"momentum": 0.0})
    t0 = time.perf_counter()
    graph = capture(wl, opt)
    capture_s = time.perf_counter() - t0
    flat, _, _ = flat_state(wl, opt)
    prof = profile(graph, flat, runs=runs, warmup=warmup, cache=False, progress=False)
    problem, binding = build_problem(graph, prof, name=cfg.key)
    keep = simulate(problem, Schedule.keep_all(problem))
    info = {"capture_s": capture_s, "profile_s": prof.profile_time_s, "n_ops": problem.n_ops,
            "n_act": problem.n_act, "act_MiB": float(np.sum(problem.act_bytes)) / 2**20,
            "fixed_peak_MiB": float(problem.fixed_bytes.max()) / 2**20,
            "profile_measured_peak_bytes": prof.measured_peak_bytes,
            "profile_iteration_time_s": prof.iteration_time_s, "profile_op_sum_s": float(prof.op_time_s.sum())}
    return Prepared(cfg, graph, flat, problem, keep.peak_bytes, keep.time_s, info, binding)


def default_solvers(n_act: int, ilps: str = "distinct", recompute_variants: bool = True,
                    only: Sequence[str] | None = None) -> list[SolverRun]:
    """Every registered solver this problem size allows, plus recompute-only variants of the greedy
    and CP-SAT (on CPU swaps are emulated — the activation is copied out of the counted memory and
    back by memcpy on the compute thread, not by an overlapped host link — so only recompute-only
    plans are an honest time comparison there).

    ``ilps``: "all" runs every ILP backend; "distinct" (default) one per formulation — CP-SAT for
    the KEEP/RECOMPUTE/SWAP model (the other backends solve the same model; solver_scale compares
    their speed) and checkmate_exact; "none" skips ILPs. ``only``: keep just these labels."""
    from mutwo.registry import available_solvers
    from solvers.brute_force import MAX_ACT as BF_MAX
    from solvers.checkmate import MAX_ACT as CM_MAX

    if ilps not in ("all", "distinct", "none"):
        raise ValueError(f"ilps must be 'all', 'distinct' or 'none', not {ilps!r}")
    out = []
    for name in available_solvers():
        if (name == "brute_force" and n_act > BF_MAX) or (name == "checkmate_exact" and n_act > CM_MAX):
            continue
        if _is_ilp(name) and (ilps == "none" or (ilps == "distinct" and name not in ("ilp_cpsat",
                                                                                      "checkmate_exact"))):
            continue
        out.append(SolverRun(name, name))
    if recompute_variants:
        out.append(SolverRun("mutwo_greedy[recompute]", "mutwo_greedy", {"mode": "recompute"}))
        if ilps != "none":
            out.append(SolverRun("ilp_cpsat[recompute]", "ilp_cpsat", {"mode": "recompute"}))
    if only:
        unknown = set(only) - {r.label for r in out}
        if unknown:
            raise ValueError(f"unknown or excluded solver labels {sorted(unknown)}; "
                             f"available: {[r.label for r in out]}")
        out = [r for r in out if r.label in set(only)]
    return out


def plan_key(schedule) -> bytes:
    return schedule.plan_key()


def _is_ilp(name: str) -> bool:
    return name.startswith("ilp") or name == "checkmate_exact"


def sweep(prep: Prepared, solvers: Sequence[SolverRun], fractions: Sequence[float], *, iterations: int = 5,
          warmup: int = 1, time_limit: float = 60.0, threads: int = 2, execute: bool = True,
          max_attempts: int = 3, progress: bool = True) -> pd.DataFrame:
    """One row per solver x budget (budget = fraction x simulated keep-all peak), plus keep-all's
    own row (``budget_fraction`` NaN) that the measured ratios are relative to.

    A plan's execution is bracketed by timings of the unmodified graph; when the load visibly changed
    (the two brackets differ by more than 10%, or iterations within one spread by more than 20%) it
    is run again, up to ``max_attempts`` times (unless an iteration takes over 10 s);
    ``load_steady`` says whether the last one was calm."""
    from mutwo.registry import get_solver
    from mutwo.schedule import Schedule, validate
    from mutwo.simulate import simulate

    p = prep.problem
    measured: dict[bytes, tuple[dict, str]] = {}
    rows: list[dict] = []

    def run_plan(schedule, who: str) -> dict:
        key = plan_key(schedule)
        if key in measured:
            m, first = measured[key]
            return {**m, "same_plan_as": first}
        from mutwo.execute import execute as run_schedule

        unmodified = not np.any(np.asarray(schedule.decisions) != 0)
        attempt = 0
        while attempt < max_attempts:
            attempt += 1
            before = [] if unmodified else time_unmodified(prep, iterations)
            res = run_schedule(prep.graph, p, schedule, prep.flat, iterations=iterations, warmup=warmup,
                               binding=prep.binding)
            times = list(getattr(res, "iteration_times_s", []) or [res.iteration_time_s])
            after = [] if unmodified else time_unmodified(prep, iterations)
            base = before + after or times  # the unmodified graph is its own baseline (ratio 1)
            steady = _steady(times) and _steady(base) and (
                unmodified or abs(statistics.median(after) / statistics.median(before) - 1) <= STEADY)
            if steady or res.iteration_time_s > RETRY_MAX_S:
                break
        notes = getattr(res, "notes", {}) or {}
        m = {"measured_peak_bytes": int(res.measured_peak_bytes), "measured_time_s": float(res.iteration_time_s),
             "measured_time_min_s": float(min(times)),
             "time_spread": float(max(times) / min(times) - 1) if min(times) > 0 else float("nan"),
             "baseline_time_s": statistics.median(base), "baseline_time_min_s": min(base),
             "load_steady": steady, "attempts": attempt,
             "max_rel_diff": float(res.max_rel_diff), "bitwise_equal": bool(getattr(res, "bitwise_equal", False)),
             "emulated_swap": bool(res.emulated_swap), "peak_method": getattr(res, "method", ""),
             "exec_warnings": "; ".join(notes.get("warnings", []))[:300]}
        measured[key] = (m, who)
        return {**m, "same_plan_as": ""}

    def describe(schedule, run: SolverRun, fraction: float | None, budget: int | None, solve_s: float) -> dict:
        row = {"model": prep.cfg.key, "config": prep.cfg.label(), "solver": run.label, "solver_name": run.name,
               "recompute_only_solver": run.recompute_only, "budget_fraction": fraction, "budget_bytes": budget,
               "status": schedule.status.value, "solve_s": solve_s, **schedule.counts(),
               "solver_bound_s": schedule.bound, "solver_objective_s": schedule.objective,
               "keep_peak_bytes": prep.keep_peak, "keep_time_s": prep.keep_time}
        if not schedule.feasible:
            row["message"] = schedule.message[:200]
            return row
        try:
            validate(p, schedule)
            sim = simulate(p, schedule)
        except Exception as exc:  # noqa: BLE001 - an invalid plan is a row
            row.update(status="invalid", message=f"{type(exc).__name__}: {exc}"[:200])
            return row
        row.update(predicted_peak_bytes=sim.peak_bytes, predicted_time_s=sim.time_s,
                   predicted_recompute_s=sim.recompute_s, predicted_stall_s=sim.stall_s,
                   predicted_peak_op=sim.peak_op, fits=sim.fits(budget) if budget is not None else True)
        if execute:
            try:
                row.update(run_plan(schedule, f"{run.label}@{fraction}"))
            except Exception as exc:  # noqa: BLE001 - a failed execution is a row
                row["execute_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return row

    keep = Schedule.keep_all(p, solver="keep_all")
    rows.append(describe(keep, SolverRun("unmodified (keep_all)", "keep_all"), None, None, 0.0))
    if progress:
        _log(rows[-1])
    for frac in fractions:
        budget = int(frac * prep.keep_peak)
        for run in solvers:
            opts = dict(run.options)
            if _is_ilp(run.name):
                opts.setdefault("time_limit_s", time_limit)
                opts.setdefault("threads", threads)
            t0 = time.perf_counter()
            try:
                schedule = get_solver(run.name)(p, budget, **opts)
            except Exception as exc:  # noqa: BLE001 - a failing solver is a row
                rows.append({"model": prep.cfg.key, "solver": run.label, "solver_name": run.name,
                             "budget_fraction": frac, "budget_bytes": budget, "status": "error",
                             "message": f"{type(exc).__name__}: {exc}"[:200]})
                continue
            rows.append(describe(schedule, run, frac, budget, time.perf_counter() - t0))
            if progress:
                _log(rows[-1])
    df = pd.DataFrame(rows)
    base = df.iloc[0]
    for col in ("measured_peak_bytes", "measured_time_s", "measured_time_min_s"):
        if col not in df:
            df[col] = np.nan
    df["predicted_peak_ratio"] = df.get("predicted_peak_bytes", np.nan) / prep.keep_peak
    df["predicted_time_ratio"] = df.get("predicted_time_s", np.nan) / prep.keep_time
    df["measured_peak_ratio"] = df["measured_peak_bytes"] / base["measured_peak_bytes"]
    if "baseline_time_s" not in df:
        df["baseline_time_s"] = df["baseline_time_min_s"] = np.nan
    df["measured_time_ratio"] = df["measured_time_s"] / df["baseline_time_s"]
    df["measured_time_min_ratio"] = df["measured_time_min_s"] / df["baseline_time_min_s"]
    df["measured_time_ratio_vs_keep_all_run"] = df["measured_time_s"] / base["measured_time_s"]
    has_swap = df.get("n_swap", pd.Series(0, index=df.index)).fillna(0) > 0
    df["has_swap"] = has_swap
    for k, v in prep.info.items():
        df[f"prep_{k}"] = v
    return df


def _steady(times: Sequence[float]) -> bool:
    return len(times) < 2 or max(times) / min(times) - 1 <= 2 * STEADY


def time_unmodified(prep: Prepared, iterations: int) -> list[float]:
    """Iteration times of the unmodified captured step, taken just before and just after a plan's
    execution: the plan's time ratio is over these, so drifts of the machine's load cancel
    (``measured_time_ratio_vs_keep_all_run`` is over the keep-all execution instead)."""
    import torch

    work = [t.detach().clone() for t in prep.flat]
    times = []
    with torch.no_grad():
        prep.graph.gm(*work)  # warm-up
        for _ in range(max(iterations, 1)):
            t0 = time.perf_counter()
            prep.graph.gm(*work)
            times.append(time.perf_counter() - t0)
    return times


def _log(row: dict) -> None:
    frac = row.get("budget_fraction")
    pk, mk = row.get("predicted_peak_bytes"), row.get("measured_peak_bytes")
    pt, mt = row.get("predicted_time_s"), row.get("measured_time_s")
    fmt = lambda x, s: "      -" if x is None or x != x else s.format(x)  # noqa: E731
    print(f"  {row['model']:10s} {'keep' if frac is None else f'{frac:.2f}':>5s} {row['solver']:26s} "
          f"{row['status']:10s} solve {row.get('solve_s', float('nan')):7.2f} s  peak pred "
          f"{fmt(pk and pk / 2**20, '{:7.1f}')} meas {fmt(mk and mk / 2**20, '{:7.1f}')} MiB  time pred "
          f"{fmt(pt, '{:6.3f}')} meas {fmt(mt, '{:6.3f}')} s {row.get('same_plan_as', '') and '(shared)'}",
          flush=True)


