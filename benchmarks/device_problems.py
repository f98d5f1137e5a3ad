"""Device-costed Problems for the ILP benchmarks: ResNet-152, BERT-base and GPT-2 medium on an H100.

    python -m benchmarks.device_problems                      # the three defaults, H100-SXM
    python -m benchmarks.device_problems resnet152:32 --target a100-sxm

Each model is built (GPT-2 on the meta device), captured with fake tensors (no activation memory is
allocated), costed with `mutwo.estimate.estimate_profile` for the target (roofline op times, the
target's host link) and saved as ``results/benchmarks/problems/<model>-b<batch>[-s<seq>]-<target>.npz``
(git-ignored), for ``python -m benchmarks.ilp_speed --problems ... --range``. Batches are chosen so
activations dominate the peak and the range from the every-plan floor to keep-all is wide.

Prints and writes ``device_problems.csv``: sizes, compute time, keep-all peak, floor and the budgets at
70 / 50 / 30% of the floor..keep-all range.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import RESULTS, write_csv
from mutwo.problem import Problem
from mutwo.schedule import Schedule
from mutwo.simulate import simulate

PROBLEMS = RESULTS / "problems"
# model:batch, zoo options (SGD without momentum: no optimizer state, so activations dominate)
DEFAULT = {
    "resnet152:32": {"image_size": 224},
    "bert-base:8": {"seq_len": 512},
    "gpt2-medium:4": {"seq_len": 1024, "meta": True},
}
# built on request only (``python -m benchmarks.device_problems resnet50:32``): the exact
# rematerialization reference (benchmarks/remat_exact.py, docs/remat_exact.md)
EXTRA = {
    "resnet50:32": {"image_size": 224},
}


def range_budget(p: Problem, fraction: float, keep_peak: int | None = None) -> int:
    """``fraction`` of the way from the every-plan floor (`Problem.peak_floor`) to the keep-all peak."""
    keep = int(simulate(p, Schedule.keep_all(p)).peak_bytes) if keep_peak is None else int(keep_peak)
    floor = p.peak_floor()[0]
    return int(floor + fraction * (keep - floor))


def build(spec: str, options: dict, target: str, optimizer: str = "sgd") -> Problem:
    """Capture ``model:batch`` in fake mode and cost it for ``target``."""
    from mutwo.capture import capture
    from mutwo.estimate import estimate_profile
    from mutwo.problem_build import build_problem
    from mutwo.workload import OptimizerConfig
    from mutwo.zoo import build_workload

    name, batch = spec.split(":")
    wl = build_workload(name, int(batch), **options)
    opt = OptimizerConfig(optimizer, {"momentum": 0.0} if optimizer == "sgd" else {})
    graph = capture(wl, opt)
    est = estimate_profile(graph, target)
    seq = f"-s{options['seq_len']}" if "seq_len" in options else ""
    problem, _ = build_problem(graph, est, name=f"{name}-b{batch}{seq}-{optimizer}-{target}")
    return problem


def describe(p: Problem, path: Path, fractions: tuple[float, ...] = (0.7, 0.5, 0.3)) -> dict:
    keep = simulate(p, Schedule.keep_all(p))
    floor, floor_op = p.peak_floor()
    row = {"problem": p.name, "file": str(path), "cost_source": p.cost_source, "n_ops": p.n_ops, "n_act": p.n_act,
           "n_recomputable": int(p.recomputable.sum()), "n_swappable": int(p.swappable.sum()),
           "act_MiB": float(p.act_bytes.sum()) / 2**20, "compute_s": p.total_compute_s,
           "swap_all_one_way_s": float(p.swap_time_s.sum()), "link_GB_s": p.host_bandwidth_bytes_per_s / 1e9,
           "keep_peak_MiB": keep.peak_bytes / 2**20, "fixed_peak_MiB": float(p.fixed_bytes.max()) / 2**20,
           "floor_MiB": floor / 2**20, "floor_op": floor_op}
    for f in fractions:
        row[f"budget_{round(100 * f)}_MiB"] = range_budget(p, f, keep.peak_bytes) / 2**20
    return row


def main(argv: list[str] | None = None, out: Path = PROBLEMS) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", help="model:batch (default: the three of DEFAULT; DEFAULT and EXTRA "
                    "entries bring their options)")
    ap.add_argument("--target", default="h100-sxm")
    ap.add_argument("--optimizer", default="sgd")
    args = ap.parse_args(argv)
    known = {**DEFAULT, **EXTRA}
    specs = {s: known.get(s, {}) for s in args.specs} if args.specs else DEFAULT
    rows = []
    for spec, options in specs.items():
        t0 = time.perf_counter()
        p = build(spec, options, args.target, args.optimizer)
        path = p.save(out / f"{p.name}.npz")
        rows.append({**describe(p, path), "build_s": time.perf_counter() - t0})
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    df = pd.DataFrame(rows)
    write_csv(df, "device_problems.csv")
    return df


if __name__ == "__main__":
    main()
