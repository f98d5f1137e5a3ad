"""Execute a Schedule for real: rewrite the captured training step, run it, check it trains the same.

``apply`` copies the TrainGraph's fx graph and rewrites it so that memory follows docs/cost_model.md:

* RECOMPUTE ``a``: the ops of ``resolve_recompute``'s chain are copied (``graph.node_copy``) just before
  ``a``'s anchor (its first backward use, or the schedule's earlier ``recompute_at``), and every
  backward use of ``a``'s storage (its producer and any forward view of it) reads the copies instead.
  Nothing after forward reads the original any more, so the generated code frees it after its last
  forward use. Batch norm is re-run without running statistics (it must not update them twice);
  random ops are never recomputed.
* SWAP ``a``: ``swap_out`` after its last forward use copies the storage to the host, ``swap_in`` at
  ``prefetch_at`` starts the copy back, ``swap_wait`` before its first backward use waits for it; the
  backward uses read the waited value. On CUDA the copies run on two side streams (one per direction,
  as the model's two links) into pinned memory, outside the device allocator. On CPU there is no
  host/device split, so it is emulated: the "host" copy is made inside
  `mutwo.memory.host_copy_region` (the allocator meter reports the process peak with it, and an
  emulated device peak without it) and with every dispatch mode switched off (the op-output
  diagnostic does not count it); the copy back is an ordinary clone.

Where memory departs from the cost model, on purpose:

* CPU swap emulation frees the device copy right after it is made; the model holds it until the
  transfer would end at the problem's bandwidth (a few ops later when ops are short). On CUDA the
  block stays allocated until the copy has read it (``record_stream``), as in the model.
* Recompute chains: the generated code frees every chain value after its last use, node by node, as
  the model does with the Problem's forward dataflow (``chain_peak``); outputs of a multi-output op
  that the chain reads are taken right after the op, so its other outputs are freed at once. A
  Problem without dataflow (synthetic) holds each chain member whole: more than is run here.
* A kept recompute source read by a chain after its last backward use lives until the chain: recorded
  in ``module.meta["mutwo"]["warnings"]``. Graph outputs (the loss) are not activations; a Problem
  that still lists one as an activation has it kept whatever the decision (moving it would free
  nothing), with a warning.

At one backward op the inserted nodes run in the model's order: prefetch issues, waits, then recompute
chains in creation order. ``run`` measures the rewritten module against the unmodified graph from
identical copies of the inputs (peak: the allocator meter; time: interleaved with the unmodified step,
`mutwo.timing`); ``execute`` is ``apply`` + ``run`` and the only place a schedule runs.
"""

from __future__ import annotations

import operator
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten

from mutwo import timing as timing_
from mutwo.graph import Role, TrainGraph, is_random_op, mutated_args
from mutwo.memory import OpOutputTracker, allocator_peak, device_of, host_copy_region, sync
from mutwo.problem import Problem
from mutwo.problem_build import STATE_UPDATING_OPS, StorageBinding
from mutwo.schedule import Decision, Schedule, resolve_recompute, validate

__all__ = ["ExecResult", "ExecuteError", "Reference", "apply", "reference", "run", "execute", "swap_out",
           "swap_in", "swap_wait", "rel_diff"]


class ExecuteError(RuntimeError):
    """The schedule cannot be applied to this graph; the message names the activation."""


# ---------------------------------------------------------------------------- swap runtime
# Called from the generated code as plain Python functions (not ops), so no dispatch mode sees the
# host copy being made; the storage is moved byte for byte and rebuilt with the original
# size / stride / offset, so values and layouts come back bitwise identical.
_STREAMS: dict[torch.device, tuple[torch.cuda.Stream, torch.cuda.Stream]] = {}


