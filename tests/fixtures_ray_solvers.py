"""Solvers named by ``module:function`` in tests/test_ray.py: a Ray worker imports them by that name (a
solver registered inside a test module would not exist there)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mutwo.problem import Problem
from mutwo.schedule import Schedule


def sleeps(problem: Problem, budget_bytes: int, *, pid_file: str = "") -> Schedule:
    """Hangs (records its pid first): its hard time limit must kill it."""
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)
    raise AssertionError("not killed")


def kills_its_worker(problem: Problem, budget_bytes: int, *, flag: str = "") -> Schedule:
    """SIGKILLs the process it was called from (the sandbox's parent: the Ray worker) the first time,
    as if the worker's machine went away; keep-all once ``flag`` exists. Without a flag: every time."""
    if not flag or not Path(flag).exists():
        parent = os.getppid()
        if not Path(f"/proc/{parent}/cmdline").read_bytes().startswith(b"ray::"):  # never the raylet or pytest
            raise RuntimeError("not called in a forked child of a Ray worker (give it a hard time limit)")
        if flag:
            Path(flag).write_text("killed once")
        os.kill(parent, signal.SIGKILL)
        time.sleep(60)
    return Schedule.keep_all(problem, message="after its worker was killed")


sleeps.decisions = set()  # KEEP only: runs under any plan space
kills_its_worker.decisions = set()
