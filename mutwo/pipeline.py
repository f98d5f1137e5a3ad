"""Prepare one batch size: build the workload, capture the training step, profile it (or estimate its
op times for a target device), build the Problem and simulate keep-all (what fractional budgets are
fractions of).

`prepare` is the one capture -> profile/estimate -> Problem sequence; the comparison
(`prepare_scenario`), the benchmarks and the optimizer call it. `prepare_scenario` also checks the
captured step against eager PyTorch once per batch size (`eager_check`, in keep_all.json) where the
step can run here. `reload` is the way back from a run folder on ``--resume``. `execution_blocker` says
when a prepared step cannot run on this machine (a model built on meta, or one whose fixed memory is
more than the machine has).
"""

from __future__ import annotations

import inspect
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mutwo import files

if TYPE_CHECKING:
    from mutwo.devices import DeviceSpec
    from mutwo.problem import Problem
    from mutwo.problem_build import StorageBinding
    from mutwo.scenario import Scenario
    from mutwo.workload import OptimizerConfig, Workload

__all__ = ["Prepared", "prepare", "prepare_scenario", "keep_all_info", "save_tables", "reload", "seed_everything",
           "build", "target_device", "eager_check", "execution_blocker", "PROBLEM_FILE", "KEEP_ALL_FILE",
           "NOT_EXECUTABLE"]

PROBLEM_FILE = "problem.npz"
KEEP_ALL_FILE = "keep_all.json"
NOT_EXECUTABLE = "not_executable"  # keep_all.json: why this batch size cannot run here (no --no-execute needed)
Status = Callable[[str], None]


def _silent(text: str) -> None:
    return None


@dataclass
class Prepared:
    """One captured, profiled batch size and its Problem: everything its cells share. ``graph``,
    ``flat`` and ``profile`` are None when the Problem was reloaded from a run folder."""

    batch_size: int
    problem: Problem
    keep_all_peak_bytes: int  # simulated keep-all peak: budgets are fractions of it
    keep_all_time_s: float
    graph: Any = None  # TrainGraph, needed to execute
    flat: list | None = None  # the graph's inputs (parameters, buffers, optimizer state, batch)
    profile: Any = None  # mutwo.profile.Profile
    capture_s: float = 0.0
    info: dict = field(default_factory=dict)  # keep_all.json: reference figures, measured ones included
    binding: StorageBinding | None = None  # activation -> graph storage, needed to execute
    floor: tuple[int, int] = (0, 0)  # problem.peak_floor(): no plan peaks below it
    # the unmodified step's runs that executed plans are checked against (mutwo.execute.reference), by
    # (iterations, seed): computed once per batch size, on the host
    references: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.floor == (0, 0) and self.problem is not None:
            self.floor = self.problem.peak_floor()

    def release(self) -> None:
        """Drop the model and its state (before the next batch size is built)."""
        self.graph = self.flat = self.binding = None
        self.references = {}


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def target_device(scenario: Scenario, source: str = "<scenario>") -> str:
    """The device a scenario runs on (``auto`` resolved); ScenarioError when it is not present."""
    from mutwo.scenario import ScenarioError
    from mutwo.workload import resolve_device

    try:
        return resolve_device(scenario.device)
    except ValueError as exc:  # device: cuda without a GPU, worded like the file's other errors
        raise ScenarioError(f"{source}: field 'device': {exc}") from None


def build(scenario: Scenario, batch_size: int, device: str, source: str = "<scenario>") -> Workload:
    """The scenario's workload at one batch size (a user builder is checked to return a Workload)."""
    from mutwo.zoo import call_builder

    return call_builder(scenario, batch_size, device, source)


def prepare(workload: Workload, optimizer: OptimizerConfig, *, batch_size: int, runs: int = 3, warmup: int = 1,
            cache: bool = True, name: str | None = None, progress: bool = False,
            status: Status = _silent, refresh: bool = False, profile_key: str | None = None,
            target: DeviceSpec | None = None) -> Prepared:
    """Capture ``workload``'s training step, profile it (``runs`` after ``warmup``; ``cache``: reuse the
    disk cache; ``refresh``: measure again; ``profile_key``: the cache entry a resumed run started
    with) or, with a ``target``, estimate its op times for that device instead (nothing is run; a
    model built on meta can only be estimated), build its Problem and simulate keep-all."""
    from mutwo.capture import capture, flat_state
    from mutwo.problem_build import build_problem
    from mutwo.profile import profile
    from mutwo.schedule import Schedule
    from mutwo.simulate import simulate

    status(f"b{batch_size}: capture")
    t0 = time.perf_counter()
    graph = capture(workload, optimizer)
    capture_s = time.perf_counter() - t0
    flat, _, _ = flat_state(workload, optimizer)
    if target is None:
        status(f"b{batch_size}: profile")
        prof = profile(graph, flat, runs=runs, warmup=warmup, cache=cache, progress=progress, refresh=refresh,
                       key=profile_key)
    else:  # the one place a target's estimate replaces the measured profile
        from mutwo.estimate import estimate_profile

        status(f"b{batch_size}: estimate for {target.name}")
        prof = estimate_profile(graph, target)
    problem, binding = build_problem(graph, prof, name=name)
    keep = simulate(problem, Schedule.keep_all(problem, solver="keep_all"))
    return Prepared(batch_size, problem, keep.peak_bytes, keep.time_s, graph, flat, prof, capture_s,
                    binding=binding)


