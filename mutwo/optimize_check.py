"""Check a planned training step against PyTorch's own eager step (`mutwo.optimize`, ``check=``).

The eager step runs on copies of the model and the optimizer (same class, groups and state) from the
same random-number state, before the planned step trains the originals; then loss, gradients,
parameters, buffers and optimizer state are compared. On CPU the planned step runs the same kernels on
the same values, so the default tolerance is 0 (bitwise). On CUDA some backward kernels accumulate with
atomics in no fixed order, and Adam's normalisation turns a last-bit difference of a near-zero gradient
into a visible one, so the default there is a relative 1e-3 (largest |x - eager| over largest |eager|).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["CheckError", "CheckResult", "EagerStep", "eager_step", "compare", "adopt", "default_tolerance"]


class CheckError(RuntimeError):
    """The planned step differs from the eager step by more than the tolerance."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(f"{result}; the model and optimizer were set to the eager step's result. Report it with "
                         f"the model; meanwhile train with check='never' at your own risk, or raise check_tolerance")
        self.result = result


def default_tolerance(device: torch.device) -> float:
    """0 (bitwise) on CPU, 1e-3 relative elsewhere (module docstring: why)."""
    return 0.0 if device.type == "cpu" else 1e-3


@dataclass
class CheckResult:
    """One comparison of a planned step with the eager step."""

    step: int  # 1-based count of training steps this TrainStep has taken
    shapes: tuple
    bitwise: bool
    diffs: dict[str, float]  # per part (loss, gradients, parameters, buffers, state): largest relative difference
    counts: dict[str, int]  # tensors compared per part
    tolerance: float
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.bitwise or max(self.diffs.values(), default=0.0) <= self.tolerance

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {k}" if k != "loss" else "loss" for k, n in self.counts.items())
        if self.bitwise:
            verdict = "bitwise equal"
        else:
            worst = max(self.diffs, key=self.diffs.get)
            verdict = (f"largest relative difference {self.diffs[worst]:.3g} ({worst}) "
                       f"{'within' if self.passed else 'ABOVE'} the tolerance {self.tolerance:g}")
        return f"step {self.step} (batch {self.shapes}) checked against the eager step ({parts}): {verdict}"


@dataclass
class EagerStep:
    """PyTorch's own step on copies: the copies after it, its loss and gradients."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: torch.Tensor
    grads: list[torch.Tensor | None]


def _copy_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                    params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The same optimizer class with the same groups, over ``model``'s copies of ``params``, holding a
    copy of its state (a state_dict shares tensors with the original: it is deep-copied first)."""
    index = {id(p): i for i, p in enumerate(params)}
    mine = list(model.parameters())
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [mine[index[id(p)]] for p in g["params"]]}
              for g in optimizer.param_groups]
    twin = type(optimizer)(groups)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def eager_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
               loss_fn: Callable[..., torch.Tensor], batch: Sequence[torch.Tensor], device: torch.device) -> EagerStep:
    """One eager step (zero_grad, loss, backward, optimizer.step) on copies, the random-number state
    restored afterwards (the planned step then draws the same dropout masks)."""
    twin = copy.deepcopy(model)
    opt = _copy_optimizer(optimizer, twin, params)
    with torch.random.fork_rng(devices=_rng_devices(device)):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(twin, *batch)
        loss.backward()
        grads = [None if p.grad is None else p.grad.detach().clone() for p in twin.parameters()]
        opt.step()
    return EagerStep(twin, opt, loss.detach(), grads)


def _rel(x: torch.Tensor | None, ref: torch.Tensor | None) -> tuple[float, bool]:
    """`mutwo.execute.rel_diff`, where a tensor that is None on both sides (no gradient) is equal."""
    from mutwo.execute import rel_diff

    if x is None or ref is None:
        return (0.0, True) if x is ref else (float("inf"), False)
    return rel_diff(x, ref)


def _state_pairs(optimizer: torch.optim.Optimizer, params: Sequence, eager: EagerStep, names: Sequence[str]):
    twins = list(eager.model.parameters())
    for p, q in zip(params, twins):
        for name in names:
            yield optimizer.state[p].get(name), eager.optimizer.state[q].get(name)


def compare(eager: EagerStep, loss: torch.Tensor, grads: Sequence[torch.Tensor], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, params: Sequence, state_names: Sequence[str], tolerance: float,
            step: int, shapes: tuple) -> CheckResult:
    """The planned step's loss and gradients, and the model and optimizer it trained, against ``eager``."""
    parts = {
        "loss": [(loss, eager.loss)],
        "gradients": list(zip(grads, eager.grads, strict=True)),
        "parameters": list(zip(model.parameters(), eager.model.parameters(), strict=True)),
        "buffers": list(zip(model.buffers(), eager.model.buffers(), strict=True)),
        "optimizer-state tensors": list(_state_pairs(optimizer, params, eager, state_names)),
    }
    diffs, counts, bitwise = {}, {}, True
    for part, pairs in parts.items():
        rels = [_rel(x, r) for x, r in pairs]
        diffs[part] = max((r for r, _ in rels), default=0.0)
        counts[part] = len(pairs)
        bitwise = bitwise and all(same for _, same in rels)
    return CheckResult(step, shapes, bitwise, diffs, counts, tolerance)


@torch.no_grad()
def adopt(eager: EagerStep, model: torch.nn.Module, optimizer: torch.optim.Optimizer, params: Sequence,
          state_names: Sequence[str]) -> None:
    """Set the model and optimizer to the eager step's result (after a failed check)."""
    for mine, theirs in [*zip(model.parameters(), eager.model.parameters()), *zip(model.buffers(), eager.model.buffers())]:
        mine.copy_(theirs)
    for mine, theirs in _state_pairs(optimizer, params, eager, state_names):
        if mine is not None and theirs is not None:
            mine.copy_(theirs)
