"""Timing a plan's execution on a machine others share: a chosen torch thread count, the unmodified
step timed between the plan's iterations (reference, plan, reference, ..., reference: each plan
iteration has a bracket on each side, and its time ratio is over these, so drifts of the load
cancel), and more iterations while the brackets or the iterations disagree. `mutwo.execute.run` times every
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
    """A plan's timed iterations and the unmodified step's brackets around them: reference, plan,
    reference, ..., reference (``reference_times_s`` has one more entry than ``plan_times_s``)."""

    plan_times_s: list[float]
    reference_times_s: list[float] = field(default_factory=list)  # empty: the plan is its own reference
    wanted: int = 0  # how many calm iterations the caller asked for (0: as many as were run)
    threads: int = 0

    @property
    def attempts(self) -> int:
        """1 + the extra iterations run because brackets disagreed, in units of the iterations wanted."""
        return max(1, -(-len(self.plan_times_s) // max(self.wanted, 1)))

    def calm(self) -> list[int]:
        """Iterations whose two brackets agree within `STEADY` (all of them without brackets)."""
        r = self.reference_times_s
        if not r:
            return list(range(len(self.plan_times_s)))
        return [i for i in range(len(self.plan_times_s)) if _spread([r[i], r[i + 1]]) <= STEADY]

    def _used(self) -> list[int]:
        """The iterations the figures come from: the calm ones, or all when none is."""
        return self.calm() or list(range(len(self.plan_times_s)))

    @property
    def time_s(self) -> float:
        used = self._used()
        return statistics.median(self.plan_times_s[i] for i in used) if used else float("nan")

    @property
    def reference_time_s(self) -> float:
        if not self.reference_times_s:
            return self.time_s
        r = self.reference_times_s
        return statistics.median((r[i] + r[i + 1]) / 2 for i in self._used())

    @property
    def ratios(self) -> list[float]:
        """Per plan iteration, its time over the mean of the reference steps just before and after."""
        if not self.reference_times_s:
            return [1.0] * len(self.plan_times_s)
        r = self.reference_times_s
        return [p / ((r[i] + r[i + 1]) / 2) for i, p in enumerate(self.plan_times_s)]

    @property
    def ratio(self) -> float:
        """Plan time over the unmodified step's: the median of the per-iteration ratios of the calm
        iterations (of all, when none is calm; 1 for the unmodified step itself)."""
        ratios = self.ratios
        used = self._used()
        return statistics.median(ratios[i] for i in used) if used else float("nan")

    @property
    def bracket_spread(self) -> float:
        """The largest disagreement of two brackets around one of the iterations used."""
        r = self.reference_times_s
        return max((_spread([r[i], r[i + 1]]) for i in self._used()), default=0.0) if r else 0.0

    @property
    def iteration_spread(self) -> float:
        return _spread([self.plan_times_s[i] for i in self._used()])

    @property
    def spread(self) -> float:
        """The larger of the two spreads, as a fraction (0.1: 10%)."""
        return max(self.bracket_spread, self.iteration_spread)

    @property
    def steady(self) -> bool:
        return (len(self.calm()) >= min(max(self.wanted, 1), len(self.plan_times_s))
                and self.iteration_spread <= SPREAD_LIMIT)

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
        n = len(self.plan_times_s)
        tries = (f"{len(self.calm())} calm of {n} iterations" if n > self.wanted else
                 f"{n} iteration{'s' * (n > 1)}: over {RETRY_MAX_S:g} s, not rerun" if self.time_s > RETRY_MAX_S
                 else f"{n} iteration{'s' * (n > 1)}")
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
    """Time calls of ``plan`` with a call of ``reference`` (the unmodified step; None when the plan is
    the unmodified step, its own reference) before the first and after each, until ``iterations`` of
    them are calm (their two brackets agree within `STEADY`) and the plan's own times agree within
    `SPREAD_LIMIT`, or ``iterations * max_attempts`` have run, or one took over `RETRY_MAX_S`.

    Each extra iteration costs one plan and one reference call (the last bracket is the next one's
    first). ``after_plan(i, output)`` runs untimed after each of the first ``iterations`` calls (e.g.
    to check what they computed; later ones train on past what a reference ran).
    """
    import torch

    plan_times: list[float] = []
    ref_times = [] if reference is None else [_timed(reference, sync)[0]]
    timing = Timing(plan_times, ref_times, iterations, torch.get_num_threads())
    while len(plan_times) < iterations * max(max_attempts, 1):
        t, out = _timed(plan, sync)
        plan_times.append(t)
        if after_plan is not None and len(plan_times) <= iterations:
            after_plan(len(plan_times) - 1, out)
        del out
        if reference is not None:
            ref_times.append(_timed(reference, sync)[0])
        if len(plan_times) >= iterations and (timing.steady or t > RETRY_MAX_S):
            break
    return timing
