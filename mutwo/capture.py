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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
           "eager_optimizer", "eager_step", "run_step",
           "HYPERPARAMETERS", "BRANCHING", "ParamGroup", "BoundOptimizer", "hyperparameter_values",
           "branches"]


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


def _update(name: str, params, grads, states, opts: Mapping) -> None:
    """torch.optim's own single-tensor update of ``params`` with the options ``opts``."""
    if name == "sgd":
        bufs = states[0] if states else [None] * len(params)
        _sgd_update(params, grads, bufs, foreach=False, weight_decay=opts["weight_decay"],
                            momentum=opts["momentum"], lr=opts["lr"], dampening=opts["dampening"],
                            nesterov=opts["nesterov"], maximize=False)
        return
    fn = _adam_update if name == "adam" else _adamw_update
    exp_avg, exp_avg_sq, steps = states
    fn(params, grads, exp_avg, exp_avg_sq, [], steps, foreach=False, capturable=False, amsgrad=False,
       beta1=opts["betas"][0], beta2=opts["betas"][1], lr=opts["lr"], weight_decay=opts["weight_decay"],
       eps=opts["eps"], maximize=False)


def _optimizer_update(config: OptimizerConfig, params, grads, states, hyper: Sequence = ()) -> None:
    """The optimizer step: with an OptimizerConfig its options are constants of the graph; with a
    `BoundOptimizer` each group's hyperparameters are ``hyper`` (values of graph inputs)."""
    if not isinstance(config, BoundOptimizer):
        _update(config.name, params, grads, states, config.resolved())
        return
    k = len(HYPERPARAMETERS[config.name])
    for g, group in enumerate(config.groups):
        idx = group.params
        opts = _traced_options(config.name, group.options, hyper[g * k:(g + 1) * k])
        _update(config.name, [params[i] for i in idx], [grads[i] for i in idx], [[s[i] for i in idx] for s in states],
                opts)


# ---------------------------------------------------------------------- hyperparameters as graph inputs
# The numbers a learning-rate scheduler (or the user) may change between steps, per optimizer, in the
# order a BoundOptimizer's ``hyper`` tensors hold them (betas as beta1, beta2).
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "adam": ("lr", "beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("lr", "beta1", "beta2", "eps", "weight_decay"),
}
# torch.optim takes another code path when one of these is zero: a graph holds one of the two paths
BRANCHING = ("momentum", "weight_decay")


def hyperparameter_values(name: str, options: Mapping) -> list[float]:
    """``options`` (OptimizerConfig's names: lr, betas, ...) as floats in `HYPERPARAMETERS` order."""
    named = dict(options)
    if "betas" in named:
        named["beta1"], named["beta2"] = named["betas"]
    return [float(named[k]) for k in HYPERPARAMETERS[name]]


def branches(name: str, options: Mapping) -> tuple[bool, ...]:
    """Which `BRANCHING` hyperparameters of ``options`` are non-zero (a graph is valid for one pattern)."""
    return tuple(bool(options[k] != 0) for k in BRANCHING if k in HYPERPARAMETERS[name])


def _traced_options(name: str, options: Mapping, values: Sequence) -> dict:
    """A group's options with every hyperparameter replaced by its value read from the graph input
    (a symbolic float while tracing, a Python float when the graph runs: the update is torch.optim's,
    with the numbers of this step). A branching one that is zero stays the constant 0; one that is not is
    declared non-zero, so the trace takes torch.optim's path for it."""
    named = dict(zip(HYPERPARAMETERS[name], values, strict=True))
    for key in BRANCHING:
        if key in named:
            if options[key] == 0:
                named[key] = options[key]
            else:
                torch._check(named[key] != 0)
    out = dict(options)
    if "beta1" in named:
        out["betas"] = (named.pop("beta1"), named.pop("beta2"))
    out.update(named)
    return out


@dataclass(frozen=True)
class ParamGroup:
    """Parameters (positions in ``model.parameters()``) updated with one set of options."""

    params: tuple[int, ...]
    options: dict  # OptimizerConfig's option names, resolved (lr, momentum, betas, ...)


