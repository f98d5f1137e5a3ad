"""A user's ``torch.optim`` optimizer, bound to the captured training step (`mutwo.optimize`).

The captured step takes parameters, buffers and optimizer state as arguments and updates them in
place; here those arguments are the user's own tensors, so the planned step trains the user's model
and optimizer and their ``state_dict()`` stays what torch.optim would hold. Hyperparameters are read
from ``optimizer.param_groups`` at every step into small tensors the graph reads (a scheduler's new
learning rate is used by the next step); docs/optimize.md says why, and what is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mutwo.capture import HYPERPARAMETERS, BoundOptimizer, ParamGroup, branches, hyperparameter_values

__all__ = ["SUPPORTED", "UnsupportedOptimizerError", "OptimizerBinding", "optimizer_name", "group_options"]

SUPPORTED: dict[type, str] = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
_SUPPORTED_TEXT = ("torch.optim.SGD, torch.optim.Adam and torch.optim.AdamW (single-tensor or foreach; without "
                   "fused, capturable, differentiable, amsgrad or maximize)")
# group flags that change torch.optim's arithmetic from the single-tensor update the step runs
_REFUSED_FLAGS = ("fused", "capturable", "differentiable", "amsgrad", "maximize")


class UnsupportedOptimizerError(ValueError):
    """The optimizer (its class, a flag, or how its groups cover the model) cannot be trained in place."""


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """``sgd``, ``adam`` or ``adamw`` (Adam with ``decoupled_weight_decay`` is AdamW's update)."""
    name = SUPPORTED.get(type(optimizer))
    if name is None:
        raise UnsupportedOptimizerError(f"{type(optimizer).__module__}.{type(optimizer).__qualname__} is not supported "
                                        f"by mutwo.optimize; supported: {_SUPPORTED_TEXT}")
    if name == "adam" and optimizer.defaults.get("decoupled_weight_decay"):
        return "adamw"
    return name


def _number(group: dict, key: str, index: int) -> float:
    value = group[key]
    if isinstance(value, torch.Tensor):
        raise UnsupportedOptimizerError(f"param_groups[{index}][{key!r}] is a Tensor; mutwo.optimize reads "
                                        f"hyperparameters as Python floats: give it as a float")
    return float(value)


def group_options(name: str, group: dict, index: int = 0) -> dict:
    """A torch.optim param group's options under OptimizerConfig's names (lr, momentum, betas, ...);
    UnsupportedOptimizerError for a flag that changes the update's arithmetic."""
    on = [k for k in _REFUSED_FLAGS if group.get(k)]
    if on:
        raise UnsupportedOptimizerError(f"param_groups[{index}] has {on[0]}=True, which mutwo.optimize does not "
                                        f"support; supported: {_SUPPORTED_TEXT}")
    if name == "sgd":
        return {"lr": _number(group, "lr", index), "momentum": _number(group, "momentum", index),
                "weight_decay": _number(group, "weight_decay", index),
                "dampening": _number(group, "dampening", index), "nesterov": bool(group["nesterov"])}
    beta1, beta2 = group["betas"]
    return {"lr": _number(group, "lr", index),
            "betas": (_number({"beta1": beta1}, "beta1", index), _number({"beta2": beta2}, "beta2", index)),
            "eps": _number(group, "eps", index), "weight_decay": _number(group, "weight_decay", index)}


def _refuse_step_hooks(optimizer: torch.optim.Optimizer) -> None:
    """The planned step does not call ``optimizer.step()``: hooks on it would silently not run."""
    from torch.optim import optimizer as optim_module

    hooks = [*getattr(optimizer, "_optimizer_step_pre_hooks", {}).values(),
             *getattr(optimizer, "_optimizer_step_post_hooks", {}).values(),
             *getattr(optim_module, "_global_optimizer_pre_hooks", {}).values(),
             *getattr(optim_module, "_global_optimizer_post_hooks", {}).values()]
    if hooks:
        raise UnsupportedOptimizerError(f"the optimizer has step hooks ({getattr(hooks[0], '__qualname__', hooks[0])}); "
                                        f"the planned step updates the state itself without calling optimizer.step(), "
                                        f"so they would not run: remove them to train with mutwo.optimize")


@dataclass
class OptimizerBinding:
    """Which of the model's parameters each param group updates, and the hyperparameter tensors the
    captured steps read (shared by the plans of every batch shape)."""

    optimizer: torch.optim.Optimizer
    name: str
    params: list[torch.nn.Parameter]  # model.parameters() order: the captured step's order
    groups: tuple[tuple[int, ...], ...]  # per param group, positions in ``params``
    hyper: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def bind(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> OptimizerBinding:
        """Check that ``optimizer`` is supported and updates exactly the model's parameters."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UnsupportedOptimizerError(f"optimizer must be a torch.optim optimizer, got {type(optimizer).__name__}; "
                                            f"supported: {_SUPPORTED_TEXT}")
        name = optimizer_name(optimizer)
        _refuse_step_hooks(optimizer)
        params = list(model.parameters())
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        if frozen:
            raise UnsupportedOptimizerError(f"parameter {frozen[0]!r} has requires_grad=False; mutwo.optimize trains "
                                            f"every parameter of the model (frozen parameters are not supported)")
        index = {id(p): i for i, p in enumerate(params)}
        groups, seen = [], set()
        for g, group in enumerate(optimizer.param_groups):
            group_options(name, group, g)
            ids = [index.get(id(p)) for p in group["params"]]
            if None in ids:
                raise UnsupportedOptimizerError(f"param_groups[{g}] holds a tensor that is not a parameter of the model; "
                                                f"the optimizer must update the model's own parameters")
            groups.append(tuple(ids))
            seen.update(ids)
        missing = [n for (n, _), i in zip(model.named_parameters(), range(len(params))) if i not in seen]
        if missing:
            raise UnsupportedOptimizerError(f"parameter {missing[0]!r} is in no param group of the optimizer; "
                                            f"mutwo.optimize trains every parameter of the model")
        binding = cls(optimizer, name, params, tuple(groups))
        binding.hyper = [torch.zeros((), dtype=torch.float64) for _ in range(len(groups) * len(HYPERPARAMETERS[name]))]
        binding._check_momentum(binding.options())
        return binding

    # ------------------------------------------------------------------ every step
    def options(self) -> list[dict]:
        """Each group's options now (a scheduler may have changed them since the last step)."""
        if len(self.optimizer.param_groups) != len(self.groups) or any(
                len(g["params"]) != len(ids) for g, ids in zip(self.optimizer.param_groups, self.groups)):
            raise UnsupportedOptimizerError("the optimizer's param groups changed since mutwo.optimize was called; "
                                            "call mutwo.optimize again with the optimizer as it is now")
        return [group_options(self.name, g, i) for i, g in enumerate(self.optimizer.param_groups)]

    def structure(self, options: Sequence[dict]) -> tuple:
        """What a captured step is specific to besides shapes: which branching hyperparameters are
        non-zero, and nesterov (a change captures and plans the step again)."""
        return tuple((*branches(self.name, o), bool(o.get("nesterov", False))) for o in options)

    def write_hyper(self, options: Sequence[dict]) -> None:
        """This step's hyperparameters into the tensors the graph reads."""
        values = [v for o in options for v in hyperparameter_values(self.name, o)]
        for t, v in zip(self.hyper, values, strict=True):
            t.fill_(v)

    def stepped(self) -> None:
        """Tell a learning-rate scheduler the optimizer stepped, as ``optimizer.step()`` would (its
        wrapper sets this flag; without it the scheduler warns that it ran before the optimizer)."""
        self.optimizer._opt_called = True  # type: ignore[attr-defined]

    def check_model(self, model: torch.nn.Module) -> None:
        """The model still has the parameters the optimizer was bound to."""
        now = list(model.parameters())
        if len(now) != len(self.params) or any(a is not b for a, b in zip(now, self.params)):
            raise UnsupportedOptimizerError("the model's parameters were replaced since mutwo.optimize was called; "
                                            "call mutwo.optimize again with the model and optimizer as they are now")

    # ------------------------------------------------------------------ state
    def state_names(self, options: Sequence[dict]) -> list[str]:
        return self.config(options).state_names()

    def _check_momentum(self, options: Sequence[dict]) -> None:
        if self.name == "sgd" and len({o["momentum"] != 0 for o in options}) > 1:
            raise UnsupportedOptimizerError("SGD param groups with and without momentum are not supported together; "
                                            "give every group momentum, or none")

    def states(self, options: Sequence[dict], install: bool) -> list[list[torch.Tensor]]:
        """The optimizer's state tensors, per state name a list over all parameters. Missing ones are
        made as torch.optim makes them before its first step (zeros; Adam's step a float CPU tensor);
        ``install``: stored in ``optimizer.state`` (the step then trains them in place)."""
        from torch.optim.optimizer import _get_scalar_dtype

        self._check_momentum(options)
        names = self.state_names(options)
        group_of = {i: g for g, ids in enumerate(self.groups) for i in ids}
        out: list[list[torch.Tensor]] = [[] for _ in names]
        for i, p in enumerate(self.params):
            state = self.optimizer.state[p] if install else dict(self.optimizer.state.get(p, {}))
            for k, name in enumerate(names):
                if state.get(name) is None:
                    if name == "momentum_buffer" and options[group_of[i]]["dampening"] != 0:
                        raise UnsupportedOptimizerError(
                            "SGD with dampening makes its momentum buffer from the first gradient (undamped), which "
                            "the captured step cannot do; take the first step eagerly (loss.backward(); "
                            "optimizer.step()) before the planned steps, or use dampening=0")
                    state[name] = (torch.tensor(0.0, dtype=_get_scalar_dtype()) if name == "step" else
                                   torch.zeros_like(p, memory_format=torch.preserve_format))
                out[k].append(state[name])
        return out

    def config(self, options: Sequence[dict], states: list[list[torch.Tensor]] | None = None) -> BoundOptimizer:
        """The optimizer as `mutwo.capture` captures it: these groups, ``states``, the shared hyperparameters."""
        return BoundOptimizer(self.name, dict(options[0]),
                              groups=[ParamGroup(ids, dict(o)) for ids, o in zip(self.groups, options)],
                              states=states, hyper=self.hyper)
