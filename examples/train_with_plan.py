"""Train ResNet-18 (small images) and a small GPT-2 with ``mutwo.optimize`` under a memory budget, and
show that training is the same as eager PyTorch's: the loss at every step is bitwise equal to eager
training from the same seed, while the allocator-measured peak stays under the budget.

    python -m examples.train_with_plan                  # both models, 200 steps each (minutes on a CPU)
    python -m examples.train_with_plan --steps 400 --models gpt2

Run it from the repository root with ``-m`` (so ``import mutwo`` is this checkout). The data are
synthetic but learnable (images near one of ten class prototypes; token sequences that mostly follow
a fixed successor table), so the loss curves fall. Each model trains with its optimizer and a
learning-rate scheduler the usual way (``loss = step(*batch); scheduler.step()``), then a copy of the
initial model trains eagerly (``zero_grad, backward, optimizer.step()``) on the same batches and the
same random-number state. docs/optimize.md shows this script's output and explains the figures.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import mutwo
from mutwo.memory import allocator_peak
from mutwo.planning import BudgetError
from mutwo.zoo import build_workload

MIB = 2**20
DEFAULT_PLOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "train_with_plan.png"


# ---------------------------------------------------------------------- the two training set-ups
@dataclass
class Setup:
    """One model to train: how to build it, its optimizer and scheduler, and its synthetic batches."""

    title: str
    build: Callable[[], mutwo.Workload]
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    make_scheduler: Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
    batches: Callable[[int, int], Iterator[tuple[torch.Tensor, ...]]]  # (steps, seed) -> batches


def _image_batches(batch: int, size: int, classes: int = 10) -> Callable[[int, int], Iterator]:
    def batches(steps: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        # smooth class prototypes (upsampled 4x4 noise), each image one of them plus pixel noise
        protos = torch.nn.functional.interpolate(torch.randn(classes, 3, 4, 4, generator=gen), size=(size, size),
                                                 mode="bilinear", align_corners=False)
        for _ in range(steps):
            y = torch.randint(0, classes, (batch,), generator=gen)
            yield protos[y] + 0.8 * torch.randn(batch, 3, size, size, generator=gen), y

    return batches


def _token_batches(batch: int, seq_len: int, vocab: int) -> Callable[[int, int], Iterator]:
    def batches(steps: int, seed: int) -> Iterator[tuple[torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        successor = torch.randperm(vocab, generator=gen)  # the next token, 90% of the time
        for _ in range(steps):
            ids = torch.empty(batch, seq_len, dtype=torch.long)
            ids[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
            for t in range(1, seq_len):
                noise = torch.randint(0, vocab, (batch,), generator=gen)
                keep = torch.rand(batch, generator=gen) < 0.9
                ids[:, t] = torch.where(keep, successor[ids[:, t - 1]], noise)
            yield (ids,)

    return batches


def _warmup_then_linear(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))


SETUPS: dict[str, Setup] = {
    # ResNet-18 at 64x64: SGD with weight decay, cosine learning rate. At this size the weights, their
    # gradients and the update's new values outweigh the activations, so the floor is near keep-all;
    # momentum would add one more weight-sized buffer and put the floor at keep-all (docs/optimize.md)
    "resnet18": Setup(
        "ResNet-18 (64x64 images, batch 16, SGD, cosine LR)",
        lambda: build_workload("resnet18", 16, image_size=64, num_classes=10),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, weight_decay=5e-4),
        lambda o, n: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n),
        _image_batches(16, 64)),
    # a small GPT-2 (2 layers, 64 wide, 128 tokens, dropout 0.1): AdamW, warm-up then linear decay
    "gpt2": Setup(
        "GPT-2 (2 layers x 64, 128 tokens, batch 8, dropout 0.1, AdamW, warm-up + linear LR)",
        lambda: build_workload("gpt2-tiny", 8, seq_len=128, dropout=0.1),
        lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01),
        _warmup_then_linear,
        _token_batches(8, 128, 1000)),
}


# ---------------------------------------------------------------------- training
@dataclass
class Run:
    """One model's two training runs and what was measured."""

    key: str
    title: str
    budget_asked: float
    plan: mutwo.Plan | None = None
    budget_note: str = ""
    planned_losses: list[float] = field(default_factory=list)
    eager_losses: list[float] = field(default_factory=list)
    bitwise: bool = False
    planned_s: list[float] = field(default_factory=list)
    eager_s: list[float] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    eager_peak_bytes: int = 0
    plan_s: float = 0.0