@dataclass
class BoundOptimizer(OptimizerConfig):
    """An optimizer bound to tensors, for training a user's own optimizer in place (`mutwo.optimize`).

    ``groups``: torch.optim-style parameter groups, each with its own options; ``options`` is the first
    group's (what `OptimizerConfig.state_names` reads). ``states``: the state tensors to capture with,
    in ``state_names()`` order, each a list over all parameters (None: zeros). ``hyper``: one 0-dim
    float64 tensor per group and `HYPERPARAMETERS` name, graph inputs read with ``.item()`` at every
    step, so a new learning rate written into them is used by the next step. The graph holds one
    pattern of `branches` per group.
    """

    groups: list[ParamGroup] = field(default_factory=list)
    states: list[list[torch.Tensor]] | None = None
    hyper: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(HYPERPARAMETERS[self.name])
        if len(self.hyper) != k * len(self.groups):
            raise ValueError(f"BoundOptimizer: {len(self.groups)} groups of {self.name} need {k * len(self.groups)} "
                             f"hyperparameter tensors, got {len(self.hyper)}")
        bad = [h for h in self.hyper if h.dim() != 0 or h.dtype != torch.float64 or h.device.type != "cpu"]
        if bad:
            raise ValueError("BoundOptimizer.hyper holds 0-dim float64 CPU tensors (their .item() is the exact "
                             "Python float torch.optim would use)")


def flat_state(workload: Workload, config: OptimizerConfig, states=None) -> tuple[list[torch.Tensor], list[Role], list[str]]:
    """The graph's inputs, in order: parameters, buffers, optimizer state (a `BoundOptimizer`'s
    hyperparameter tensors last), batch inputs."""
    model = workload.model
    params = [p.detach() for p in model.parameters()]
    pnames = [n for n, _ in model.named_parameters()]
    buffers = [b.detach() for b in model.buffers()]
    bnames = [n for n, _ in model.named_buffers()]
    bound = isinstance(config, BoundOptimizer)
    if states is None:
        states = config.states if bound and config.states is not None else _init_state(params, config)
    snames = [f"{s}.{n}" for s in config.state_names() for n in pnames]
    hyper = list(config.hyper) if bound else []
    hnames = [f"hyper.{g}.{k}" for g in range(len(config.groups)) for k in HYPERPARAMETERS[config.name]] if bound else []
    flat = [*params, *buffers, *[t for group in states for t in group], *hyper, *workload.inputs]
    roles = ([Role.PARAM] * len(params) + [Role.BUFFER] * len(buffers)
             + [Role.OPT_STATE] * (len(snames) + len(hnames)) + [Role.INPUT] * len(workload.inputs))
    names = pnames + bnames + snames + hnames + [f"input{i}" for i in range(len(workload.inputs))]
    return flat, roles, names


# ---------------------------------------------------------------------- tracing
def _step_fn(workload: Workload, config: OptimizerConfig, n_params: int, n_buffers: int, n_states: int,
             n_hyper: int = 0):
    model = workload.model
    pnames = [n for n, _ in model.named_parameters()]
    bnames = [n for n, _ in model.named_buffers()]
    n_groups = len(config.state_names())

    def step(*flat):
        params = list(flat[:n_params])
        buffers = flat[n_params:n_params + n_buffers]
        state_flat = flat[n_params + n_buffers:n_params + n_buffers + n_states]
        hyper = flat[n_params + n_buffers + n_states:n_params + n_buffers + n_states + n_hyper]
        inputs = flat[n_params + n_buffers + n_states + n_hyper:]
        leaves = [p.detach().requires_grad_(True) for p in params]
        with _reparametrize_module(model, {**dict(zip(pnames, leaves)), **dict(zip(bnames, buffers))},
                                   tie_weights=True):
            loss = workload.loss_fn(model, *inputs)
        loss = fwd_end(loss)
        grads = torch.autograd.grad(loss, leaves)
        states = [list(state_flat[i * n_params:(i + 1) * n_params]) for i in range(n_groups)]
        with torch.no_grad():
            _optimizer_update(config, params, list(grads), states, [h.item() for h in hyper])
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


