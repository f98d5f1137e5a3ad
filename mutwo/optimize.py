"""Train a user's own model and optimizer under a memory plan: ``step = mutwo.optimize(...)``, then
``loss = step(*batch)`` in the training loop.

For each batch shape the whole training step is captured, profiled and planned once (`mutwo.pipeline`,
`mutwo.planning`), rewritten for the plan (`mutwo.execute.apply`) and cached; every call runs the
rewritten step on the user's own parameters, buffers and optimizer state, which it updates in place
(`mutwo.optimize_state`). The first call is checked against PyTorch's eager step
(`mutwo.optimize_check`). docs/optimize.md explains the choices and the limits.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.fx as fx

from mutwo.capture import flat_state
from mutwo.memory import AllocatorEventsUnavailable, allocator_peak, sync
from mutwo.optimize_check import CheckError, CheckResult, adopt, compare, default_tolerance, eager_step
from mutwo.optimize_state import OptimizerBinding
from mutwo.plan_space import PlanSpace, fit_options
from mutwo.planning import BudgetLike, budget_bytes, fit
from mutwo.workload import Workload

if TYPE_CHECKING:
    import pandas as pd

    from mutwo.problem import Problem
    from mutwo.schedule import Schedule

__all__ = ["optimize", "TrainStep", "Plan", "StepReport", "CheckError", "CheckResult"]

Check = Literal["first", "never", "always"]
_MIB = 2**20


@dataclass
class Plan:
    """The plan one batch shape trains with and its predicted cost (`mutwo.simulate`)."""

    shapes: tuple[tuple[int, ...], ...]
    schedule: Schedule
    solver: str
    plan_space: str
    budget_bytes: int
    predicted_peak_bytes: int
    predicted_time_s: float
    keep_all_peak_bytes: int  # simulated keep-all: fractional budgets are fractions of it
    keep_all_time_s: float
    floor_bytes: int  # no plan peaks below it
    keep_all_measured_peak_bytes: int  # the allocator's peak of the keep-all step, measured while profiling
    plan_s: float  # capture, profile and solve
    problem: Problem = field(repr=False)

    @property
    def counts(self) -> dict[str, int]:
        return self.schedule.counts()

    def __str__(self) -> str:
        c = self.counts
        keep = self.keep_all_peak_bytes
        return (f"batch {self.shapes}: budget {self.budget_bytes / _MIB:.1f} MiB ({self.budget_bytes / keep:.2f} of "
                f"keep-all {keep / _MIB:.1f} MiB); {self.solver} ({self.plan_space}): {c['n_recompute']} recomputed, "
                f"{c['n_swap']} swapped; predicted peak {self.predicted_peak_bytes / _MIB:.1f} MiB, time "
                f"{self.predicted_time_s * 1e3:.1f} ms ({100 * (self.predicted_time_s / self.keep_all_time_s - 1):+.1f}% "
                f"vs keep-all); planned in {self.plan_s:.1f} s")


@dataclass
class _Compiled:
    """One batch shape's plan, its rewritten step, and what running it measured."""

    plan: Plan
    module: fx.GraphModule
    signature: list[tuple]  # (shape, dtype, device) of the step's inputs before the batch
    steps: int = 0
    peaks: list[int] = field(default_factory=list)
    peak_method: str = ""
    times: list[float] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)


@dataclass
class StepReport:
    """What training under the plans measured so far: one row per batch shape, and every check."""

    rows: list[dict[str, Any]]
    checks: list[CheckResult]

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def __str__(self) -> str:
        lines = []
        for r in self.rows:
            measured = ("not measured" if r["measured_peak_bytes"] is None else
                        f"{r['measured_peak_bytes'] / _MIB:.1f} MiB measured ({r['peak_method']})")
            t = r["measured_time_s"]
            lines.append(f"batch {r['shapes']}: {r['steps']} steps; peak {measured}, predicted "
                         f"{r['predicted_peak_bytes'] / _MIB:.1f}, budget {r['budget_bytes'] / _MIB:.1f}, keep-all "
                         f"{r['keep_all_measured_peak_bytes'] / _MIB:.1f} measured; step time "
                         + ("not measured" if t is None else f"{t * 1e3:.1f} ms median")
                         + f" (predicted {r['predicted_time_s'] * 1e3:.1f})")
        lines += [f"  {c}" for c in self.checks]
        return "\n".join(lines)


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def _signature(tensors: Sequence[torch.Tensor]) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.device) for t in tensors]


