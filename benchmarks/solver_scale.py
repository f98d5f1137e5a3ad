"""How solve time grows with problem size: every registered solver on seeded ``random_dag`` Problems
(100 to 10,000 activations, ~6.5 ops each) at budgets of 50% and 80% of the keep-all peak, plus the
real Problems saved by ``benchmarks.capture_profile`` (``results/benchmarks/problems/*.npz``) if present.

    python -m benchmarks.solver_scale [--sizes 12 50 100 300 1000 3000 10000] [--fractions 0.5 0.8]
        [--time-limit 60] [--threads 2] [--solvers mutwo_greedy,ilp_cpsat] [--max-total-s 3600]

Real Problems are also solved at a budget midway between their fixed memory (parameters, gradients,
optimizer state: a floor no plan goes below) and their keep-all peak (row budget ``mid``): with Adam,
50% and 80% of the peak are often below that floor.

Why two budgets: ``random_dag``'s fixed memory (batch, parameters, Adam state, gradients) is 42-58% of
its keep-all peak, so at 50% the problems up to ~100 activations have no plan at all, and what is timed
there is how fast a solver says so; 80% is feasible from 50 activations on.

Rules that keep the run bounded: the exact references are run only within their size limits
(``brute_force`` <= 12 activations, ``checkmate_exact`` <= 60, hence the two small default sizes); ILP
solvers get ``--time-limit`` seconds on ``--threads`` threads, and once one hits its limit on a problem
another solver found a plan for (a scaling limit, not an infeasibility proof) it is skipped (row status
``skipped``) at every larger size of that budget; once ``--max-total-s`` is spent, solvers
slower than a second are skipped too. Solvers that finish within a second are timed as the median of
three runs. Reported: wall time of the solver call, its status, and the simulated peak / time of its plan.

Writes ``results/benchmarks/solver_scale.csv`` and ``solver_scale.png`` (log-log).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from benchmarks._common import RESULTS, labels, machine, markdown, parser, write_csv
from mutwo.cell import solve
from mutwo.problem import Problem
from mutwo.registry import available_solvers
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import random_dag

__all__ = ["SIZES", "FRACTIONS", "size_limit", "solve_row", "run_scale", "main"]

SIZES = (12, 50, 100, 300, 1000, 3000, 10000)
FRACTIONS = (0.5, 0.8)
PROBLEMS = RESULTS / "problems"


def size_limit(name: str) -> int | None:
    """The largest problem (activations) a solver accepts, or None when it has no limit."""
    if name == "brute_force":
        from solvers.brute_force import MAX_ACT

        return MAX_ACT
    if name == "checkmate_exact":
        from solvers.checkmate import MAX_ACT

        return MAX_ACT
    return None


def _is_ilp(name: str) -> bool:
    return name.startswith("ilp") or name == "checkmate_exact"


def solve_row(problem: Problem, name: str, budget: int, *, time_limit: float, threads: int,
              keep_peak: int, keep_time: float) -> dict:
    """Solve once (three times if under a second, median) and describe the plan by `simulate`."""
    opts = {"time_limit_s": time_limit, "threads": threads} if _is_ilp(name) else {}
    times: list[float] = []
    sched: Schedule | None = None
    for _ in range(3):
        t0 = time.perf_counter()
        sched = solve(name, problem, budget, opts)
        times.append(time.perf_counter() - t0)
        if times[-1] > 1.0:
            break
    assert sched is not None
    row = {"solver": name, "status": sched.status.value, "solve_s": statistics.median(times),
           "runs": len(times), **sched.counts()}
    if sched.feasible:
        sim = simulate(problem, sched)
        row.update(fits=sim.fits(budget), peak_fraction=sim.peak_bytes / keep_peak,
                   overhead_pct=100 * (sim.time_s / keep_time - 1))
    if sched.message:
        row["message"] = sched.message[:120]
    return row


def run_scale(sizes: Sequence[int] = SIZES, fractions: Sequence[float] = FRACTIONS, time_limit: float = 60.0,
              threads: int = 2, solvers: Sequence[str] | None = None, seed: int = 0,
              problems: Sequence[Path] = (), max_total_s: float = 3600.0, mid: bool = True,
              progress: bool = True) -> pd.DataFrame:
    """One row per (problem, budget, solver); see the module doc for the skipping rules."""
    names = list(solvers) if solvers else available_solvers()
    names = sorted(names, key=lambda n: (_is_ilp(n) or n == "brute_force", n))  # fast ones first
    rows = []
    start = time.perf_counter()
    cases = [("synthetic", random_dag(int(n), seed=seed), f"random_dag({int(n)})") for n in sorted(sizes)]
    cases += [("real", Problem.load(p), Path(p).stem) for p in problems]
    cases.sort(key=lambda c: c[1].n_act)  # real Problems among the synthetic ones, by size
    timed_out: dict[tuple[str, str], int] = {}  # (solver, budget) -> size at which it hit its limit
    for kind, problem, label in cases:
        keep = simulate(problem, Schedule.keep_all(problem))
        floor = int((problem.fixed_bytes + problem.op_transient_bytes).max())
        budgets = [(f"{f:.0%}", int(f * keep.peak_bytes)) for f in fractions]
        if kind == "real" and mid:
            budgets.append(("mid", (floor + keep.peak_bytes) // 2))
        for blabel, budget in budgets:
            fraction = budget / keep.peak_bytes
            base = {"kind": kind, "problem": label, "n_act": problem.n_act, "n_ops": problem.n_ops,
                    "budget": blabel, "budget_fraction": fraction, "below_fixed_memory": budget < floor}
            someone_fits = False
            for name in names:
                limit = size_limit(name)
                skip = None
                if limit is not None and problem.n_act > limit:
                    skip = f"above its size limit ({limit} activations)"
                elif (name, blabel) in timed_out and problem.n_act > timed_out[name, blabel]:
                    skip = f"hit the {time_limit:g} s limit at {timed_out[name, blabel]} activations"
                elif time.perf_counter() - start > max_total_s and (_is_ilp(name) or name == "brute_force"):
                    skip = f"total time cap ({max_total_s:g} s) spent"
                if skip:
                    rows.append({**base, "solver": name, "status": "skipped", "message": skip})
                    continue
                try:
                    row = solve_row(problem, name, budget, time_limit=time_limit, threads=threads,
                                    keep_peak=keep.peak_bytes, keep_time=keep.time_s)
                except Exception as exc:  # noqa: BLE001 - a failing solver is a row, not the end of the run
                    row = {"solver": name, "status": "error", "message": f"{type(exc).__name__}: {exc}"[:160]}
                someone_fits = someone_fits or bool(row.get("fits", False))
                hit = row.get("status") == "timeout" or row.get("solve_s", 0) >= 0.9 * time_limit
                if _is_ilp(name) and hit and someone_fits:
                    timed_out.setdefault((name, blabel), problem.n_act)
                rows.append({**base, **row})
                if progress:
                    print(f"  {label:28s} {blabel:>4s} {name:18s} {row.get('status', ''):10s} "
                          f"{row.get('solve_s', float('nan')):9.3f} s", flush=True)
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, path: Path = RESULTS / "solver_scale.png") -> Path:
    """Solve time against activations, log-log; synthetic as lines, real Problems as crosses."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mutwo.plots import save

    done = df[df.status.isin(["optimal", "feasible", "infeasible", "timeout"])].dropna(subset=["solve_s"])
    budgets = list(dict.fromkeys(df.budget))
    fig, axes = plt.subplots(1, len(budgets), figsize=(8 * len(budgets), 5.5), squeeze=False, sharey=True)
    order = sorted(done.solver.unique())
    for ax, blabel in zip(axes[0], budgets):
        d = done[done.budget == blabel]
        syn = d[d.kind == "synthetic"]
        if len(syn):
            sns.lineplot(data=syn, x="n_act", y="solve_s", hue="solver", hue_order=order, style="solver",
                         style_order=order, markers=True, dashes=False, ax=ax)
        real = d[d.kind == "real"]
        if len(real):
            sns.scatterplot(data=real, x="n_act", y="solve_s", hue="solver", hue_order=order, marker="X",
                            s=90, ax=ax, legend=False)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("activations")
        ax.set_ylabel("solve time (s)")
        what = ("midway between fixed memory and the keep-all peak" if blabel == "mid"
                else f"{blabel} of the keep-all peak")
        ax.set_title(f"budget {what}\n(lines: random_dag, X: real Problems)", fontsize=10)
        if ax.get_legend() is not None:
            ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Solve seconds, one row per problem x budget, one column per solver; ``-`` skipped, ``!`` error,
    ``(i)`` infeasible, ``(t)`` hit its time limit."""
    def cell(r) -> str:
        if r.status == "skipped":
            return "-"
        if r.status == "error":
            return "!"
        mark = {"infeasible": " (i)", "timeout": " (t)"}.get(r.status, "")
        return f"{r.solve_s:.3g}{mark}"

    d = df.assign(cell=[cell(r) for r in df.itertuples()])
    if "budget" not in d:  # CSVs written before budgets had labels
        d["budget"] = [f"{f:.0%}" for f in d.budget_fraction]
    wide = d.pivot_table(index=["budget", "kind", "problem", "n_act"], columns="solver", values="cell",
                         aggfunc="first").reset_index()
    return wide.sort_values(["budget", "kind", "n_act"], ascending=[True, False, True])


def main(argv: list[str] | None = None, out: Path = RESULTS) -> pd.DataFrame:
    ap = parser(__doc__, "fractions", "time-limit", "threads", "solvers", "no-plot",
                fractions={"default": list(FRACTIONS), "help": None},
                solvers={"help": "comma-separated (default: every registered solver)"})
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--problems", type=Path, nargs="*", default=None,
                    help=f"saved Problems (default: {PROBLEMS}/*.npz if any)")
    ap.add_argument("--max-total-s", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    problems = args.problems if args.problems is not None else sorted(PROBLEMS.glob("*.npz"))
    info = machine()
    print(f"machine: {info}")
    df = run_scale(args.sizes, args.fractions, args.time_limit, args.threads,
                   labels(args.solvers), args.seed, problems, args.max_total_s)
    df["load_avg_start"] = info["load_avg_1min"]
    df["load_avg_end"] = machine()["load_avg_1min"]
    write_csv(df, "solver_scale.csv", out)
    if not args.no_plot:
        plot(df, out / "solver_scale.png")
    print(markdown(table(df)))
    return df


if __name__ == "__main__":
    main()
