"""How far is the predicted peak from what the CPU allocator holds? A diagnostic for the allocator meter.

    python -m benchmarks.allocator_check [--models resnet18 bert-tiny] [--resnet152] [--runs 2]
        [--torch-threads 1]

For each model (plain SGD, the configurations of ``benchmarks._common.MODELS``): capture, profile (per-op
transients from the CPU allocator's events) and build the Problem; then for keep-all, recompute-all,
Chen's sqrt(n) and the greedy recompute-only at 0.9 and 0.7 of the keep-all peak: the predicted peak
(`mutwo.simulate`, with the profile's transients and, for comparison, with them zeroed as before), the
executed plan's peak (`mutwo.execute.apply`, first iteration, as `mutwo.execute.run` measures it) under
the op-output tracker and under the allocator meter, and the errors against the allocator (bytes in
the CSV, MiB in the printed table). Also the meter's cost: the keep-all step's time plain and under the
meter, interleaved, and what the profile found (its transients, its two peaks, how long it took).

Writes ``results/benchmarks/allocator_check.csv`` and ``allocator_overhead.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import MODELS, RESULTS, ModelConfig, machine, markdown, set_threads, write_csv
from mutwo import pipeline

__all__ = ["PLANS", "Prepared", "prepare", "check_plans", "overhead", "main"]

MiB = 2**20
# (label, solver, options, budget as a fraction of the keep-all peak)
PLANS: list[tuple[str, str, dict, float]] = [
    ("keep-all", "keep_all", {}, 1.0),
    ("recompute-all", "recompute_all", {}, 1.0),
    ("chen-sqrt", "chen_sqrt", {}, 1.0),
    ("greedy-recompute@0.9", "mutwo_greedy", {"mode": "recompute"}, 0.9),
    ("greedy-recompute@0.7", "mutwo_greedy", {"mode": "recompute"}, 0.7),
]


@dataclass
class Prepared:
    """A captured, profiled model and its Problem (`mutwo.pipeline.prepare`'s, timed)."""

    cfg: ModelConfig
    prep: pipeline.Prepared
    prepare_s: float

    @property
    def problem(self):
        return self.prep.problem


def prepare(cfg: ModelConfig, runs: int = 2) -> Prepared:
    from mutwo.workload import OptimizerConfig
    from mutwo.zoo import build_workload

    t0 = time.perf_counter()
    wl = build_workload(cfg.zoo, cfg.batch, **cfg.options)
    prep = pipeline.prepare(wl, OptimizerConfig("sgd", {"momentum": 0.0}), batch_size=cfg.batch, runs=runs,
                            warmup=1, cache=False, name=cfg.key)
    return Prepared(cfg, prep, time.perf_counter() - t0)


def _measure(module, flat: Sequence, seed: int = 0) -> tuple[int, int]:
    """(op-output peak, allocator peak) of one iteration of ``module`` on fresh copies of ``flat``,
    each the first iteration on its copy, as `mutwo.execute.run` measures."""
    import torch

    from mutwo.memory import allocator_peak, measure_peak

    peaks = []
    for meter in ("op-outputs", "allocator"):
        work = [t.detach().clone() for t in flat]
        torch.manual_seed(seed)
        with torch.no_grad():
            if meter == "allocator":
                peaks.append(allocator_peak(lambda w=work: module(*w), work).peak_bytes)
            else:
                peaks.append(measure_peak(lambda w=work: module(*w), work, torch.device("cpu")).peak_bytes)
        del work
    return peaks[0], peaks[1]


def check_plans(prep: Prepared) -> pd.DataFrame:
    """One row per plan: predicted peak (with / without CPU transients), op-output and allocator peaks
    of the executed plan, in bytes, and the errors against the allocator."""
    from mutwo.execute import apply
    from mutwo.sandbox import run_solver
    from mutwo.schedule import Schedule
    from mutwo.simulate import simulate

    problem = prep.problem
    no_transients = dataclasses.replace(problem, op_transient_bytes=np.zeros_like(problem.op_transient_bytes))
    keep_peak = simulate(problem, Schedule.keep_all(problem)).peak_bytes
    rows = []
    for label, solver, options, fraction in PLANS:
        schedule = run_solver(solver, problem, int(fraction * keep_peak), options)
        row = {"model": prep.cfg.key, "plan": label, "status": schedule.status.value, **schedule.counts()}
        if schedule.feasible:
            predicted = simulate(problem, schedule).peak_bytes
            before = simulate(no_transients, schedule).peak_bytes
            module = apply(prep.prep.graph, problem, schedule, binding=prep.prep.binding)
            op_outputs, allocator = _measure(module, prep.prep.flat)
            row.update(predicted_bytes=predicted, predicted_no_transients_bytes=before,
                       op_output_bytes=op_outputs, allocator_bytes=allocator,
                       error_bytes=predicted - allocator, error_pct=100 * (predicted / allocator - 1),
                       error_no_transients_pct=100 * (before / allocator - 1))
        rows.append(row)
    return pd.DataFrame(rows)


def overhead(prep: Prepared, pairs: int = 3) -> dict:
    """Median time of the captured step plain and under the allocator meter (interleaved pairs), and
    what the profile found."""
    import torch

    from mutwo.memory import allocator_peak

    gm, prof = prep.prep.graph.gm, prep.prep.profile
    work = [t.detach().clone() for t in prep.prep.flat]
    plain, metered = [], []
    with torch.no_grad():
        gm(*work)  # warm-up
        for _ in range(pairs):
            t0 = time.perf_counter()
            gm(*work)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            allocator_peak(lambda: gm(*work), work)
            metered.append(time.perf_counter() - t0)
    p, m = statistics.median(plain), statistics.median(metered)
    return {"model": prep.cfg.label(), "n_ops": len(prep.prep.graph.ops), "step_s": p, "metered_step_s": m,
            "overhead_pct": 100 * (m / p - 1), "prepare_s": prep.prepare_s, "profile_s": prof.profile_time_s,
            "profile_allocator_MiB": prof.measured_peak_bytes / MiB,
            "profile_op_output_MiB": prof.op_output_peak_bytes / MiB,
            "ops_with_transient": int((prof.op_transient_bytes > 0).sum()),
            "max_op_transient_MiB": float(prof.op_transient_bytes.max()) / MiB}


def _mib_view(plans: pd.DataFrame) -> pd.DataFrame:
    view = plans.copy()
    for col in [c for c in view.columns if c.endswith("_bytes") and c != "error_bytes"]:
        view[col.replace("_bytes", "_MiB")] = view.pop(col) / MiB
    return view


def main(argv: list[str] | None = None, out: Path = RESULTS) -> dict[str, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "bert-tiny"], choices=sorted(MODELS))
    ap.add_argument("--resnet152", action="store_true", help="also ResNet-152 at batch 2 (slow)")
    ap.add_argument("--runs", type=int, default=2, help="profiling runs (transients: max over them)")
    ap.add_argument("--pairs", type=int, default=3, help="plain / metered step pairs for the overhead")
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.torch_threads)
    print(f"machine: {machine()}")
    models = list(args.models) + (["resnet152"] if args.resnet152 else [])
    frames, costs = [], []
    for key in models:
        prep = prepare(MODELS[key], args.runs)
        frames.append(check_plans(prep))
        costs.append(overhead(prep, args.pairs))
        del prep
    plans = pd.concat(frames, ignore_index=True)
    cost = pd.DataFrame(costs)
    write_csv(plans, "allocator_check.csv", out)
    write_csv(cost, "allocator_overhead.csv", out)
    print(markdown(_mib_view(plans), ".4g"))
    print(markdown(cost, ".4g"))
    return {"plans": plans, "overhead": cost}


if __name__ == "__main__":
    main()
