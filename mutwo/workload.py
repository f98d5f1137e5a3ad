"""What one training step is made of before it is captured: a model with one example batch and its loss
(`Workload`), the optimizer (`OptimizerConfig`) and the device (`resolve_device`).

Importing this module does not import torch, so a scenario can be checked against these types (the
optimizer's option names, a builder's return annotation) without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Workload", "OptimizerConfig", "resolve_device"]


@dataclass
class Workload:
    """A model, one example batch and ``loss_fn(model, *inputs) -> scalar``."""

    model: torch.nn.Module
    inputs: tuple
    loss_fn: Callable[..., torch.Tensor]
    name: str = "workload"


@dataclass
class OptimizerConfig:
    """``name`` in sgd / adam / adamw, with torch.optim's keyword options."""

    name: str = "adam"
    options: dict = field(default_factory=dict)

    def resolved(self) -> dict:
        defaults = {
            "sgd": {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.0, "dampening": 0.0, "nesterov": False},
            "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
            "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
        }
        if self.name not in defaults:
            raise ValueError(f"optimizer.name={self.name!r} is not supported; use one of {sorted(defaults)}")
        unknown = set(self.options) - set(defaults[self.name])
        if unknown:
            raise ValueError(f"optimizer.options has unknown keys {sorted(unknown)} for {self.name}; "
                             f"known: {sorted(defaults[self.name])}")
        return {**defaults[self.name], **self.options}

    def state_names(self) -> list[str]:
        if self.name == "sgd":
            return ["momentum_buffer"] if self.resolved()["momentum"] else []
        return ["exp_avg", "exp_avg_sq", "step"]


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False; "
                         "use device: auto or cpu")
    return device
