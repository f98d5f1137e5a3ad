"""Scenario files: the YAML a comparison run is configured by, validated into typed objects at the edge.

YAML is read with ``yaml.safe_load`` (no tags, no object construction), so a scenario can run code only
through a ``model: module:function`` it names explicitly. Every error is a `ScenarioError` that names
the file, the field and the fix; unknown keys suggest the closest valid one.

Schema (defaults in brackets)::

    name: resnet152                 # folder name under results/
    model: resnet152                # a mutwo.zoo key, or "package.module:function"
    model_options: {image_size: 224}  # passed to the builder [{}]
    batch_size: [2, 4]              # int or list of ints > 0
    optimizer: {name: sgd, options: {momentum: 0.0}}   # sgd | adam | adamw [adam]
    device: auto                    # auto | cpu | cuda [auto]
    budgets: [1.0, 0.7, "6GiB"]     # fractions in (0, 1] of the keep-all peak, or sizes (KiB..TiB)
    solvers: [keep_all, {name: mutwo_greedy, options: {mode: both}, label: greedy, timeout_s: 60},
              {name: "mypkg.mymodule:my_solver"}]   # a registered name, or an importable module:function
    plan_space: {recompute: true, swap: true}   # the decisions any plan may use besides KEEP [both]
    solve: {timeout_s: 1800}        # hard wall-clock limit per solver call [1800]; null: in-process
    profile: {runs: 3, warmup: 1, refresh: false}   # refresh: measure again, not from the cache
    execute: {enabled: true, iterations: 3, warmup: 1, max_slowdown: 3.0, memory_limit: null, threads: null}
    references: {eager: true, checkpoint: true, memory_budget: [0.5], backend: aot_eager_decomp_partition,
                 batch_sizes: null}
                                    # PyTorch's own savers as rows (mutwo.references); false: none
    target: local                   # local (op times measured here) | a device name (h100-sxm) | a mapping
                                    # of mutwo.devices.DeviceSpec fields: op times estimated for it [local]
    search: {largest_batch: {memory: 80GiB, max: 512, min: 1, over: batch_size, step: 1, solvers: null}}
                                    # the largest batch (or seq_len) each solver fits in `memory`
                                    # (a size, or `device`: the target's) [none]
    executor: {kind: local, address: null, max_concurrent: null}   # ray: on a Ray cluster [local]
    seed: 0

This module is the schema and its error messages only. Everything a file can get wrong is checked when
it is loaded, before any model is built or profiled, without importing torch (a user's builder module
may): a builder's name, signature and return annotation (`mutwo.zoo`), optimizer option names
(`mutwo.workload`), solver option names and values (what each solver declares, `mutwo.registry`), a
``module:function`` solver's import and signature, and that every solver can stay inside the
``plan_space`` (`mutwo.plan_space`; solvers with a ``mode`` option get the space's). Two checks need
the run itself: whether ``device: cuda`` has a GPU (`mutwo.workload.resolve_device`, when the run
starts) and what an unannotated builder returns (`mutwo.zoo.call_builder`, on its first call).
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ScenarioError", "Scenario", "Budget", "SolverSpec", "OptimizerSpec", "ProfileSpec",
           "ExecuteSpec", "SolveSpec", "PlanSpaceSpec", "ReferencesSpec", "LargestBatchSpec", "SearchSpec",
           "ExecutorSpec", "load_scenario", "validate_scenario", "parse_size", "DEFAULT_TIMEOUT_S", "LOCAL_TARGET"]

DEFAULT_TIMEOUT_S = 1800.0  # hard limit per solver call: far above the ILPs' own 60 s default
LOCAL_TARGET = "local"  # target: op times measured on this machine (mutwo.profile), not estimated

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
_DECIMAL = {"kb": "KiB", "k": "KiB", "mb": "MiB", "m": "MiB", "gb": "GiB", "g": "GiB", "tb": "TiB",
            "t": "TiB", "kib": "KiB", "mib": "MiB", "gib": "GiB", "tib": "TiB", "b": "B"}


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file, the field and the fix."""


