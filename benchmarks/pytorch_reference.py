"""What PyTorch itself reaches: peak memory and iteration time of real training steps under eager
PyTorch, per-block ``torch.utils.checkpoint`` and ``torch._functorch.config.activation_memory_budget``
(the min-cut partitioner behind ``torch.compile``) on each backend asked for, as ratios to eager.

    python -m benchmarks.pytorch_reference [--models resnet18 bert-tiny] [--budgets 1 .8 .6 .4 .2 0]
        [--backends aot_eager aot_eager_decomp_partition] [--iterations 5] [--torch-threads 1]

A thin layer over `mutwo.references`, which also gives every ``python -m mutwo.compare`` run its
reference rows: the same variants, measured the same way. Peaks are the allocator meter's
(`mutwo.memory.allocator_peak`) around one step from outside, compiled steps included (each row says
how many compiled-graph calls the metered step made: > 0, so the meter saw the compiled code, not an
eager fallback); ``inductor`` is measured like the others (its CPU compile took ~4 minutes per budget
for ResNet-18 here, so it is not in the default run). Time: each of ``--iterations`` steps right after
an eager step; ``time_ratio`` is the median of the per-pair ratios (a shared machine's load drifts over
the minutes between variants, not within a pair).

Writes ``results/benchmarks/pytorch_reference.csv`` and ``pytorch_reference.png``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from benchmarks._common import (
    RESULTS,
    ModelConfig,
    machine,
    markdown,
    model_config,
    parser,
    set_threads,
    write_csv,
)
from mutwo.references import BACKENDS, Reference, ReferenceResult, ReferenceRunner, references
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload

__all__ = ["run_reference", "main", "BUDGETS"]

BUDGETS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
SGD = OptimizerConfig("sgd", {"lr": 1e-2, "momentum": 0.0})  # no optimizer state: activations dominate


def _row(cfg: ModelConfig, res: ReferenceResult) -> dict:
    ref = res.reference
    blocks = sum(res.details.get("blocks", {}).values())
    return {"model": cfg.key, "config": cfg.label(), "variant": ref.variant,
            "backend": ref.backend or ("eager" if ref.variant == "eager" else f"eager, {blocks} blocks"),
            "budget": ref.knob, "status": res.status, "peak_bytes": res.peak_bytes, "peak_method": res.peak_method,
            "time_s": res.time_s, "time_min_s": res.time_min_s, "eager_time_s": res.eager_time_s,
            "eager_time_min_s": res.eager_time_min_s, "pair_ratio": res.time_ratio, "time_spread": res.time_spread,
            "first_step_s": res.first_step_s, "compiled_calls": res.compiled_calls, "graphs": res.graphs,
            "loss0": res.loss0, "loss0_diff": None if res.loss0 is None else abs(res.loss0 - res.eager_loss0),
            "message": res.summary()}


def run_reference(cfg: ModelConfig, budgets: Sequence[float] = BUDGETS, backends: Sequence[str] = ("aot_eager",),
                  iterations: int = 5, with_checkpoint: bool = True, progress: bool = True) -> pd.DataFrame:
    """Rows for eager, per-block checkpointing and every backend x budget, with ratios to eager
    (peak: to the eager row; time: to the eager steps interleaved with that row's steps)."""
    todo = references(True, with_checkpoint, [])
    todo += [Reference("memory_budget", float(b), name) for name in backends for b in budgets]
    runner = ReferenceRunner(lambda: build_workload(cfg.zoo, cfg.batch, **cfg.options), SGD, iterations=iterations)
    rows = []
    try:
        for ref in todo:
            res = runner.measure(ref)
            if res.status == "skipped":
                continue
            rows.append(_row(cfg, res))
            if progress:
                peak = "-" if res.peak_bytes is None else f"{res.peak_bytes / 2**20:7.1f} MiB"
                print(f"  {cfg.key:10s} {ref.label:30s} {res.status:8s} peak {peak}  time "
                      f"{res.time_s or float('nan'):.3f} s (eager beside it {res.eager_time_s or float('nan'):.3f} s;"
                      f" first step {res.first_step_s or float('nan'):.1f} s) {res.message}", flush=True)
    finally:
        runner.close()
    df = pd.DataFrame(rows)
    eager = df[df.variant == "eager"].iloc[0]
    df["peak_ratio"] = df["peak_bytes"].astype(float) / eager["peak_bytes"]
    df["time_ratio"] = df["pair_ratio"]
    df["time_ratio_of_medians"] = df["time_s"] / df["eager_time_s"]
    df["time_min_ratio"] = df["time_min_s"] / df["eager_time_min_s"]
    return df


def plot(df: pd.DataFrame, path=RESULTS / "pytorch_reference.png"):
    """Peak and time ratio against the budget, one panel per model; eager and checkpoint as marks."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mutwo.plots import save

    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for j, m in enumerate(models):
        d = df[df.model == m]
        budget = d[d.variant == "memory_budget"].dropna(subset=["budget"])
        for i, col in enumerate(["peak_ratio", "time_ratio"]):
            ax = axes[i][j]
            sub = budget.dropna(subset=[col])
            if len(sub):
                sns.lineplot(data=sub, x="budget", y=col, hue="backend", marker="o", ax=ax)
            ck = d[d.variant == "checkpoint"]
            if len(ck) and ck[col].notna().all():
                ax.axhline(float(ck[col].iloc[0]), color="black", linestyle="--", label="checkpoint per block")
            ax.axhline(1.0, color="grey", linestyle=":", label="eager")
            ax.set_title(f"{d.config.iloc[0]}" if i == 0 else "")
            ax.set_xlabel("activation_memory_budget")
            ax.set_ylabel({"peak_ratio": "peak / eager peak", "time_ratio": "iteration time / eager"}[col])
            ax.legend(fontsize=7)
    fig.suptitle("PyTorch's own activation memory budget (CPU)")
    return save(fig, path)


def main(argv: list[str] | None = None, out=RESULTS) -> pd.DataFrame:
    ap = parser(__doc__, "models", "iterations", "torch-threads", "no-plot")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--backends", nargs="+", default=["aot_eager", "aot_eager_decomp_partition"], choices=BACKENDS)
    ap.add_argument("--no-checkpoint", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.torch_threads)
    start = machine()
    print(f"machine: {start}")
    frames = [run_reference(model_config(m), args.budgets, args.backends, args.iterations, not args.no_checkpoint)
              for m in args.models]
    df = pd.concat(frames, ignore_index=True)
    end = machine()
    df["load_avg_start"] = start["load_avg_1min"]
    df["load_avg_end"] = end["load_avg_1min"]
    df["cores"] = start["cores"]
    df["torch_threads"] = start["torch_threads"]
    write_csv(df, "pytorch_reference.csv", out)
    if not args.no_plot:
        plot(df, out / "pytorch_reference.png")
    cols = ["model", "variant", "backend", "budget", "status", "peak_ratio", "time_ratio", "peak_bytes", "time_s"]
    show = df[cols].copy()
    show["peak_bytes"] = show["peak_bytes"] / 2**20
    print(markdown(show.rename(columns={"peak_bytes": "peak_MiB"})))
    print(f"load average (1 min) at start {start['load_avg_1min']}, at end {end['load_avg_1min']}, "
          f"{start['cores']} cores")
    return df


if __name__ == "__main__":
    main()
