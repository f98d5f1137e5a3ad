"""How fast is the μ-TWO greedy (solvers.mutwo_greedy)? The target: a ResNet-152-sized problem
(~600 activations, ~4,000 ops) in under a second.

Run ``python -m benchmarks.greedy_speed [--sizes 100 600 2000] [--fractions 0.7 0.5 0.3] [--repeat 3]``.
Prints the median solve time per (size, budget, mode) on seeded `random_dag` problems, as wall clock
and as CPU time (which a shared machine disturbs less), plus what the solver found. The budget is a
fraction of the keep-all peak; on these problems 30% is below the fixed memory, which is answered
infeasible at once. ``--above-fixed`` takes the fraction of the range between the fixed memory and
the keep-all peak instead, so every row is a real search.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import random_dag
from solvers.mutwo_greedy import MODES, solve


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 600, 2000])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--above-fixed", action="store_true",
                    help="budget = fixed memory + fraction x (keep-all peak - fixed memory)")
    args = ap.parse_args(argv)

    print(f"{'n_act':>6} {'n_ops':>6} {'budget':>7} {'mode':>9} {'median_ms':>10} {'cpu_ms':>7} {'status':>10} "
          f"{'n_rec':>6} {'n_swap':>6} {'peak/keep':>9} {'time/compute':>12}")
    for n_act in args.sizes:
        p = random_dag(n_act, seed=args.seed)
        keep = simulate(p, Schedule.keep_all(p)).peak_bytes
        floor = int((p.fixed_bytes + p.op_transient_bytes).max())
        for frac in args.fractions:
            budget = int(floor + frac * (keep - floor)) if args.above_fixed else int(frac * keep)
            for mode in args.modes:
                times, cpu = [], []
                for _ in range(args.repeat):
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = solve(p, budget, mode=mode, verify=False)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                s = res.schedule
                counts = s.counts()
                ratio = res.peak_bytes / keep if res.peak_bytes >= 0 else float("nan")
                below = " (below fixed memory)" if budget < floor else ""
                print(f"{n_act:>6} {p.n_ops:>6} {frac:>6.0%} {mode:>9} {1e3 * statistics.median(times):>10.1f} "
                      f"{1e3 * statistics.median(cpu):>7.1f} "
                      f"{s.status.value:>10} {counts['n_recompute']:>6} {counts['n_swap']:>6} {ratio:>9.3f} "
                      f"{res.time_s / p.total_compute_s:>12.4f}{below}")


if __name__ == "__main__":
    main()
