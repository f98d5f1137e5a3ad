"""PyTorch's own activation-memory savers, measured the way mutwo measures its plans: the reference rows
of every comparison (docs/compare.md, "PyTorch references").

Variants (`Reference`): ``eager`` (the unmodified PyTorch step: forward, loss, backward, the torch.optim
step), ``checkpoint`` (non-reentrant ``torch.utils.checkpoint`` around every block of a known type,
`BLOCK_TYPES`) and ``memory_budget@b`` (``torch.compile`` of model and loss with
``torch._functorch.config.activation_memory_budget = b``: the min-cut partitioner's own
recompute-vs-save trade-off, on one of `BACKENDS`).

Each variant runs on a fresh, identically seeded workload with the real torch.optim optimizer
(`mutwo.capture.eager_optimizer`: the update the captured step performs). Its first step compiles and
gives the loss checked against eager's first loss; the second is metered by `mutwo.memory.allocator_peak`
(inputs: parameters, buffers, optimizer state, batch); then ``iterations`` steps are timed, each just
after an eager step, with one torch thread on CPU (`mutwo.timing.set_threads`).

A compiled step is metered from outside, so the meter must see the compiled code and not an eager
fallback (a dispatch mode around a compiled module makes Dynamo run it eagerly, silently). The backend
is wrapped (`CountingBackend`) to count calls of the compiled graphs: ``compiled_calls`` of the metered
step is > 0 exactly when the compiled code ran under the meter.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch._functorch.config as functorch_config
from torch.utils.checkpoint import checkpoint

from mutwo.memory import allocator_peak
from mutwo.workload import OptimizerConfig, Workload

__all__ = ["Reference", "ReferenceResult", "ReferenceRunner", "CountingBackend", "BLOCK_TYPES", "BACKENDS",
           "DEFAULT_BACKEND", "DEFAULT_KNOBS", "LOSS_RTOL", "references", "checkpoint_blocks", "reference_row",
           "TrainStep"]

BACKENDS = ("aot_eager_decomp_partition", "aot_eager", "inductor")
DEFAULT_BACKEND = "aot_eager_decomp_partition"  # the partitioner and decompositions of inductor, no codegen
DEFAULT_KNOBS = (0.8, 0.5, 0.2)
LOSS_RTOL = 1e-3  # first-step loss vs eager: decompositions reorder float sums (ResNet-152: ~4e-5)
REFERENCE_THREADS = 1  # torch threads on CPU while references run (mutwo.timing.set_threads says why)

# the blocks "per-block checkpointing" wraps, by class name (add a model's own block class here)
BLOCK_TYPES: dict[str, str] = {
    "BasicBlock": "torchvision ResNet-18/34",
    "Bottleneck": "torchvision ResNet-50/101/152",
    "BertLayer": "transformers BERT",
    "GPT2Block": "transformers GPT-2",
    "LlamaDecoderLayer": "transformers Llama",
    "ViTLayer": "transformers ViT",
    "EncoderBlock": "torchvision ViT",
    "TransformerEncoderLayer": "torch.nn",
    "TransformerDecoderLayer": "torch.nn",
}


@dataclass(frozen=True)
class Reference:
    """One PyTorch variant: ``eager``, ``checkpoint`` or ``memory_budget`` (with ``knob`` in [0, 1] and a
    ``backend`` of `BACKENDS`)."""

    variant: str
    knob: float | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.variant not in ("eager", "checkpoint", "memory_budget"):
            raise ValueError(f"unknown reference {self.variant!r}; use eager, checkpoint or memory_budget")
        if self.variant == "memory_budget":
            if self.knob is None or not 0.0 <= self.knob <= 1.0:
                raise ValueError(f"memory_budget knob {self.knob!r} must be in [0, 1]")
            if self.backend not in BACKENDS:
                raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")

    @property
    def label(self) -> str:
        """How results.csv names it (its ``solver`` column)."""
        return f"pytorch:{self.variant}" + (f"@{self.knob:g}" if self.variant == "memory_budget" else "")

    @property
    def options(self) -> dict:
        """What it was run with (results.csv's ``solver_options``)."""
        if self.variant == "memory_budget":
            return {"activation_memory_budget": self.knob, "backend": self.backend}
        if self.variant == "checkpoint":
            return {"use_reentrant": False}
        return {}


def references(eager: bool = True, checkpoint: bool = True, memory_budget: Sequence[float] = DEFAULT_KNOBS,
               backend: str = DEFAULT_BACKEND) -> list[Reference]:
    """The variants to measure, in the order they are reported."""
    out = [Reference("eager")] if eager else []
    out += [Reference("checkpoint")] if checkpoint else []
    return out + [Reference("memory_budget", float(b), backend) for b in memory_budget]


@dataclass
class ReferenceResult:
    """What measuring one `Reference` gave. ``status``: ``measured``, ``error`` (``message`` says why) or
    ``skipped`` (``checkpoint`` on a model without a known block: no row, ``message`` is the note)."""

    reference: Reference
    status: str
    message: str = ""
    peak_bytes: int | None = None
    baseline_bytes: int | None = None  # parameters, buffers, optimizer state and batch
    peak_method: str = ""
    time_s: float | None = None  # median of the timed steps
    time_min_s: float | None = None
    eager_time_s: float | None = None  # median of the eager steps paired with them
    eager_time_min_s: float | None = None
    time_ratio: float | None = None  # median over pairs of step / eager step (1 for eager itself)
    time_spread: float | None = None  # slowest / fastest timed step - 1
    loss0: float | None = None
    eager_loss0: float | None = None
    first_step_s: float | None = None  # the first step, compilation included
    compiled_calls: int | None = None  # calls of compiled graphs in the metered step (None: not compiled)
    graphs: int | None = None  # graphs compiled (more than one: graph breaks)
    details: dict = field(default_factory=dict)  # e.g. the checkpointed block types and counts

    @property
    def loss_rel_diff(self) -> float | None:
        if self.loss0 is None or self.eager_loss0 is None:
            return None
        return abs(self.loss0 - self.eager_loss0) / max(abs(self.eager_loss0), 1e-12)

    def summary(self) -> str:
        """One line: what the row's message says about how it was measured."""
        if self.status != "measured":
            return self.message
        parts = [f"first step {self.first_step_s:.1f} s" + (" (compile included)" if self.graphs else "")]
        if self.compiled_calls is not None:
            parts.append(f"{self.graphs} graph(s) compiled, {self.compiled_calls} compiled call(s) metered")
        if self.details:
            parts.append(json.dumps(self.details, sort_keys=True))
        if self.reference.variant != "eager":
            parts.append(f"eager steps beside it: median {self.eager_time_s:.4g} s; its steps spread "
                         f"{self.time_spread:.0%}")
        diff = self.loss_rel_diff
        if diff is not None and self.reference.variant != "eager":
            verdict = "ok" if diff <= LOSS_RTOL else f"ABOVE the tolerance {LOSS_RTOL:g}"
            parts.append(f"first-step loss vs eager: rel. diff {diff:.2g} ({verdict})")
        if self.message:
            parts.append(self.message)
        return "; ".join(parts)


def checkpoint_blocks(model: torch.nn.Module, types: Sequence[str] | None = None) -> dict[str, int]:
    """Wrap the forward of every outermost module whose class name is in ``types`` (default:
    `BLOCK_TYPES`) in non-reentrant ``torch.utils.checkpoint``; returns how many of each were wrapped."""
    types = set(BLOCK_TYPES if types is None else types)
    wrapped: dict[str, int] = {}
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside) or type(m).__name__ not in types:
            continue
        fwd = m.forward

        def run(*args, _fwd=fwd, **kwargs):
            return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)

        m.forward = run
        inside.append(name)
        wrapped[type(m).__name__] = wrapped.get(type(m).__name__, 0) + 1
    return wrapped


