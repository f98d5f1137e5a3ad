"""Solver registry: names -> functions ``fn(problem, budget_bytes, **options) -> Schedule``, with what
each one declares (`SolverInfo`): its options with their accepted values, and the decisions it makes.

Every solver, built-in or not, arrives through the ``mutwo.solvers`` entry-point group, loaded on the
first lookup: importing ``mutwo`` stays cheap and the driver, the CLI and third-party packages treat all
solvers alike. A source checkout that was never pip-installed has no entry points; that is an error
saying so, not an empty registry. A name ``module:function`` is imported and registered on its first
lookup (a solver being written needs no package). The rules are in docs/solvers.md and
docs/compare.md, "Adding a solver". Running a call under a time limit is `mutwo.sandbox`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.metadata
import inspect
import re
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mutwo.importing import import_named
from mutwo.plan_space import DECISIONS, MODES, mode_decisions
from mutwo.schedule import Schedule
from mutwo.solver_options import NO_DEFAULT, Option, check_value, options_from_signature, options_from_table

__all__ = ["ENTRY_POINT_GROUP", "DISTRIBUTION", "SolverFn", "SolverInfo", "UnknownSolverError", "DuplicateSolverError",
           "NotInstalledError", "SolverPathError", "register_solver", "get_solver", "available_solvers",
           "solver_info", "solver_options", "solver_option_defaults", "check_solver_options",
           "unknown_option_message", "NO_DEFAULT", "Option"]

SolverFn = Callable[..., Schedule]

ENTRY_POINT_GROUP = "mutwo.solvers"
DISTRIBUTION = "mutwo"  # entry points of this distribution are the built-in solvers

_lock = threading.RLock()
_wrapped: dict[str, SolverFn] = {}  # name -> timing wrapper (what callers get)
_original: dict[str, SolverFn] = {}  # name -> the function as written (for duplicate detection)
_builtins_loaded = False
_plugins_loaded = False


class UnknownSolverError(KeyError):
    """No solver has this name; the message lists close matches and every available name."""

    def __str__(self) -> str:  # KeyError would repr() the message, quoting it
        return str(self.args[0]) if self.args else ""


class DuplicateSolverError(ValueError):
    """Two different functions were registered under one name."""


class SolverPathError(ValueError):
    """A ``module:function`` solver that cannot be loaded: the module does not import, has no such
    function, or it is not a function taking ``(problem, budget_bytes)``."""


class NotInstalledError(RuntimeError):
    """The installed package metadata declares no built-in solvers (the checkout was not pip-installed,
    or was installed before they were declared), or declares a module the checkout does not have."""


def _same_function(a: Callable, b: Callable) -> bool:
    # A re-imported module (importlib.reload, a test re-running an import) makes a new function
    # object for the same definition; that is not a conflict.
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None)


OptionsSpec = Mapping[str, Any] | Iterable[str] | type  # names, name -> default or Option, or a dataclass


@dataclasses.dataclass(frozen=True)
class SolverInfo:
    """What a registered solver declares: its options (None: it accepts any, unchecked), the decisions
    it may make at its default options (None: it does not say) and, when it has a ``mode`` option in
    `mutwo.plan_space`'s vocabulary, the modes it accepts."""

    name: str
    options: dict[str, Option] | None
    decisions: frozenset[str] | None
    modes: tuple[str, ...] | None
    doc: str = ""

    @property
    def defaults(self) -> dict[str, Any] | None:
        return None if self.options is None else {k: o.default for k, o in self.options.items()}


def _declared(name: str, fn: Callable, options: OptionsSpec | None) -> dict[str, Option] | None:
    """The options ``fn`` takes, name -> `Option`, in declaration order; None: any option (undeclared,
    and ``fn`` takes ``**kwargs`` or has no readable signature)."""
    if options is not None:
        declared = _normalised(name, options)
        params = options_from_signature(fn)
        if params is not None and not hasattr(fn, "solver_info"):  # another solver's wrapper takes **options
            missing = [k for k in declared if k not in params[0]]
            if missing and not params[1]:
                raise ValueError(f"register_solver({name!r}, options=...) declares {missing[0]!r}, but "
                                 f"{getattr(fn, '__qualname__', fn)!r} has no such parameter and no **kwargs")
        return declared
    if hasattr(fn, "solver_info"):  # another solver's wrapper: it already knows
        inner = fn.solver_info.options
        return None if inner is None else dict(inner)
    params = options_from_signature(fn)
    if params is None or params[1]:
        return None
    return params[0]


