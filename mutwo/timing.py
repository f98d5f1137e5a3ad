"""Timing a plan's execution on a machine others share: one torch thread, the unmodified step timed
just before and after each plan (its time ratio is over these, so drifts of the load cancel), and a
rerun when the load visibly changed. docs/benchmarks.md says why each rule is there.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["STEADY", "RETRY_MAX_S", "set_threads", "steady", "time_unmodified", "bracketed"]

STEADY = 0.10  # bracketing baselines within 10%, iterations within 20%: the load did not change
RETRY_MAX_S = 10.0  # plans slower than this per iteration (ResNet-152 recompute-all: ~80 s) run once


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads. On a shared, oversubscribed CPU a 2-thread OpenMP region waits for
    its second thread to be scheduled (measured here: a 32x128 @ 128x128 mm took 32 ms with 2 threads
    and 0.02 ms with 1 while other jobs ran), so timings are only meaningful with 1 thread there."""
    import torch

    if n:
        torch.set_num_threads(int(n))


def steady(times: Sequence[float]) -> bool:
    """Iterations within 2 x `STEADY` of each other (or too few to tell)."""
    return len(times) < 2 or max(times) / min(times) - 1 <= 2 * STEADY


def time_unmodified(graph: Any, flat: Sequence[Any], iterations: int) -> list[float]:
    """Iteration times of the unmodified captured step (one warm-up first), on copies of its inputs."""
    import torch

    work = [t.detach().clone() for t in flat]
    times = []
    with torch.no_grad():
        graph.gm(*work)  # warm-up
        for _ in range(max(iterations, 1)):
            t0 = time.perf_counter()
            graph.gm(*work)
            times.append(time.perf_counter() - t0)
    return times


def bracketed(run: Callable[[], Any], baseline: Callable[[], list[float]] | None, max_attempts: int = 3) -> dict:
    """Execute a plan (``run``: its `mutwo.execute` result) between two timings of the unmodified step
    (``baseline``; None when the plan is the unmodified step, its own baseline). Run again, up to
    ``max_attempts`` times, while the brackets differ by more than `STEADY` or the iterations spread by
    more than twice that, unless an iteration takes over `RETRY_MAX_S`. ``load_steady``: whether the
    last attempt was calm. Returns the measured figures, with the baseline's."""
    attempt = 0
    while attempt < max_attempts:
        attempt += 1
        before = [] if baseline is None else baseline()
        res = run()
        times = list(getattr(res, "iteration_times_s", []) or [res.iteration_time_s])
        after = [] if baseline is None else baseline()
        base = before + after or times  # the unmodified graph is its own baseline (ratio 1)
        calm = steady(times) and steady(base) and (
            baseline is None or abs(statistics.median(after) / statistics.median(before) - 1) <= STEADY)
        if calm or res.iteration_time_s > RETRY_MAX_S:
            break
    notes = getattr(res, "notes", {}) or {}
    return {"measured_peak_bytes": int(res.measured_peak_bytes), "measured_time_s": float(res.iteration_time_s),
            "measured_time_min_s": float(min(times)),
            "time_spread": float(max(times) / min(times) - 1) if min(times) > 0 else float("nan"),
            "baseline_time_s": statistics.median(base), "baseline_time_min_s": min(base),
            "load_steady": calm, "attempts": attempt,
            "max_rel_diff": float(res.max_rel_diff), "bitwise_equal": bool(getattr(res, "bitwise_equal", False)),
            "emulated_swap": bool(res.emulated_swap), "peak_method": getattr(res, "method", ""),
            "exec_warnings": "; ".join(notes.get("warnings", []))[:300]}