class CountingBackend:
    """A Dynamo backend (``name``, looked up in Dynamo's registry) whose compiled graphs count their
    calls: the proof that a metered step ran compiled code (see the module docstring)."""

    def __init__(self, name: str) -> None:
        from torch._dynamo import lookup_backend

        self.name = name
        self.inner = lookup_backend(name)
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs, **kwargs):
        self.graphs += 1
        compiled = self.inner(gm, example_inputs, **kwargs)

        def run(*args):
            self.calls += 1
            return compiled(*args)

        if getattr(compiled, "_boxed_call", False):  # keep the calling convention Dynamo expects
            run._boxed_call = True  # type: ignore[attr-defined]
        return run


class _LossModule(torch.nn.Module):
    """Model and loss as one module, so the compiled graph holds the loss too."""

    def __init__(self, workload: Workload) -> None:
        super().__init__()
        self.model = workload.model
        self.loss_fn = workload.loss_fn

    def forward(self, *inputs):
        return self.loss_fn(self.model, *inputs)


@dataclass
class TrainStep:
    """One training step of ``module`` on ``workload``'s batch with ``optimizer``."""

    workload: Workload
    module: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    backend: CountingBackend | None = None

    def body(self) -> torch.Tensor:
        """Forward, loss, backward, optimizer step (gradients already None: the metered part)."""
        loss = self.module(*self.workload.inputs)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def step(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self.body()

    def known(self) -> list[torch.Tensor]:
        """The step's inputs: parameters, buffers, optimizer state, batch (the meter's baseline)."""
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        batch = [t for t in self.workload.inputs if isinstance(t, torch.Tensor)]
        return [*self.workload.model.parameters(), *self.workload.model.buffers(), *state, *batch]


def _timed(step: Callable[[], object], device: torch.device) -> float:
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _threads(device: torch.device) -> contextlib.AbstractContextManager[int]:
    """The torch thread count references run with: the one plans are timed with (`mutwo.timing`)."""
    from mutwo.timing import threads_for, torch_threads

    return torch_threads(threads_for(device.type, REFERENCE_THREADS if device.type == "cpu" else None))


def _error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}".strip()


