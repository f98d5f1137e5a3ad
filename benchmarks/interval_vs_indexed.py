"""The interval model with the host link (``swap_interval``) against the time-indexed model (``ilp_cpsat``).

    python -m benchmarks.interval_vs_indexed                       # the three device Problems, 60 s each
    python -m benchmarks.interval_vs_indexed --fractions 0.5 --problems /path/bert-base-...npz

For each device-costed Problem (`benchmarks.device_problems`) at 70 / 50 / 30% of the range from the
every-plan floor to keep-all (`benchmarks.device_problems.range_budget`), with ``warm_start="heuristics"``,
the same time limit and threads for every row:

* ``ilp_cpsat`` -- the pipeline: the iteration-time bound, the plan rounded from its relaxation, the
  time-indexed model (docs/ilp.md);
* ``ilp_cpsat bound=none`` -- the bare time-indexed model (no bound, no rounding);
* ``swap_interval`` -- the iteration-time bound and the interval model (docs/remat_exact.md).

So the comparison is pipeline against pipeline and model against model. ``--polish``: instead, per budget,
``ilp_cpsat`` and then ``swap_interval`` started from its plan (``rel_gap`` 1e-4, so that the model runs
although the start is proven within 1%): does the interval model improve on the proven plan? Columns: status, objective
(the returned plan, simulated), bound and gap, wall time, model size, the models' own objectives, and
the 1-minute load average before and after each row (the machine is shared). Written to
``results/benchmarks/interval_vs_indexed.csv`` after every row (atomically).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import RESULTS, write_csv
from benchmarks.device_problems import PROBLEMS, range_budget
from mutwo.problem import Problem
from mutwo.registry import get_solver
from mutwo.simulate import simulate

DEFAULT = [PROBLEMS / f"{name}-sgd-h100-sxm.npz" for name in ("resnet152-b32", "bert-base-b8-s512",
                                                               "gpt2-medium-b4-s1024")]
FRACTIONS = (0.7, 0.5, 0.3)
OUT = "interval_vs_indexed.csv"


def runs(time_limit: float, threads: int, warm_start: str = "heuristics") -> list[tuple[str, str, dict]]:
    common = {"time_limit_s": time_limit, "threads": threads, "warm_start": warm_start}
    return [("ilp_cpsat", "ilp_cpsat", common),
            ("ilp_cpsat bound=none", "ilp_cpsat", {**common, "bound": "none"}),
            ("swap_interval", "swap_interval", common)]


def polish_runs(time_limit: float, threads: int, warm_start: str = "heuristics") -> list[tuple[str, str, dict]]:
    common = {"time_limit_s": time_limit, "threads": threads}
    return [("ilp_cpsat", "ilp_cpsat", {**common, "warm_start": warm_start}),
            ("swap_interval from ilp_cpsat", "swap_interval", {**common, "warm_start": "previous", "rel_gap": 1e-4})]


def row(p: Problem, frac: float, budget: int, label: str, solver: str, options: dict) -> dict:
    """One solve, its answer simulated (the Schedule itself under ``"plan"``); a failing solver is an
    ``error`` row."""
    head = {"problem": p.name, "fraction": frac, "budget_MiB": budget / 2**20, "solver": label}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        s = get_solver(solver)(p, budget, **options)
    except Exception as exc:  # noqa: BLE001 - the other rows go on
        return {**head, "status": "error", "message": f"{type(exc).__name__}: {exc}"[:300], "plan": None,
                "wall_s": time.perf_counter() - t0, "load_before": load0, "load_after": os.getloadavg()[0]}
    wall = time.perf_counter() - t0
    sim = simulate(p, s) if s.feasible else None
    if sim is not None and not sim.fits(budget):
        raise AssertionError(f"{label} returned a plan over budget ({sim.peak_bytes} > {budget} B)")
    t = sim.time_s if sim is not None else None
    gap = None if (t is None or s.bound is None) else max(0.0, (t - s.bound) / t)
    model = s.options.get("model") if isinstance(s.options.get("model"), dict) else {}
    counts = s.counts()
    return {**head, "status": s.status.value, "objective_s": t, "bound_s": s.bound,
            "gap_pct": None if gap is None else 100 * gap, "wall_s": wall,
            "n_vars": model.get("n_vars"), "n_rows": model.get("n_rows", model.get("n_constraints")),
            "n_recompute": counts["n_recompute"], "n_swap": counts["n_swap"],
            "engine": s.options.get("engine", "cp-sat" if "engine_status" in s.options else None),
            "engine_status": s.options.get("engine_status"),
            "model_objective_s": s.options.get("interval_objective_s"),
            "model_bound_s": s.options.get("interval_bound_s"), "start": str(s.options.get("warm_start"))[:120],
            "load_before": load0, "load_after": os.getloadavg()[0], "message": s.message[:300],
            "plan": s if s.feasible else None}


def main(argv: list[str] | None = None, out_dir: Path = RESULTS) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=Path, nargs="+", default=DEFAULT, help="saved Problems (.npz)")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per solve (default 60)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-start", default="heuristics", help="start plan of every row (default: heuristics)")
    ap.add_argument("--polish", action="store_true", help="swap_interval from ilp_cpsat's plan (module doc)")
    ap.add_argument("--out", default=None, help="CSV name under results/benchmarks/ (default: interval_vs_indexed"
                                                "[_polish].csv)")
    args = ap.parse_args(argv)
    out = args.out or (OUT.replace(".csv", "_polish.csv") if args.polish else OUT)
    rows: list[dict] = []
    for path in args.problems:
        p = Problem.load(path)
        for frac in args.fractions:
            budget = range_budget(p, frac)
            for label, solver, options in (polish_runs if args.polish else runs)(args.time_limit, args.threads,
                                                                                args.warm_start):
                if options.get("warm_start") == "previous":
                    options = {**options, "warm_start": rows[-1]["plan"] or "heuristics"}
                rows.append(row(p, frac, budget, label, solver, options))
                r = rows[-1]
                print(f"{p.name} {frac:.0%} {label}: {r['status']} {r.get('objective_s')} bound {r.get('bound_s')} "
                      f"gap {r.get('gap_pct')} wall {r['wall_s']:.1f}s load {r['load_before']:.1f}", flush=True)
                write_csv(pd.DataFrame(rows).drop(columns="plan"), out, out_dir)
    return pd.DataFrame(rows).drop(columns="plan")


if __name__ == "__main__":
    main()
