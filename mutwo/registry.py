"""Solver registry: names -> functions ``fn(problem, budget_bytes, **options) -> Schedule``.

A registry (instead of if/else over names) lets the comparison driver, the CLI and third-party
packages treat every solver alike. Built-in solver modules are imported lazily, on the first lookup,
so importing ``mutwo`` stays cheap and a missing optional solver family does not break the others.
Third-party solvers announce themselves through the ``mutwo.solvers`` entry-point group; each entry
point names a module (importing it runs its ``@register_solver`` decorators) or a solver function
(registered under the entry point's name unless it registered itself).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import threading
import time
import types
import warnings
from collections.abc import Callable

from mutwo.schedule import Schedule

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "SolverFn", "UnknownSolverError", "DuplicateSolverError",
           "register_solver", "get_solver", "available_solvers"]

SolverFn = Callable[..., Schedule]

BUILTIN_MODULES: tuple[str, ...] = ("solvers.baselines", "solvers.mutwo_greedy", "solvers.ilp",
                                    "solvers.checkmate", "solvers.brute_force")
ENTRY_POINT_GROUP = "mutwo.solvers"

_lock = threading.RLock()
_wrapped: dict[str, SolverFn] = {}  # name -> timing wrapper (what callers get)
_original: dict[str, SolverFn] = {}  # name -> the function as written (for duplicate detection)
_builtins_loaded = False
_entry_points_loaded = False


class UnknownSolverError(KeyError):
    """No solver has this name; the message lists close matches and every available name."""

    def __str__(self) -> str:  # KeyError would repr() the message, quoting it
        return str(self.args[0]) if self.args else ""


class DuplicateSolverError(ValueError):
    """Two different functions were registered under one name."""


def _same_function(a: Callable, b: Callable) -> bool:
    # A re-imported module (importlib.reload, a test re-running an import) makes a new function
    # object for the same definition; that is not a conflict.
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None)


def register_solver(name: str) -> Callable[[SolverFn], SolverFn]:
    """Decorator: register ``fn`` under ``name`` and return a wrapper that fills provenance.

    The wrapper times the call (``solve_time_s``, unless the solver measured it itself) and fills
    ``solver`` and ``budget_bytes`` when the solver left them unset, so every solver reports alike.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty string, got {name!r}")

    def decorator(fn: SolverFn) -> SolverFn:
        @functools.wraps(fn)
        def wrapper(problem, budget_bytes: int, **options) -> Schedule:
            start = time.perf_counter()
            schedule = fn(problem, budget_bytes, **options)
            elapsed = time.perf_counter() - start
            if not isinstance(schedule, Schedule):
                raise TypeError(f"solver {name!r} returned {type(schedule).__name__}, expected Schedule")
            if not schedule.solve_time_s:
                schedule.solve_time_s = elapsed
            if schedule.solver in ("", "unknown"):
                schedule.solver = name
            if schedule.budget_bytes is None:
                schedule.budget_bytes = int(budget_bytes)
            return schedule

        wrapper.solver_name = name  # type: ignore[attr-defined]
        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        with _lock:
            old = _original.get(name)
            if old is not None and not _same_function(old, fn):
                raise DuplicateSolverError(
                    f"solver name {name!r} is already registered to {old.__module__}.{old.__qualname__}; "
                    f"cannot register {fn.__module__}.{fn.__qualname__} under it too")
            _original[name] = fn
            _wrapped[name] = wrapper
        return wrapper

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    with _lock:
        if _builtins_loaded:
            return
        for module in BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                # Skip only a solver family that is not written yet; a missing dependency *inside*
                # an existing module is a real error the user must see.
                if exc.name != module:
                    raise
        _builtins_loaded = True


def _entry_points() -> list:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for ep in _entry_points():
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the built-in solvers down
                warnings.warn(f"mutwo.solvers entry point {ep.name!r} ({ep.value}) failed to load: {exc!r}",
                              RuntimeWarning, stacklevel=3)
                continue
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue  # importing the module ran its @register_solver decorators
            inner = getattr(obj, "__wrapped__", obj)
            if any(_same_function(inner, f) for f in _original.values()):
                continue  # a decorated function: it registered itself on import
            register_solver(ep.name)(obj)


def _load_all() -> None:
    _load_builtins()
    _load_entry_points()


def get_solver(name: str) -> SolverFn:
    """Return the solver registered as ``name``, loading built-in and plugin solvers if needed."""
    with _lock:
        if name in _wrapped:
            return _wrapped[name]
    _load_all()
    with _lock:
        if name in _wrapped:
            return _wrapped[name]
        names = sorted(_wrapped)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownSolverError(f"unknown solver {name!r}; {hint}available: {', '.join(names) or '(none)'}")


def available_solvers() -> list[str]:
    """Every registered solver name, sorted, after loading built-in modules and plugins."""
    _load_all()
    with _lock:
        return sorted(_wrapped)


def _reset_for_tests() -> None:
    """Forget plugin loading so a test can load entry points again (registered names stay)."""
    global _entry_points_loaded, _builtins_loaded
    with _lock:
        _entry_points_loaded = False
        _builtins_loaded = False
