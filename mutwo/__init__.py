"""mutwo: find, simulate and execute activation-memory plans (keep / recompute / swap) for PyTorch
training, and train with them.

The public API (docs/optimize.md, docs/compare.md, docs/solvers.md)::

    graph = mutwo.capture(workload, "adam")           # one whole training step as an fx graph
    prof = mutwo.profile(graph, flat_inputs)          # op times and transient memory on this device
    problem, binding = mutwo.build_problem(graph, prof)
    schedule = mutwo.solve(problem, 0.6, solver="mutwo_greedy")
    sim = mutwo.simulate(problem, schedule)           # predicted peak and time (the only cost model)
    result = mutwo.execute(graph, problem, schedule, flat_inputs, binding=binding)
    run_dir, results = mutwo.compare("scenarios/toy_mlp.yaml", budgets="0.6,0.8")
    step = mutwo.optimize(model, optimizer, batch, loss_fn, budget=0.6)   # then: loss = step(*batch)

Names are loaded on first use: ``import mutwo`` imports neither torch nor any solver. Five of the
functions share their name with the module that defines them (``mutwo.capture`` is both): those
modules are made callable, so ``mutwo.capture(...)`` calls the function and ``mutwo.capture.CaptureError``
is still the module's, however the module was imported first.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
from typing import TYPE_CHECKING, Any

# The allocator meter reads the CPU allocator's events through the PyTorch profiler, whose Kineto
# library prints "ERROR ... gpuGetDeviceCount failed" on every machine without a GPU. Silenced unless
# the user set a level; it must be set before torch loads, and mutwo is imported first by its CLI.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from mutwo.capture import capture
    from mutwo.compare import compare
    from mutwo.execute import execute
    from mutwo.optimize import Plan, TrainStep, optimize
    from mutwo.planning import solve
    from mutwo.problem import Problem
    from mutwo.problem_build import build_problem
    from mutwo.profile import profile
    from mutwo.registry import available_solvers, register_solver
    from mutwo.schedule import Schedule
    from mutwo.simulate import simulate
    from mutwo.workload import OptimizerConfig, Workload

__all__ = ["capture", "profile", "build_problem", "solve", "simulate", "execute", "compare", "optimize", "Workload",
           "OptimizerConfig", "Problem", "Schedule", "register_solver", "available_solvers", "TrainStep", "Plan"]

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "capture": ("mutwo.capture", "capture"),
    "profile": ("mutwo.profile", "profile"),
    "build_problem": ("mutwo.problem_build", "build_problem"),
    "solve": ("mutwo.planning", "solve"),
    "simulate": ("mutwo.simulate", "simulate"),
    "execute": ("mutwo.execute", "execute"),
    "compare": ("mutwo.compare", "compare"),
    "optimize": ("mutwo.optimize", "optimize"),
    "Workload": ("mutwo.workload", "Workload"),
    "OptimizerConfig": ("mutwo.workload", "OptimizerConfig"),
    "Problem": ("mutwo.problem", "Problem"),
    "Schedule": ("mutwo.schedule", "Schedule"),
    "register_solver": ("mutwo.registry", "register_solver"),
    "available_solvers": ("mutwo.registry", "available_solvers"),
    "TrainStep": ("mutwo.optimize", "TrainStep"),
    "Plan": ("mutwo.optimize", "Plan"),
}
# functions whose module has their name: the module itself is the public name, made callable
_CALLABLE_MODULES = {name for name, (module, attr) in _EXPORTS.items() if module == f"{__name__}.{attr}"}


class _CallableModule(types.ModuleType):
    """A module that, called, calls its function of the same name (``mutwo.capture(...)``)."""

    def _function(self) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # inspect.signature / help() show the function's
        return inspect.signature(self._function())


class _Package(types.ModuleType):
    """This package: when the import system binds one of `_CALLABLE_MODULES` here (``import
    mutwo.capture`` anywhere), the module is made callable first, so the public name always calls."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_MODULES and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mutwo' has no attribute {name!r}; the public API is {', '.join(__all__)}")
    module_name, attr = _EXPORTS[name]
    module = importlib.import_module(module_name)  # binds a callable module here (see _Package)
    return module if name in _CALLABLE_MODULES else getattr(module, attr)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in _CALLABLE_MODULES:  # already imported before this package was set up (not usual)
    _module = globals().get(_name)
    if isinstance(_module, types.ModuleType) and type(_module) is types.ModuleType:
        _module.__class__ = _CallableModule
sys.modules[__name__].__class__ = _Package  # assignable (Python data model, "customizing module attribute access")