def prepare_scenario(scenario: Scenario, batch_size: int, device: str, source: str = "<scenario>",
                     status: Status = _silent, profile_key: str | None = None) -> Prepared:
    """`prepare` one batch size of a scenario (seeded first; profiled with the thread count plans are
    timed with, ``execute.threads``), with its keep-all figures and the `eager_check` in ``info``
    (``profile.refresh`` measures the profile again, unless ``profile_key`` names the one to reuse)."""
    from mutwo.timing import threads_for, torch_threads
    from mutwo.workload import OptimizerConfig

    seed_everything(scenario.seed)
    status(f"b{batch_size}: build {scenario.model}")
    target = scenario.target_spec()
    workload, on_meta = _build_for(scenario, batch_size, device, source, target is not None)
    opt = OptimizerConfig(scenario.optimizer.name, dict(scenario.optimizer.options))
    with torch_threads(threads_for(device, scenario.execute.threads)):
        prep = prepare(workload, opt, batch_size=batch_size, runs=scenario.profile.runs,
                       warmup=scenario.profile.warmup, name=f"{scenario.name}-b{batch_size}", status=status,
                       refresh=scenario.profile.refresh and profile_key is None, profile_key=profile_key,
                       target=target)
        prep.problem.notes.update({"scenario": scenario.name, "batch_size": batch_size})
        prep.info = keep_all_info(prep)
        blocker = on_meta or execution_blocker(workload, prep.info["fixed_peak_bytes"], device)
        if blocker:
            prep.info[NOT_EXECUTABLE] = blocker
        else:
            status(f"b{batch_size}: check against eager PyTorch")
            prep.info["eager_check"] = eager_check(workload, opt, prep.graph, prep.flat, seed=scenario.seed)
    return prep


# torch.testing.assert_close's default (rtol, atol) per dtype (its documentation's table)
_CLOSE_DEFAULTS = {"torch.float16": (1e-3, 1e-5), "torch.bfloat16": (1.6e-2, 1e-5), "torch.float32": (1.3e-6, 1e-5),
                   "torch.float64": (1e-7, 1e-7)}


def eager_check(workload: Workload, optimizer: OptimizerConfig, graph: Any, flat: list, seed: int = 0) -> dict:
    """One step of eager PyTorch (forward, loss, backward, the torch.optim step, on a copy of the model)
    against one step of the captured graph, unmodified, on a copy of ``flat``, both from
    ``torch.manual_seed(seed)``: the largest relative and absolute differences of the loss and the
    updated parameters and buffers, whether they are bitwise equal, and whether they pass
    ``torch.testing.assert_close`` with its defaults for their dtype (the tolerance, stated). A step
    that raises is recorded as ``error``; the run goes on."""
    import copy

    import torch

    from mutwo.capture import eager_optimizer, eager_step, run_step

    try:
        model = copy.deepcopy(workload.model)
        torch.manual_seed(seed)
        eager_loss = eager_step(workload, eager_optimizer(model, optimizer), model)
        eager = [eager_loss, *(p.detach() for p in model.parameters()), *(b.detach() for b in model.buffers())]
        work = [t.detach().clone() for t in flat]
        torch.manual_seed(seed)
        with torch.no_grad():
            graph_loss, _ = run_step(graph, work)
        captured = [graph_loss, *work[:len(eager) - 1]]
        return _compare(captured, eager)
    except Exception as exc:  # noqa: BLE001 - a failing check is recorded, not the end of the run
        return {"error": f"{type(exc).__name__}: {exc}".strip()}


def _compare(actual: list, expected: list) -> dict:
    """Largest differences of ``actual`` against ``expected`` (tensor by tensor) and the verdict."""
    import torch

    rel = abs_ = 0.0
    bitwise = close = True
    dtypes = set()
    for a, e in zip(actual, expected, strict=True):
        a = a.detach().to("cpu")
        e = e.detach().to("cpu")
        if torch.equal(a, e):
            continue
        bitwise = False
        dtypes.add(str(e.dtype))
        diff = float((a.double() - e.double()).abs().max()) if a.shape == e.shape else float("inf")
        scale = float(e.double().abs().max()) if e.numel() else 0.0
        abs_, rel = max(abs_, diff), max(rel, diff / scale if scale > 0 else float("inf"))
        try:
            torch.testing.assert_close(a, e)
        except AssertionError:
            close = False
    if bitwise:
        tolerance = "bitwise (every compared tensor identical)"
    else:
        tolerance = "torch.testing.assert_close defaults: " + ", ".join(
            f"{d} rtol {_CLOSE_DEFAULTS[d][0]:g} atol {_CLOSE_DEFAULTS[d][1]:g}" if d in _CLOSE_DEFAULTS
            else f"{d} exact" for d in sorted(dtypes))
    return {"compared": "loss, updated parameters and buffers after one step", "max_rel_diff": rel,
            "max_abs_diff": abs_, "bitwise_equal": bitwise, "within_tolerance": close, "tolerance": tolerance}


