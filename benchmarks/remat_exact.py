"""Exact rematerialization at ResNet-50 scale: the Checkmate stage grid against the interval model.

    python -m benchmarks.device_problems resnet50:32              # once: the Problem (.npz, git-ignored)
    python -m benchmarks.remat_exact                              # 600 s per solve, 2 threads
    python -m benchmarks.remat_exact --time-limit 120 --skip-small

For each Problem (the ResNet-50 b32 H100-costed Problem, and small synthetic sanity Problems) at 70 /
50 / 30% of the range from the every-plan floor to keep-all (`benchmarks.device_problems.range_budget`),
runs ``checkmate_exact`` (CP-SAT, and HiGHS with ``--highs``), ``remat_interval`` (C = 2, and each
``--computations``) and our recompute-only greedy for reference, and writes
``results/benchmarks/remat_exact.csv``: status, objective (the returned plan, simulated), the model's own
objective, the lower bound and its gap, wall time, model size, and the 1-minute load average before and
after each row (the machine is shared: times mean little without it). See docs/remat_exact.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import write_csv
from benchmarks.device_problems import PROBLEMS, range_budget
from mutwo.problem import Problem
from mutwo.registry import get_solver
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import random_dag, residual

RESNET50 = PROBLEMS / "resnet50-b32-sgd-h100-sxm.npz"
FRACTIONS = (0.7, 0.5, 0.3)


def _small() -> list[Problem]:
    return [residual(4, seed=2), random_dag(30, 4), random_dag(50, 7)]


def _row(p: Problem, frac: float, budget: int, label: str, solver: str, options: dict) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        s = get_solver(solver)(p, budget, **options)
    except Exception as exc:  # noqa: BLE001 - a failing solver is a row, the others go on
        return {"problem": p.name, "fraction": frac, "budget_MiB": budget / 2**20, "solver": label,
                "status": "error", "message": f"{type(exc).__name__}: {exc}", "wall_s": time.perf_counter() - t0,
                "load_before": load0, "load_after": os.getloadavg()[0]}
    wall = time.perf_counter() - t0
    model = s.options.get("model", {})
    own = s.options.get("checkmate_objective_s", s.options.get("interval_objective_s"))
    best = s.objective if s.objective is not None else own
    gap = None if (s.bound is None or best is None) else max(0.0, (best - s.bound) / best)
    return {"problem": p.name, "fraction": frac, "budget_MiB": budget / 2**20, "solver": label,
            "status": s.status.value, "objective_s": s.objective, "model_objective_s": own, "bound_s": s.bound,
            "gap_pct": None if gap is None else 100 * gap, "over_compute_pct":
            None if s.objective is None else 100 * (s.objective / p.total_compute_s - 1),
            "wall_s": wall, "n_vars": model.get("n_vars"), "n_rows": model.get("n_rows", model.get("n_constraints")),
            "n_nonzeros": model.get("n_nonzeros"), "interval_bound_s": s.options.get("interval_bound_s"), "n_fixed_resident": model.get("n_fixed_resident"),
            "load_before": load0, "load_after": os.getloadavg()[0], "message": s.message[:300]}


def runs(args) -> list[tuple[str, str, dict]]:
    common = {"time_limit_s": args.time_limit, "threads": args.threads}
    out = [("greedy (recompute)", "mutwo_greedy", {"mode": "recompute"}),
           ("checkmate cpsat", "checkmate_exact", {**common, "backend": "cpsat", "rel_gap": args.rel_gap})]
    if args.highs:
        out.append(("checkmate highs", "checkmate_exact", {**common, "backend": "pulp_highs", "rel_gap": args.rel_gap}))
    for c in args.computations:
        out.append((f"interval C={c}", "remat_interval", {**common, "max_computations": c, "rel_gap": args.rel_gap}))
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", type=Path, default=RESNET50, help="a saved Problem (.npz)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per solve (default 600)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rel-gap", type=float, default=0.01, help="stop when proven within this (default 1%%)")
    ap.add_argument("--computations", type=int, nargs="+", default=[2], help="C values of remat_interval")
    ap.add_argument("--highs", action="store_true", help="also checkmate_exact on HiGHS (PuLP)")
    ap.add_argument("--skip-small", action="store_true", help="only the --problem, not the sanity Problems")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--only", nargs="+", default=None, help="run only rows whose label starts with one of these "
                    "(greedy, checkmate, interval)")
    ap.add_argument("--out", default="remat_exact.csv", help="file name under results/benchmarks/")
    args = ap.parse_args(argv)
    problems = [] if args.skip_small else _small()
    if args.problem.exists():
        problems.append(Problem.load(args.problem))
    else:
        print(f"{args.problem} not found: run `python -m benchmarks.device_problems resnet50:32` first", flush=True)
    rows = []
    for p in problems:
        keep = int(simulate(p, Schedule.keep_all(p)).peak_bytes)
        for frac in args.fractions:
            b = range_budget(p, frac, keep)
            for label, solver, options in runs(args):
                if args.only and not any(label.startswith(o) for o in args.only):
                    continue
                rows.append(_row(p, frac, b, label, solver, options))
                r = rows[-1]
                print({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != "message"},
                      flush=True)
                write_csv(pd.DataFrame(rows), args.out)  # after each row: a killed run keeps its rows
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