def _plan(run: Run, workload: mutwo.Workload, optimizer: torch.optim.Optimizer) -> mutwo.TrainStep:
    """``mutwo.optimize`` at the asked budget; below the floor, the lowest budget a plan was found for."""
    t0 = time.perf_counter()
    try:
        step = mutwo.optimize(workload.model, optimizer, workload.inputs, workload.loss_fn, budget=run.budget_asked)
    except BudgetError as exc:
        if exc.lowest_peak_bytes is None:
            raise
        run.budget_note = (f"{run.budget_asked} of keep-all is below what any plan reaches: {exc}. "
                           f"Training at the lowest plan's peak instead.")
        print(f"  {run.budget_note}", flush=True)
        step = mutwo.optimize(workload.model, optimizer, workload.inputs, workload.loss_fn,
                              budget=int(exc.lowest_peak_bytes))
    run.plan_s = time.perf_counter() - t0
    run.plan = step.plan
    return step


def _eager_peak(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                batch: tuple[torch.Tensor, ...]) -> int:
    """The allocator's peak of one eager step (the same meter as the planned step's), taken on a copy
    after one warm-up step so that the optimizer state exists, as in steady training."""
    model = copy.deepcopy(model)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(model.parameters())}
              for g in optimizer.param_groups]
    twin = type(optimizer)(groups)

    def one() -> torch.Tensor:
        twin.zero_grad(set_to_none=True)
        loss = loss_fn(model, *batch)
        loss.backward()
        twin.step()
        return loss.detach()

    with torch.random.fork_rng():
        one()
        twin.zero_grad(set_to_none=True)
        held = [*model.parameters(), *model.buffers(), *batch,
                *(t for s in twin.state.values() for t in s.values() if isinstance(t, torch.Tensor))]
        return int(allocator_peak(one, held, torch.device("cpu")).peak_bytes)


def _progress(what: str, i: int, steps: int, losses: list[float], seconds: list[float]) -> None:
    if i % 50 == 0 or i == steps:
        print(f"  {what} step {i:4d}/{steps}: loss {losses[-1]:.4f}, {sum(seconds):.0f} s so far", flush=True)


def train(key: str, steps: int, budget: float, seed: int) -> Run:
    """Train ``key`` under a plan, then a copy of the same initial model eagerly on the same batches."""
    setup = SETUPS[key]
    run = Run(key, setup.title, budget)
    print(f"\n== {setup.title}: {steps} steps, budget {budget} of keep-all", flush=True)
    workload = setup.build()
    eager_model = copy.deepcopy(workload.model)
    optimizer, eager_optimizer = setup.make_optimizer(workload.model), setup.make_optimizer(eager_model)
    step = _plan(run, workload, optimizer)
    print(f"  plan: {run.plan}", flush=True)
    scheduler = setup.make_scheduler(optimizer, steps)
    torch.manual_seed(seed)  # dropout: both runs draw from the same generator state
    for i, batch in enumerate(setup.batches(steps, seed), 1):
        t0 = time.perf_counter()
        run.planned_losses.append(step(*batch).item())
        run.planned_s.append(time.perf_counter() - t0)
        scheduler.step()
        _progress("planned", i, steps, run.planned_losses, run.planned_s)
    run.report = step.report().rows[0]

    eager_scheduler = setup.make_scheduler(eager_optimizer, steps)
    torch.manual_seed(seed)
    planned_losses = torch.tensor(run.planned_losses, dtype=torch.float64)
    for batch in setup.batches(steps, seed):
        t0 = time.perf_counter()
        eager_optimizer.zero_grad()
        loss = workload.loss_fn(eager_model, *batch)
        loss.backward()
        eager_optimizer.step()
        run.eager_s.append(time.perf_counter() - t0)
        eager_scheduler.step()
        run.eager_losses.append(loss.item())
        _progress("eager  ", len(run.eager_losses), steps, run.eager_losses, run.eager_s)
    run.bitwise = (torch.equal(planned_losses, torch.tensor(run.eager_losses, dtype=torch.float64))
                   and all(torch.equal(a, b) for a, b in zip(workload.model.state_dict().values(),
                                                             eager_model.state_dict().values())))
    run.eager_peak_bytes = _eager_peak(eager_model, eager_optimizer, workload.loss_fn, next(setup.batches(1, seed)))
    _print_run(run, step)
    return run


