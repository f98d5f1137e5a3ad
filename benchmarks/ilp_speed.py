"""ILP backends against mutwo_greedy: solve time, bound and gap, simulated peak and time.

    python -m benchmarks.ilp_speed                       # random_dag(600): ~600 activations, ~3,900 ops
    python -m benchmarks.ilp_speed --time-limit 20 --fractions 0.5 --backends ilp_cpsat
    python -m benchmarks.ilp_speed --problems results/benchmarks/problems/resnet152-b8-sgd.npz \
        results/benchmarks/problems/bert-base-b8-sgd.npz --fractions 0.7 0.5 0.3 --time-limit 60 --threads 2
    python -m benchmarks.device_problems && python -m benchmarks.ilp_speed --range --warm-start heuristics \
        --problems results/benchmarks/problems/*-h100-sxm.npz --backends ilp_cpsat ilp_pulp_highs

Budgets are fractions of each Problem's keep-all peak. One row per (problem, budget, backend) plus the
mutwo_greedy reference row per budget. Every answer is simulated; "vs greedy" is the simulated time
relative to mutwo_greedy's at the same budget (negative = faster than greedy). Two gaps: ``gap`` as the
solver reports it (``options["gap"]``) and ``gap_recomputed`` = (objective - bound) / objective from the
Schedule's own objective and bound. ``proven`` says what an ILP answer proves: ``optimal`` (status
optimal: the engine's proof and our gap both within 1%), ``within 1%`` (a bound within 1% without the
engine's optimal status), ``infeasible (every plan)`` (presolve: the budget is below what every plan
holds), ``infeasible (model)`` (the engine: no plan within the model's candidate points), or ``no``;
``n/a`` for the greedy, which proves nothing.

``--range``: the fractions are of the way from the every-plan floor (`Problem.peak_floor`) to the keep-all
peak instead (the device-costed Problems of ``benchmarks.device_problems``). Per budget, ``best_bound_s`` is
the largest bound any solver proved and ``gap_to_bound_pct`` every row's (the greedy's included) gap to
it: how far from optimal each plan is at most. ``lower_bound_s`` is the ILPs' iteration-time bound
(`solvers.ilp_bound`). ``--warm-start heuristics`` starts the ILPs from the fastest registered heuristic.

Rows carry the machine (`benchmarks._common.machine`) and the 1-minute load average just before and
just after each solve, since on a shared 2-core CPU a solve's wall time means little without them.
Writes ``ilp_speed.csv`` / ``ilp_speed.md`` (synthetic) or ``ilp_real.csv`` / ``ilp_real.md``
(``--problems``) under ``results/benchmarks/`` after every budget (atomically), so a long run that is
stopped keeps what it finished.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import RESULTS, machine, markdown, write_csv
from mutwo.cell import gap_to_bound_pct
from mutwo.problem import Problem
from mutwo.registry import get_solver
from mutwo.schedule import Schedule, Status
from mutwo.simulate import simulate
from mutwo.synthetic import random_dag

BACKENDS = ("ilp_cpsat", "ilp_ortools_mip", "ilp_pulp_cbc", "ilp_pulp_highs")
WITHIN = 0.01  # the "within 1% of optimal" target (issue #9)
MODEL_STATS = ("n_vars", "n_rows", "n_nonzeros", "n_checks", "n_free")


def _load1() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def describe(p: Problem, label: str | None = None) -> dict:
    """Sizes of a Problem and its memory landmarks (bytes): keep-all peak, fixed memory, fixed + transient."""
    keep = simulate(p, Schedule.keep_all(p))
    return {"problem": label or p.name, "n_ops": p.n_ops, "n_act": p.n_act, "n_recomputable": int(p.recomputable.sum()),
            "n_swappable": int(p.swappable.sum()), "compute_s": float(p.op_time_s.sum()),
            "keep_peak_bytes": int(keep.peak_bytes), "keep_time_s": keep.time_s,
            "fixed_peak_bytes": int(p.fixed_bytes.max()), "floor_bytes": p.peak_floor()[0],
            "fixed_transient_peak_bytes": int((p.fixed_bytes + p.op_transient_bytes).max())}


def solve_row(p: Problem, name: str, budget: int, keep_peak: int, greedy_time: float | None, **options) -> dict:
    """Run one solver at one budget; simulate its answer; one row (everything but the problem columns)."""
    load_before = _load1()
    t0 = time.perf_counter()
    try:
        s = get_solver(name)(p, budget, **options)
    except Exception as exc:  # noqa: BLE001 - a failing solver is a row, not the end of the table
        return {"solver": name, "status": "error", "wall_s": time.perf_counter() - t0, "load1_before": load_before,
                "load1_after": _load1(), "proven": "no", "message": f"{type(exc).__name__}: {exc}"[:200]}
    wall = time.perf_counter() - t0
    load_after = _load1()
    sim = simulate(p, s) if s.feasible else None
    if sim is not None and not sim.fits(budget):
        raise AssertionError(f"{name} reported a plan over budget ({sim.peak_bytes} > {budget} B)")
    obj, bound = s.objective, s.bound
    gap_re = (obj - bound) / obj if (obj is not None and bound is not None and obj > 0) else None
    if not name.startswith("ilp_"):
        proven = "n/a"  # a heuristic proves nothing (its "infeasible" may only mean it found no plan)
    elif s.status == Status.OPTIMAL:
        proven = "optimal"
    elif s.status == Status.INFEASIBLE:  # presolve's floor holds for every plan; the engine's for the model
        proven = "infeasible (every plan)" if "every plan" in s.message else "infeasible (model)"
    elif s.feasible and gap_re is not None and gap_re <= WITHIN + 1e-9:
        proven = "within 1%"
    else:
        proven = "no"
    opts = s.options
    row = {"solver": name, "status": s.status.value, "wall_s": wall, "solve_time_s": s.solve_time_s,
           "objective_s": obj, "bound_s": bound, "gap": opts.get("gap"), "gap_recomputed": gap_re,
           "sim_time_s": sim.time_s if sim else None,
           "peak_fraction": sim.peak_bytes / keep_peak if sim else None,
           "vs_greedy": (sim.time_s / greedy_time - 1) if (sim and greedy_time) else None,
           "proven": proven, "within_1pct": proven in ("optimal", "within 1%"),
           "lower_bound_s": opts.get("lower_bound", {}).get("bound_s"),
           "lower_bound_solve_s": opts.get("lower_bound", {}).get("solve_s"),
           "load1_before": load_before, "load1_after": load_after, **s.counts(),
           "start": opts.get("warm_start"), "phase1": opts.get("phase1"), "engine": opts.get("engine"),
           "engine_status": opts.get("engine_status"), "engine_s": opts.get("engine_wall_s"),
           **{k: opts.get("model", {}).get(k) for k in MODEL_STATS}}
    row["message"] = s.message[:240]
    return row


def budget_of(info: dict, frac: float, of_range: bool) -> int:
    """``frac`` of the keep-all peak, or (``of_range``) of the way from the every-plan floor to it."""
    keep_peak = info["keep_peak_bytes"]
    if not of_range:
        return int(frac * keep_peak)
    floor = info["floor_bytes"]
    return int(floor + frac * (keep_peak - floor))


def with_best_bound(rows: list[dict]) -> list[dict]:
    """``best_bound_s`` (the largest proven bound among the rows of one budget) and every row's
    ``gap_to_bound_pct`` to it: how far from optimal each plan, the greedy's included, is at most."""
    bounds = [r["bound_s"] for r in rows if r.get("bound_s") is not None and r["bound_s"] == r["bound_s"]]
    best = max(bounds, default=None)
    for r in rows:
        t = r.get("sim_time_s")
        r["best_bound_s"] = best
        r["gap_to_bound_pct"] = gap_to_bound_pct(t, best) if t is not None else None
    return rows