# ---------------------------------------------------------------------- sizes and budgets
def parse_size(text: str) -> int:
    """``"6GiB"`` -> bytes. Binary units only: "6GB" is ambiguous (10^9 or 2^30), so it is refused."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size; write a number and a binary unit, e.g. '6GiB' or '512MiB'")
    value, unit = float(m.group(1)), m.group(2)
    if unit not in _UNITS:
        fix = _DECIMAL.get(unit.lower())
        hint = f"write '{m.group(1)}{fix}'" if fix else f"use one of {', '.join(_UNITS)}"
        raise ValueError(f"{text!r} has unit {unit!r}; sizes use binary units (1 GiB = 2^30 bytes): {hint}")
    if value <= 0:
        raise ValueError(f"{text!r}: a size must be positive, e.g. '512MiB'")
    return int(round(value * _UNITS[unit]))


def _positive_size(v: Any, not_a_size: str, what: str, example: str) -> int:
    """A field that takes a size: a positive number of bytes, or text for `parse_size`; ``not_a_size``
    is the error for anything else, ``what`` and ``example`` name the field in the error for 0 or less."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(not_a_size)
    if isinstance(v, int):
        if v <= 0:
            raise ValueError(f"{v} bytes: {what} must be positive, e.g. '{example}'")
        return v
    return parse_size(v)


_STRICT = ConfigDict(extra="forbid")  # unknown keys are errors (with a suggestion), never ignored


class Budget(BaseModel):
    """A memory budget: a fraction of the keep-all peak, or an absolute size."""

    model_config = _STRICT
    fraction: float | None = Field(None, gt=0, le=1)
    nbytes: int | None = Field(None, gt=0)
    label: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return v
        if isinstance(v, bool):
            raise ValueError(f"{v!r} is not a budget; write a fraction like 0.7 or a size like '6GiB'")
        if isinstance(v, (int, float)):
            if not 0 < v <= 1:
                raise ValueError(f"budget {v!r} is a number outside (0, 1]; a number is a fraction of the "
                                 f"keep-all peak (e.g. 0.7); write a size as a string like '6GiB'")
            return {"fraction": float(v), "label": f"{float(v):g}"}
        if isinstance(v, str):
            try:
                as_float = float(v)
            except ValueError:
                return {"nbytes": parse_size(v), "label": v.strip().replace(" ", "")}
            return cls._from_scalar(as_float)
        raise ValueError(f"{v!r} is not a budget; write a fraction like 0.7 or a size like '6GiB'")

    @model_validator(mode="after")
    def _one_of(self) -> Budget:
        if (self.fraction is None) == (self.nbytes is None):
            raise ValueError("a budget is either a fraction (0.7) or a size ('6GiB'), not both or neither")
        if not self.label:
            self.label = f"{self.fraction:g}" if self.fraction is not None else f"{self.nbytes}B"
        return self

    def resolve(self, keep_all_peak_bytes: int) -> int:
        """Bytes of this budget for a workload whose keep-all plan peaks at ``keep_all_peak_bytes``."""
        if self.nbytes is not None:
            return int(self.nbytes)
        return int(self.fraction * keep_all_peak_bytes)


# ---------------------------------------------------------------------- sections
class OptimizerSpec(BaseModel):
    model_config = _STRICT
    name: Literal["sgd", "adam", "adamw"] = "adam"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _known_options(cls, v: dict[str, Any], info) -> dict[str, Any]:
        """Option names and value types are those of torch.optim's own defaults for this optimizer."""
        from mutwo.workload import OptimizerConfig

        name = info.data.get("name")
        if name is None:  # the name itself was wrong; that error is enough
            return v
        defaults = OptimizerConfig(name, {}).resolved()
        for key, value in v.items():
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown {name} option {key!r}; {hint}known: {', '.join(defaults)}")
            default = defaults[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:  # betas: two numbers
                ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
                      and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value))
            if not ok:
                raise ValueError(f"{name} option {key!r} is {_shown(value)}; write a value like its default "
                                 f"{list(default) if isinstance(default, tuple) else default!r}")
        return v