def _normalised(name: str, options: OptionsSpec) -> dict[str, Option]:
    """``options=`` as name -> `Option`: a dataclass table, option names, or name -> default / Option."""
    if isinstance(options, str):
        raise TypeError(f"register_solver({name!r}, options=...): give a list of option names, a mapping name -> "
                        f"default, or an options dataclass, not the string {options!r}")
    if isinstance(options, type):
        declared = options_from_table(options)
    elif isinstance(options, Mapping):
        declared = {k: v if isinstance(v, Option) else Option(v) for k, v in options.items()}
    else:
        declared = {k: Option() for k in options}
    bad = [k for k in declared if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ValueError(f"register_solver({name!r}, options=...): {bad[0]!r} is not an option name")
    return declared


def _modes(options: dict[str, Option] | None) -> tuple[str, ...] | None:
    """The values of a ``mode`` option in the plan-space vocabulary (a Literal's, else every mode when
    its default is one); None: no such option."""
    mode = (options or {}).get("mode")
    if mode is None:
        return None
    literal = typing.get_args(mode.type) if typing.get_origin(mode.type) is typing.Literal else ()
    if literal:
        inside = tuple(m for m in MODES if m in literal)
        return inside or None
    return MODES if mode.default in MODES else None


def _decisions(name: str, decisions: Iterable[str] | None, options: dict[str, Option] | None,
               modes: tuple[str, ...] | None) -> frozenset[str] | None:
    """What the solver may decide besides KEEP at its defaults: as declared, else from its mode."""
    if decisions is not None:
        if isinstance(decisions, str) or not set(decisions) <= set(DECISIONS):
            raise ValueError(f"register_solver({name!r}, decisions=...): give a set of {DECISIONS} (an empty one "
                             f"for a keep-only solver), not {decisions!r}")
        return frozenset(decisions)
    if modes is None:
        return None
    default = options["mode"].default
    if default in modes:
        return mode_decisions(default)
    return frozenset().union(*(mode_decisions(m) for m in modes))


def unknown_option_message(name: str, option: str, accepted: Iterable[str]) -> str:
    """``unknown <solver> option 'x'; did you mean 'y'? <solver> takes: a, b`` (one line)."""
    accepted = list(accepted)
    close = difflib.get_close_matches(str(option), accepted, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    if not accepted:
        return f"unknown {name} option {option!r}; {name} takes no options: remove it"
    return f"unknown {name} option {option!r}; {hint}{name} takes: {', '.join(accepted)}"


def _unknown_call_message(name: str, unknown: list[str], accepted: Iterable[str]) -> str:
    """``knapsack got unknown options ['segmnts']; it takes no options`` (a direct call's TypeError)."""
    accepted = list(accepted)
    close = [m[0] for k in unknown if (m := difflib.get_close_matches(str(k), accepted, n=1, cutoff=0.5))]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no options"
    return f"{name} got unknown options {sorted(map(str, unknown))}; {hint}{takes}"


def register_solver(name: str, options: OptionsSpec | None = None,
                    decisions: Iterable[str] | None = None) -> Callable[[SolverFn], SolverFn]:
    """Decorator: register ``fn`` under ``name`` and return a wrapper that fills provenance.

    The wrapper times the call (``solve_time_s``, unless the solver measured it itself) and fills
    ``solver`` and ``budget_bytes`` when the solver left them unset, so every solver reports alike.

    ``options``: the options the solver takes: an options dataclass (each field's default and type
    hint: the values are checked before a run), option names, or a mapping name -> default (or
    `Option`). Not given: the keyword parameters of ``fn`` after ``problem, budget_bytes`` (their
    annotations are their types), when ``fn`` has no ``**kwargs``; with ``**kwargs`` it accepts
    anything. A call with an option outside the declared ones raises TypeError naming it.

    ``decisions``: what its plans may contain besides KEEP, a subset of {"recompute", "swap"} (empty:
    keep only). Not given, a ``mode`` option (docs/solvers.md) says it; without either the solver
    cannot run under a restricted ``plan_space``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty string, got {name!r}")
    spec = options  # the wrapper's own **options is another thing

    def decorator(fn: SolverFn) -> SolverFn:
        declared = _declared(name, fn, spec)
        inherited = getattr(fn, "solver_info", None)  # registering another solver's wrapper
        if inherited is not None and spec is None and decisions is None:
            modes, made = inherited.modes, inherited.decisions
        else:
            modes = _modes(declared)
            made = _decisions(name, decisions, declared, modes)
        doc = (inspect.getdoc(fn) or "").strip().split("\n\n")[0].replace("\n", " ")

        @functools.wraps(fn)
        def wrapper(problem, budget_bytes: int, **options) -> Schedule:
            if declared is not None:
                unknown = [k for k in options if k not in declared]
                if unknown:
                    raise TypeError(_unknown_call_message(name, unknown, declared))
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
        wrapper.solver_info = SolverInfo(name, declared, made, modes, doc)  # type: ignore[attr-defined]
        wrapper.solver_options = wrapper.solver_info.defaults  # type: ignore[attr-defined]
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


def _not_installed_message() -> str:
    """Why there are no built-ins and what to do. A ``mutwo.egg-info`` folder without them on the path
    (an older install's, left in the checkout) is found before the installed metadata and hides it;
    reinstalling does not rewrite it, so the message names it."""
    stale = [folder.resolve() for folder in (Path(entry or ".") / "mutwo.egg-info" for entry in sys.path)
             if folder.is_dir()
             and not importlib.metadata.Distribution.at(folder).entry_points.select(group=ENTRY_POINT_GROUP)]
    hint = (f"; {stale[0]} (an older install's metadata) is found first and hides the installed one: "
            f"delete it" if stale else "")
    return ("no built-in solvers: mutwo declares them as 'mutwo.solvers' entry points in its pyproject.toml, "
            "and the installed package metadata has none (this checkout was not pip-installed, or was "
            f"installed before they were declared); run `pip install -e .` in the mutwo checkout{hint}")


def _entry_points() -> list:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _is_builtin(ep) -> bool:
    """Declared by mutwo's own pyproject.toml (its installed metadata), not by another package."""
    dist = getattr(ep, "dist", None)
    return dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == DISTRIBUTION


def _register_entry(ep, obj: Any) -> None:
    """A module registered its solvers when it was imported; a function is registered under the entry
    point's name, unless it is a decorated solver (it registered itself on import)."""
    if isinstance(obj, types.ModuleType) or not callable(obj):
        return
    inner = getattr(obj, "__wrapped__", obj)
    if any(_same_function(inner, f) for f in _original.values()):
        return
    register_solver(ep.name)(obj)


def _load_builtins() -> None:
    """Load mutwo's own entry points. Unlike a plug-in's, a failure propagates: a missing dependency
    (ortools, pulp) is the user's to see, and no built-ins at all means a checkout never installed."""
    global _builtins_loaded
    with _lock:
        if _builtins_loaded:
            return
        builtin = [ep for ep in _entry_points() if _is_builtin(ep)]
        if not builtin:
            raise NotInstalledError(_not_installed_message())
        for ep in builtin:
            try:
                obj = ep.load()
            except ModuleNotFoundError as exc:
                module = ep.value.partition(":")[0].strip()
                if not exc.name or not (module == exc.name or module.startswith(exc.name + ".")):
                    raise  # a dependency inside the module
                raise NotInstalledError(f"the installed metadata declares the built-in solver module "
                                        f"{module!r}, which this checkout does not have (a stale install); "
                                        f"run `pip install -e .` in the mutwo checkout") from exc
            _register_entry(ep, obj)
        _builtins_loaded = True


def _load_plugins() -> None:
    """Load other packages' entry points; a broken one is a warning, not the end of the built-ins."""
    global _plugins_loaded
    with _lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for ep in _entry_points():
            if _is_builtin(ep):
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                warnings.warn(f"mutwo.solvers entry point {ep.name!r} ({ep.value}) failed to load: {exc!r}",
                              RuntimeWarning, stacklevel=3)
                continue
            _register_entry(ep, obj)


def _load_all() -> None:
    _load_builtins()
    _load_plugins()


def get_solver(name: str) -> SolverFn:
    """Return the solver registered as ``name``, loading built-in and plugin solvers if needed. A
    ``module:function`` name is imported and registered under that name on its first lookup."""
    with _lock:
        if name in _wrapped:
            return _wrapped[name]
    if isinstance(name, str) and ":" in name:
        return _register_path(name)
    _load_all()
    with _lock:
        if name in _wrapped:
            return _wrapped[name]
        names = sorted(n for n in _wrapped if ":" not in n)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownSolverError(f"unknown solver {name!r}; {hint}available: {', '.join(names) or '(none)'}")


def _register_path(path: str) -> SolverFn:
    """Import ``module:function`` and register it under ``path``: a decorated solver keeps its own
    declarations; a plain function's come from its signature, or from the ``options_table`` (a
    dataclass) and ``decisions`` attributes it carries. `SolverPathError` says what is wrong."""
    fn_name, fn = import_named(path, "solver", "mypkg.solvers:my_solver", SolverPathError)
    if not callable(fn) or isinstance(fn, (types.ModuleType, type)):
        what = "a class" if isinstance(fn, type) else "a module" if isinstance(fn, types.ModuleType) else \
            f"{type(fn).__name__} {repr(fn)[:40]}"
        raise SolverPathError(f"{path!r} is not a function ({what}); a solver is "
                              f"function(problem, budget_bytes, **options) -> Schedule")
    try:
        inspect.signature(fn).bind(None, 0)
    except TypeError:
        raise SolverPathError(f"{path!r} cannot be called as {fn_name}(problem, budget_bytes): its signature is "
                              f"{fn_name}{inspect.signature(fn)}; a solver is function(problem, budget_bytes, "
                              f"**options) -> Schedule") from None
    except ValueError:  # no readable signature (a builtin): it is tried as is
        pass
    with _lock:
        if path in _wrapped:
            return _wrapped[path]
        if hasattr(fn, "solver_info"):  # already a registered solver: the same one under this name too
            _wrapped[path], _original[path] = fn, getattr(fn, "__wrapped__", fn)
            return fn
    return register_solver(path, options=getattr(fn, "options_table", None),
                           decisions=getattr(fn, "decisions", None))(fn)


def available_solvers() -> list[str]:
    """Every registered solver name, sorted, after loading built-in modules and plugins."""
    _load_all()
    with _lock:
        return sorted(_wrapped)


def solver_info(name: str) -> SolverInfo:
    """What solver ``name`` declares (`SolverInfo`). Raises `UnknownSolverError` for a name nobody
    registered, `SolverPathError` for a ``module:function`` that does not load."""
    fn = get_solver(name)
    info = getattr(fn, "solver_info", None)
    return info if info is not None else SolverInfo(name, None, None, None)


def solver_options(name: str) -> set[str] | None:
    """The option names solver ``name`` takes; None when it accepts any (``**kwargs``, undeclared).
    Raises `UnknownSolverError` for a name nobody registered."""
    declared = solver_info(name).options
    return None if declared is None else set(declared)


def solver_option_defaults(name: str) -> dict[str, Any] | None:
    """Solver ``name``'s options -> declared default (`NO_DEFAULT` where none was given), in
    declaration order; None when it accepts any option."""
    return solver_info(name).defaults


def check_solver_options(name: str, options: Mapping[str, Any]) -> None:
    """ValueError (one line, the fix in it) for an option ``name`` does not take or a value it does not
    accept; nothing is checked for a solver that accepts any option."""
    declared = solver_info(name).options
    if declared is None:
        return
    for key, value in options.items():
        if key not in declared:
            raise ValueError(unknown_option_message(name, key, declared))
        check_value(name, key, value, declared[key].type)


def _reset_for_tests() -> None:
    """Forget plugin loading so a test can load entry points again (registered names stay)."""
    global _plugins_loaded, _builtins_loaded
    with _lock:
        _plugins_loaded = False
        _builtins_loaded = False
