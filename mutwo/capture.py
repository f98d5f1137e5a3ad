"""Capture one whole training step (forward, loss, backward, optimizer) as one fx graph.

How: ``make_fx`` traces a step function in which parameters, buffers, optimizer state and inputs are
arguments (so the graph can be run again and again as a training step); the optimizer is PyTorch's own
single-tensor functional update, so the math is the eager optimizer's. A second trace through
``functionalize`` removes in-place ops from forward and backward (``relu_``, residual ``add_``), which
would make recomputation unsafe. Updates of parameters, optimizer state and buffers stay as ``copy_``
into the inputs, moved to right after their value is ready so the new values do not pile up until the
end of the step. Two identity ops mark the forward/backward boundary.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.nn.utils.stateless import _reparametrize_module
from torch.optim.adam import adam as _adam_update
from torch.optim.adamw import adamw as _adamw_update
from torch.optim.sgd import sgd as _sgd_update

from mutwo.graph import Role, TrainGraph
from mutwo.workload import OptimizerConfig, Workload  # defined there (torch-free); still importable here

__all__ = ["Workload", "OptimizerConfig", "CaptureError", "capture", "fwd_end", "flat_state",
           "eager_optimizer", "eager_step", "run_step"]


# ---------------------------------------------------------------------- boundary markers
@torch.library.custom_op("mutwo::fwd_end", mutates_args=())
def fwd_end(x: torch.Tensor) -> torch.Tensor:
    """Identity on the loss: the last forward op."""
    return x.clone()


@fwd_end.register_fake
def _fwd_end_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("mutwo::bwd_start", mutates_args=())
def bwd_start(x: torch.Tensor) -> torch.Tensor:
    """Identity on the loss gradient: the first backward op."""
    return x.clone()


@bwd_start.register_fake
def _bwd_start_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


fwd_end.register_autograd(lambda ctx, grad: bwd_start(grad))


# ---------------------------------------------------------------------- errors, eager reference, state
class CaptureError(RuntimeError):
    """The model cannot be captured as one static graph; the message names the op or line."""


def eager_optimizer(model: torch.nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """The torch.optim optimizer whose update the captured graph performs (for equivalence checks)."""
    opts = config.resolved()
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.name]
    return cls(model.parameters(), foreach=False, **opts)


def eager_step(workload: Workload, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None) -> torch.Tensor:
    """One eager PyTorch training step of ``model`` (default: the workload's) on the workload's batch:
    forward, loss, backward, ``optimizer.step()`` (e.g. `eager_optimizer`'s). Returns the loss."""
    model = workload.model if model is None else model
    optimizer.zero_grad()
    loss = workload.loss_fn(model, *workload.inputs)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _init_state(params: Sequence[torch.Tensor], config: OptimizerConfig) -> list[list[torch.Tensor]]:
    """Optimizer state as eager torch.optim would hold it before its first step (zeros)."""
    states = []
    for name in config.state_names():
        if name == "step":
            states.append([torch.zeros((), dtype=torch.float32, device=p.device) for p in params])
        else:
            states.append([torch.zeros_like(p, memory_format=torch.preserve_format) for p in params])
    return states


def _optimizer_update(config: OptimizerConfig, params, grads, states) -> None:
    opts = config.resolved()
    if config.name == "sgd":
        bufs = states[0] if states else [None] * len(params)
        _sgd_update(params, grads, bufs, foreach=False, weight_decay=opts["weight_decay"],
                            momentum=opts["momentum"], lr=opts["lr"], dampening=opts["dampening"],
                            nesterov=opts["nesterov"], maximize=False)
        return
    fn = _adam_update if config.name == "adam" else _adamw_update
    exp_avg, exp_avg_sq, steps = states
    fn(params, grads, exp_avg, exp_avg_sq, [], steps, foreach=False, capturable=False, amsgrad=False,
       beta1=opts["betas"][0], beta2=opts["betas"][1], lr=opts["lr"], weight_decay=opts["weight_decay"],
       eps=opts["eps"], maximize=False)


def flat_state(workload: Workload, config: OptimizerConfig, states=None) -> tuple[list[torch.Tensor], list[Role], list[str]]:
    """The graph's inputs, in order: parameters, buffers, optimizer state, batch inputs."""
    model = workload.model
    params = [p.detach() for p in model.parameters()]
    pnames = [n for n, _ in model.named_parameters()]
    buffers = [b.detach() for b in model.buffers()]
    bnames = [n for n, _ in model.named_buffers()]
    states = _init_state(params, config) if states is None else states
    snames = [f"{s}.{n}" for s in config.state_names() for n in pnames]
    flat = [*params, *buffers, *[t for group in states for t in group], *workload.inputs]
    roles = ([Role.PARAM] * len(params) + [Role.BUFFER] * len(buffers)
             + [Role.OPT_STATE] * len(snames) + [Role.INPUT] * len(workload.inputs))
    names = pnames + bnames + snames + [f"input{i}" for i in range(len(workload.inputs))]
    return flat, roles, names


# ---------------------------------------------------------------------- tracing
def _step_fn(workload: Workload, config: OptimizerConfig, n_params: int, n_buffers: int, n_states: int):
    model = workload.model
    pnames = [n for n, _ in model.named_parameters()]
    bnames = [n for n, _ in model.named_buffers()]
    n_groups = len(config.state_names())

    def step(*flat):
        params = list(flat[:n_params])
        buffers = flat[n_params:n_params + n_buffers]
        state_flat = flat[n_params + n_buffers:n_params + n_buffers + n_states]
        inputs = flat[n_params + n_buffers + n_states:]
        leaves = [p.detach().requires_grad_(True) for p in params]
        with _reparametrize_module(model, {**dict(zip(pnames, leaves)), **dict(zip(bnames, buffers))},
                                   tie_weights=True):
            loss = workload.loss_fn(model, *inputs)
        loss = fwd_end(loss)
        grads = torch.autograd.grad(loss, leaves)
        states = [list(state_flat[i * n_params:(i + 1) * n_params]) for i in range(n_groups)]
        with torch.no_grad():
            _optimizer_update(config, params, list(grads), states)
        return loss.detach(), list(grads)

    return step


def _user_frame(exc: BaseException) -> str:
    """The innermost stack frame outside torch: the user's line that made the trace fail."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "/torch/" not in f.filename and "/mutwo/capture.py" not in f.filename]
    if not mine:
        return "<unknown location>"
    f = mine[-1]
    return f"{f.filename}:{f.lineno} ({f.line})"


def _fake_cpu(args: Sequence) -> list:
    """Meta tensors as fake CPU tensors of one fake mode (nothing allocated). On ``meta`` PyTorch picks
    kernels as no real device would: SDPA falls back to its math decomposition (an S x S matrix where a
    fused kernel saves none) and autocast does not apply. As fake CPU tensors they trace as on a device."""
    if not any(isinstance(t, torch.Tensor) and t.is_meta for t in args):
        return list(args)
    mode = FakeTensorMode(allow_fallback_kernels=True, shape_env=ShapeEnv(), static_shapes=True)
    return [FakeTensor(mode, t, torch.device("cpu")) if t.is_meta else mode.from_tensor(t) for t in args]


def _trace(fn, args, mode: str) -> fx.GraphModule:
    try:
        return make_fx(fn, tracing_mode=mode)(*args)
    except Exception as exc:  # noqa: BLE001 - rewrapped with the user's line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "data-dependent" in str(exc) or "DataDependent" in type(exc).__name__ or "_local_scalar_dense" in str(exc):
            hint = (" — the model reads a tensor value in Python (data-dependent control flow), which a "
                    "static graph cannot capture")
        raise CaptureError(f"cannot capture the training step at {_user_frame(exc)}: {text}{hint}") from exc


def _cleanup(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop alias/detach nodes (they hide real users) and move input updates next to their values."""
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_function" and node.target in (torch.ops.aten.alias.default,
                                                          torch.ops.aten.detach.default):
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    order = {n: i for i, n in enumerate(g.nodes)}
    for node in list(g.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.copy_.default and not node.users:
            dst, src = node.args[0], node.args[1]
            deps = [src] + [u for u in dst.users if u is not node]
            anchor = max(deps, key=lambda n: order[n])
            # getitem values are ready with their parent; never place before the value exists
            if anchor.next is not node:
                anchor.append(node)
    g.lint()
    gm.recompile()
    return gm


def capture(workload: Workload, optimizer: OptimizerConfig | str = "adam", *, tracing: str = "fake",
            states=None) -> TrainGraph:
    """Trace ``workload``'s whole training step into a TrainGraph.

    ``tracing="fake"`` allocates no activation memory (fake tensors), so large batches can be analysed;
    models built on the ``meta`` device are analysed without allocating parameters either (traced as
    fake CPU tensors, so kernels are chosen as on a real device).
    """
    config = OptimizerConfig(optimizer) if isinstance(optimizer, str) else optimizer
    model = workload.model
    model.train()
    flat, roles, names = flat_state(workload, config, states)
    n_params = roles.count(Role.PARAM)
    n_buffers = roles.count(Role.BUFFER)
    n_states = roles.count(Role.OPT_STATE)
    step = _step_fn(workload, config, n_params, n_buffers, n_states)
    # tracing must not touch the real tensors: run on clones where values matter (real mode)
    args = _fake_cpu(flat) if tracing == "fake" else [t.clone() for t in flat]
    gm0 = _trace(step, args, tracing)
    gm = _trace(functionalize(gm0, remove="mutations"), args, tracing)
    gm = _cleanup(gm)
    tg = TrainGraph(gm, roles, names, n_params)
    tg.description = {"workload": workload.name, "optimizer": config.name,
                      "optimizer_options": config.resolved(), "tracing": tracing,
                      "n_inputs": len(flat)}
    return tg


def run_step(train_graph: TrainGraph, flat: Sequence[torch.Tensor], module: fx.GraphModule | None = None):
    """Run one training step in place on ``flat`` (parameters, buffers and state are updated)."""
    module = train_graph.gm if module is None else module
    return module(*flat)

