"""How fast is `simulate`? Solvers call it in their inner loops, so it must stay in the milliseconds.

Run ``python -m benchmarks.simulate_speed [--n-act 600] [--repeat 50]``; prints the median time per call
for keep-all, 30% recompute, 30% swap and a mixed schedule on a seeded `random_dag` (~6.5 ops per
activation, so ~3,900 ops for 600 activations).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mutwo.problem import Problem
from mutwo.schedule import Decision, Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import random_dag


def schedules(problem: Problem, seed: int = 0) -> dict[str, Schedule]:
    """The four benchmark schedules; swaps only where the recompute chains stay valid."""
    rng = np.random.default_rng(seed)
    m = problem.n_act
    rec = problem.recomputable & (rng.random(m) < 0.3)
    swp = problem.swappable & (rng.random(m) < 0.3)
    d_rec = np.where(rec, Decision.RECOMPUTE, Decision.KEEP)
    d_swp = np.where(swp, Decision.SWAP, Decision.KEEP)
    d_mix = np.where(rec, Decision.RECOMPUTE, np.where(swp, Decision.SWAP, Decision.KEEP))
    # a SWAP source of a recompute chain is not resident at the anchor: keep those instead
    for a in np.flatnonzero(d_mix == Decision.RECOMPUTE):
        srcs = problem.recompute_sources[a]
        d_mix[srcs[d_mix[srcs] == Decision.SWAP]] = Decision.KEEP
    return {"keep_all": Schedule.keep_all(problem),
            "recompute_30pct": Schedule.from_decisions(problem, d_rec),
            "swap_30pct": Schedule.from_decisions(problem, d_swp),
            "mixed": Schedule.from_decisions(problem, d_mix)}


def median_ms(problem: Problem, schedule: Schedule, repeat: int) -> float:
    simulate(problem, schedule)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        simulate(problem, schedule)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-act", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    problem = random_dag(args.n_act, seed=args.seed)
    print(f"random_dag: {problem.n_ops} ops, {problem.n_act} activations; median of {args.repeat} calls")
    for name, schedule in schedules(problem, args.seed).items():
        counts = schedule.counts()
        sim = simulate(problem, schedule)
        print(f"  {name:16s} {median_ms(problem, schedule, args.repeat):7.3f} ms   "
              f"(recompute {counts['n_recompute']:4d}, swap {counts['n_swap']:4d}; "
              f"peak {sim.peak_bytes / 2**30:.2f} GiB, time {1e3 * sim.time_s:.1f} ms, "
              f"stall {1e3 * sim.stall_s:.1f} ms)")


if __name__ == "__main__":
    main()
