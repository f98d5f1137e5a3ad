"""Timing a plan's execution on a machine others share: a chosen torch thread count, the unmodified
step timed between the plan's iterations (reference, plan, reference, ..., reference: each plan
iteration has a bracket on each side, and its time ratio is over these, so drifts of the load
cancel), enough iterations of a short step for their median to average out its jitter, and more
iterations while the brackets or the iterations disagree. `mutwo.execute.run` times every
plan this way, for ``python -m mutwo.compare`` and the benchmarks alike; docs/benchmarks.md says why
each rule is there.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STEADY", "PRECISION", "RETRY_MAX_S", "MIN_TIMED_S", "MAX_SHORT_ITERATIONS", "Timing", "interleaved", "ratio_clock",
           "threads_for", "torch_threads", "set_threads"]

STEADY = 0.10  # one or two iterations: their brackets within 10% of each other
PRECISION = 0.05  # three or more: the median ratio's estimated standard error within 5% (`Timing.error`)
RETRY_MAX_S = 10.0  # plans slower than this per iteration (ResNet-152 recompute-all: ~80 s) run once
MIN_TIMED_S = 2.0  # short steps get iterations until this much plan time: one step jitters by 10-20% here
MAX_SHORT_ITERATIONS = 10  # ... but no more than this many for that reason


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

    plan_times_s: list[float]  # wall
    reference_times_s: list[float] = field(default_factory=list)  # wall; empty: the plan is its own reference
    wanted: int = 0  # how many iterations are wanted (0: as many as were run)
    threads: int = 0
    # the timing thread's CPU time of the same calls, when ratios are taken on it (`ratio_clock`)
    plan_cpu_s: list[float] | None = None
    reference_cpu_s: list[float] | None = None

    @property
    def clock(self) -> str:
        """What the ratios are taken on: ``thread-cpu`` or ``wall``."""
        return "wall" if self.plan_cpu_s is None else "thread-cpu"

    def _ratio_times(self) -> tuple[list[float], list[float]]:
        if self.plan_cpu_s is None:
            return self.plan_times_s, self.reference_times_s
        return self.plan_cpu_s, self.reference_cpu_s or []

    @property
    def attempts(self) -> int:
        """The iterations run, in units of those wanted (1: no extra iteration was needed)."""
        return max(1, -(-len(self.plan_times_s) // max(self.wanted, 1)))

    @property
    def time_s(self) -> float:
        return statistics.median(self.plan_times_s) if self.plan_times_s else float("nan")

    @property
    def reference_time_s(self) -> float:
        return statistics.median(self.reference_times_s) if self.reference_times_s else self.time_s

    @property
    def ratios(self) -> list[float]:
        """Per plan iteration, its time over the mean of the reference steps just before and after (on
        the ratio clock)."""
        plan, r = self._ratio_times()
        if not r:
            return [1.0] * len(plan)
        return [p / ((r[i] + r[i + 1]) / 2) for i, p in enumerate(plan)]

    @property
    def ratio(self) -> float:
        """Plan time over the unmodified step's: the median of the per-iteration ratios (1 for the
        unmodified step itself). Every iteration counts: picking "calm" ones biased it here."""
        return statistics.median(self.ratios) if self.plan_times_s else float("nan")

    @property
    def bracket_spread(self) -> float:
        """How far the two brackets of an iteration differ (max / min - 1), the median over iterations:
        how much the load moved within one step."""
        r = self._ratio_times()[1]
        return statistics.median(_spread([r[i], r[i + 1]]) for i in range(len(r) - 1)) if len(r) > 1 else 0.0

    def _values(self) -> list[float]:
        """What the figure is the median of: the ratios, or the plan's own times without brackets."""
        return self.ratios if self.reference_times_s else self._ratio_times()[0]

    @property
    def spread(self) -> float:
        """How much the iterations disagree, as a fraction (0.1: 10%): the median absolute deviation of
        the per-iteration ratios over their median; for one iteration, how far its brackets differ."""
        values = self._values()
        if len(values) < 2:
            return self.bracket_spread
        mid = statistics.median(values)
        return statistics.median(abs(v - mid) for v in values) / mid if mid > 0 else 0.0

    @property
    def error(self) -> float:
        """Estimated relative standard error of the median ratio, from three iterations on: 1.25 x
        sigma / sqrt(n), sigma estimated as 1.48 x the median absolute deviation (normal jitter)."""
        n = len(self._values())
        return 1.2533 * 1.4826 * self.spread / math.sqrt(n) if n >= 3 else float("nan")

    @property
    def steady(self) -> bool:
        """Three or more iterations: `error` within `PRECISION`; fewer: their brackets (and, for two,
        their ratios) within `STEADY`."""
        if len(self._values()) >= 3:
            return self.error <= PRECISION
        return self.bracket_spread <= STEADY and _spread(self._values()) <= STEADY

    def note(self) -> str:
        """Empty when steady; else why the figure may be off, with the limit."""
        if self.steady:
            return ""
        n = len(self.plan_times_s)
        runs = f"{n} iteration{'s' * (n > 1)}" + (f", over {RETRY_MAX_S:g} s: not rerun" if n <= self.wanted
                                                   and self.time_s > RETRY_MAX_S else "")
        if n >= 3:
            why = (f"the median ratio's standard error is {100 * self.error:.0f}% (limit {100 * PRECISION:.0f}%; "
                   f"iterations spread {100 * self.spread:.0f}%)")
        else:
            why = (f"the unmodified step before and after differs by {100 * self.bracket_spread:.0f}% "
                   f"(limit {100 * STEADY:.0f}%)")
        return f"timing not steady ({runs}): {why} - the machine's load moved"


