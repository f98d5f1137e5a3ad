"""Capture and profile real models; print op / activation counts, timings and peak fidelity.

    python -m benchmarks.capture_profile                 # ResNet-152 and BERT-base at batch 2 (CPU)
    python -m benchmarks.capture_profile resnet18:2 bert-tiny:2 resnet152:8:sgd

Also saves each Problem as ``results/benchmarks/problems/<model>-b<batch>-<optimizer>.npz`` for the
solver benchmarks.

Writes ``results/benchmarks/capture_profile.csv``.
"""

from __future__ import annotations

import sys

import pandas as pd

from benchmarks._common import RESULTS, write_csv
from mutwo.pipeline import prepare
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload

DEFAULT = ["resnet152:2", "bert-base:2"]


def measure(spec: str) -> dict:
    """``spec`` is ``model:batch[:optimizer]`` (optimizer sgd = plain SGD without momentum)."""
    name, batch, *rest = spec.split(":")
    optimizer = rest[0] if rest else "adam"
    wl = build_workload(name, int(batch))
    opt = OptimizerConfig(optimizer, {"momentum": 0.0} if optimizer == "sgd" else {})
    prep = prepare(wl, opt, batch_size=int(batch), runs=3, warmup=1, cache=False, progress=True)
    tg, prof, problem = prep.graph, prep.profile, prep.problem
    estimate = int((tg.live_bytes() + prof.op_transient_bytes).max())
    s = tg.summary()
    problem.save(RESULTS / "problems" / f"{name}-b{batch}-{optimizer}.npz")
    return {
        "model": name, "batch": int(batch), "optimizer": optimizer, "n_ops": s["n_ops"],
        "n_forward_ops": s["fwd_end"] + 1, "n_activations": s["n_activations"],
        "activation_MiB": s["activation_bytes"] / 2**20, "param_MiB": s["param_bytes"] / 2**20,
        "n_recomputable": int(problem.recomputable.sum()), "capture_s": prep.capture_s,
        "profile_s": prof.profile_time_s, "iteration_s": prof.iteration_time_s,
        "liveness_peak_MiB": estimate / 2**20, "measured_peak_MiB": prof.measured_peak_bytes / 2**20,
        "peak_diff_pct": 100 * (estimate - prof.measured_peak_bytes) / prof.measured_peak_bytes,
        "fixed_peak_MiB": problem.fixed_bytes.max() / 2**20, "peak_method": prof.peak_method,
    }


def main(argv: list[str]) -> None:
    rows = [measure(spec) for spec in (argv or DEFAULT)]
    df = pd.DataFrame(rows)
    write_csv(df, "capture_profile.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(2).T.to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
