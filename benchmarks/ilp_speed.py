"""ILP backends on a large synthetic problem: solve time, proven gap, simulated time vs mutwo_greedy.

    python -m benchmarks.ilp_speed                       # random_dag(600): ~600 activations, ~3,900 ops
    python -m benchmarks.ilp_speed --time-limit 20 --fractions 0.5 --backends ilp_cpsat

Budgets are fractions of the keep-all peak. Every answer is simulated; "vs greedy" is the simulated time
relative to mutwo_greedy's at the same budget (negative = faster than greedy).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from mutwo.registry import get_solver
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import random_dag

BACKENDS = ("ilp_cpsat", "ilp_ortools_mip", "ilp_pulp_cbc", "ilp_pulp_highs")


def run(n_act: int, seed: int, fractions: list[float], backends: list[str], time_limit: float,
        threads: int) -> pd.DataFrame:
    """One row per (budget, backend), plus the greedy reference row per budget."""
    p = random_dag(n_act, seed)
    keep_peak = simulate(p, Schedule.keep_all(p)).peak_bytes
    floor = int((p.fixed_bytes + p.op_transient_bytes).max())
    print(f"{p.name}: {p.n_act} activations, {p.n_ops} ops, compute {p.total_compute_s:.4f} s, "
          f"keep-all peak {keep_peak / 2**20:.0f} MiB, fixed+transient peak {floor / 2**20:.0f} MiB", flush=True)
    rows = []
    for frac in fractions:
        budget = int(frac * keep_peak)
        t0 = time.perf_counter()
        greedy = get_solver("mutwo_greedy")(p, budget)
        g_wall = time.perf_counter() - t0
        g_time = simulate(p, greedy).time_s if greedy.feasible else None
        rows.append({"fraction": frac, "solver": "mutwo_greedy", "status": greedy.status.value,
                     "wall_s": g_wall, "gap": None, "sim_time_s": g_time, "vs_greedy": 0.0 if g_time else None,
                     **greedy.counts()})
        print(_line(rows[-1]), flush=True)
        for name in backends:
            t0 = time.perf_counter()
            s = get_solver(name)(p, budget, time_limit_s=time_limit, threads=threads)
            wall = time.perf_counter() - t0
            sim = simulate(p, s) if s.feasible else None
            if sim is not None:
                assert sim.peak_bytes <= budget, f"{name} reported a plan over budget"
            row = {"fraction": frac, "solver": name, "status": s.status.value, "wall_s": wall,
                   "gap": s.options.get("gap"), "sim_time_s": sim.time_s if sim else None,
                   "objective_s": s.objective, "bound_s": s.bound,
                   "vs_greedy": (sim.time_s / g_time - 1) if (sim and g_time) else None,
                   "start": s.options.get("warm_start"), "phase1": s.options.get("phase1"),
                   "engine_s": s.options.get("engine_wall_s"), **s.counts(),
                   **{k: s.options.get("model", {}).get(k) for k in ("n_vars", "n_rows", "n_nonzeros", "n_checks")}}
            if not s.feasible:
                row["message"] = s.message[:160]
            rows.append(row)
            print(_line(row), flush=True)
    return pd.DataFrame(rows)


def _line(r: dict) -> str:
    def f(x, fmt):
        return "-" if x is None or x != x else format(x, fmt)

    return (f"{r['fraction']:.0%} {r['solver']:<16} {r['status']:<10} wall {r['wall_s']:6.1f} s  "
            f"gap {f(r.get('gap'), '.2%'):>7}  sim {f(r.get('sim_time_s'), '.5f')} s  "
            f"vs greedy {f(r.get('vs_greedy'), '+.2%'):>7}  "
            f"keep/rec/swap {r.get('n_keep')}/{r.get('n_recompute')}/{r.get('n_swap')}"
            + (f"  [{r['message']}]" if r.get("message") else ""))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-act", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the table as CSV here")
    args = ap.parse_args(argv)
    df = run(args.n_act, args.seed, args.fractions, args.backends, args.time_limit, args.threads)
    if args.out:
        df.to_csv(args.out, index=False)
    cols = ["fraction", "solver", "status", "wall_s", "gap", "sim_time_s", "vs_greedy", "n_recompute", "n_swap"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(df[[c for c in cols if c in df]].to_string(index=False))


if __name__ == "__main__":
    main()