def _streams(device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """One side stream per direction (device-to-host, host-to-device), as the model's two links."""
    if device not in _STREAMS:
        _STREAMS[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
    return _STREAMS[device]


def _bytes_of(x: torch.Tensor) -> torch.Tensor:
    """The whole storage of ``x`` as a flat uint8 tensor (an alias, no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=x.device).set_(x.untyped_storage())


def _rebuild(raw: torch.Tensor, like: _Swapped) -> torch.Tensor:
    return torch.empty(0, dtype=like.dtype, device=raw.device).set_(
        raw.untyped_storage(), like.offset, like.size, like.stride)


@dataclass
class _Swapped:
    """A storage parked on the host: its bytes and how to rebuild the tensor that used it."""

    host: torch.Tensor
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    device: torch.device
    done: torch.cuda.Event | None = None  # copy-out finished (CUDA only)


@dataclass
class _Prefetch:
    value: torch.Tensor  # device tensor; valid once ``ready`` has been waited for
    ready: torch.cuda.Event | None = None
    swapped: _Swapped | None = None  # keeps the host copy alive until the copy back is waited for


def swap_out(x: torch.Tensor) -> _Swapped:
    """Copy ``x``'s storage to the host; the caller drops ``x`` afterwards (that frees the device copy)."""
    meta = dict(dtype=x.dtype, size=tuple(x.size()), stride=tuple(x.stride()), offset=x.storage_offset(),
                device=x.device)
    if x.device.type != "cuda":  # emulated: a copy no dispatch mode (op-output tracker) sees, tagged for the
        # allocator meter as a host copy (its emulated device figure leaves it out until it is freed)
        with _disable_current_modes(), host_copy_region():
            return _Swapped(_bytes_of(x).clone(), **meta)
    d2h, _ = _streams(x.device)
    ready = torch.cuda.Event()
    ready.record()
    src = _bytes_of(x)
    host = torch.empty(src.numel(), dtype=torch.uint8, pin_memory=True)
    with torch.cuda.stream(d2h):
        d2h.wait_event(ready)
        host.copy_(src, non_blocking=True)
        done = torch.cuda.Event()
        done.record(d2h)
    # the allocator may not hand x's block out again before the copy has read it: it stays allocated
    # until the transfer ends, as in the cost model
    src.record_stream(d2h)
    return _Swapped(host, **meta, done=done)


def swap_in(h: _Swapped) -> _Prefetch:
    """Start the copy back; device memory is taken now (the model reserves it at the prefetch issue)."""
    if h.device.type != "cuda":
        return _Prefetch(_rebuild(h.host.clone(), h))
    _, h2d = _streams(h.device)
    raw = torch.empty(h.host.numel(), dtype=torch.uint8, device=h.device)
    allocated = torch.cuda.Event()
    allocated.record()
    with torch.cuda.stream(h2d):
        h2d.wait_event(allocated)
        h2d.wait_event(h.done)
        raw.copy_(h.host, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(h2d)
    return _Prefetch(_rebuild(raw, h), ready, h)


def swap_wait(p: _Prefetch) -> torch.Tensor:
    """Make the compute stream wait for the copy back; returns the device tensor."""
    if p.ready is not None:
        torch.cuda.current_stream(p.value.device).wait_event(p.ready)
    return p.value


# ---------------------------------------------------------------------------- rewrite
_aten = torch.ops.aten
# batch norm variants that update running statistics in place in training mode, although their schemas
# do not mark those arguments as written: (running_mean, running_var, training) argument positions
_RUNNING_STATS = {_aten.native_batch_norm.default: (3, 4, 5), _aten.cudnn_batch_norm.default: (3, 4, 5),
                  _aten.miopen_batch_norm.default: (3, 4, 5)}


class _Rewriter:
    """Holds the copied graph and which storages have been brought back (and by which node)."""

    def __init__(self, tg: TrainGraph, problem: Problem) -> None:
        self.tg = tg
        self.graph = fx.Graph()
        vmap: dict[fx.Node, fx.Node] = {}
        out = self.graph.graph_copy(tg.gm.graph, vmap)
        self.graph.output(out)
        self.new = vmap  # original node -> node of the copy
        self.ops = [vmap[n] for n in tg.ops]
        self.pos = {vmap[n]: i for n, i in tg.op_index.items()}
        self.sid = {vmap[n]: s for n, s in tg.storage_of.items()}
        self.aliases: dict[int, list[fx.Node]] = defaultdict(list)
        for n, s in self.sid.items():
            self.aliases[s].append(n)
        self.back: dict[fx.Node, fx.Node] = {}  # alias node of a brought-back storage -> its new value
        self.brought_back: set[int] = set()
        self.problem = problem
        self.warnings: list[str] = []

    # -- brought-back values and the views derived from them
    def _depends(self, node: fx.Node) -> bool:
        sid = self.sid.get(node)
        if sid is not None:
            return sid in self.brought_back
        # a non-tensor value (e.g. the list returned by split) made from a brought-back storage
        return node.op == "call_function" and any(self._depends(i) for i in node.all_input_nodes)

    def derived(self, node: fx.Node) -> fx.Node:
        """The brought-back counterpart of ``node`` (an alias of a brought-back storage): views of the
        producer are re-made from the new value at the current insertion point."""
        if node in self.back:
            return self.back[node]
        if node.op != "call_function":
            raise ExecuteError(f"cannot re-derive {node.name} from a brought-back storage")
        if node.target is operator.getitem:
            new = self.graph.call_function(operator.getitem, (self.derived(node.args[0]), node.args[1]))
            new.meta = dict(node.meta)
        else:
            new = self.graph.node_copy(node, lambda i: self.derived(i) if self._depends(i) else i)
        self.back[node] = new
        return new

    def bring_back(self, sid: int, producer_value: fx.Node) -> None:
        """Storage ``sid`` now lives in ``producer_value``: point every backward use at it."""
        producer = self.new[self.tg.storages[sid].producer]
        self.back[producer] = producer_value
        self.brought_back.add(sid)
        for alias in self.aliases[sid]:
            for user in list(alias.users):
                if self.pos.get(user, -1) > self.tg.fwd_end:
                    user.replace_input_with(alias, self.derived(alias))

    # -- recompute chains
    def copy_chain(self, positions: np.ndarray, want: fx.Node) -> fx.Node:
        """Copy the forward ops at ``positions`` at the current insertion point; returns the copy of
        ``want`` (the recomputed activation's producer)."""
        env: dict[fx.Node, fx.Node] = {}
        nodes = [self.ops[int(p)] for p in positions]
        # outputs of multi-output ops the chain reads are taken right after the op, so the op's tuple
        # (holding outputs nobody reads, e.g. batch norm's saved statistics) is freed at once, as the
        # cost model frees values no chain op reads
        members = set(nodes)
        taken: dict[fx.Node, dict[fx.Node, None]] = defaultdict(dict)
        for i in [*(i for n in nodes for i in n.all_input_nodes), want]:
            if i.target is operator.getitem and i.args[0] in members:
                taken[i.args[0]][i] = None

        def arg(i: fx.Node) -> fx.Node:
            if i in env:
                return env[i]
            if self._depends(i):  # a resident source that was itself brought back
                return self.derived(i)
            return i

        for node in nodes:
            if is_random_op(node):
                raise ExecuteError(f"{node.name} is a random op and may not be recomputed")
            if mutated_args(node) and node.target not in STATE_UPDATING_OPS:
                raise ExecuteError(f"{node.name} writes to its inputs and may not be recomputed")
            copy = self.graph.node_copy(node, arg)
            stats = _RUNNING_STATS.get(node.target)
            if stats and copy.args[stats[2]] is True:
                # training-mode batch norm: its outputs do not read the running statistics, but it
                # updates them (the schema does not say so); they were updated once already
                args = list(copy.args)
                args[stats[0]] = args[stats[1]] = None
                copy.args = tuple(args)
            env[node] = copy
            for item in taken.get(node, ()):
                env[item] = self.graph.call_function(operator.getitem, (copy, item.args[1]))
                env[item].meta = dict(item.meta)
        if want not in env:
            raise ExecuteError(f"recompute chain does not make {want.name}")
        return env[want]


def _after_op(node: fx.Node) -> fx.Node:
    """The last node holding a value of op ``node`` (its getitems follow it)."""
    cur = node
    while cur.next.op == "call_function" and cur.next.target is operator.getitem and cur.next.args[0] is node:
        cur = cur.next
    return cur


def apply(train_graph: TrainGraph, problem: Problem, schedule: Schedule, *,
          binding: StorageBinding) -> fx.GraphModule:
    """A new GraphModule that runs ``schedule`` (the TrainGraph is not modified); ``binding`` (from
    `build_problem`) says which of the graph's storages each activation of ``problem`` is.

    ``module.meta["mutwo"]`` records the counts of recomputed / swapped activations and any place
    where the rewrite holds memory the cost model does not see.
    """
    tg = train_graph
    validate(problem, schedule)
    sids = list(binding.storage_ids)
    if len(sids) != problem.n_act or [o.name for o in tg.ops] != list(problem.op_names):
        raise ExecuteError("the Problem was not built from this TrainGraph (ops or activations differ)")
    d = np.asarray(schedule.decisions).copy()
    rw = _Rewriter(tg, problem)
    for a, sid in enumerate(sids):
        info = tg.storages[sid]
        if info.role is not Role.ACTIVATION or int(problem.created[a]) != info.created:
            raise ExecuteError(f"activation {problem.act_names[a]!r} does not match storage {sid}")
        if d[a] != Decision.KEEP and info.is_output:
            # returned by the step (the loss): it stays alive anyway, so moving it frees nothing
            rw.warnings.append(f"{problem.act_names[a]} is a graph output: kept, not "
                               f"{Decision(int(d[a])).name}")
            d[a] = Decision.KEEP

    swaps = [int(a) for a in np.flatnonzero(d == Decision.SWAP)]
    chains = (resolve_recompute(problem, d.astype(object), schedule.recompute_at)
              if np.any(d == Decision.RECOMPUTE) else {})
    for c in chains.values():  # a KEEP source read after its last backward use lives longer than modelled
        late = [s for s in c.sources if d[s] == Decision.KEEP and problem.last_bwd_use[s] < c.anchor]
        if late:
            rw.warnings.append(f"chain of {problem.act_names[c.target]} at op {c.anchor} extends kept "
                               f"{[problem.act_names[s] for s in late]} past their last backward use")

    # swap-outs: after the last forward use, in activation order
    cursor: dict[int, fx.Node] = {}
    handles: dict[int, fx.Node] = {}
    for a in swaps:
        t = int(problem.last_fwd_use[a])
        after = cursor.get(t) or _after_op(rw.ops[t])
        producer = rw.new[tg.storages[sids[a]].producer]
        with rw.graph.inserting_after(after):
            handles[a] = rw.graph.call_function(swap_out, (producer,))
        cursor[t] = handles[a]

    # backward: at each op, prefetch issues, then waits, then recompute chains (creation order)
    issue_at, wait_at, chain_at = defaultdict(list), defaultdict(list), defaultdict(list)
    for a in swaps:
        issue_at[int(schedule.prefetch_at[a])].append(a)
        wait_at[int(problem.first_bwd_use[a])].append(a)
    for a, c in chains.items():
        chain_at[c.anchor].append(a)
    pending: dict[int, fx.Node] = {}
    for t in sorted(set(issue_at) | set(wait_at) | set(chain_at)):
        with rw.graph.inserting_before(rw.ops[t]):
            for a in issue_at.get(t, []):
                pending[a] = rw.graph.call_function(swap_in, (handles[a],))
            for a in wait_at.get(t, []):
                value = rw.graph.call_function(swap_wait, (pending[a],))
                value.meta = dict(rw.new[tg.storages[sids[a]].producer].meta)
                rw.bring_back(sids[a], value)
            for a in sorted(chain_at.get(t, []), key=lambda x: (int(problem.created[x]), x)):
                producer = rw.new[tg.storages[sids[a]].producer]
                rw.bring_back(sids[a], rw.copy_chain(chains[a].ops, producer))

    rw.graph.lint()
    gm = fx.GraphModule(tg.gm, rw.graph)
    gm.meta["mutwo"] = {"n_recompute": len(chains), "n_swap": len(swaps), "warnings": rw.warnings}
    return gm


# ---------------------------------------------------------------------------- run and compare
@dataclass
class ExecResult:
    """What running a schedule for real gave, against the unmodified graph.

    Memory is what the allocator held (`mutwo.memory.allocator_peak`) in the first iteration, the
    step's inputs included; times come from the later iterations, interleaved with the unmodified step
    (`mutwo.timing.interleaved`).
    """

    measured_peak_bytes: int  # the allocator's peak: in-kernel scratch and (on CPU) host copies included
    iteration_time_s: float  # median over the timed iterations
    max_rel_diff: float  # largest max|x - ref| / max|ref| over loss, gradients and updated state
    bitwise_equal: bool  # every compared tensor identical in every iteration
    emulated_swap: bool  # swaps ran on a device without a host split (CPU): memory only, no transfers
    method: str  # how the peak was measured: "cuda-allocator" or "cpu-allocator-events"
    iterations: int
    warmup: int
    diffs: dict[str, float] = field(default_factory=dict)  # max_rel_diff per part (loss, grads, state)
    iteration_times_s: list[float] = field(default_factory=list)
    reference_time_s: float = float("nan")  # median time of the unmodified step, interleaved with the plan's
    notes: dict = field(default_factory=dict)
    # CPU: the allocator's total minus the live host copies of swapped tensors, what a device with its own
    # memory would hold (equal to measured_peak_bytes without swaps); None on CUDA, where host copies are
    # pinned host memory and measured_peak_bytes is already the device's figure
    emulated_device_peak_bytes: int | None = None
    op_output_peak_bytes: int = 0  # diagnostic: the same iteration's op-output storages (`OpOutputTracker`)
    reference_times_s: list[float] = field(default_factory=list)  # the brackets around the timed iterations
    time_ratio: float = float("nan")  # plan / unmodified step, median of the interleaved per-iteration ratios
    time_spread: float = 0.0  # the larger spread of the plan's iterations and of its brackets (fraction)
    timing_steady: bool = True
    timing_attempts: int = 1
    timing_note: str = ""  # why the times may be off (empty when steady)
    threads: int = 0  # torch threads while timing
    timing_clock: str = "wall"  # what time_ratio is taken on: "thread-cpu" (CPU, one thread) or "wall"

    def to_row(self) -> dict:
        """Scalars only, for one row of a results table."""
        return {"measured_peak_bytes": self.measured_peak_bytes, "iteration_time_s": self.iteration_time_s,
                "max_rel_diff": self.max_rel_diff, "bitwise_equal": self.bitwise_equal,
                "emulated_swap": self.emulated_swap, "peak_method": self.method,
                "reference_time_s": self.reference_time_s,
                "emulated_device_peak_bytes": self.emulated_device_peak_bytes,
                "op_output_peak_bytes": self.op_output_peak_bytes, "time_ratio": self.time_ratio,
                "time_spread": self.time_spread, "timing_steady": self.timing_steady,
                "timing_attempts": self.timing_attempts, "timing_note": self.timing_note, "threads": self.threads,
                "timing_clock": self.timing_clock}


def rel_diff(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool]:
    """max|x - ref| / max|ref| and whether the two are bitwise equal (another shape or dtype: inf)."""
    if x.shape != ref.shape or x.dtype != ref.dtype:
        return float("inf"), False
    if torch.equal(x, ref):
        return 0.0, True
    x64, r64 = x.detach().double(), ref.detach().double()
    scale = r64.abs().max().item() if r64.numel() else 0.0
    err = (x64 - r64).abs().max().item()
    return (err / scale if scale > 0 else float("inf")), False


def _to_host(tensors: Sequence) -> list:
    return [t.detach().to("cpu", copy=True) if isinstance(t, torch.Tensor) else t for t in tensors]


@dataclass
class Reference:
    """What the unmodified graph computes, iteration by iteration, kept on the host (so one reference
    serves every schedule of a scenario)."""

    outputs: list[list]  # per iteration: flattened (loss, grads)
    state: list  # the inputs after the last iteration (parameters, buffers, optimizer state, batch)
    iteration_times_s: list[float]
    seed: int

    @property
    def iterations(self) -> int:
        return len(self.outputs)


def reference(train_graph: TrainGraph, flat_inputs: Sequence[torch.Tensor], iterations: int = 4,
              seed: int = 0) -> Reference:
    """Run the unmodified graph ``iterations`` times on a copy of ``flat_inputs`` (seed ``seed + i``
    before iteration ``i``)."""
    device = device_of(flat_inputs)
    ref = [t.detach().clone() for t in flat_inputs]
    outputs, times = [], []
    with torch.no_grad():
        for i in range(iterations):
            torch.manual_seed(seed + i)
            sync(device)
            t0 = time.perf_counter()
            out = train_graph.gm(*ref)
            sync(device)
            times.append(time.perf_counter() - t0)
            outputs.append(_to_host(tree_flatten(out)[0]))
            del out
    return Reference(outputs, _to_host(ref), times, seed)


class _Checker:
    """Compares what the module computes with the reference, part by part (loss, grads, state)."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self.diffs = {"loss": 0.0, "grads": 0.0, "state": 0.0}
        self.bitwise = True

    def _part(self, part: str, xs: Sequence, refs: Sequence) -> None:
        for x, r in zip(xs, refs, strict=True):
            if isinstance(r, torch.Tensor):
                rel, same = rel_diff(x.detach().to("cpu"), r)
                self.diffs[part] = max(self.diffs[part], rel)
                self.bitwise = self.bitwise and same

    def output(self, i: int, out) -> None:
        flat_out = tree_flatten(out)[0]
        self._part("loss", flat_out[:1], self.ref.outputs[i][:1])
        self._part("grads", flat_out[1:], self.ref.outputs[i][1:])

    def state(self, work: Sequence) -> None:
        self._part("state", work, self.ref.state)


def _metered(module: fx.GraphModule, work: list[torch.Tensor], device: torch.device):
    """One iteration under the allocator meter, with the op-output tracker inside it (a diagnostic, and
    the CPU `memory_limit` guard): (output, allocator measurement, op-output peak)."""
    holder: list = []
    tracker = OpOutputTracker(work)

    def step() -> None:
        with tracker:
            holder.append(module(*work))

    m = allocator_peak(step, work, device)
    return holder.pop(), m, int(tracker.peak)


def run(train_graph: TrainGraph, module: fx.GraphModule, flat_inputs: Sequence[torch.Tensor],
        iterations: int = 3, warmup: int = 1, seed: int = 0, ref: Reference | None = None, *,
        max_attempts: int = 3) -> ExecResult:
    """Train ``module`` and the unmodified graph from identical copies of ``flat_inputs``; measure
    ``module``'s peak memory and iteration time and the largest difference of what they compute.

    The first warm-up iteration (there is always one) is the one whose peak is measured, by the
    allocator (the meter slows it, so it is never timed); the ``iterations`` after the warm-up are
    timed, each between two runs of the unmodified step on a copy of its own
    (`mutwo.timing.interleaved`: more iterations, up to ``max_attempts`` times as many, while the load
    moves; a module that changes nothing is its own reference). Each iteration starts from ``torch.manual_seed(seed + i)`` so dropout draws the same
    masks as the reference. The reference runs first (or is given: ``reference(...)`` with the same
    iteration count and seed) and waits on the host, so only the module's own tensors are on the
    device while its peak is measured. ``flat_inputs`` is not modified.
    """
    device = device_of(flat_inputs)
    first = max(warmup, 1)
    total = first + iterations
    if ref is None:
        ref = reference(train_graph, flat_inputs, total, seed)
    if ref.iterations != total or ref.seed != seed:
        raise ValueError(f"the reference ran {ref.iterations} iterations from seed {ref.seed}; this run needs "
                         f"{total} (warmup {first} + {iterations}) from seed {seed}")
    work = [t.detach().clone() for t in flat_inputs]
    check = _Checker(ref)
    info = module.meta.get("mutwo", {})
    with torch.no_grad():
        for i in range(first):
            torch.manual_seed(seed + i)
            if i == 0:
                out, m, op_outputs = _metered(module, work, device)
            else:
                out = module(*work)
            check.output(i, out)
            del out
        if iterations == 0:
            check.state(work)
        timing = _time(train_graph, module, work, flat_inputs, iterations, seed, first, check, device,
                       unmodified=not (info.get("n_recompute") or info.get("n_swap")), max_attempts=max_attempts)
    emulated = bool(info.get("n_swap", 0)) and device.type != "cuda"
    return ExecResult(
        measured_peak_bytes=int(m.peak_bytes), iteration_time_s=timing.time_s,
        max_rel_diff=max(check.diffs.values()), bitwise_equal=check.bitwise, emulated_swap=emulated,
        method=m.method, iterations=iterations, warmup=first, diffs=check.diffs,
        iteration_times_s=timing.plan_times_s, reference_time_s=timing.reference_time_s, notes=dict(info),
        emulated_device_peak_bytes=m.emulated_device_peak_bytes, op_output_peak_bytes=op_outputs,
        reference_times_s=timing.reference_times_s, time_ratio=timing.ratio, time_spread=timing.spread,
        timing_steady=timing.steady, timing_attempts=timing.attempts, timing_note=timing.note(),
        threads=timing.threads, timing_clock=timing.clock)


def _time(train_graph: TrainGraph, module: fx.GraphModule, work: list[torch.Tensor], flat_inputs: Sequence,
          iterations: int, seed: int, first: int, check: _Checker, device: torch.device, *, unmodified: bool,
          max_attempts: int) -> timing_.Timing:
    """The timed iterations of `run`, interleaved with the unmodified step on a copy of its own; the
    first attempt's outputs, and the state after them, are checked against the reference (a rerun
    trains on, past the reference's iterations)."""
    if iterations == 0:
        return timing_.Timing([], threads=torch.get_num_threads())
    step = iter(range(first, 1 << 62))

    def after_plan(i: int, out) -> None:
        check.output(first + i, out)
        if i == iterations - 1:
            check.state(work)

    def plan():
        torch.manual_seed(seed + next(step))
        return module(*work)

    ref_work = None if unmodified else [t.detach().clone() for t in flat_inputs]
    unmodified_step = None if ref_work is None else (lambda: train_graph.gm(*ref_work))
    return timing_.interleaved(plan, unmodified_step, iterations, after_plan=after_plan, sync=lambda: sync(device),
                               max_attempts=max_attempts, clock=timing_.ratio_clock(device.type, torch.get_num_threads()))


def execute(train_graph: TrainGraph, problem: Problem, schedule: Schedule, flat_inputs: Sequence[torch.Tensor],
            iterations: int = 3, warmup: int = 1, seed: int = 0, ref: Reference | None = None, *,
            binding: StorageBinding, max_attempts: int = 3, references: dict | None = None) -> ExecResult:
    """Apply ``schedule`` to the graph and run it for real (the only place a schedule is run).

    ``references``: a cache of the unmodified graph's runs (`reference`) for these inputs, shared by the
    plans of one batch size (filled here when it lacks this iteration count and seed)."""
    module = apply(train_graph, problem, schedule, binding=binding)
    if ref is None and references is not None:
        key = (max(warmup, 1) + iterations, seed)
        if key not in references:
            references[key] = reference(train_graph, flat_inputs, key[0], seed)
        ref = references[key]
    return run(train_graph, module, flat_inputs, iterations=iterations, warmup=warmup, seed=seed, ref=ref,
               max_attempts=max_attempts)