class SolverSpec(BaseModel):
    """One solver run: a registered name, its options, the label it is reported under and, optionally,
    its own hard time limit (``timeout_s``; unset: the scenario's ``solve.timeout_s``)."""

    model_config = _STRICT
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if not isinstance(v, (dict, SolverSpec)):
            raise ValueError(f"{v!r} is not a solver; write a registered name (keep_all) or a mapping "
                             f"{{name: ..., options: {{...}}, label: ...}}")
        return v

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from mutwo.registry import available_solvers, get_solver

        if ":" in v:  # module:function: imported and registered under this name (SolverPathError says why not)
            get_solver(v)
            return v
        names = [n for n in available_solvers() if ":" not in n]
        if v not in names:
            close = difflib.get_close_matches(v, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"unknown solver {v!r}; {hint}registered: {', '.join(names)} (or name a function as "
                             f"'module:function'; register more with @mutwo.registry.register_solver or a "
                             f"'mutwo.solvers' entry point)")
        return v

    @field_validator("options")
    @classmethod
    def _solver_takes_them(cls, v: dict[str, Any], info) -> dict[str, Any]:
        """Option names the solver does not take, and values outside those it declares, are caught
        here, not when it first runs (after the model was captured and profiled). A solver taking
        ``**options`` without declaring any is not checked (`mutwo.registry.solver_options` is None)."""
        from mutwo.registry import check_solver_options

        name = info.data.get("name")  # absent when 'name' itself failed; that error is enough
        if name is not None:
            check_solver_options(name, v)
        return v


class ProfileSpec(BaseModel):
    """``refresh``: measure the profile again rather than reuse the cached one (the new one replaces
    it). Not part of what a resumed run must match (run.json's dump leaves it out): a resumed run
    reads the cache, which holds the profile it started with."""

    model_config = _STRICT
    runs: int = Field(3, gt=0)
    warmup: int = Field(1, ge=0)
    refresh: bool = Field(False, exclude=True)


class PlanSpaceSpec(BaseModel):
    """The decisions any plan of the run may use besides KEEP, said once for every solver: a solver
    with a ``mode`` option gets the matching mode, one that cannot stay inside is refused at load.
    Also written as a mode: ``plan_space: recompute``."""

    model_config = _STRICT
    recompute: bool = True
    swap: bool = True

    @model_validator(mode="before")
    @classmethod
    def _from_mode(cls, v: Any) -> Any:
        from mutwo.plan_space import MODES, PlanSpace

        if isinstance(v, str):
            if v not in MODES:
                close = difflib.get_close_matches(v, MODES, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{v!r} is not a plan space; {hint}write one of {', '.join(MODES)}, or "
                                 f"{{recompute: true, swap: false}}")
            space = PlanSpace.from_mode(v)
            return {"recompute": space.recompute, "swap": space.swap}
        return v

    @model_validator(mode="after")
    def _something_allowed(self) -> PlanSpaceSpec:
        self.space()  # neither: a ValueError saying to allow one
        return self

    def space(self):
        """As a `mutwo.plan_space.PlanSpace`."""
        from mutwo.plan_space import PlanSpace

        return PlanSpace(self.recompute, self.swap)


class ExecuteSpec(BaseModel):
    """``max_slowdown``: plans predicted to take longer than this many keep-all iterations are not run
    (a plan recomputing long chains can take minutes per iteration); null runs every feasible plan.
    ``memory_limit``: a size ('20GiB') the executed step's live tensor storages may not exceed; a plan
    that goes above it stops at once and its row is ``oom`` (on CPU the live-storage tracker enforces it,
    on CUDA the allocator is capped). null: no limit but the device's own.
    ``threads``: torch threads while plans are profiled, executed and timed (restored after); null: 1 on
    CPU (on a shared CPU a second OpenMP thread stalls, docs/benchmarks.md), torch's default on CUDA."""

    model_config = _STRICT
    enabled: bool = True
    iterations: int = Field(3, gt=0)
    warmup: int = Field(1, ge=0)
    max_slowdown: float | None = Field(3.0, gt=1.0)
    memory_limit: int | None = None
    threads: int | None = Field(None, gt=0)

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return v
        return _positive_size(v, f"{v!r} is not a size; write one like '20GiB' (or null for no limit)",
                              "a memory limit", "20GiB")