def ratio_clock(device: str, threads: int) -> str:
    """``thread-cpu`` on CPU with one torch thread (the step runs on the timing thread; its CPU time
    leaves out the time other jobs had the core, which is most of the jitter of a shared machine),
    else ``wall`` (CUDA kernels run asynchronously; several threads' CPU time is not the step's)."""
    return "thread-cpu" if str(device).startswith("cpu") and threads == 1 else "wall"


def _timed(step: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, float, Any]:
    """(wall seconds, this thread's CPU seconds, output) of one call."""
    sync()
    t0, c0 = time.perf_counter(), time.thread_time()
    out = step()
    sync()
    return time.perf_counter() - t0, time.thread_time() - c0, out


def interleaved(plan: Callable[[], Any], reference: Callable[[], Any] | None, iterations: int, *,
                after_plan: Callable[[int, Any], None] | None = None, sync: Callable[[], None] = lambda: None,
                max_attempts: int = 3, clock: str = "wall") -> Timing:
    """Time calls of ``plan`` with a call of ``reference`` (the unmodified step; None when the plan is
    the unmodified step, its own reference) before the first and after each.

    ``wanted`` = ``iterations``, or more for a short step: as many as make `MIN_TIMED_S` of plan time
    (at most `MAX_SHORT_ITERATIONS`), since one iteration jitters by 10-15% on a shared machine and
    the median of several does not. Runs until ``wanted`` have run and `Timing.steady`, or ``wanted *
    max_attempts`` have run, or one took over `RETRY_MAX_S`. Each extra iteration costs one plan and
    one reference call (the last bracket is the next one's first). ``after_plan(i, output)`` runs
    untimed after each of the first ``iterations`` calls (e.g. to check what they computed; later
    ones train on past what a reference ran). ``clock`` (`ratio_clock`): what the ratios are taken on;
    times are wall times either way.
    """
    import torch

    plan_times: list[float] = []
    ref_times: list[float] = []
    cpu = clock == "thread-cpu"
    timing = Timing(plan_times, ref_times, iterations, torch.get_num_threads(), [] if cpu else None,
                    [] if cpu else None)

    def time_reference() -> None:
        wall, used, _ = _timed(reference, sync)
        ref_times.append(wall)
        if cpu:
            timing.reference_cpu_s.append(used)

    if reference is not None:
        time_reference()
    while iterations > 0 and len(plan_times) < timing.wanted * max(max_attempts, 1):
        t, used, out = _timed(plan, sync)
        plan_times.append(t)
        if cpu:
            timing.plan_cpu_s.append(used)
        if after_plan is not None and len(plan_times) <= iterations:
            after_plan(len(plan_times) - 1, out)
        del out
        if reference is not None:
            time_reference()
        if len(plan_times) == 1 and t > 0:
            timing.wanted = max(iterations, min(MAX_SHORT_ITERATIONS, math.ceil(MIN_TIMED_S / t)))
        if len(plan_times) >= timing.wanted and (timing.steady or t > RETRY_MAX_S):
            break
    return timing
