"""Solver registry: names -> functions ``fn(problem, budget_bytes, **options) -> Schedule``.

A registry (instead of if/else over names) lets the comparison driver, the CLI and third-party
packages treat every solver alike. Built-in solver modules are imported lazily, on the first lookup,
so importing ``mutwo`` stays cheap and a missing optional solver family does not break the others.
Third-party solvers announce themselves through the ``mutwo.solvers`` entry-point group; each entry
point names a module (importing it runs its ``@register_solver`` decorators) or a solver function
(registered under the entry point's name unless it registered itself).

Every solver says which options it takes (`solver_options`): those given to ``register_solver(name,
options=...)``, else the keyword parameters of its signature after ``problem, budget_bytes`` when it has
no ``**kwargs``. A solver that takes ``**kwargs`` and declares nothing accepts any option (third-party
solvers written before declarations existed keep working). The wrapper refuses an option a solver does
not take with a TypeError naming it and the accepted ones, and `mutwo.scenario` checks scenario options
against the same declaration when the file is loaded, before any model is built.

`run_solver` is how the comparison driver calls a solver: under a hard wall-clock limit, in a forked
child process that is killed (with any helper processes it started, e.g. a CBC binary) when the limit
passes, so a solver that hangs costs one ``timeout`` row instead of the run. Fork shares the parent's
memory (the Problem is not copied or pickled, and solvers a test registered are there too); only the
Schedule, or the exception, travels back through a pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import functools
import gc
import importlib
import importlib.metadata
import inspect
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mutwo.schedule import Schedule

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "SolverFn", "UnknownSolverError", "DuplicateSolverError",
           "SolverTimeout", "SolverProcessError", "register_solver", "get_solver", "available_solvers",
           "run_solver", "solver_options", "solver_option_defaults", "unknown_option_message", "NO_DEFAULT"]

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


class SolverTimeout(TimeoutError):
    """The solver ran past its hard wall-clock limit and was killed."""

    def __init__(self, name: str, timeout_s: float) -> None:
        super().__init__(f"solver {name!r} ran past its hard time limit of {timeout_s:g} s and was killed")
        self.name, self.timeout_s = name, timeout_s

    def __reduce__(self):
        return (type(self), (self.name, self.timeout_s))


class SolverProcessError(RuntimeError):
    """The solver's child process failed in a way that cannot be re-raised as is: it died (a signal, a
    crash in native code), or raised an exception that does not survive pickling. ``type_name`` is the
    original exception's type when there was one."""

    def __init__(self, message: str, type_name: str = "SolverProcessError", child_traceback: str = "") -> None:
        super().__init__(message)
        self.type_name, self.child_traceback = type_name, child_traceback

    def __reduce__(self):
        return (type(self), (str(self), self.type_name, self.child_traceback))


def _same_function(a: Callable, b: Callable) -> bool:
    # A re-imported module (importlib.reload, a test re-running an import) makes a new function
    # object for the same definition; that is not a conflict.
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None)


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()  # an option declared by name only: its default is the solver's business

OptionsSpec = Mapping[str, Any] | Iterable[str]


