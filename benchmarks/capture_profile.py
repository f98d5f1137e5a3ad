"""Capture and profile real models; print op / activation counts, timings and peak fidelity.

    python -m benchmarks.capture_profile                 # ResNet-152 and BERT-base at batch 2 (CPU)
    python -m benchmarks.capture_profile resnet18:2 bert-tiny:2 resnet152:8:sgd

Also saves each Problem as ``results/benchmarks/problems/<model>-b<batch>-<optimizer>.npz`` for the
solver benchmarks.

Writes ``results/benchmarks/capture_profile.csv``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from mutwo.capture import OptimizerConfig, capture, flat_state
from mutwo.problem_build import build_problem
from mutwo.profile import profile
from mutwo.zoo import build_workload

DEFAULT = ["resnet152:2", "bert-base:2"]


def measure(spec: str) -> dict:
    """``spec`` is ``model:batch[:optimizer]`` (optimizer sgd = plain SGD without momentum)."""
    name, batch, *rest = spec.split(":")
    optimizer = rest[0] if rest else "adam"
    wl = build_workload(name, int(batch))
    opt = OptimizerConfig(optimizer, {"momentum": 0.0} if optimizer == "sgd" else {})
    t0 = time.perf_counter()
    tg = capture(wl, opt)
    capture_s = time.perf_counter() - t0
    flat, _, _ = flat_state(wl, opt)
    prof = profile(tg, flat, runs=3, warmup=1, cache=False)
    problem, _ = build_problem(tg, prof)
    estimate = int((tg.live_bytes() + prof.op_transient_bytes).max())
    s = tg.summary()
    folder = Path("results/benchmarks/problems")
    folder.mkdir(parents=True, exist_ok=True)
    problem.save(folder / f"{name}-b{batch}-{optimizer}.npz")
    return {
        "model": name, "batch": int(batch), "optimizer": optimizer, "n_ops": s["n_ops"],
        "n_forward_ops": s["fwd_end"] + 1, "n_activations": s["n_activations"],
        "activation_MiB": s["activation_bytes"] / 2**20, "param_MiB": s["param_bytes"] / 2**20,
        "n_recomputable": int(problem.recomputable.sum()), "capture_s": capture_s,
        "profile_s": prof.profile_time_s, "iteration_s": prof.iteration_time_s,
        "liveness_peak_MiB": estimate / 2**20, "measured_peak_MiB": prof.measured_peak_bytes / 2**20,
        "peak_diff_pct": 100 * (estimate - prof.measured_peak_bytes) / prof.measured_peak_bytes,
        "fixed_peak_MiB": problem.fixed_bytes.max() / 2**20, "peak_method": prof.peak_method,
    }


def main(argv: list[str]) -> None:
    rows = [measure(spec) for spec in (argv or DEFAULT)]
    df = pd.DataFrame(rows)
    out = Path("results/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "capture_profile.csv.tmp"
    df.to_csv(tmp, index=False)
    tmp.replace(out / "capture_profile.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(2).T.to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
