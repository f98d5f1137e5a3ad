"""What PyTorch itself reaches: peak memory and iteration time of real training steps under
(a) eager PyTorch, (b) ``torch._functorch.config.activation_memory_budget`` with the min-cut
partitioner behind ``torch.compile`` (no fusing compiler on CPU: ``aot_eager``, optionally
``aot_eager_decomp_partition`` = inductor's decompositions and partitioner settings without its code
generation, and ``inductor`` for time only), and (c) ``torch.utils.checkpoint`` on every block (each
ResNet BasicBlock / Bottleneck, each BERT layer; ``use_reentrant=False``). Each is a ratio to eager.

    python -m benchmarks.pytorch_reference [--models resnet18 bert-tiny] [--budgets 1 .8 .6 .4 .2 0]
        [--backends aot_eager aot_eager_decomp_partition] [--iterations 5] [--warmup 2] [--torch-threads 1]

How memory is measured on CPU (there are no allocator statistics): bytes of live tensor storages, with
`mutwo.memory.OpOutputTracker` (parameters, buffers and the batch counted from the start). A
dispatch mode wrapped around a ``torch.compile``d step does *not* measure the compiled code: Dynamo
sees the active mode and runs the model eagerly (checked on every run: ``outer_tracker_calls`` = 0
compiled calls). So compiled steps are measured from inside: the backend is PyTorch's own
``aot_eager`` (or the decomp-partition variant) with forward and backward compilers that run the
partitioned graphs exactly as ``boxed_nop`` does, entering the tracker while armed. Everything the step
allocates happens in those two graphs (the optimizer is in-place SGD, gradients are the backward
graph's outputs), and at budget 1.0 the count matches eager's to within a few KiB.

Time: median of ``--iterations`` steps after warm-up; each step of a variant is paired with an eager
step just before it, and the time ratio is the median of the per-pair ratios (the load on a shared
machine drifts over the minutes between variants; a 1-thread job that shares its core with another
runs at half speed, so only ratios of steps taken seconds apart mean anything there).
The inner hook needs the aot_eager compilers, so for ``inductor`` only the time is reported (and its
compile took ~4 minutes per budget for ResNet-18 on this machine, so it is not in the default run).

Writes ``results/benchmarks/pytorch_reference.csv`` and ``pytorch_reference.png``.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch.utils.checkpoint import checkpoint

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
from mutwo.memory import OpOutputTracker, measure_peak
from mutwo.workload import Workload
from mutwo.zoo import build_workload

__all__ = ["run_reference", "main", "BUDGETS", "BLOCK_TYPES"]

BUDGETS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
BLOCK_TYPES = {"BasicBlock", "Bottleneck", "BertLayer"}  # what "per block" checkpointing wraps
LR = 1e-2


class _LossModule(torch.nn.Module):
    """Model plus loss as one module, so the compiled graph contains the loss too."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *inputs):
        return self.loss_fn(self.model, *inputs)


def _workload(cfg: ModelConfig) -> Workload:
    """A fresh, seeded copy: every variant starts from the same weights and batch."""
    return build_workload(cfg.zoo, cfg.batch, **cfg.options)


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Wrap each block's forward in non-reentrant ``torch.utils.checkpoint``; returns how many."""
    n = 0
    for m in model.modules():
        if type(m).__name__ in BLOCK_TYPES:
            fwd = m.forward

            def wrapped(*args, _fwd=fwd, **kwargs):
                return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)

            m.forward = wrapped
            n += 1
    if n == 0:
        raise ValueError(f"no block of types {sorted(BLOCK_TYPES)} in {type(model).__name__}")
    return n