def _declared(name: str, fn: Callable, options: OptionsSpec | None) -> dict[str, Any] | None:
    """The options ``fn`` takes, name -> default (`NO_DEFAULT` where unknown), in declaration order;
    None: any option (undeclared, and ``fn`` takes ``**kwargs`` or has no readable signature)."""
    if options is not None:
        if isinstance(options, str):
            raise TypeError(f"register_solver({name!r}, options=...): give a list of option names or a "
                            f"mapping name -> default, not the string {options!r}")
        declared = (dict(options) if isinstance(options, Mapping)
                    else dict.fromkeys(options, NO_DEFAULT))
        bad = [k for k in declared if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise ValueError(f"register_solver({name!r}, options=...): {bad[0]!r} is not an option name")
        inherited = getattr(fn, "solver_options", None)  # registering another solver's wrapper
        params = _keyword_params(fn)
        if params is not None and inherited is None:
            missing = [k for k in declared if k not in params[0]]
            if missing and not params[1]:
                raise ValueError(f"register_solver({name!r}, options=...) declares {missing[0]!r}, but "
                                 f"{getattr(fn, '__qualname__', fn)!r} has no such parameter and no **kwargs")
        return declared
    if hasattr(fn, "solver_options"):  # another solver's wrapper: it already knows
        inner = fn.solver_options
        return None if inner is None else dict(inner)
    params = _keyword_params(fn)
    if params is None or params[1]:
        return None
    return params[0]


def _keyword_params(fn: Callable) -> tuple[dict[str, Any], bool] | None:
    """(keyword parameters after ``problem, budget_bytes`` -> default, takes ``**kwargs``); None when
    the signature cannot be read."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skip = {p.name for p in positional[:2]}  # problem, budget_bytes (passed by position)
    out = {p.name: (NO_DEFAULT if p.default is p.empty else p.default) for p in params
           if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return out, any(p.kind == p.VAR_KEYWORD for p in params)


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


def register_solver(name: str, options: OptionsSpec | None = None) -> Callable[[SolverFn], SolverFn]:
    """Decorator: register ``fn`` under ``name`` and return a wrapper that fills provenance.

    The wrapper times the call (``solve_time_s``, unless the solver measured it itself) and fills
    ``solver`` and ``budget_bytes`` when the solver left them unset, so every solver reports alike.

    ``options``: the options the solver takes, as option names or a mapping name -> default (shown in
    messages and docs; the solver still applies its own defaults). Not given: the keyword parameters of
    ``fn`` after ``problem, budget_bytes``, when ``fn`` has no ``**kwargs``; with ``**kwargs`` it
    accepts anything. A call with an option outside the declared ones raises TypeError naming it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty string, got {name!r}")
    spec = options  # the wrapper's own **options is another thing

    def decorator(fn: SolverFn) -> SolverFn:
        declared = _declared(name, fn, spec)

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
        wrapper.solver_options = declared  # type: ignore[attr-defined]
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


def solver_options(name: str) -> set[str] | None:
    """The option names solver ``name`` takes; None when it accepts any (``**kwargs``, undeclared).
    Raises `UnknownSolverError` for a name nobody registered."""
    declared = solver_option_defaults(name)
    return None if declared is None else set(declared)


def solver_option_defaults(name: str) -> dict[str, Any] | None:
    """Solver ``name``'s options -> declared default (`NO_DEFAULT` where none was given), in
    declaration order; None when it accepts any option."""
    declared = getattr(get_solver(name), "solver_options", None)
    return None if declared is None else dict(declared)


# ---------------------------------------------------------------------- calls under a time limit
def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives a pickle round trip with its type and message, else a
    SolverProcessError carrying both as text. SystemExit / KeyboardInterrupt raised inside a solver are
    the solver's failure, not a request to stop the parent: they come back as SolverProcessError."""
    if not isinstance(exc, Exception):
        return SolverProcessError(f"the solver raised {type(exc).__name__}({exc})", type(exc).__name__)
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:
        pass
    return SolverProcessError(str(exc), type(exc).__name__)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the driver dies (a SIGKILLed run leaves no solver running)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's kill on timeout still applies
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _child(conn, fn: SolverFn, problem, budget_bytes: int, options: dict, parent: int) -> None:
    os.setpgid(0, 0)  # a process group of its own: the parent kills helpers the solver starts with it
    _die_with_parent(parent)
    gc.freeze()  # the inherited heap is never collected here: no copy-on-write of every page by the gc
    try:
        out: tuple = ("ok", fn(problem, budget_bytes, **options))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent, SystemExit included
        out = ("raise", _portable(exc), traceback.format_exc())
    try:
        conn.send(out)
    except Exception as exc:  # a result that cannot be pickled
        conn.send(("raise", SolverProcessError(f"the solver's result could not be sent back: {exc}",
                                               type(exc).__name__), traceback.format_exc()))
    conn.close()


def _kill_group(pid: int) -> None:
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            return
        except (ProcessLookupError, PermissionError):
            continue


def run_solver(name: str, problem: Any, budget_bytes: int, options: dict | None = None, *,
               timeout_s: float | None = None) -> Schedule:
    """Call solver ``name``; with ``timeout_s`` in a forked child, killed when the limit passes.

    Raises `SolverTimeout` on the limit, the solver's own exception (same type and message) when it
    raised, and `SolverProcessError` when the child died or its exception could not be sent back. The
    Schedule's ``solve_time_s`` is measured inside the child, around the solver call only. Without
    ``timeout_s`` (or where fork does not exist) the call runs in this process.
    """
    fn = get_solver(name)
    options = dict(options or {})
    if timeout_s is None or "fork" not in multiprocessing.get_all_start_methods():
        return fn(problem, budget_bytes, **options)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, problem, budget_bytes, options, os.getpid()), daemon=True,
                       name=f"mutwo-solver-{name}")
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            raise SolverTimeout(name, timeout_s)
        try:
            message = recv.recv()
        except EOFError:  # the child died without a word
            proc.join(5)
            code = proc.exitcode
            how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            raise SolverProcessError(f"the solver process died ({how}) before it returned; it may have run "
                                     f"out of memory or crashed in native code") from None
    finally:
        recv.close()
        _kill_group(proc.pid)  # on a timeout, and any helper the solver left behind
        # not waiting for the exit (tearing down a copy of a large process takes tens of ms): the
        # zombie is reaped by multiprocessing on the next start, or at exit
        proc.join(0)
    if message[0] == "ok":
        return message[1]
    exc, child_tb = message[1], message[2]
    with contextlib.suppress(AttributeError):  # a few built-in exception types take no attributes
        exc.child_traceback = child_tb
    raise exc


def _reset_for_tests() -> None:
    """Forget plugin loading so a test can load entry points again (registered names stay)."""
    global _entry_points_loaded, _builtins_loaded
    with _lock:
        _entry_points_loaded = False
        _builtins_loaded = False