class ReferenceRunner:
    """Measures `Reference` s of one workload. ``build()`` returns a fresh workload (called after seeding
    with ``seed``, once per variant and once for the eager step every variant is timed against).
    `measure` never raises: a failure (compile error, unsupported backend, out of memory) is an
    ``error`` result."""

    def __init__(self, build: Callable[[], Workload], optimizer: OptimizerConfig, *, iterations: int = 3,
                 seed: int = 0) -> None:
        self.build, self.optimizer, self.seed = build, optimizer, seed
        self.iterations = max(1, int(iterations))
        self._eager: TrainStep | None = None
        self._eager_first: tuple[float, float] | None = None  # eager's first loss and first-step time
        self.device = torch.device("cpu")

    def close(self) -> None:
        """Drop the eager workload (before the next batch size is built)."""
        self._eager = None
        gc.collect()

    def _fresh(self) -> Workload:
        from mutwo.pipeline import seed_everything

        seed_everything(self.seed)
        wl = self.build()
        wl.model.train()
        self.device = next(iter(wl.model.parameters()), torch.empty(0)).device
        return wl

    def _train_step(self, wl: Workload, module: Callable, backend: CountingBackend | None = None
                    ) -> TrainStep:
        from mutwo.capture import eager_optimizer

        return TrainStep(wl, module, eager_optimizer(wl.model, self.optimizer), backend)

    def _first(self, s: TrainStep) -> tuple[float, float]:
        torch.manual_seed(self.seed)  # dropout draws the same masks in every variant's first step
        t0 = time.perf_counter()
        loss = float(s.step())
        return loss, time.perf_counter() - t0

    def eager(self) -> tuple[TrainStep, float, float]:
        """The eager step every variant is timed against, after its first step (built once)."""
        if self._eager is None:
            wl = self._fresh()
            s = self._train_step(wl, _LossModule(wl))
            self._eager_first = self._first(s)
            self._eager = s
        return self._eager, *self._eager_first

    def stepper(self, ref: Reference) -> tuple[TrainStep | None, dict]:
        """A fresh workload's step under ``ref`` (not ``eager``), not run yet, and what was wrapped; None
        for ``checkpoint`` on a model without a known block. Compiled variants compile on the first call,
        under the ``activation_memory_budget`` in force then (`measure` sets it)."""
        wl = self._fresh()
        if ref.variant == "checkpoint":
            blocks = checkpoint_blocks(wl.model)
            if not blocks:
                return None, {}
            return self._train_step(wl, _LossModule(wl)), {"blocks": blocks}
        torch._dynamo.reset()  # a new module with the same forward code would count towards the
        backend = CountingBackend(ref.backend)  # recompile limit, after which Dynamo runs eagerly
        module = torch.compile(_LossModule(wl), backend=backend, dynamic=False)
        return self._train_step(wl, module, backend), {}

    def measure(self, ref: Reference) -> ReferenceResult:
        """Measure ``ref`` (see the module docstring); never raises."""
        knob = ref.knob if ref.variant == "memory_budget" else functorch_config.activation_memory_budget
        try:
            with functorch_config.patch(activation_memory_budget=knob):
                return self._measure(ref)
        except Exception as exc:  # a failing reference is its row's status; the run goes on
            return ReferenceResult(ref, "error", message=_error(exc))
        finally:
            if ref.variant == "memory_budget":
                torch._dynamo.reset()
            gc.collect()

    def _measure(self, ref: Reference) -> ReferenceResult:
        eager, eager_loss0, eager_first_s = self.eager()
        with _threads(self.device):
            if ref.variant == "eager":
                return self._metered(ref, eager, None, eager_loss0, eager_first_s, eager_loss0, {})
            stepper, details = self.stepper(ref)
            if stepper is None:
                return ReferenceResult(ref, "skipped", message=(
                    f"no per-block checkpoint row: {type(eager.workload.model).__name__} has no module of a "
                    f"known block type ({', '.join(BLOCK_TYPES)}); add its block class name to "
                    f"mutwo.references.BLOCK_TYPES"))
            loss0, first_s = self._first(stepper)
            return self._metered(ref, stepper, eager, loss0, first_s, eager_loss0, details)

    def _metered(self, ref: Reference, s: TrainStep, partner: TrainStep | None, loss0: float, first_s: float,
                 eager_loss0: float, details: dict) -> ReferenceResult:
        """The metered step, then the timed steps (each after a ``partner`` step, when given)."""
        s.optimizer.zero_grad(set_to_none=True)
        calls = s.backend.calls if s.backend else 0
        peak = allocator_peak(s.body, s.known(), self.device)
        calls = s.backend.calls - calls if s.backend else None
        if calls == 0:  # the meter saw an eager fallback, not the compiled code: no figure is better
            return ReferenceResult(ref, "error", message="the metered step called no compiled graph (Dynamo "
                                   "ran the model eagerly), so its peak is not the compiled step's")
        times, eager_times = [], []
        for _ in range(self.iterations):
            if partner is not None:
                eager_times.append(_timed(partner.step, self.device))
            times.append(_timed(s.step, self.device))
        eager_times = eager_times or times
        ratios = [t / e for t, e in zip(times, eager_times)]
        return ReferenceResult(
            ref, "measured", peak_bytes=peak.peak_bytes, baseline_bytes=peak.baseline_bytes,
            peak_method=peak.method, time_s=statistics.median(times), time_min_s=min(times),
            eager_time_s=statistics.median(eager_times), eager_time_min_s=min(eager_times),
            time_ratio=statistics.median(ratios), time_spread=max(times) / min(times) - 1, loss0=loss0,
            eager_loss0=eager_loss0, first_step_s=first_s, compiled_calls=calls,
            graphs=s.backend.graphs if s.backend else None, details=details)