def budget_rows(p: Problem, info: dict, frac: float, backends: list[str], time_limit: float, threads: int,
                progress: bool = True, of_range: bool = False, options: dict | None = None) -> list[dict]:
    """The greedy reference row and one row per backend at ``frac`` of the keep-all peak (or of the
    floor..keep-all range)."""
    keep_peak = info["keep_peak_bytes"]
    budget = budget_of(info, frac, of_range)
    head = {"problem": info["problem"], "fraction": frac, "of_range": of_range, "budget_bytes": budget,
            "time_limit_s": time_limit, "threads": threads}
    greedy = solve_row(p, "mutwo_greedy", budget, keep_peak, None)
    g_time = greedy.get("sim_time_s")
    greedy["vs_greedy"] = 0.0 if g_time else None
    rows = [{**head, **greedy}]
    if progress:
        print(_line(rows[-1]), flush=True)
    for name in backends:
        rows.append({**head, **solve_row(p, name, budget, keep_peak, g_time, time_limit_s=time_limit,
                                         threads=threads, **(options or {}))})
        if progress:
            print(_line(rows[-1]), flush=True)
    return with_best_bound(rows)


def run_problems(problems: dict[str, Problem], fractions: list[float], backends: list[str], time_limit: float,
                 threads: int, on_budget=None, progress: bool = True, of_range: bool = False,
                 options: dict | None = None) -> pd.DataFrame:
    """Every (problem, budget, backend) plus the greedy rows; problem sizes and the machine on each row.
    ``problems`` maps a label (the file name for saved Problems) to the Problem. ``on_budget(df)`` is
    called with the rows so far after every budget (to save partial results)."""
    rows: list[dict] = []
    for label, p in problems.items():
        info = describe(p, label)
        host = machine()
        host.pop("load_avg_1min")  # per solve instead (load1_before / load1_after)
        if progress:
            print(f"{label}: {p.n_act} activations, {p.n_ops} ops, compute {info['compute_s']:.4f} s, "
                  f"keep-all peak {info['keep_peak_bytes'] / 2**20:.1f} MiB, fixed memory "
                  f"{info['fixed_peak_bytes'] / 2**20:.1f} MiB, fixed + transient "
                  f"{info['fixed_transient_peak_bytes'] / 2**20:.1f} MiB; {host}", flush=True)
        for frac in fractions:
            rows += [{**r, **{k: v for k, v in info.items() if k != "problem"}, **host}
                     for r in budget_rows(p, info, frac, backends, time_limit, threads, progress, of_range, options)]
            if on_budget is not None:
                on_budget(pd.DataFrame(rows))
    return pd.DataFrame(rows)