class MeasuredBackend:
    """PyTorch's ``aot_eager`` (or ``aot_eager_decomp_partition``) whose partitioned forward and
    backward graphs enter ``self.tracker`` while it is set. Counts graphs and compiled calls."""

    def __init__(self, name: str = "aot_eager") -> None:
        if name not in ("aot_eager", "aot_eager_decomp_partition"):
            raise ValueError(f"MeasuredBackend supports aot_eager and aot_eager_decomp_partition, not {name}")
        self.name = name
        self.tracker: OpOutputTracker | None = None
        self.graphs = 0
        self.calls = 0

    def _compiler(self, gm: torch.fx.GraphModule, example_inputs):
        from torch._dynamo.backends.debugging import boxed_nop

        fn = boxed_nop(gm, example_inputs)

        def run(args):  # boxed: ``args`` is handed on as is, so the graph can free its inputs early
            self.calls += 1
            if self.tracker is None:
                return fn(args)
            with self.tracker:
                return fn(args)

        run._boxed_call = True  # type: ignore[attr-defined]
        return run

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, **kwargs):
        from functorch.compile import min_cut_rematerialization_partition
        from torch._dynamo.backends.common import aot_autograd

        self.graphs += 1
        if self.name == "aot_eager":  # as torch._dynamo.backends.debugging.aot_eager
            return aot_autograd(fw_compiler=self._compiler, bw_compiler=self._compiler,
                                partition_fn=min_cut_rematerialization_partition,
                                keep_inference_input_mutations=True)(gm, example_inputs, **kwargs)
        from torch._inductor.compile_fx import select_decomp_table

        # as torch._dynamo.backends.debugging.aot_eager_decomp_partition
        with torch._functorch.config.patch(unlift_effect_tokens=True):
            return aot_autograd(fw_compiler=self._compiler, bw_compiler=self._compiler,
                                decompositions=select_decomp_table(),
                                partition_fn=functools.partial(min_cut_rematerialization_partition,
                                                               compiler="inductor"))(gm, example_inputs)


def _known(wl: Workload) -> list[torch.Tensor]:
    return [*wl.model.parameters(), *wl.model.buffers(), *[t for t in wl.inputs if isinstance(t, torch.Tensor)]]


def _stepper(module: Callable, wl: Workload) -> Callable[[], torch.Tensor]:
    """One training step of ``module`` on ``wl``'s batch: zero grads, forward+loss, backward, SGD."""
    opt = torch.optim.SGD(wl.model.parameters(), lr=LR, momentum=0.0, foreach=False)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = module(*wl.inputs)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _timed(step: Callable) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _measure(module: Callable, wl: Workload, iterations: int, warmup: int,
             backend: MeasuredBackend | None = None, measure_memory: bool = True,
             eager_step: Callable | None = None) -> dict:
    """First step (compiles; its loss checks the math), one measured step, warm-up, timed steps.

    With ``eager_step``, each timed step is paired with an eager step just before it, and the row
    carries eager's time from those pairs: on a shared machine the load drifts, and a ratio of times
    taken minutes apart measures the drift as much as the method."""
    step = _stepper(module, wl)
    t0 = time.perf_counter()
    loss0 = float(step())
    first_s = time.perf_counter() - t0
    row: dict = {"loss0": loss0, "first_step_s": first_s}
    if measure_memory:
        if backend is None:
            row["peak_bytes"] = measure_peak(step, _known(wl), torch.device("cpu")).peak_bytes
            row["peak_method"] = "tracker around the step"
        else:
            calls = backend.calls
            backend.tracker = OpOutputTracker(_known(wl))
            try:
                step()
                row["peak_bytes"] = backend.tracker.peak
            finally:
                backend.tracker = None
            row["peak_method"] = "tracker inside the compiled fw/bw graphs"
            row["compiled_calls"] = backend.calls - calls
            # the pitfall this measurement avoids: an outer dispatch mode makes Dynamo run eagerly
            calls = backend.calls
            with OpOutputTracker(_known(wl)):
                step()
            row["outer_tracker_calls"] = backend.calls - calls
            row["graphs"] = backend.graphs
    for _ in range(warmup):
        step()
    times, eager_times = [], []
    for _ in range(iterations):
        if eager_step is not None:
            eager_times.append(_timed(eager_step))
        times.append(_timed(step))
    eager_times = eager_times or times
    row.update(time_s=statistics.median(times), time_min_s=min(times), eager_time_s=statistics.median(eager_times),
               eager_time_min_s=min(eager_times), iterations=iterations, warmup=warmup,
               # each step over the eager step right before it, then the median: a change of load
               # between pairs cancels, only one inside a pair (~1 s) does not
               pair_ratio=statistics.median(t / e for t, e in zip(times, eager_times)))
    return row