def _failure_site(exc: BaseException, model: torch.nn.Module | None) -> tuple[str | None, str | None]:
    """(the op that failed, the path of the innermost submodule of ``model`` running it), read from the
    traceback's frames (torch's dispatch frames name the op ``func``; module calls hold ``self``)."""
    names = {id(m): n or "<root>" for n, m in model.named_modules()} if model is not None else {}
    op = path = None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        func = local.get("func")
        if isinstance(func, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
            op = str(func)
        elif callable(func) and hasattr(func, "__objclass__"):  # a Tensor method: Tensor.__bool__, .item
            op = f"Tensor.{func.__name__}"
        module = local.get("self")
        if tb.tb_frame.f_code.co_name == "_call_impl" and id(module) in names:
            path = f"{names[id(module)]} ({type(module).__name__})"
        tb = tb.tb_next
    return op, path


_ADVICE = ("compute with tensor ops instead of branching on a tensor's value (torch.where, masks), pass "
           "such values as Python numbers, or move the check out of forward; Hugging Face BERT: pass an "
           "attention_mask and build the model with attn_implementation='eager'")


def _trace(fn, args, mode: str, model: torch.nn.Module | None = None) -> fx.GraphModule:
    try:
        return make_fx(fn, tracing_mode=mode)(*args)
    except Exception as exc:  # noqa: BLE001 - rewrapped with the user's line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        op, path = _failure_site(exc, model)
        where = (f" op {op}" if op else "") + (f" in module {path}" if path else "")
        hint = ""
        if "data-dependent" in str(exc) or "DataDependent" in type(exc).__name__ or "_local_scalar_dense" in str(exc):
            hint = (" — the model reads a tensor value in Python (data-dependent control flow), which a "
                    f"static graph cannot capture; {_ADVICE}")
        raise CaptureError(f"cannot capture the training step:{where} at {_user_frame(exc)}: {text}{hint}") from exc


def _dynamic_shape_node(gm: fx.GraphModule) -> fx.Node | None:
    """The first op whose output shape depends on tensor values (boolean masks, ``nonzero``)."""
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and not all(isinstance(d, int) for d in val.shape):
            return node
    return None


def _dynamic_shape_error(fn, args, mode: str, node: fx.Node) -> CaptureError:
    """The error for ``node`` (a data-dependent shape), with the user's line: the step is traced once
    more recording stack traces, which costs too much to do on every capture."""
    again = make_fx(fn, tracing_mode=mode, record_stack_traces=True)(*args)
    same = next((n for n in again.graph.nodes if n.name == node.name), None)
    lines = [x.strip() for x in ((same.meta.get("stack_trace") or "") if same is not None else "").splitlines()]
    files = [i for i, x in enumerate(lines) if x.startswith("File ")]
    at = f" at {' '.join(lines[files[-1]:files[-1] + 2])}" if files else ""
    return CaptureError(f"cannot capture the training step: op {node.target}{at} makes a tensor whose shape "
                        f"depends on tensor values {tuple(node.meta['val'].shape)}, which a static graph cannot "
                        f"plan; {_ADVICE}")


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
    if not model.training:  # a model in training mode keeps its submodules' own modes (a frozen batch norm)
        model.train()
    flat, roles, names = flat_state(workload, config, states)
    n_params = roles.count(Role.PARAM)
    n_buffers = roles.count(Role.BUFFER)
    n_hyper = len(config.hyper) if isinstance(config, BoundOptimizer) else 0
    n_states = roles.count(Role.OPT_STATE) - n_hyper
    step = _step_fn(workload, config, n_params, n_buffers, n_states, n_hyper)
    # tracing must not touch the real tensors: run on clones where values matter (real mode)
    args = _fake_cpu(flat) if tracing == "fake" else [t.clone() for t in flat]
    gm0 = _trace(step, args, tracing, model)
    dynamic = _dynamic_shape_node(gm0)
    if dynamic is not None:
        raise _dynamic_shape_error(step, args, tracing, dynamic)
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