def run(n_act: int, seed: int, fractions: list[float], backends: list[str], time_limit: float,
        threads: int, on_budget=None) -> pd.DataFrame:
    """The synthetic benchmark: ``random_dag(n_act, seed)``."""
    p = random_dag(n_act, seed)
    return run_problems({p.name: p}, fractions, backends, time_limit, threads, on_budget)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The markdown view: per problem, budget and solver."""
    def pct(x, fmt=".2f"):
        return "–" if x is None or x != x else format(100 * x, fmt)

    def num(x, fmt):
        return "–" if x is None or x != x else format(x, fmt)

    out = pd.DataFrame({
        "problem": df.problem, "budget": [f"{f:.0%}" for f in df.fraction], "solver": df.solver,
        "status": df.status, "proven": df.proven, "solve s": [num(x, ".1f") for x in df.wall_s],
        "gap %": [pct(x) for x in df.get("gap", pd.Series(index=df.index, dtype=float))],
        "gap % (obj, bound)": [pct(x) for x in df.get("gap_recomputed", pd.Series(index=df.index, dtype=float))],
        "sim time s": [num(x, ".5g") for x in df.get("sim_time_s", pd.Series(index=df.index, dtype=float))],
        "bound s": [num(x, ".5g") for x in df.get("bound_s", pd.Series(index=df.index, dtype=float))],
        "gap to best bound %": [num(x, ".2f") for x in df.get("gap_to_bound_pct",
                                                               pd.Series(index=df.index, dtype=float))],
        "vs greedy %": [pct(x, "+.2f") for x in df.get("vs_greedy", pd.Series(index=df.index, dtype=float))],
        "peak / keep-all": [num(x, ".3f") for x in df.get("peak_fraction", pd.Series(index=df.index, dtype=float))],
        "rec / swap": [(f"{int(r)} / {int(s)}" if st in ("optimal", "feasible") else "–") for st, r, s in
                       zip(df.status, df.get("n_recompute", pd.Series(index=df.index, dtype=float)),
                           df.get("n_swap", pd.Series(index=df.index, dtype=float)), strict=True)],
        "load 1-min before / after": [f"{a:.2f} / {b:.2f}" for a, b in zip(df.load1_before, df.load1_after,
                                                                         strict=True)]})
    return out


def _line(r: dict) -> str:
    def f(x, fmt):
        return "-" if x is None or x != x else format(x, fmt)

    return (f"{r['problem']} {r['fraction']:.0%} {r['solver']:<16} {r['status']:<10} {r.get('proven', ''):<10} "
            f"wall {r['wall_s']:6.1f} s  gap {f(r.get('gap'), '.2%'):>7}  sim {f(r.get('sim_time_s'), '.5f')} s  "
            f"vs greedy {f(r.get('vs_greedy'), '+.2%'):>7}  peak {f(r.get('peak_fraction'), '.3f')}  "
            f"keep/rec/swap {r.get('n_keep')}/{r.get('n_recompute')}/{r.get('n_swap')}  "
            f"load {r['load1_before']}->{r['load1_after']}" + (f"  [{r['message']}]" if r.get("message") else ""))


def main(argv: list[str] | None = None, out: Path = RESULTS) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", nargs="+", type=Path, help="saved Problems (.npz) instead of the synthetic one")
    ap.add_argument("--n-act", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--range", action="store_true", dest="of_range",
                    help="fractions of the floor..keep-all range (Problem.peak_floor) instead of the keep-all peak")
    ap.add_argument("--stem", help="output file stem (default ilp_real / ilp_speed)")
    ap.add_argument("--warm-start", help="the ILPs' warm_start (a solver name or 'heuristics'; default theirs)")
    ap.add_argument("--bound", choices=["lp", "mip", "none"], help="the ILPs' lower bound (default theirs)")
    ap.add_argument("--out", type=Path, help="also write the CSV here (a .csv file, or a folder: <stem>.csv in it)")
    args = ap.parse_args(argv)
    stem = args.stem or ("ilp_real" if args.problems else "ilp_speed")

    def save(df: pd.DataFrame) -> None:
        write_csv(df, f"{stem}.csv", out)
        md = out / f"{stem}.md"
        tmp = md.with_name(md.name + ".tmp")
        tmp.write_text(markdown(table(df)) + "\n")
        tmp.replace(md)

    if args.problems:
        df = run_problems({f.stem: Problem.load(f) for f in args.problems}, args.fractions, args.backends,
                          args.time_limit, args.threads, on_budget=save, of_range=args.of_range,
                          options={k: v for k, v in (("warm_start", args.warm_start), ("bound", args.bound)) if v})
    else:
        df = run(args.n_act, args.seed, args.fractions, args.backends, args.time_limit, args.threads, on_budget=save)
    if args.out:
        extra = args.out / f"{stem}.csv" if args.out.is_dir() or not args.out.suffix else args.out
        write_csv(df, extra.name, extra.parent)
    print(markdown(table(df)))
    return df


if __name__ == "__main__":
    main()
