"""Estimated per-op times of a captured training step on a target device (a roofline model).

For every op of a `TrainGraph` (its nodes carry fake tensors in ``node.meta["val"]``):

- FLOPs come from ``torch.utils.flop_counter``'s registered formulas (matmul, convolution, attention);
  no FLOP table is written here. The CPU flash-attention ops, which PyTorch picks when a model is traced
  on fake CPU tensors, are counted with the formula of their CUDA counterpart (same arguments).
- Bytes moved are the op's distinct input storages (each at most the bytes of the view read) plus its
  new outputs (storage sizes) and what it writes in place.
- Time = max(FLOPs / (FLOP/s of the compute dtype x efficiency), bytes / (bandwidth x efficiency),
  launch floor), with one efficiency per op class (`mutwo.devices.DEFAULT_EFFICIENCY`). View and
  scalar ops cost the launch floor alone.

Ops no class covers are counted as memory-bound and listed in ``unknown_ops`` (once per op name),
never a crash. Transient (in-kernel scratch) memory is not estimated: it is 0. The result is an
`EstimatedProfile`, which `mutwo.problem_build.build_problem` takes like a measured Profile. Rules and
assumptions: docs/devices.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.flop_counter import flop_registry

from mutwo.devices import DEFAULT_EFFICIENCY, LOCAL_CPU, DeviceSpec, get_device
from mutwo.graph import TrainGraph, mutated_args
from mutwo.profile import Profile

__all__ = ["EstimatedProfile", "OpCost", "estimate_profile", "estimate_ops", "op_cost", "roofline_time",
           "calibrate_local_cpu", "compute_dtype"]

aten = torch.ops.aten

# CPU flash attention has the arguments of the CUDA flash op where the formulas read them (query, key,
# value; grad_out, query, key, value): its FLOPs are the same
_FLOP_ALIASES = {
    aten._scaled_dot_product_flash_attention_for_cpu: aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: aten._scaled_dot_product_flash_attention_backward,
}
# ops that only move bytes (beside in-place writes, which are copies too); mutwo's boundary markers clone
_COPIES = {"clone", "_to_copy", "copy", "cat", "stack", "constant_pad_nd", "slice_backward", "select_backward",
           "fwd_end", "bwd_start", "contiguous"}
# ops that read rows of a table (or one entry per row, the loss): of each input at most what they write
_GATHERS = {"embedding", "index", "index_select", "gather", "nll_loss_forward", "nll_loss2d_forward"}
# ops whose first argument is only the destination (its old values are not read)
_OVERWRITES = {"copy_", "copy"}
# memory-bound families that carry no pointwise / reduction tag (matched in the op's name)
_NORM_WORDS = ("norm", "softmax")
_MEMORY_WORDS = ("embedding", "index", "gather", "scatter", "loss", "pool", "cumsum", "tril", "triu", "where",
                 "masked_fill", "dropout", "bernoulli", "fill", "_like", "new_", "empty", "_unsafe_view", "repeat",
                 "flip", "roll", "sort", "topk")


@dataclass(frozen=True)
class OpCost:
    """What the estimator saw for one op and the time it gives."""

    op_class: str  # one of mutwo.devices.OP_CLASSES
    flops: float  # 0 when the op has no FLOP formula
    nbytes: int  # bytes read and written
    dtype: str  # compute dtype used for the FLOP rate ("" for non-compute ops)
    time_s: float
    note: str = ""  # why an op is "unknown"


def roofline_time(flops: float, nbytes: float, flops_per_s: float, bytes_per_s: float, efficiency: float,
                  floor_s: float) -> float:
    """The larger of compute and memory time at ``efficiency`` of the peaks, at least ``floor_s``."""
    compute = flops / (flops_per_s * efficiency) if flops else 0.0
    memory = nbytes / (bytes_per_s * efficiency) if nbytes else 0.0
    return max(compute, memory, floor_s)


def compute_dtype(dtype: torch.dtype, op_class: str, tf32_matmul: bool, tf32_conv: bool) -> str:
    """The rate an op's inputs of ``dtype`` run at: fp32 matmuls use TF32 only when allowed
    (PyTorch's defaults: off for matmul, on for cuDNN convolutions); attention in fp32 stays fp32."""
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.float32 and ((op_class == "matmul" and tf32_matmul) or (op_class == "conv" and tf32_conv)):
        return "tf32"
    return "fp32"


def _vals(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _vals(v)]
    return []


def _view_bytes(t: torch.Tensor) -> int:
    """Bytes an op touches reading ``t``: its elements, at most its storage (a broadcast view re-reads)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def _flops(node: fx.Node) -> tuple[float | None, str]:
    """FLOPs from torch's registered formula, or None (and why) when there is none or it fails."""
    packet = getattr(node.target, "overloadpacket", None)
    formula = flop_registry.get(_FLOP_ALIASES.get(packet, packet))
    if formula is None:
        return None, ""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val"))
    try:
        return float(formula(*args, out_val=node.meta.get("val"), **kwargs)), ""
    except Exception as exc:  # noqa: BLE001 - a formula that does not fit the call: memory-bound instead
        return None, f"FLOP formula failed: {type(exc).__name__}: {str(exc)[:80]}"


def _name(node: fx.Node) -> str:
    """The op's name without namespace and overload: "mm" for aten.mm.default."""
    return node.target.__name__.split(".")[0] if hasattr(node.target, "__name__") else str(node.target)


def _class(node: fx.Node, flops: float | None, inputs: list[torch.Tensor], outputs: list[torch.Tensor],
           aliased: bool) -> str:
    """The op class (see OP_CLASSES); "unknown" when none applies."""
    name = _name(node)
    if flops is not None:
        return "attention" if "attention" in name else "conv" if "conv" in name else "matmul"
    if mutated_args(node):
        return "copy"
    if aliased:
        return "view"
    tags = getattr(node.target, "tags", ())
    if name in _COPIES:
        return "copy"
    if torch.Tag.pointwise in tags:
        return "elementwise"
    if torch.Tag.reduction in tags:
        return "reduction"
    if any(w in name for w in _NORM_WORDS):
        return "norm"
    if not inputs or any(w in name for w in _MEMORY_WORDS):  # factories write their outputs
        return "memory"
    return "unknown"


def op_cost(node: fx.Node, spec: DeviceSpec, *, tf32_matmul: bool = False, tf32_conv: bool = True) -> OpCost:
    """The estimated cost of one op node of a traced graph on ``spec``."""
    floor = spec.launch_latency_s
    outputs = _vals(node.meta.get("val"))
    if not isinstance(node.target, torch._ops.OpOverload) or not outputs:
        return OpCost("scalar", 0.0, 0, "", floor)
    inputs = [t for n in node.all_input_nodes for t in _vals(n.meta.get("val"))]
    read: dict[StorageWeakRef, int] = {}
    for t in inputs:
        key = StorageWeakRef(t.untyped_storage())
        read[key] = max(read.get(key, 0), _view_bytes(t))
    written, aliased = 0, True
    for t in outputs:
        if StorageWeakRef(t.untyped_storage()) in read:
            written += _view_bytes(t) if mutated_args(node) else 0
        else:
            aliased = False
            written += t.untyped_storage().nbytes()
    if _name(node) in _GATHERS:
        read = {k: min(v, written) for k, v in read.items()}
    if _name(node) in _OVERWRITES:  # the destination is written, not read
        for t in _vals(node.args[0].meta.get("val")):
            read.pop(StorageWeakRef(t.untyped_storage()), None)
    flops, note = _flops(node)
    cls = _class(node, flops, inputs, outputs, aliased)
    nbytes = sum(read.values()) + written if cls != "view" else 0
    if cls == "view":
        return OpCost("view", 0.0, 0, "", floor)
    if cls == "unknown" and not note:
        note = "no FLOP formula and no memory-bound class: counted as memory-bound"
    dtype = compute_dtype(inputs[0].dtype if inputs else outputs[0].dtype, cls, tf32_matmul, tf32_conv) \
        if flops else ""
    rate = spec.flops(dtype) if dtype else 1.0
    t = roofline_time(flops or 0.0, nbytes, rate, spec.hbm_bytes_per_s, spec.efficiency[cls], floor)
    return OpCost(cls, flops or 0.0, int(nbytes), dtype, t, note)


def estimate_ops(graph: TrainGraph, spec: DeviceSpec, *, tf32_matmul: bool = False,
                 tf32_conv: bool = True) -> list[OpCost]:
    """`op_cost` of every op of ``graph``, in op order."""
    return [op_cost(n, spec, tf32_matmul=tf32_matmul, tf32_conv=tf32_conv) for n in graph.ops]


@dataclass
class EstimatedProfile(Profile):
    """A Profile whose op times are estimated for ``target``, not measured: what `build_problem` needs
    (op times, transients, host-link bandwidth, device), with nothing claimed as measured —
    ``measured_peak_bytes``, ``op_output_peak_bytes`` and ``iteration_time_s`` are None."""

    cost_source: str = ""  # "estimated:<target>"
    target: dict = field(default_factory=dict)  # the DeviceSpec's fields
    op_class: list[str] = field(default_factory=list)
    op_flops: np.ndarray | None = None
    op_bytes: np.ndarray | None = None
    unknown_ops: dict[str, str] = field(default_factory=dict)  # op name -> why (listed once per name)

    def ops_frame(self, graph: TrainGraph) -> pd.DataFrame:
        df = super().ops_frame(graph)
        df["op_class"] = self.op_class
        df["flops"] = self.op_flops
        df["bytes_moved"] = self.op_bytes
        return df


def estimate_profile(graph: TrainGraph, target: str | Mapping[str, Any] | DeviceSpec, *, tf32_matmul: bool = False,
                     tf32_conv: bool = True) -> EstimatedProfile:
    """Estimated op times of ``graph`` on ``target`` (a name, a mapping or a DeviceSpec), as a Profile
    `mutwo.problem_build.build_problem` turns into a device-costed Problem. ``tf32_matmul`` /
    ``tf32_conv``: whether fp32 matmuls / convolutions run at the TF32 rate (PyTorch's defaults)."""
    t0 = time.perf_counter()
    spec = get_device(target)
    costs = estimate_ops(graph, spec, tf32_matmul=tf32_matmul, tf32_conv=tf32_conv)
    n = len(costs)
    unknown = {}
    for node, c in zip(graph.ops, costs):
        if c.op_class == "unknown":
            unknown.setdefault(str(node.target), c.note)
    return EstimatedProfile(
        op_time_s=np.array([c.time_s for c in costs], dtype=np.float64),
        op_transient_bytes=np.zeros(n, dtype=np.int64), measured_peak_bytes=None,
        peak_method=f"not measured (estimated for {spec.name})", op_output_peak_bytes=None,
        iteration_time_s=None, host_bandwidth_bytes_per_s=spec.host_link_bytes_per_s,
        bandwidth_source=f"estimated:{spec.name} (effective pinned copy, {spec.host_link or 'host link'})",
        device=spec.name, runs=0, warmup=0, profile_time_s=time.perf_counter() - t0, transient_measured=False,
        versions={"torch": torch.__version__}, cost_source=f"estimated:{spec.name}", target=spec.model_dump(),
        op_class=[c.op_class for c in costs], op_flops=np.array([c.flops for c in costs], dtype=np.float64),
        op_bytes=np.array([c.nbytes for c in costs], dtype=np.int64), unknown_ops=unknown)


# ---------------------------------------------------------------------- this machine, measured
def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _FloorInterpreter(fx.Interpreter):
    """Times each node the way `mutwo.profile` does: around ``run_node``."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.times: list[float] = []

    def run_node(self, n: fx.Node):
        t0 = time.perf_counter()
        out = super().run_node(n)
        if n.op == "call_function":
            self.times.append(time.perf_counter() - t0)
        return out


def _op_floor(count: int = 200) -> float:
    """Median time of a one-element add through an fx interpreter: the per-op floor on this CPU."""
    g = fx.Graph()
    x = g.placeholder("x")
    for _ in range(count):
        x = g.call_function(aten.add.Tensor, (x, x))
    g.output(x)
    gm = fx.GraphModule(torch.nn.Module(), g)
    interp = _FloorInterpreter(gm)
    interp.run(torch.ones(1))
    interp.times.clear()
    interp.run(torch.ones(1))
    return statistics.median(interp.times)


def _ram_bytes() -> int:
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def calibrate_local_cpu(threads: int = 1, size: int = 512, copy_bytes: int = 64 << 20) -> DeviceSpec:
    """This CPU as a DeviceSpec, measured at ``threads`` torch threads: matmul FLOP/s (fp32, bf16) on
    ``size``-square matrices, copy bandwidth (read + write) of a ``copy_bytes`` tensor, the per-op
    floor through an fx interpreter. Efficiencies are 1: the figures are achieved rates, not peaks."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rates = {}
        for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a = torch.randn(size, size).to(dtype)
            rates[key] = 2 * size**3 / _median_time(lambda a=a: torch.mm(a, a), 5)
        src = torch.ones(copy_bytes // 4)
        dst = torch.empty_like(src)
        bandwidth = 2 * copy_bytes / _median_time(lambda: dst.copy_(src), 5)
        floor = _op_floor()
    finally:
        torch.set_num_threads(old)
    return DeviceSpec(name=LOCAL_CPU, memory_bytes=_ram_bytes(), flops_per_s=rates, hbm_bytes_per_s=bandwidth,
                      host_link_bytes_per_s=bandwidth / 2, host_link="memcpy in the same memory",
                      copy_engines=1, launch_latency_s=floor,
                      efficiency={k: 1.0 for k in DEFAULT_EFFICIENCY},
                      source=f"calibrated on this machine, {threads} thread(s)")