class TrainStep:
    """``step(*batch) -> loss``: one training step of the user's model and optimizer under the plan
    for the batch's shape (made on first use). ``step.plan``: the latest plan; ``step.report()``: what
    was measured. In eval mode or under ``torch.no_grad()`` a call is ``loss_fn(model, *batch)`` on
    the plain model, and nothing is trained."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, example_inputs: Sequence[torch.Tensor],
                 loss_fn: Callable[..., torch.Tensor], budget: BudgetLike, *, solver: str,
                 solver_options: dict[str, Any] | None, check: Check, check_tolerance: float | None,
                 allow_emulated_swaps: bool, profile_runs: int, cache: bool, solver_timeout_s: float | None,
                 verbose: bool) -> None:
        if check not in ("first", "never", "always"):
            raise ValueError(f"check={check!r}; use 'first' (check the first step of each batch shape against "
                             f"eager PyTorch), 'always' or 'never'")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(model, *batch) -> scalar loss tensor")
        budget_bytes(budget, 1)  # a malformed budget fails now, not after capturing
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.binding = OptimizerBinding.bind(model, optimizer)
        self.device = self.binding.params[0].device if self.binding.params else torch.device("cpu")
        self.example = self._as_batch(example_inputs, "example_inputs")
        self._example_kinds = [(t.dtype, t.device) for t in self.example]
        for i, t in enumerate(self.example):
            if t.device != self.device:
                raise ValueError(f"example_inputs[{i}] is on {t.device} but the model's parameters are on "
                                 f"{self.device}; move the batch (x.to({str(self.device)!r}))")
        self.budget, self.solver, self.check = budget, solver, check
        self.tolerance = default_tolerance(self.device) if check_tolerance is None else float(check_tolerance)
        self.profile_runs, self.cache, self.solver_timeout_s = profile_runs, cache, solver_timeout_s
        self.space = PlanSpace() if self.device.type == "cuda" or allow_emulated_swaps else PlanSpace(swap=False)
        self.solver_options = self._fit_options(dict(solver_options or {}))
        self.verbose = verbose
        self.budget_bytes: int | None = None  # resolved on the example's keep-all peak, then kept for every shape
        self.steps = 0
        self._compiled: dict[tuple, _Compiled] = {}
        self._latest: _Compiled | None = None
        options = self.binding.options()
        self._latest = self._compile(self.example, options, self._key(self.example, options))

    # ------------------------------------------------------------------ public
    @property
    def plan(self) -> Plan:
        """The plan of the latest batch shape (the example's before the first step)."""
        return self._latest.plan

    @property
    def plans(self) -> dict[tuple, Plan]:
        """Every plan made so far, by batch shapes."""
        return {c.plan.shapes: c.plan for c in self._compiled.values()}

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        if not self.model.training or not torch.is_grad_enabled():
            return self.loss_fn(self.model, *batch)
        batch = self._as_batch(batch, "the step's inputs")
        self._check_kinds(batch)
        self.binding.check_model(self.model)
        options = self.binding.options()
        key = self._key(batch, options)
        compiled = self._compiled.get(key) or self._compile(batch, options, key)
        self._latest = compiled
        self.steps += 1
        checking = self.check == "always" or (self.check == "first" and not compiled.checks)
        eager = (eager_step(self.model, self.optimizer, self.binding.params, self.loss_fn, batch, self.device)
                 if checking else None)
        self.binding.write_hyper(options)
        states = self.binding.states(options, install=True)
        flat, _, names = flat_state(Workload(self.model, batch, self.loss_fn), self.binding.config(options, states))
        self._check_signature(compiled, flat, names, len(batch))
        loss, grads = self._run(compiled, flat)
        self.binding.stepped()
        if eager is not None:
            self._verify(compiled, eager, loss, grads, options, batch)
        return loss

    def report(self) -> StepReport:
        """Measured peak (the allocator's) and step time so far, per batch shape, beside the plan's
        predictions, and every check's result."""
        rows = []
        for c in self._compiled.values():
            p = c.plan
            rows.append({"shapes": p.shapes, "steps": c.steps, "budget_bytes": p.budget_bytes,
                         "keep_all_peak_bytes": p.keep_all_peak_bytes,
                         "keep_all_measured_peak_bytes": p.keep_all_measured_peak_bytes,
                         "predicted_peak_bytes": p.predicted_peak_bytes,
                         "measured_peak_bytes": max(c.peaks) if c.peaks else None, "peak_method": c.peak_method,
                         "predicted_time_s": p.predicted_time_s, "keep_all_time_s": p.keep_all_time_s,
                         "measured_time_s": statistics.median(c.times) if c.times else None,
                         "n_recompute": p.counts["n_recompute"], "n_swap": p.counts["n_swap"],
                         "checked": len(c.checks), "bitwise": all(x.bitwise for x in c.checks) if c.checks else None})
        return StepReport(rows, [x for c in self._compiled.values() for x in c.checks])

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _as_batch(batch: Any, what: str) -> tuple[torch.Tensor, ...]:
        batch = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        bad = [i for i, t in enumerate(batch) if not isinstance(t, torch.Tensor)]
        if bad or not batch:
            raise TypeError(f"{what} must be tensors (loss_fn(model, *batch)); "
                            + (f"item {bad[0]} is {type(batch[bad[0]]).__name__}" if bad else "none were given"))
        return batch

    def _check_kinds(self, batch: tuple[torch.Tensor, ...]) -> None:
        if len(batch) != len(self.example):
            raise TypeError(f"the step takes {len(self.example)} inputs, as the example did; got {len(batch)}")
        for i, (t, (dtype, device)) in enumerate(zip(batch, self._example_kinds)):
            if t.dtype != dtype or t.device != device:
                raise ValueError(f"input {i} is {t.dtype} on {t.device}, but the example was {dtype} on {device}: "
                                 f"the step is planned for the example's dtype and device; convert the batch "
                                 f"(x.to({str(device)!r}, {dtype})) or call mutwo.optimize with such an example")

    def _key(self, batch: Sequence[torch.Tensor], options: list[dict]) -> tuple:
        modes = tuple(m.training for m in self.model.modules())
        return tuple(tuple(t.shape) for t in batch), self.binding.structure(options), modes

    def _check_signature(self, compiled: _Compiled, flat: list, names: list[str], n_batch: int) -> None:
        now = _signature(flat[:-n_batch])
        if now != compiled.signature:
            i = next(i for i, (a, b) in enumerate(zip(now, compiled.signature)) if a != b)
            raise ValueError(f"{names[i]} is {now[i][1]} {now[i][0]} on {now[i][2]} but the step was planned with "
                             f"{compiled.signature[i][1]} {compiled.signature[i][0]} on {compiled.signature[i][2]}; "
                             f"call mutwo.optimize again after changing the model or optimizer state")

    # ------------------------------------------------------------------ planning
    def _fit_options(self, options: dict[str, Any]) -> dict[str, Any]:
        from mutwo.registry import check_solver_options, solver_info

        check_solver_options(self.solver, options)
        info = solver_info(self.solver)
        try:
            return fit_options(self.solver, self.space, options, info.decisions, info.modes)
        except ValueError as exc:
            if self.space.swap:
                raise
            raise ValueError(f"on CPU there is no device memory to offload to (a 'swapped' copy stays in the same "
                             f"RAM), so plans are recompute-only; pass allow_emulated_swaps=True to run swaps "
                             f"emulated (memory then does not fall). {exc}") from None

    def _compile(self, batch: tuple[torch.Tensor, ...], options: list[dict], key: tuple) -> _Compiled:
        from mutwo.execute import apply
        from mutwo.pipeline import prepare

        t0 = time.perf_counter()
        shapes = key[0]
        # planning runs the step (profiling) on copies; the random-number state is left as it was, so
        # training draws the dropout masks eager training would
        with torch.random.fork_rng(devices=_rng_devices(self.device)):
            config = self.binding.config(options, self.binding.states(options, install=False))
            workload = Workload(self.model, batch, self.loss_fn, type(self.model).__name__)
            batch_size = int(batch[0].shape[0]) if batch[0].dim() else 1
            prep = prepare(workload, config, batch_size=batch_size, runs=self.profile_runs, cache=self.cache,
                           name=f"{workload.name}-{'x'.join(map(str, shapes[0]))}")
        if self.budget_bytes is None:
            self.budget_bytes = budget_bytes(self.budget, prep.keep_all_peak_bytes)
        nbytes = self.budget_bytes
        fitted = fit(prep.problem, nbytes, self.solver, self.solver_options, timeout_s=self.solver_timeout_s)
        module = apply(prep.graph, prep.problem, fitted.schedule, binding=prep.binding)
        plan = Plan(shapes, fitted.schedule, self.solver, str(self.space), nbytes, fitted.sim.peak_bytes,
                    fitted.sim.time_s, prep.keep_all_peak_bytes, prep.keep_all_time_s, prep.floor[0],
                    int(prep.profile.measured_peak_bytes), time.perf_counter() - t0, prep.problem)
        compiled = _Compiled(plan, module, _signature(prep.flat[:-len(batch)]))
        self._compiled[key] = compiled
        self._say(f"planned {plan}")
        return compiled

    # ------------------------------------------------------------------ running
    def _run(self, compiled: _Compiled, flat: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One planned step. The allocator's peak is measured on every CUDA step (its statistics cost
        nothing) and on the first CPU step of each shape (the CPU meter runs the profiler: that step
        is not timed)."""
        measure = self.device.type == "cuda" or not compiled.peaks
        holder: list = []
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            if measure:
                try:
                    m = allocator_peak(lambda: holder.append(compiled.module(*flat)), flat, self.device)
                    compiled.peaks.append(int(m.peak_bytes))
                    compiled.peak_method = m.method
                except AllocatorEventsUnavailable as exc:
                    compiled.peak_method = f"not measured: {exc}"
            if not holder:
                holder.append(compiled.module(*flat))
                measure = False
            sync(self.device)
            elapsed = time.perf_counter() - t0
        if not measure or self.device.type == "cuda":
            compiled.times.append(elapsed)
        compiled.steps += 1
        loss, grads = holder.pop()
        return loss, grads

    def _verify(self, compiled: _Compiled, eager, loss: torch.Tensor, grads: list, options: list[dict],
                batch: tuple) -> None:
        names = self.binding.state_names(options)
        result = compare(eager, loss, grads, self.model, self.optimizer, self.binding.params, names, self.tolerance,
                         self.steps, compiled.plan.shapes)
        compiled.checks.append(result)
        self._say(str(result) + ("" if result.bitwise else f" (tolerance {self.tolerance:g})"))
        if not result.passed:
            adopt(eager, self.model, self.optimizer, self.binding.params, names)
            raise CheckError(result)

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"mutwo.optimize: {text}", file=sys.stderr)


def optimize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, example_inputs: Sequence[torch.Tensor] | torch.Tensor,
             loss_fn: Callable[..., torch.Tensor], budget: BudgetLike = 0.6, *, solver: str = "mutwo_greedy",
             solver_options: dict[str, Any] | None = None, check: Check = "first", check_tolerance: float | None = None,
             allow_emulated_swaps: bool = False, profile_runs: int = 3, cache: bool = True,
             solver_timeout_s: float | None = None, verbose: bool = True) -> TrainStep:
    """A training step that trains ``model`` and ``optimizer`` in place under a memory plan.

    ``loss_fn(model, *batch)`` returns the scalar loss; ``example_inputs`` is one batch (a tensor or a
    tuple). ``budget``: a fraction of the example's keep-all peak (0.6), bytes, or a size ("6GiB"),
    the same bytes for every batch shape; a budget no plan meets is a ValueError naming the floor and
    the lowest plan found. ``solver`` and
    ``solver_options``: any registered solver. ``check``: compare the first step of each batch shape
    ("first"), every step ("always") or none ("never") with PyTorch's eager step, within
    ``check_tolerance`` (default: bitwise on CPU, 1e-3 relative on CUDA). On CPU plans are
    recompute-only unless ``allow_emulated_swaps``. ``profile_runs`` and ``cache``: how the step is
    profiled (the disk cache is reused across runs). ``verbose``: one line per plan and check on stderr.
    The example's shape is planned now; other shapes on their first step.
    """
    return TrainStep(model, optimizer, example_inputs, loss_fn, budget, solver=solver, solver_options=solver_options,
                     check=check, check_tolerance=check_tolerance, allow_emulated_swaps=allow_emulated_swaps,
                     profile_runs=profile_runs, cache=cache, solver_timeout_s=solver_timeout_s, verbose=verbose)
