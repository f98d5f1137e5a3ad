"""Timing a plan's execution on a machine others share: a chosen torch thread count, the unmodified
step timed between the plan's iterations (reference, plan, reference, ..., reference: each plan
iteration has a bracket on each side, and its time ratio is over these, so drifts of the load
cancel), and a rerun when the brackets or the iterations disagree. `mutwo.execute.run` times every
plan this way, for ``python -m mutwo.compare`` and the benchmarks alike; docs/benchmarks.md says why
each rule is there.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STEADY", "SPREAD_LIMIT", "RETRY_MAX_S", "Timing", "interleaved", "threads_for", "torch_threads",
           "set_threads"]

STEADY = 0.10  # the brackets of one attempt within 10% of each other: the load did not change
SPREAD_LIMIT = 0.20  # the plan's own iterations within 20% of each other
RETRY_MAX_S = 10.0  # plans slower than this per iteration (ResNet-152 recompute-all: ~80 s) run once


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads. On a shared, oversubscribed CPU a 2-thread OpenMP region waits for
    its second thread to be scheduled (measured here: a 32x128 @ 128x128 mm took 32 ms with 2 threads
    and 0.02 ms with 1 while other jobs ran), so timings are only meaningful with 1 thread there."""
    import torch

    if n:
        torch.set_num_threads(int(n))


def threads_for(device: str, configured: int | None = None) -> int | None:
    """The torch thread count to time with: ``configured`` (``execute.threads``), else 1 on CPU (see
    `set_threads`) and torch's own default (None: leave it) on CUDA, where the host threads only
    launch kernels."""
    if configured:
        return int(configured)
    return None if str(device).startswith("cuda") else 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` torch threads (None: as they are), restoring the previous count after;
    yields the count in force."""
    import torch

    before = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(int(n))
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _spread(times: list[float]) -> float:
    """max / min - 1 (0 for fewer than two times)."""
    if len(times) < 2 or min(times) <= 0:
        return 0.0
    return max(times) / min(times) - 1


@dataclass
class Timing:
    """One plan's timed iterations and the unmodified step's brackets around them (last attempt)."""

    plan_times_s: list[float]
    reference_times_s: list[float] = field(default_factory=list)  # len(plan) + 1; empty: its own reference
    attempts: int = 1
    threads: int = 0

    @property
    def time_s(self) -> float:
        return statistics.median(self.plan_times_s) if self.plan_times_s else float("nan")

    @property
    def reference_time_s(self) -> float:
        return statistics.median(self.reference_times_s) if self.reference_times_s else self.time_s

    @property
    def ratios(self) -> list[float]:
        """Per plan iteration, its time over the mean of the reference steps just before and after."""
        if not self.reference_times_s:
            return [1.0] * len(self.plan_times_s)
        r = self.reference_times_s
        return [p / ((r[i] + r[i + 1]) / 2) for i, p in enumerate(self.plan_times_s)]

    @property
    def ratio(self) -> float:
        """Plan time over the unmodified step's: the median of the per-iteration ratios (1 for the
        unmodified step itself)."""
        return statistics.median(self.ratios) if self.plan_times_s else float("nan")

    @property
    def bracket_spread(self) -> float:
        return _spread(self.reference_times_s)

    @property
    def iteration_spread(self) -> float:
        return _spread(self.plan_times_s)

    @property
    def spread(self) -> float:
        """The larger of the two spreads, as a fraction (0.1: 10%)."""
        return max(self.bracket_spread, self.iteration_spread)

    @property
    def steady(self) -> bool:
        return self.bracket_spread <= STEADY and self.iteration_spread <= SPREAD_LIMIT

    def note(self) -> str:
        """Empty when steady; else why the figure may be off, with the limits."""
        if self.steady:
            return ""
        why = []
        if self.bracket_spread > STEADY:
            why.append(f"the unmodified step's brackets spread {100 * self.bracket_spread:.0f}% "
                       f"(limit {100 * STEADY:.0f}%)")
        if self.iteration_spread > SPREAD_LIMIT:
            why.append(f"the plan's iterations spread {100 * self.iteration_spread:.0f}% "
                       f"(limit {100 * SPREAD_LIMIT:.0f}%)")
        tries = f"after {self.attempts} attempts" if self.attempts > 1 else (
            f"one attempt: iterations over {RETRY_MAX_S:g} s are not rerun" if self.time_s > RETRY_MAX_S
            else "one attempt")
        return f"timing not steady ({tries}): " + "; ".join(why) + " - the machine's load changed"


def _timed(step: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = step()
    sync()
    return time.perf_counter() - t0, out


def interleaved(plan: Callable[[], Any], reference: Callable[[], Any] | None, iterations: int, *,
                after_plan: Callable[[int, Any], None] | None = None, sync: Callable[[], None] = lambda: None,
                max_attempts: int = 3) -> Timing:
    """Time ``iterations`` calls of ``plan`` with a call of ``reference`` (the unmodified step; None
    when the plan is the unmodified step, its own reference) before the first and after each.

    ``after_plan(i, output)`` runs untimed after plan iteration ``i`` of the first attempt (e.g. to
    check what it computed). While the attempt is not `Timing.steady`, it is run again, up to
    ``max_attempts`` times, unless an iteration takes over `RETRY_MAX_S`. Returns the last attempt.
    """
    import torch

    timing = Timing([])
    for attempt in range(1, max(max_attempts, 1) + 1):
        plan_times, ref_times = [], []
        if reference is not None:
            ref_times.append(_timed(reference, sync)[0])
        for i in range(iterations):
            t, out = _timed(plan, sync)
            plan_times.append(t)
            if after_plan is not None and attempt == 1:
                after_plan(i, out)
            del out
            if reference is not None:
                ref_times.append(_timed(reference, sync)[0])
        timing = Timing(plan_times, ref_times, attempt, torch.get_num_threads())
        if timing.steady or not plan_times or timing.time_s > RETRY_MAX_S:
            break
    return timing