def _build_for(scenario: Scenario, batch_size: int, device: str, source: str,
               estimated: bool) -> tuple[Workload, str]:
    """The workload, and why it was built on meta instead ("" when it was not): a builder that refuses a
    model too large for this machine's RAM (MemoryError) is asked again with ``meta=True`` when op
    times are estimated for a target and the builder takes ``meta``."""
    try:
        return build(scenario, batch_size, device, source), ""
    except MemoryError as exc:
        from mutwo.zoo import resolve_builder

        takes_meta = "meta" in inspect.signature(resolve_builder(scenario.model)).parameters
        if not (estimated and takes_meta):
            raise
        why = str(exc)
    on_meta = scenario.model_copy(update={"model_options": {**scenario.model_options, "meta": True}})
    return build(on_meta, batch_size, device, source), f"built on meta (too large to allocate here: {why})"


def execution_blocker(workload: Workload, fixed_bytes: int, device: str) -> str | None:
    """Why this step cannot run on this machine, or None: its model is on the meta device (no weights),
    or its fixed memory (parameters, gradients, optimizer state, inputs) is more than the machine has
    (free RAM, plus what the model already holds; on CUDA the GPU's memory)."""
    import torch

    tensors = [*workload.model.parameters(), *workload.model.buffers(),
               *(x for x in workload.inputs if isinstance(x, torch.Tensor))]
    if any(t.is_meta for t in tensors):
        return "the model is built on the meta device (model_options.meta): it has no weights to run"
    if device.startswith("cuda"):
        have, where = torch.cuda.get_device_properties(torch.device(device)).total_memory, "GPU memory"
    else:
        from mutwo.zoo import available_ram_bytes

        held = sum(t.numel() * t.element_size() for t in tensors)
        have, where = available_ram_bytes() + held, "RAM available"
    if fixed_bytes > have:
        return (f"its parameters, gradients and optimizer state need {fixed_bytes / 2**30:.1f} GiB and this machine "
                f"has {have / 2**30:.1f} GiB of {where}")
    return None


def keep_all_info(prep: Prepared) -> dict:
    """keep_all.json before keep-all is executed: predicted figures, the floor, capture and profile."""
    problem, prof = prep.problem, prep.profile
    return {"batch_size": prep.batch_size, "keep_all_peak_bytes": prep.keep_all_peak_bytes,
            "keep_all_time_s": prep.keep_all_time_s, "fixed_peak_bytes": int(problem.fixed_bytes.max()),
            "act_bytes_total": int(problem.act_bytes.sum()), "floor_bytes": prep.floor[0],
            **{k: v for k, v in problem.summary().items() if k.startswith("n_")},
            "capture_s": prep.capture_s, "profile_s": prof.profile_time_s,
            "profile_measured_peak_bytes": prof.measured_peak_bytes,
            "profile_iteration_time_s": prof.iteration_time_s, "peak_method": prof.peak_method,
            "bandwidth_bytes_per_s": prof.host_bandwidth_bytes_per_s, "bandwidth_source": prof.bandwidth_source,
            "cost_source": problem.cost_source, **_profile_notes(prof), **_estimate_notes(prof)}


def _estimate_notes(prof: Any) -> dict:
    """For an estimated profile: the target's figures and the ops the FLOP counter did not know."""
    if not getattr(prof, "target", None):
        return {}
    return {"target": prof.target, "unknown_ops": dict(prof.unknown_ops)}


def _profile_notes(prof: Any) -> dict:
    """How trustworthy the profile is: its own spread and warning (report.md's notes), the load and
    threads it was measured under, and its cache entry (a resumed run reuses it)."""
    from mutwo.profile import iteration_spread, spread_warning

    return {"profile_spread": iteration_spread(prof), "profile_warning": spread_warning(prof),
            "profile_load_class": prof.load_class, "profile_threads": prof.threads,
            "profile_cache_key": prof.cache_key}


def save_tables(prep: Prepared, folder: Path) -> None:
    """ops.csv, activations.csv and the Problem, into a batch folder of a run."""
    from mutwo.problem_build import activation_table

    files.write_csv(folder / "ops.csv", prep.profile.ops_frame(prep.graph))
    files.write_csv(folder / "activations.csv", activation_table(prep.problem))
    prep.problem.save(folder / PROBLEM_FILE)


def reload(folder: Path, batch_size: int) -> Prepared | None:
    """A batch size as a finished run left it (its Problem and keep_all.json; no graph: nothing can be
    executed), or None when the folder does not hold both."""
    from mutwo.problem import Problem

    info_path = folder / KEEP_ALL_FILE
    if not ((folder / PROBLEM_FILE).exists() and info_path.exists()):
        return None
    info = json.loads(info_path.read_text())
    return Prepared(batch_size, Problem.load(folder / PROBLEM_FILE), info["keep_all_peak_bytes"],
                    info["keep_all_time_s"], info=info)
