"""Run one solver call in a forked child process under a hard wall-clock limit.

A solver that hangs (or a MIP binary it started) is killed when the limit passes, so it costs one
``timeout`` row instead of the run. Fork shares the parent's memory: the Problem is neither copied nor
pickled, and solvers a test registered are there too; only the Schedule, or the exception, travels
back through a pipe. docs/compare.md ("Hard time limits") says what a run reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import pickle
import signal
import traceback
from typing import Any

from mutwo.registry import SolverFn, get_solver
from mutwo.schedule import Schedule

__all__ = ["SolverTimeout", "SolverProcessError", "run_solver"]


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
