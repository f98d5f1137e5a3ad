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
    solvers: [keep_all, {name: mutwo_greedy, options: {mode: both}, label: greedy}]
    profile: {runs: 3, warmup: 1}
    execute: {enabled: true, iterations: 3, warmup: 1, max_slowdown: 3.0}
    seed: 0
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ScenarioError", "Scenario", "Budget", "SolverSpec", "OptimizerSpec", "ProfileSpec",
           "ExecuteSpec", "load_scenario", "parse_size", "resolve_builder", "resolve_device"]

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")
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
        raise ValueError(f"{text!r}: a size must be positive")
    return int(round(value * _UNITS[unit]))


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

    @model_validator(mode="after")
    def _known_options(self) -> OptimizerSpec:
        from mutwo.capture import OptimizerConfig

        OptimizerConfig(self.name, dict(self.options)).resolved()  # raises ValueError naming bad keys
        return self


class SolverSpec(BaseModel):
    """One solver run: a registered name, its options and the label it is reported under."""

    model_config = _STRICT
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from mutwo.registry import available_solvers

        names = available_solvers()
        if v not in names:
            close = difflib.get_close_matches(v, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"unknown solver {v!r}; {hint}registered: {', '.join(names)} (register more "
                             f"with @mutwo.registry.register_solver or a 'mutwo.solvers' entry point)")
        return v


class ProfileSpec(BaseModel):
    model_config = _STRICT
    runs: int = Field(3, gt=0)
    warmup: int = Field(1, ge=0)


class ExecuteSpec(BaseModel):
    """``max_slowdown``: plans predicted to take longer than this many keep-all iterations are not run
    (a plan recomputing long chains can take minutes per iteration); null runs every feasible plan."""

    model_config = _STRICT
    enabled: bool = True
    iterations: int = Field(3, gt=0)
    warmup: int = Field(1, ge=0)
    max_slowdown: float | None = Field(3.0, gt=1.0)


class Scenario(BaseModel):
    """A validated scenario. ``path`` is the file it came from (for messages and the run record)."""

    model_config = _STRICT
    name: str
    model: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    batch_size: list[int]
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    budgets: list[Budget]
    solvers: list[SolverSpec]
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    execute: ExecuteSpec = Field(default_factory=ExecuteSpec)
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
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one batch size")
        bad = [b for b in v if b <= 0]
        if bad:
            raise ValueError(f"batch sizes must be > 0, got {bad}")
        return v

    @field_validator("device")
    @classmethod
    def _device_present(cls, v: str) -> str:
        resolve_device(v)
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        resolve_builder(v)
        return v

    @model_validator(mode="after")
    def _labels(self) -> Scenario:
        names = [s.name for s in self.solvers]
        for s in self.solvers:
            if s.label is None:
                dup = names.count(s.name) > 1 and s.options
                s.label = s.name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(s.options.items())) + "]"
                                    if dup else "")
        labels = [s.label for s in self.solvers]
        dups = sorted({x for x in labels if labels.count(x) > 1})
        if dups:
            raise ValueError(f"solvers: {dups} appear twice; give each a distinct 'label' or 'options'")
        seen: set[str] = set()
        unique = []
        for b in self.budgets:
            if b.label not in seen:
                seen.add(b.label)
                unique.append(b)
        self.budgets = unique
        return self


# ---------------------------------------------------------------------- builders and devices
def resolve_builder(model: str) -> Callable[..., Any]:
    """The workload builder a ``model`` value names: a zoo key or an importable ``module:function``."""
    if ":" in model:
        module_name, _, fn_name = model.partition(":")
        if not module_name or not fn_name:
            raise ValueError(f"{model!r} is not 'module:function' (e.g. 'mypkg.models:build')")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ValueError(f"cannot import module {module_name!r} for model {model!r}: "
                             f"{type(exc).__name__}: {exc} (is it on PYTHONPATH?)") from exc
        fn = getattr(module, fn_name, None)
        if fn is None:
            public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
            close = difflib.get_close_matches(fn_name, public, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"module {module_name!r} has no function {fn_name!r}{hint}")
        if not callable(fn) or isinstance(fn, types.ModuleType):
            raise ValueError(f"{model!r} is not a function; it must be "
                             f"function(batch_size, **model_options) -> Workload")
        return fn
    from mutwo.zoo import ZOO

    if model not in ZOO:
        close = difflib.get_close_matches(model, list(ZOO), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown model {model!r}; {hint}zoo: {', '.join(sorted(ZOO))}; or name your own "
                         f"builder as 'module:function'")
    return ZOO[model]


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu. Asking for cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False; "
                         "use device: auto or cpu")
    return device


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


def _describe(errors: list[dict], source: str) -> str:
    lines = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if err["type"] == "extra_forbidden":
            valid = _model_fields(Scenario, loc[:-1]) or []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{source}: unknown key {field!r}; {hint}valid keys here: {', '.join(valid)}")
            continue
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required but missing"
        lines.append(f"{source}: field {field or '(top level)'!r}: {msg}")
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
        raise ScenarioError(f"{path}: not valid YAML: {str(exc).splitlines()[0]} "
                            f"(tags like !!python/object are not allowed)") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping of keys (name, model, budgets, ...)")
    data = {**data, **(overrides or {})}
    return validate_scenario(data, str(path))


def validate_scenario(data: dict, source: str = "<scenario>") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_describe(exc.errors(include_url=False), source)) from None


def call_builder(scenario: Scenario, batch_size: int, device: str, source: str = "<scenario>"):
    """Build the workload for one batch size, checking a user builder returns a Workload."""
    from mutwo.capture import Workload

    fn = resolve_builder(scenario.model)
    kwargs = dict(scenario.model_options)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "device" in params:
        kwargs["device"] = device
    try:
        workload = fn(batch_size, **kwargs)
    except TypeError as exc:
        raise ScenarioError(f"{source}: field 'model_options' does not fit {scenario.model!r}: {exc}") from exc
    if not isinstance(workload, Workload):
        raise ScenarioError(f"{source}: field 'model': {scenario.model!r} returned {type(workload).__name__}, "
                            f"expected mutwo.capture.Workload(model, inputs, loss_fn, name)")
    if "device" not in params:
        workload.model.to(device)
        workload.inputs = tuple(x.to(device) if hasattr(x, "to") else x for x in workload.inputs)
    return workload