def _print_run(run: Run, step: mutwo.TrainStep) -> None:
    r, p = run.report, run.plan
    measured = r["measured_peak_bytes"]
    under = measured is not None and measured <= p.budget_bytes
    # the first planned step of a shape is measured with the allocator meter and checked: not timed
    planned_ms = statistics.median(run.planned_s[1:] or run.planned_s) * 1e3
    eager_ms = statistics.median(run.eager_s) * 1e3
    print(f"  {step.report()}")
    print(f"  loss: first {run.planned_losses[0]:.4f}, last {run.planned_losses[-1]:.4f}; planned and eager losses "
          f"at all {len(run.planned_losses)} steps and the final weights "
          f"{'BITWISE EQUAL' if run.bitwise else 'DIFFER'}")
    print(f"  peak (allocator-measured): planned {measured / MIB:.1f} MiB "
          f"{'<=' if under else '>'} budget {p.budget_bytes / MIB:.1f} MiB; captured keep-all step "
          f"{p.keep_all_measured_peak_bytes / MIB:.1f} MiB; eager PyTorch step {run.eager_peak_bytes / MIB:.1f} MiB")
    print(f"  step time (median): planned {planned_ms:.0f} ms, eager {eager_ms:.0f} ms "
          f"({100 * (planned_ms / eager_ms - 1):+.0f}%); planning took {run.plan_s:.1f} s", flush=True)


# ---------------------------------------------------------------------- the figure
def plot(runs: list[Run], path: Path) -> None:
    """Loss curves (planned over eager) and the measured peaks beside the budget, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    for (ax_loss, ax_mem), run in zip(axes, runs):
        steps = range(1, len(run.eager_losses) + 1)
        ax_loss.plot(steps, run.eager_losses, color="0.6", lw=4, label="eager PyTorch")
        ax_loss.plot(steps, run.planned_losses, color="C0", lw=1.2, ls="--", label="mutwo.optimize")
        ax_loss.set(title=run.title, xlabel="step", ylabel="training loss")
        ax_loss.legend(title="bitwise equal" if run.bitwise else "DIFFERENT", loc="upper right")
        p = run.plan
        bars = {"eager\nPyTorch": run.eager_peak_bytes, "captured\nkeep-all": p.keep_all_measured_peak_bytes,
                "planned\n(measured)": run.report["measured_peak_bytes"]}
        colors = ["0.6", "C1", "C0"]
        ax_mem.bar(list(bars), [v / MIB for v in bars.values()], color=colors)
        ax_mem.axhline(p.budget_bytes / MIB, color="C3", ls="--",
                       label=f"budget {p.budget_bytes / MIB:.0f} MiB ({p.budget_bytes / p.keep_all_peak_bytes:.2f})")
        ax_mem.axhline(p.floor_bytes / MIB, color="k", ls=":", lw=1, label=f"floor {p.floor_bytes / MIB:.0f} MiB")
        ax_mem.set(ylabel="peak memory (MiB, allocator)", title="peak per step")
        ax_mem.legend(loc="lower right", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)  # written under a temporary name, then renamed: never half-written
    os.replace(tmp, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="training steps per model (default 200)")
    parser.add_argument("--models", default="resnet18,gpt2", help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--budget", type=float, default=0.6, help="fraction of the keep-all peak (default 0.6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"the figure (default {DEFAULT_PLOT})")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SETUPS]
    if unknown or not keys:
        parser.error(f"--models {args.models!r}: use some of {', '.join(SETUPS)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if not 0 < args.budget <= 1 or math.isnan(args.budget):
        parser.error("--budget is a fraction of the keep-all peak in (0, 1]")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    t0 = time.perf_counter()
    runs = [train(k, args.steps, args.budget, args.seed) for k in keys]
    plot(runs, args.plot)
    print(f"\nfigure: {args.plot}; total {time.perf_counter() - t0:.0f} s")
    ok = all(r.bitwise and r.report["measured_peak_bytes"] is not None
             and r.report["measured_peak_bytes"] <= r.plan.budget_bytes for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
