"""Solve, simulate and execute many plans on one real model: the engine behind ``fidelity`` and
``quality``. Identical plans (same decisions and prefetch points) are executed once and shared, since
they give identical rewritten graphs. Peaks are the allocator's (`mutwo.memory.allocator_peak`; for
CPU swaps also the emulated device figure); peak ratios are over the executed keep-all plan (the
unmodified graph); time ratios over the unmodified graph timed between the plan's iterations, as
``python -m mutwo.compare`` times them (`mutwo.timing.interleaved`, inside `mutwo.execute.run`)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmarks._common import ModelConfig
from mutwo import cell
from mutwo.pipeline import Prepared
from mutwo.scenario import SolverSpec
from mutwo.schedule import Schedule
from mutwo.simulate import simulate

__all__ = ["prepare", "default_solvers", "recompute_only", "sweep", "measured_columns"]


def recompute_only(spec: SolverSpec) -> bool:
    """The solver's plans never swap (on CPU only these compare like with like)."""
    return spec.options.get("mode") == "recompute" or spec.name in ("recompute_all", "chen_sqrt",
                                                                     "checkmate_exact", "keep_all")


def prepare(cfg: ModelConfig, runs: int = 3, warmup: int = 1) -> Prepared:
    """Capture one training step (plain SGD: no optimizer state, so activations set the peak) and
    profile it afresh (no disk cache: the profile must see the machine as it is during the run)."""
    from mutwo.pipeline import prepare as prepare_step
    from mutwo.workload import OptimizerConfig
    from mutwo.zoo import build_workload

    wl = build_workload(cfg.zoo, cfg.batch, **cfg.options)
    return prepare_step(wl, OptimizerConfig("sgd", {"momentum": 0.0}), batch_size=cfg.batch, runs=runs,
                        warmup=warmup, cache=False, name=cfg.key)


def _prep_columns(prep: Prepared) -> dict:
    """What capture and profiling gave (the ``prep_`` columns)."""
    problem, prof = prep.problem, prep.profile
    return {"capture_s": prep.capture_s, "profile_s": prof.profile_time_s, "n_ops": problem.n_ops,
            "n_act": problem.n_act, "act_MiB": float(np.sum(problem.act_bytes)) / 2**20,
            "fixed_peak_MiB": float(problem.fixed_bytes.max()) / 2**20,
            "profile_measured_peak_bytes": prof.measured_peak_bytes,
            "profile_iteration_time_s": prof.iteration_time_s, "profile_op_sum_s": float(prof.op_time_s.sum())}


def default_solvers(n_act: int, ilps: str = "distinct", recompute_variants: bool = True,
                    only: Sequence[str] | None = None) -> list[SolverSpec]:
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
        out.append(SolverSpec(name=name, label=name))
    if recompute_variants:
        out.append(SolverSpec(name="mutwo_greedy", options={"mode": "recompute"}, label="mutwo_greedy[recompute]"))
        if ilps != "none":
            out.append(SolverSpec(name="ilp_cpsat", options={"mode": "recompute"}, label="ilp_cpsat[recompute]"))
    if only:
        unknown = set(only) - {r.label for r in out}
        if unknown:
            raise ValueError(f"unknown or excluded solver labels {sorted(unknown)}; "
                             f"available: {[r.label for r in out]}")
        out = [r for r in out if r.label in set(only)]
    return out


def _is_ilp(name: str) -> bool:
    return name.startswith("ilp") or name == "checkmate_exact"


def measured_columns(res) -> dict:
    """A `mutwo.execute.ExecResult` as the sweep's measured columns (``baseline``: the unmodified step
    timed between the plan's iterations; a plan that changes nothing is its own baseline)."""
    times = list(res.iteration_times_s) or [res.iteration_time_s]
    base = list(res.reference_times_s) or times
    return {"measured_peak_bytes": int(res.measured_peak_bytes),
            "emulated_device_peak_bytes": res.emulated_device_peak_bytes,
            "op_output_peak_bytes": res.op_output_peak_bytes, "measured_time_s": float(res.iteration_time_s),
            "measured_time_min_s": float(min(times)), "interleaved_time_ratio": float(res.time_ratio),
            "time_spread": float(res.time_spread), "baseline_time_s": float(res.reference_time_s),
            "baseline_time_min_s": float(min(base)), "load_steady": bool(res.timing_steady),
            "attempts": int(res.timing_attempts), "timing_note": res.timing_note, "torch_threads": res.threads,
            "timing_clock": res.timing_clock,
            "max_rel_diff": float(res.max_rel_diff), "bitwise_equal": bool(res.bitwise_equal),
            "emulated_swap": bool(res.emulated_swap), "peak_method": res.method,
            "exec_warnings": "; ".join(res.notes.get("warnings", []))[:300]}