class SolveSpec(BaseModel):
    """``timeout_s``: hard wall-clock limit of one solver call, in seconds. The call runs in a forked
    child process that is killed when the limit passes (the row says ``timeout``); null runs solvers in
    this process, with no limit but their own. ``hints``: each solver that declares a ``hint`` option
    (the ILPs) is given the plan it found at the next larger budget of the same batch size
    (`mutwo.hints`); false: every cell is solved on its own."""

    model_config = _STRICT
    timeout_s: float | None = Field(DEFAULT_TIMEOUT_S, gt=0)
    hints: bool = True  # a solver with a ``hint`` option gets its plan at the next larger budget (mutwo.hints)


class ReferencesSpec(BaseModel):
    """PyTorch's own savers measured beside the solvers (`mutwo.references`): the eager step, per-block
    checkpointing, and ``torch.compile`` at each ``activation_memory_budget`` knob value in [0, 1] (a
    fraction of the partitioner's default activation memory, not a byte budget) on ``backend``.
    ``references: false`` (or ``--no-references``) turns them all off; they need ``execute.enabled``.
    ``batch_sizes``: the batch sizes that get them (null: every one; each compile of a large model takes
    minutes, so a scenario may measure PyTorch at its most telling size only)."""

    model_config = _STRICT
    enabled: bool = True
    eager: bool = True
    checkpoint: bool = True
    memory_budget: list[float] = Field(default_factory=lambda: [0.5])
    backend: Literal["aot_eager_decomp_partition", "aot_eager", "inductor"] = "aot_eager_decomp_partition"
    batch_sizes: list[int] | None = None  # which of the scenario's batch sizes get reference rows (null: all)

    def applies_to(self, batch_size: int) -> bool:
        """Whether ``batch_size`` gets reference rows (compiling a large model per batch size takes minutes)."""
        return self.enabled and (self.batch_sizes is None or batch_size in self.batch_sizes)

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {"enabled": v}
        if v is None:
            return {"enabled": False}
        return v

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _knobs(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
                raise ValueError(f"{_shown(x)} is not an activation_memory_budget knob; write numbers in [0, 1] "
                                 f"(1: the partitioner's default, 0: recompute all it can), e.g. [0.5], or [] "
                                 f"for none")
        return list(dict.fromkeys(float(x) for x in items))


# ---------------------------------------------------------------------- target and search
def _target(v: Any) -> str | dict[str, Any]:
    """A scenario's ``target``: ``local``, a device name (normalised: "H100_SXM" -> "h100-sxm") or a
    mapping of DeviceSpec fields (kept as written; checked by building the spec). ``local-cpu`` is
    checked by name only: building it measures this CPU (torch), which loading a scenario does not."""
    from mutwo.devices import LOCAL_CPU, device_names, get_device

    if v is None:
        return LOCAL_TARGET
    if isinstance(v, str):
        key = v.strip().lower().replace("_", "-").replace(" ", "-")
        if key == LOCAL_TARGET:
            return LOCAL_TARGET
        if key in device_names():
            return key
        try:
            return get_device(v).name
        except ValueError as exc:
            raise ValueError(f"{exc}; or '{LOCAL_TARGET}' (op times measured on this machine, the default)") from None
    if isinstance(v, dict):
        base = str(v.get("base", "")).strip().lower().replace("_", "-")
        if base != LOCAL_CPU:
            get_device(v)  # DeviceSpecError (a ValueError) names the field and its unit
        return dict(v)
    raise ValueError(f"{_shown(v)} is not a target; write '{LOCAL_TARGET}', a device name such as 'h100-sxm', "
                     f"or a mapping of device fields, e.g. {{base: h100-sxm, memory_bytes: 79GiB}}")


class LargestBatchSpec(BaseModel):
    """The largest batch size (``over: batch_size``) or sequence length (``over: seq_len``, at the
    scenario's first batch size) in [``min``, ``max``] (multiples of ``step``) at which each solver's plan,
    and keep-all's, fits ``memory`` (a size, or ``device``: the target's memory). Found by bisection
    (`mutwo.search`); ``solvers``: labels of the scenario's solvers to search for (null: all);
    ``max_slowdown``: a plan counts only when its predicted step is at most this many times keep-all's
    predicted step at the same size (null: any time), so the answer is a size worth training at."""

    model_config = _STRICT
    memory: int | Literal["device"]
    max: int = Field(gt=0)
    min: int = Field(1, gt=0)
    over: Literal["batch_size", "seq_len"] = "batch_size"
    step: int = Field(1, gt=0)
    solvers: list[str] | None = None
    max_slowdown: float | None = Field(None, ge=1)

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v == "device":
            return v
        return _positive_size(v, f"{_shown(v)} is not a memory; write a size like '80GiB', or 'device' (the target's)",
                              "a memory", "80GiB")

    @model_validator(mode="after")
    def _range(self) -> LargestBatchSpec:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; write min <= max")
        if self.max // self.step < -(-self.min // self.step):
            raise ValueError(f"no multiple of step {self.step} lies in [min {self.min}, max {self.max}]")
        return self


class SearchSpec(BaseModel):
    """Searches run after the grid; today one: ``largest_batch``."""

    model_config = _STRICT
    largest_batch: LargestBatchSpec | None = None


class ExecutorSpec(BaseModel):
    """Where the grid's work runs (docs/compare.md, "Running on a Ray cluster"): ``local`` in this
    process, or ``ray`` on a Ray cluster at ``address`` (``auto``: the one this machine belongs to; a
    ``HOST:PORT``; null: a local one started for the run) with at most ``max_concurrent`` solver calls
    at a time (null: as many as the cluster's CPUs take). ``--executor`` / ``--address`` override it.
    Not part of what a resumed run must match: where a cell ran does not change its row."""

    model_config = _STRICT
    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    max_concurrent: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_kind(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None or v == "auto" or re.fullmatch(r"(ray://)?[A-Za-z0-9_.-]+:\d{1,5}", v):
            return v
        raise ValueError(f"{v!r} is not a Ray address; write auto, HOST:PORT (e.g. 10.0.0.5:6379) or "
                         f"ray://HOST:PORT, or null for a local cluster")


class Scenario(BaseModel):
    """A validated scenario (the file it came from is the ``source`` its errors name)."""

    model_config = _STRICT
    name: str
    model: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: list[int]
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    budgets: list[Budget]
    solvers: list[SolverSpec]
    plan_space: PlanSpaceSpec = Field(default_factory=PlanSpaceSpec)
    solve: SolveSpec = Field(default_factory=SolveSpec)
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    execute: ExecuteSpec = Field(default_factory=ExecuteSpec)
    references: ReferencesSpec = Field(default_factory=ReferencesSpec)
    target: str | dict[str, Any] = LOCAL_TARGET
    search: SearchSpec = Field(default_factory=SearchSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"{v!r} names the results folder; use letters, digits, '_', '-' or '.' only")
        return v

    @field_validator("budgets", "solvers", mode="before")
    @classmethod
    def _non_empty(cls, v: Any, info) -> Any:
        if isinstance(v, (str, int, float, dict)):
            v = [v]
        if isinstance(v, list) and not v:
            example = "[1.0, 0.7, 0.5]" if info.field_name == "budgets" else "[keep_all, mutwo_greedy]"
            raise ValueError(f"is empty; list at least one, e.g. {info.field_name}: {example}")
        return v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        items = v if isinstance(v, list) else [v]
        bad = [x for x in items if isinstance(x, bool) or not isinstance(x, int)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a batch size; write an integer > 0 or a list of them, "
                             f"e.g. batch_size: [2, 4]")
        return v

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one batch size")
        bad = [b for b in v if b <= 0]
        if bad:
            raise ValueError(f"batch sizes must be > 0, got {bad}")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from mutwo.zoo import resolve_builder

        resolve_builder(v)
        return v

    @field_validator("model_options")
    @classmethod
    def _builder_takes_them(cls, v: dict[str, Any], info) -> dict[str, Any]:
        """Option names the builder does not take are caught here, not after the run has started."""
        from mutwo.zoo import check_builder_options, resolve_builder

        model = info.data.get("model")  # absent when 'model' itself failed
        if model is not None:
            check_builder_options(resolve_builder(model), model, v)
        return v

    @field_validator("solvers")
    @classmethod
    def _labels(cls, solvers: list[SolverSpec]) -> list[SolverSpec]:
        names = [s.name for s in solvers]
        for s in solvers:
            if s.label is None:
                dup = names.count(s.name) > 1 and s.options
                s.label = s.name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(s.options.items())) + "]"
                                    if dup else "")
        labels = [s.label for s in solvers]
        dups = sorted({x for x in labels if labels.count(x) > 1})
        if dups:
            raise ValueError(f"{', '.join(repr(d) for d in dups)} appears twice; give each a distinct 'label' "
                             f"or different 'options'")
        return solvers

    @field_validator("budgets")
    @classmethod
    def _unique_budgets(cls, budgets: list[Budget]) -> list[Budget]:
        seen: set[str] = set()
        unique = []
        for b in budgets:
            if b.label not in seen:
                seen.add(b.label)
                unique.append(b)
        return unique

    @model_validator(mode="after")
    def _time_limits_fit(self) -> Scenario:
        """A solver's own ``time_limit_s`` above its hard limit would be cut short: say so now."""
        for i, s in enumerate(self.solvers):
            hard = self.timeout_s(s)
            own = s.options.get("time_limit_s")
            if hard is not None and isinstance(own, (int, float)) and not isinstance(own, bool) and own >= hard:
                where = f"solvers[{i}].timeout_s" if s.timeout_s is not None else "solve.timeout_s"
                raise ValueError(f"field 'solvers[{i}].options.time_limit_s': {own:g} s is not below the hard "
                                 f"limit {where} = {hard:g} s, which would kill {s.label} first; raise {where} "
                                 f"above it, or lower time_limit_s")
        return self

    @model_validator(mode="after")
    def _solvers_fit_the_plan_space(self) -> Scenario:
        """Each solver's options inside ``plan_space`` (`mutwo.plan_space.fit_options`): a solver with a
        mode gets the space's; one that cannot stay inside, or whose own mode leaves it, is refused."""
        from mutwo.plan_space import fit_options
        from mutwo.registry import solver_info

        space = self.plan_space.space()
        for i, s in enumerate(self.solvers):
            info = solver_info(s.name)
            try:
                s.options = fit_options(s.label, space, s.options, info.decisions, info.modes)
            except ValueError as exc:
                raise ValueError(f"field 'solvers[{i}]': {exc}") from None
        return self

    @field_validator("target", mode="before")
    @classmethod
    def _known_target(cls, v: Any) -> Any:
        return _target(v)

    @model_validator(mode="after")
    def _reference_batches_are_the_scenarios(self) -> Scenario:
        extra = sorted(set(self.references.batch_sizes or []) - set(self.batch_size))
        if extra:
            raise ValueError(f"field 'references.batch_sizes': {extra} not in batch_size {self.batch_size}; list "
                             f"some of the scenario's batch sizes, or null for all")
        return self

    @model_validator(mode="after")
    def _meta_needs_a_target(self) -> Scenario:
        """A model built on meta has no weights to profile: only a target's estimate can cost it."""
        if self.model_options.get("meta") is True and self.target == LOCAL_TARGET:
            raise ValueError("field 'target': model_options.meta: true builds the model without weights, so its "
                             "op times cannot be measured here; name a target device to estimate them (e.g. "
                             "target: h100-sxm, or --target h100-sxm)")
        return self

    @model_validator(mode="after")
    def _search_fits_the_scenario(self) -> Scenario:
        """``memory: device`` needs a target, ``solvers`` must be the scenario's labels, and ``over:
        seq_len`` a builder that takes seq_len."""
        spec = self.search.largest_batch
        if spec is None:
            return self
        where = "field 'search.largest_batch"
        if spec.memory == "device" and self.target == LOCAL_TARGET:
            raise ValueError(f"{where}.memory': 'device' is the target's memory and this scenario has no target "
                             f"(local); give a size such as '80GiB', or a target (target: h100-sxm)")
        labels = [s.label for s in self.solvers]
        for label in spec.solvers or []:
            if label not in labels:
                close = difflib.get_close_matches(label, labels, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"{where}.solvers': {label!r} is not one of the scenario's solvers; {hint}"
                                 f"labels: {', '.join(labels)}")
        if spec.over == "seq_len":
            from mutwo.zoo import check_builder_options, resolve_builder

            try:
                check_builder_options(resolve_builder(self.model), self.model, {**self.model_options, "seq_len": 1})
            except ValueError as exc:
                raise ValueError(f"{where}.over': seq_len is searched by passing it to the model's builder, "
                                 f"which does not take it: {exc}") from None
        return self

    def target_spec(self):
        """The `mutwo.devices.DeviceSpec` op times are estimated for, or None (``local``: measured)."""
        if self.target == LOCAL_TARGET:
            return None
        from mutwo.devices import get_device

        return get_device(self.target)

    def search_memory_bytes(self) -> int | None:
        """The memory the largest-batch search fits plans into (``device``: the target's), or None."""
        spec = self.search.largest_batch
        if spec is None:
            return None
        return self.target_spec().memory_bytes if spec.memory == "device" else int(spec.memory)

    def timeout_s(self, spec: SolverSpec) -> float | None:
        """The hard wall-clock limit of one call of ``spec`` (None: in-process, unlimited)."""
        return spec.timeout_s if spec.timeout_s is not None else self.solve.timeout_s


