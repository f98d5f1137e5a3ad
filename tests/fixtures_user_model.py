"""A user's own model builder, named in a scenario as ``tests.fixtures_user_model:build``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mutwo.workload import Workload


def _loss(model, x, y):
    return F.mse_loss(model(x), y)


def build(batch_size: int, hidden: int = 48, layers: int = 3) -> Workload:
    """A small tanh MLP regression; no ``device`` argument, so the driver moves it."""
    torch.manual_seed(0)
    mods: list[torch.nn.Module] = []
    for i in range(layers):
        mods += [torch.nn.Linear(hidden if i else 16, hidden), torch.nn.Tanh()]
    model = torch.nn.Sequential(*mods, torch.nn.Linear(hidden, 4))
    return Workload(model, (torch.randn(batch_size, 16), torch.randn(batch_size, 4)), _loss, "user-mlp")


def not_a_workload(batch_size: int) -> dict:
    """Returns the wrong type: the driver must say so."""
    return {"batch_size": batch_size}


class Branchy(torch.nn.Module):
    """Data-dependent control flow (a branch on a tensor's value): what capture must refuse, naming the
    user's line (this file) and the op."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        if h.sum() > 0:  # data-dependent control flow
            h = h * 2
        return h.sum()
