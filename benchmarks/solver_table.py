"""Every registered solver on a saved Problem at fractions of its keep-all peak (simulated).

    python -m benchmarks.solver_table results/benchmarks/problems/resnet152-b2-adam.npz \
        [--solvers keep_all,knapsack] [--budgets 0.9,0.7,0.5,0.3]

Prints the simulate() time on the Problem, then one row per solver x budget: status, simulated peak
(as a fraction of keep-all), simulated iteration time overhead and solve time. Writes
``results/benchmarks/solver_table_<problem>.csv``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from benchmarks._common import labels, parser, write_csv
from benchmarks.simulate_speed import median_ms
from mutwo.cell import solve
from mutwo.problem import Problem
from mutwo.registry import available_solvers
from mutwo.schedule import Schedule
from mutwo.simulate import simulate

SKIP_BY_DEFAULT = {"brute_force", "checkmate_exact"}  # exponential / small-graph references


def main() -> None:
    ap = parser(__doc__, "solvers", "time-limit", solvers={"help": None},
                time_limit={"help": "for ILP solvers (seconds)"})
    ap.add_argument("problem", type=Path)
    ap.add_argument("--budgets", default="0.9,0.7,0.5,0.3")
    args = ap.parse_args()
    problem = Problem.load(args.problem)
    keep = simulate(problem, Schedule.keep_all(problem))
    print(f"{problem.name}: {problem.n_ops} ops, {problem.n_act} activations, keep-all peak "
          f"{keep.peak_bytes / 2**20:.1f} MiB (fixed memory alone {problem.fixed_bytes.max() / 2**20:.1f} MiB), "
          f"time {keep.time_s:.3f} s; simulate() keep-all median {median_ms(problem, Schedule.keep_all(problem), 20):.2f} ms")
    names = labels(args.solvers) or [s for s in available_solvers() if s not in SKIP_BY_DEFAULT]
    rows = []
    for frac in [float(x) for x in args.budgets.split(",")]:
        budget = int(frac * keep.peak_bytes)
        for name in names:
            opts = {"time_limit_s": args.time_limit} if name.startswith("ilp") else {}
            t0 = time.perf_counter()
            try:
                sched = solve(name, problem, budget, opts)
            except Exception as exc:  # noqa: BLE001 - a failing solver is a row, not the end of the table
                rows.append({"budget_fraction": frac, "solver": name, "status": "error", "message": str(exc)[:80]})
                continue
            wall = time.perf_counter() - t0
            sim = simulate(problem, sched)
            rows.append({"budget_fraction": frac, "solver": name, "status": sched.status.value,
                         "peak_fraction": sim.peak_bytes / keep.peak_bytes, "fits": sim.fits(budget),
                         "overhead_pct": 100 * (sim.time_s / keep.time_s - 1), "solve_s": wall,
                         "simulate_ms": median_ms(problem, sched, 5), **sched.counts()})
    df = pd.DataFrame(rows)
    write_csv(df, f"solver_table_{args.problem.stem}.csv")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