def reference_row(result: ReferenceResult, *, scenario: str, model: str, batch_size: int, device: str,
                  keep_all: dict | None = None, memory_limit: int | None = None):
    """The results.csv row (`mutwo.cell.Row`, kind ``reference``) of a measured or failed reference:
    measured columns as for a solver (overhead: over the eager steps paired with it), predicted and
    budget columns empty. ``keep_all``: the batch size's keep_all.json, for its keep-all columns.
    ``memory_limit`` (``execute.memory_limit``) is not enforced while a reference runs (the CPU guard
    is a dispatch mode, under which Dynamo would run the model eagerly): a peak above it is noted."""
    from mutwo.cell import REFERENCE, CellStatus, Row

    ref, keep_all = result.reference, keep_all or {}
    row = Row(scenario=scenario, model=model, batch_size=batch_size, device=device, solver=ref.label,
              solver_name=ref.variant, solver_options=json.dumps(ref.options, sort_keys=True),
              keep_all_peak_bytes=keep_all.get("keep_all_peak_bytes"),
              keep_all_time_s=keep_all.get("keep_all_time_s"), kind=REFERENCE, message=result.summary())
    if result.status != "measured":
        row.status, row.executed = CellStatus.ERROR, False
        row.execute_note = "reference failed"
        return row
    diff = result.loss_rel_diff if ref.variant != "eager" else None
    row.status, row.executed, row.emulated_swap = CellStatus.MEASURED, True, False
    row.execute_note = (f"measured: PyTorch reference ({result.peak_method}; each timed step after an eager "
                        f"step, {REFERENCE_THREADS} torch thread on CPU)")
    row.measured_peak_bytes, row.measured_time_s = result.peak_bytes, result.time_s
    row.measured_overhead_pct = 100.0 * (result.time_ratio - 1.0)
    row.peak_method, row.reference_time_s = result.peak_method, result.eager_time_s
    row.torch_threads = REFERENCE_THREADS if device.startswith("cpu") else None
    row.max_rel_diff = diff
    row.bitwise_equal = None if diff is None else diff == 0.0
    if memory_limit is not None and result.peak_bytes > memory_limit:
        row.message += f"; its peak is above execute.memory_limit ({memory_limit} B): it would not fit there"
    return row