# ---------------------------------------------------------------------- loading
def _model_fields(cls: type[BaseModel], loc: tuple) -> list[str] | None:
    """Valid keys of the section that ``loc`` (a pydantic error location) points into."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


_FIX = {"int_parsing": "write a whole number", "int_from_float": "write a whole number", "int_type":
        "write a whole number", "float_parsing": "write a number", "float_type": "write a number",
        "bool_parsing": "write true or false", "bool_type": "write true or false",
        "list_type": "write a list, e.g. [a, b]", "dict_type": "write a mapping, e.g. {key: value}",
        "model_type": "write a mapping, e.g. {key: value}", "string_type": "write a string (quote it)"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(errors: list[dict], source: str) -> str:
    """One line per pydantic error: the file, the field (a.b[0].c), what is wrong and how to fix it."""
    lines = []
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if err["type"] == "extra_forbidden":
            valid = _model_fields(Scenario, loc[:-1]) or []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{source}: unknown key {field!r}; {hint}valid keys here: {', '.join(valid)}")
            continue
        if err["type"] == "missing":
            # 'budgets' missing next to an unknown 'budget' is one mistake: the unknown key says it
            if any(tuple(e["loc"][:-1]) == tuple(err["loc"][:-1])
                   and difflib.get_close_matches(str(e["loc"][-1]), [str(loc[-1])], n=1, cutoff=0.5)
                   for e in extra):
                continue
            lines.append(f"{source}: field {field!r} is required but missing")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error", "assertion_error"):
            msg += f" (value: {_shown(err.get('input'))})"
            fix = _FIX.get(err["type"])
            if err["type"] == "literal_error":
                allowed = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                close = difflib.get_close_matches(str(err.get("input")), allowed, n=1, cutoff=0.4)
                fix = f"did you mean {close[0]!r}?" if close else None
            if fix:
                msg += f"; {fix}"
        lines.append(f"{source}: field {field!r}: {msg}" if field else f"{source}: {msg}")
    return "\n".join(lines)


def load_scenario(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read, override (command-line values win) and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}: not valid YAML{where}: {what} (tags like !!python/object are not "
                            f"allowed)") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping of keys (name, model, budgets, ...)")
    data = {**data, **(overrides or {})}
    return validate_scenario(data, str(path))


def validate_scenario(data: dict, source: str = "<scenario>") -> Scenario:
    """Validate already-parsed scenario data; errors name ``source`` as a file's would."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_describe(exc.errors(include_url=False), source)) from None