def run_reference(cfg: ModelConfig, budgets: Sequence[float] = BUDGETS,
                  backends: Sequence[str] = ("aot_eager",), iterations: int = 5, warmup: int = 2,
                  with_checkpoint: bool = True, progress: bool = True) -> pd.DataFrame:
    """Rows for eager, per-block checkpointing and every backend x budget, with ratios to eager
    (peak: to the eager row; time: to the eager steps interleaved with that row's steps)."""
    rows = []

    def log(row: dict) -> None:
        rows.append(row)
        if progress:
            peak = row.get("peak_bytes")
            print(f"  {cfg.key:10s} {row['variant']:12s} {row['backend']:27s} {row['budget']!s:5s} "
                  f"peak {'-' if peak is None else f'{peak / 2**20:7.1f} MiB'}  time {row['time_s']:.3f} s"
                  f" (eager beside it {row['eager_time_s']:.3f} s; first step {row['first_step_s']:.1f} s)",
                  flush=True)

    base = {"model": cfg.key, "config": cfg.label()}
    ewl = _workload(cfg)
    eager_module = _LossModule(ewl.model, ewl.loss_fn)
    log({**base, "variant": "eager", "backend": "eager", "budget": None,
         **_measure(eager_module, ewl, iterations, warmup)})
    eager_step = _stepper(eager_module, ewl)
    if with_checkpoint:
        wl = _workload(cfg)
        n = checkpoint_blocks(wl.model)
        log({**base, "variant": "checkpoint", "backend": f"eager, {n} blocks", "budget": None,
             **_measure(_LossModule(wl.model, wl.loss_fn), wl, iterations, warmup, eager_step=eager_step)})
    for name in backends:
        for b in budgets:
            torch._dynamo.reset()
            wl = _workload(cfg)
            with torch._functorch.config.patch(activation_memory_budget=float(b)):
                if name == "inductor":
                    module = torch.compile(_LossModule(wl.model, wl.loss_fn), backend="inductor")
                    row = _measure(module, wl, iterations, warmup, measure_memory=False, eager_step=eager_step)
                    row["peak_method"] = "not measured (the tracker hook needs the aot_eager compilers)"
                else:
                    backend = MeasuredBackend(name)
                    module = torch.compile(_LossModule(wl.model, wl.loss_fn), backend=backend)
                    row = _measure(module, wl, iterations, warmup, backend, eager_step=eager_step)
            log({**base, "variant": "budget", "backend": name, "budget": float(b), **row})
    torch._dynamo.reset()
    df = pd.DataFrame(rows)
    eager = df[df.variant == "eager"].iloc[0]
    df["peak_ratio"] = df["peak_bytes"] / eager["peak_bytes"]
    df["time_ratio"] = df["pair_ratio"]
    df["time_ratio_of_medians"] = df["time_s"] / df["eager_time_s"]
    df["time_min_ratio"] = df["time_min_s"] / df["eager_time_min_s"]
    df["loss0_diff"] = (df["loss0"] - eager["loss0"]).abs()
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
        budget = d[d.variant == "budget"].dropna(subset=["budget"])
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
    ap = parser(__doc__, "models", "iterations", "warmup", "torch-threads", "no-plot", warmup={"default": 2})
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--backends", nargs="+", default=["aot_eager", "aot_eager_decomp_partition"],
                    choices=["aot_eager", "aot_eager_decomp_partition", "inductor"])
    ap.add_argument("--no-checkpoint", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.torch_threads)
    start = machine()
    print(f"machine: {start}")
    frames = [run_reference(model_config(m), args.budgets, args.backends, args.iterations, args.warmup,
                            not args.no_checkpoint) for m in args.models]
    df = pd.concat(frames, ignore_index=True)
    end = machine()
    df["load_avg_start"] = start["load_avg_1min"]
    df["load_avg_end"] = end["load_avg_1min"]
    df["cores"] = start["cores"]
    df["torch_threads"] = start["torch_threads"]
    write_csv(df, "pytorch_reference.csv", out)
    if not args.no_plot:
        plot(df, out / "pytorch_reference.png")
    cols = ["model", "variant", "backend", "budget", "peak_ratio", "time_ratio", "peak_bytes", "time_s"]
    show = df[cols].copy()
    show["peak_bytes"] = show["peak_bytes"] / 2**20
    print(markdown(show.rename(columns={"peak_bytes": "peak_MiB"})))
    print(f"load average (1 min) at start {start['load_avg_1min']}, at end {end['load_avg_1min']}, "
          f"{start['cores']} cores")
    return df


if __name__ == "__main__":
    main()