@dataclass
class _Sweep:
    """One model's sweep: its plans, executed once each (``measured``: plan -> (figures, who first))."""

    cfg: ModelConfig
    prep: Prepared
    iterations: int
    warmup: int
    execute: bool
    max_attempts: int
    measured: dict[bytes, tuple[dict, str]] = field(default_factory=dict)

    @functools.cached_property
    def no_transients(self):
        """The Problem as if ops had no in-kernel scratch (the model before CPU transients were measured),
        to show what the scratch adds to each prediction."""
        p = self.prep.problem
        return dataclasses.replace(p, op_transient_bytes=np.zeros_like(p.op_transient_bytes))

    def run_plan(self, schedule: Schedule, who: str) -> dict:
        key = schedule.plan_key()
        if key in self.measured:
            m, first = self.measured[key]
            return {**m, "same_plan_as": first}
        execute_fn, note = cell.executor(True)
        if execute_fn is None:
            raise RuntimeError(note)
        m = measured_columns(cell.execute_plan(execute_fn, self.prep, schedule, iterations=self.iterations,
                                               warmup=self.warmup, max_attempts=self.max_attempts))
        self.measured[key] = (m, who)
        return {**m, "same_plan_as": ""}

    def describe(self, schedule: Schedule, spec: SolverSpec, fraction: float | None, budget: int | None,
                 solve_s: float) -> dict:
        """The row of one plan: what the solver said, `mutwo.simulate`'s figures, and the measured ones."""
        prep = self.prep
        row = {"model": self.cfg.key, "config": self.cfg.label(), "solver": spec.label, "solver_name": spec.name,
               "recompute_only_solver": recompute_only(spec), "budget_fraction": fraction, "budget_bytes": budget,
               "status": schedule.status.value, "solve_s": solve_s, **schedule.counts(),
               "solver_bound_s": schedule.bound, "solver_objective_s": schedule.objective,
               "keep_peak_bytes": prep.keep_all_peak_bytes, "keep_time_s": prep.keep_all_time_s}
        if not schedule.feasible:
            row["message"] = schedule.message[:200]
            return row
        try:
            sim = cell.predict(prep.problem, schedule)
        except Exception as exc:  # noqa: BLE001 - an invalid plan is a row
            row.update(status="invalid", message=f"{type(exc).__name__}: {exc}"[:200])
            return row
        row.update(predicted_peak_bytes=sim.peak_bytes, predicted_time_s=sim.time_s,
                   predicted_recompute_s=sim.recompute_s, predicted_stall_s=sim.stall_s,
                   predicted_peak_op=sim.peak_op, fits=sim.fits(budget) if budget is not None else True,
                   predicted_peak_no_transients_bytes=simulate(self.no_transients, schedule).peak_bytes)
        if self.execute:
            try:
                row.update(self.run_plan(schedule, f"{spec.label}@{fraction}"))
            except Exception as exc:  # noqa: BLE001 - a failed execution is a row
                row["execute_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return row

    def solve(self, spec: SolverSpec, fraction: float, time_limit: float, threads: int) -> tuple[dict, bool]:
        """Solve at ``fraction`` of the keep-all peak (ILPs get the time limit and threads) and describe;
        False when the solver raised (the row says what)."""
        budget = int(fraction * self.prep.keep_all_peak_bytes)
        opts = dict(spec.options)
        if _is_ilp(spec.name):
            opts.setdefault("time_limit_s", time_limit)
            opts.setdefault("threads", threads)
        t0 = time.perf_counter()
        try:
            schedule = cell.solve(spec.name, self.prep.problem, budget, opts)
        except Exception as exc:  # noqa: BLE001 - a failing solver is a row
            return {"model": self.cfg.key, "solver": spec.label, "solver_name": spec.name,
                    "budget_fraction": fraction, "budget_bytes": budget, "status": "error",
                    "message": f"{type(exc).__name__}: {exc}"[:200]}, False
        return self.describe(schedule, spec, fraction, budget, time.perf_counter() - t0), True


def sweep(cfg: ModelConfig, prep: Prepared, solvers: Sequence[SolverSpec], fractions: Sequence[float], *,
          iterations: int = 5, warmup: int = 1, time_limit: float = 60.0, threads: int = 2, execute: bool = True,
          max_attempts: int = 3, progress: bool = True) -> pd.DataFrame:
    """One row per solver x budget (budget = fraction x simulated keep-all peak), plus keep-all's
    own row (``budget_fraction`` NaN) that the measured ratios are relative to.

    Each plan's iterations are timed between runs of the unmodified step (`mutwo.timing.interleaved`:
    more iterations while the load moves, up to ``max_attempts`` times as many); ``load_steady`` says
    whether the median ratio came out precise."""
    run = _Sweep(cfg, prep, iterations, warmup, execute, max_attempts)
    keep = Schedule.keep_all(prep.problem, solver="keep_all")
    rows = [run.describe(keep, SolverSpec(name="keep_all", label="unmodified (keep_all)"), None, None, 0.0)]
    if progress:
        _log(rows[-1])
    for frac in fractions:
        for spec in solvers:
            row, solved = run.solve(spec, frac, time_limit, threads)
            rows.append(row)
            if progress and solved:
                _log(row)
    return _ratios(pd.DataFrame(rows), prep)


def _ratios(df: pd.DataFrame, prep: Prepared) -> pd.DataFrame:
    """Predicted ratios over the simulated keep-all, measured ones over the unmodified step."""
    base = df.iloc[0]
    for col in ("measured_peak_bytes", "measured_time_s", "measured_time_min_s"):
        if col not in df:
            df[col] = np.nan
    df["predicted_peak_ratio"] = df.get("predicted_peak_bytes", np.nan) / prep.keep_all_peak_bytes
    df["predicted_time_ratio"] = df.get("predicted_time_s", np.nan) / prep.keep_all_time_s
    df["measured_peak_ratio"] = df["measured_peak_bytes"] / base["measured_peak_bytes"]
    if "baseline_time_s" not in df:
        df["baseline_time_s"] = df["baseline_time_min_s"] = df["interleaved_time_ratio"] = np.nan
    df["measured_time_ratio"] = df["interleaved_time_ratio"]  # median of per-iteration ratios to its brackets
    df["measured_time_min_ratio"] = df["measured_time_min_s"] / df["baseline_time_min_s"]
    df["measured_time_ratio_vs_keep_all_run"] = df["measured_time_s"] / base["measured_time_s"]
    has_swap = df.get("n_swap", pd.Series(0, index=df.index)).fillna(0) > 0
    df["has_swap"] = has_swap
    for k, v in _prep_columns(prep).items():
        df[f"prep_{k}"] = v
    return df


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
