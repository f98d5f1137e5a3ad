"""report.md, which sums a comparison run up, and the tables it shows (written atomically, by
`mutwo.files`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mutwo.cell import FEASIBLE, REFERENCE
from mutwo.files import write_text

__all__ = ["markdown_table", "best_per_budget", "summary_frame", "write_report", "fmt_bytes", "fixed_budgets",
           "largest_batch_skip_reason", "largest_batch_frame", "KEEP_ALL_BAR", "NO_FIT", "solver_rows",
           "best_at_each_reference", "references_section", "TIME_TIE", "PLAN_RTOL", "target_section",
           "search_section", "PREDICTIONS_ONLY"]

KEEP_ALL_BAR = "keep-all (unmodified step)"
NO_FIT = "fits at no batch size tried"


# ---------------------------------------------------------------------- formatting
def fmt_bytes(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    n = float(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (float, np.floating)):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader compares, with sizes in MiB and overheads in percent."""
    out = pd.DataFrame({
        "batch": df["batch_size"], "budget": df["budget"], "budget MiB": df["budget_bytes"] / 2**20,
        "solver": df["solver"], "status": df["status"],
        "pred peak MiB": df["predicted_peak_bytes"] / 2**20, "pred time s": df["predicted_time_s"],
        "pred overhead %": df["predicted_overhead_pct"],
        "meas peak MiB": df["measured_peak_bytes"] / 2**20, "meas time s": df["measured_time_s"],
        "max rel diff": df["max_rel_diff"], "solve s": df["solve_time_s"],
        "R/S": df["n_recompute"].astype("Int64").astype(str) + "/" + df["n_swap"].astype("Int64").astype(str),
    })
    return out


def best_per_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Per batch size and budget: the feasible solver with the lowest predicted time, and the one with
    the lowest measured time where schedules were executed."""
    rows = []
    for (bs, budget), group in df.groupby(["batch_size", "budget"], sort=False):
        ok = group[group["status"].isin(FEASIBLE)]
        row = {"batch": bs, "budget": budget, "budget MiB": group["budget_bytes"].iloc[0] / 2**20,
               "feasible": f"{len(ok)}/{len(group)}"}
        if len(ok):
            p = ok.sort_values(["predicted_time_s", "predicted_peak_bytes"], kind="stable").iloc[0]  # tie: less memory
            row.update({"best (predicted)": p["solver"], "pred time s": p["predicted_time_s"],
                        "pred peak MiB": p["predicted_peak_bytes"] / 2**20})
            measured = ok.dropna(subset=["measured_time_s"])
            if len(measured):
                m = measured.sort_values(["measured_time_s", "measured_peak_bytes"], kind="stable").iloc[0]
                row.update({"best (measured)": m["solver"], "meas time s": m["measured_time_s"],
                            "meas peak MiB": m["measured_peak_bytes"] / 2**20})
        else:
            row["best (predicted)"] = "none feasible"
        rows.append(row)
    return pd.DataFrame(rows)


def fixed_budgets(df: pd.DataFrame) -> list:
    """Budget labels that are one device memory: the same bytes at every batch size, tried at two or
    more (sizes like 900MiB; a fraction of keep-all is a different memory at each batch size)."""
    g = df.groupby("budget", sort=False)
    ok = (g["budget_bytes"].nunique() == 1) & (g["batch_size"].nunique() >= 2)
    return list(ok[ok].index)


def largest_batch_skip_reason(df: pd.DataFrame) -> str | None:
    """Why there is no largest-batch table, or None when there is one."""
    sizes = sorted(df["batch_size"].unique()) if len(df) else []
    if len(sizes) < 2:
        return (f"only one batch size was tried ({', '.join(map(str, sizes)) or 'none'}); list several in "
                f"`batch_size`, with an absolute budget such as 900MiB")
    if not fixed_budgets(df):
        return ("no budget is an absolute size (each is a fraction of keep-all, a different memory at each "
                "batch size); add one such as 900MiB to `budgets`")
    return None


def _largest(budget: object, nbytes: int, solver: str, cells: pd.DataFrame) -> dict:
    """The largest batch among ``cells`` (one per batch size: batch_size, predicted/measured peak, fits)."""
    ok = cells[cells["fits"]].sort_values("batch_size")
    row = {"budget": budget, "budget_bytes": nbytes, "solver": solver, "largest_batch": None,
           "predicted_peak_bytes": np.nan, "measured_peak_bytes": np.nan, "basis": NO_FIT}
    if len(ok):
        best = ok.iloc[-1]
        measured = best["measured_peak_bytes"]
        row.update({"largest_batch": int(best["batch_size"]), "predicted_peak_bytes": best["predicted_peak_bytes"],
                    "measured_peak_bytes": measured, "basis": "predicted" if pd.isna(measured) else "measured"})
    return row


def largest_batch_frame(df: pd.DataFrame, keep_all: dict[int, dict] | None = None) -> pd.DataFrame:
    """Per absolute budget and solver, the largest of the batch sizes tried whose cell fits that memory.

    A solver's cell fits when its status is optimal/feasible, its simulated peak is within the budget,
    its execution did not fail and, where it was executed, its measured peak is within the budget too
    (basis: ``measured``; not executed: ``predicted``). The ``KEEP_ALL_BAR`` row is the unmodified step:
    the keep-all predicted peak of each batch size, and its measured peak from ``keep_all`` (the
    keep_all.json of each batch size) where known. No batch fits: largest_batch is missing, basis
    ``NO_FIT``. Empty when `largest_batch_skip_reason` gives a reason."""
    cols = ["budget", "budget_bytes", "solver", "largest_batch", "predicted_peak_bytes", "measured_peak_bytes",
            "basis"]
    if largest_batch_skip_reason(df) is not None:
        return pd.DataFrame(columns=cols)
    keep_all = keep_all or {}
    num = ["budget_bytes", "predicted_peak_bytes", "measured_peak_bytes", "keep_all_peak_bytes"]
    df = df.assign(**{c: pd.to_numeric(df[c], errors="coerce") for c in num})
    rows = []
    for budget in fixed_budgets(df):
        cells = df[df["budget"] == budget]
        nbytes = int(cells["budget_bytes"].iloc[0])
        ref = cells.groupby("batch_size", as_index=False)["keep_all_peak_bytes"].first()
        ref = ref.rename(columns={"keep_all_peak_bytes": "predicted_peak_bytes"})
        ref["measured_peak_bytes"] = [float((keep_all.get(int(b)) or {}).get("measured_peak_bytes") or np.nan)
                                      for b in ref["batch_size"]]
        ref["fits"] = (ref["predicted_peak_bytes"] <= nbytes) & ~(ref["measured_peak_bytes"] > nbytes)
        rows.append(_largest(budget, nbytes, KEEP_ALL_BAR, ref))
        failed = cells["execute_note"].fillna("").astype(str).str.startswith("execution failed")
        fits = (cells["status"].isin(FEASIBLE) & (cells["predicted_peak_bytes"] <= nbytes) & ~failed
                & ~(cells["measured_peak_bytes"] > nbytes))
        cells = cells.assign(fits=fits)
        for solver, group in cells.groupby("solver", sort=False):
            rows.append(_largest(budget, nbytes, solver, group))
    out = pd.DataFrame(rows, columns=cols)
    out["largest_batch"] = out["largest_batch"].astype("Int64")
    return out


def _largest_batch_section(df: pd.DataFrame, batches: dict[int, dict]) -> list[str]:
    lines = ["## Largest batch under a fixed memory", ""]
    reason = largest_batch_skip_reason(df)
    if reason is not None:
        return lines + [f"No largest-batch table or plot: {reason}.", ""]
    table = largest_batch_frame(df, batches)
    sizes = ", ".join(str(b) for b in sorted(df["batch_size"].unique()))
    shown = pd.DataFrame({
        "budget": table["budget"], "memory": table["budget_bytes"].map(fmt_bytes), "solver": table["solver"],
        "largest batch": table["largest_batch"].astype(object).where(table["largest_batch"].notna(), "none"),
        "pred peak": table["predicted_peak_bytes"].map(fmt_bytes),
        "meas peak": table["measured_peak_bytes"].map(fmt_bytes), "basis": table["basis"]})
    return lines + [
        f"The largest **of the batch sizes tried** ({sizes}) at which each solver found a plan that fits each "
        "absolute budget: status optimal/feasible and simulated peak within it, and where the plan was "
        "executed, measured peak within it too (basis `measured`; `predicted`: not executed). Batch sizes "
        f"not tried are not claimed. `{KEEP_ALL_BAR}`: the largest batch whose keep-all peak fits.", "",
        markdown_table(shown), ""]


# ---------------------------------------------------------------------- PyTorch's own savers
TIME_TIE = 0.05  # time ratios within 5% of each other are a tie: the spread of steps on a shared CPU
PLAN_RTOL = 1e-3  # a plan counts against PyTorch only if it trains like the unmodified step


def solver_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The solver x budget cells (every row but PyTorch's reference rows)."""
    return df[df["kind"].fillna("solver") != REFERENCE] if "kind" in df else df


def _tie(a: float, b: float) -> bool:
    return abs(a / b - 1.0) <= TIME_TIE if a > 0 and b > 0 else a == b


def best_at_each_reference(df: pd.DataFrame) -> pd.DataFrame:
    """Per measured PyTorch reference row: the best mutwo plan at no more memory.

    Candidates: executed solver rows of the same batch size, feasible, training like the unmodified step
    (``max_rel_diff`` <= `PLAN_RTOL`), not emulated swaps (their CPU saving is not real), whose measured
    peak is at most the reference's. Best: the lowest measured time; other plans within `TIME_TIE` of it
    are ``ties`` (rows sharing one execution, as a plan found at several budgets, are one plan). ``verdict`` compares the overheads, each over its own unmodified step (the plan: the
    captured keep-all step; the reference: the eager steps paired with it): ``mutwo faster``, ``tie``
    (within `TIME_TIE`), ``PyTorch faster``, or ``no mutwo plan at this memory``."""
    cols = ["batch", "pytorch", "pytorch peak", "pytorch overhead %", "best mutwo plan", "plan peak",
            "plan overhead %", "ties", "verdict"]
    refs = df[(df["kind"] == REFERENCE) & (df["status"] == "measured")] if "kind" in df else df.iloc[:0]
    plans = solver_rows(df)
    plans = plans[plans["status"].isin(FEASIBLE) & plans["executed"].fillna(False).astype(bool)
                  & plans["measured_time_s"].notna() & plans["measured_peak_bytes"].notna()
                  & (plans["max_rel_diff"].fillna(np.inf) <= PLAN_RTOL)
                  & ~plans["emulated_swap"].fillna(False).astype(bool)]
    rows = []
    for r in refs.itertuples():
        row = {"batch": r.batch_size, "pytorch": r.solver, "pytorch peak": r.measured_peak_bytes,
               "pytorch overhead %": r.measured_overhead_pct}
        cand = plans[(plans["batch_size"] == r.batch_size) & (plans["measured_peak_bytes"] <= r.measured_peak_bytes)]
        if cand.empty:
            rows.append({**row, "verdict": "no mutwo plan at this memory"})
            continue
        cand = cand.sort_values(["measured_time_s", "measured_peak_bytes"], kind="stable")
        best = cand.iloc[0]
        # rows of one plan share one execution (the same peak and time): the best's are not ties
        others = cand.iloc[1:].drop_duplicates(["measured_peak_bytes", "measured_time_s"])
        others = others[(others["measured_peak_bytes"] != best["measured_peak_bytes"])
                        | (others["measured_time_s"] != best["measured_time_s"])]
        ties = [f"{c.solver} @ {c.budget}" for c in others.itertuples()
                if _tie(c.measured_time_s, best["measured_time_s"])]
        mine, theirs = 1 + best["measured_overhead_pct"] / 100, 1 + r.measured_overhead_pct / 100
        verdict = ("n/a" if pd.isna(mine) or pd.isna(theirs) else "tie" if _tie(mine, theirs)
                   else "mutwo faster" if mine < theirs else "PyTorch faster")
        rows.append({**row, "best mutwo plan": f"{best['solver']} @ {best['budget']}",
                     "plan peak": best["measured_peak_bytes"], "plan overhead %": best["measured_overhead_pct"],
                     "ties": ", ".join(ties), "verdict": verdict})
    return pd.DataFrame(rows, columns=cols)


def references_section(df: pd.DataFrame, batches: dict[int, dict]) -> list[str]:
    """report.md's section on PyTorch's own savers: each reference point against the best mutwo plan at
    no more memory, the eager step beside the captured keep-all step, failures and notes."""
    lines = ["## PyTorch's own savers", ""]
    refs = df[df["kind"] == REFERENCE] if "kind" in df else df.iloc[:0]
    notes = [f"- batch {bs}: {note}" for bs, info in sorted(batches.items())
             for note in (info.get("reference_notes") or {}).values()]
    if refs.empty and not notes:
        return lines + ["No reference rows (`references: false`, `--no-references` or `--no-execute`).", ""]
    table = best_at_each_reference(df)
    shown = table.assign(**{c: table[c].map(fmt_bytes) for c in ("pytorch peak", "plan peak")})
    lines += ["PyTorch's eager step, per-block `torch.utils.checkpoint` and `torch.compile` at "
              "`activation_memory_budget` knob values, measured in this run with the allocator meter "
              "(docs/compare.md). At each PyTorch point, the best mutwo plan at no more memory: the executed "
              "plan of that batch size with the lowest measured time among those whose measured peak is at "
              f"most the point's (emulated swaps and plans that train differently left out). Overheads are "
              f"each over its own unmodified step (PyTorch: the eager steps timed beside it; mutwo: the "
              f"captured keep-all step); within {TIME_TIE:.0%} of each other they are a tie.", "",
              markdown_table(shown) if len(shown) else "(no measured reference row)", ""]
    for bs, info in sorted(batches.items()):
        eager = refs[(refs["batch_size"] == bs) & (refs["solver"] == "pytorch:eager")
                     & (refs["status"] == "measured")]
        captured = info.get("profile_measured_peak_bytes")
        if len(eager) and captured and info.get("peak_method", "").startswith("cpu-allocator"):
            peak = eager["measured_peak_bytes"].iloc[0]
            lines.append(f"- batch {bs}: the eager step peaks at {fmt_bytes(peak)}, the captured keep-all step "
                         f"at {fmt_bytes(captured)} (allocator meter, profile; ratio {peak / captured:.4f})")
    failed = refs[refs["status"] != "measured"]
    lines += [f"- batch {r.batch_size}, {r.solver}: {r.status}: {r.message}" for r in failed.itertuples()]
    return lines + notes + [""]


# ---------------------------------------------------------------------- target device and search
PREDICTIONS_ONLY = "**Predictions only, not measured.**"


def _rate(x: float | None, unit: float) -> str:
    return "–" if x is None else f"{x / unit:,.4g}"


def _target_table(spec: dict) -> list[str]:
    """The target's figures, one table row (docs/devices.md gives their sources and meaning)."""
    flops = spec.get("flops_per_s", {})
    rates = " / ".join(_rate(flops.get(k, flops.get("fp32")), 1e12) for k in ("fp32", "tf32", "bf16"))
    link = f"{_rate(spec.get('host_link_bytes_per_s'), 1e9)} GB/s" + (f" ({spec['host_link']})"
                                                                       if spec.get("host_link") else "")
    return ["| target | memory | fp32 / tf32 / bf16 TFLOP/s | memory bandwidth | host link (effective, per "
            "direction) | copy engines | per-op floor | source |", "|---|---|---|---|---|---|---|---|",
            f"| `{spec.get('name')}` | {fmt_bytes(spec.get('memory_bytes'))} | {rates} | "
            f"{_rate(spec.get('hbm_bytes_per_s'), 1e9)} GB/s | {link} | {spec.get('copy_engines', '–')} | "
            f"{1e6 * spec.get('launch_latency_s', 0):.3g} µs | {spec.get('source', '')} |"]


def target_section(run: dict, batches: dict[int, dict]) -> list[str]:
    """report.md's opening words on where the times come from: measured here, or estimated for a target
    device (then plainly: predictions only, the target's figures, the ops the FLOP counter did not
    know, once per run), and which batch sizes were not executed because they cannot run here."""
    sources = sorted({info.get("cost_source") or "" for info in batches.values()} - {""})
    estimated = [src for src in sources if src.startswith("estimated:")]
    lines = ["## Where the times come from", ""]
    if not estimated:
        shown = ", ".join(f"`{src}`" for src in sources) or "this machine"
        lines += [f"Op times were measured on this machine ({shown}).", ""]
    else:
        spec = next((info["target"] for info in batches.values() if info.get("target")), {})
        name = spec.get("name", estimated[0].removeprefix("estimated:"))
        lines += [f"{PREDICTIONS_ONLY} Every predicted time in this report is estimated for the target `{name}` "
                  f"by a roofline model of each op (FLOPs from `torch.utils.flop_counter`, bytes moved, the "
                  f"target's rates below, an efficiency per op class; docs/devices.md); nothing ran on it. "
                  f"Peaks are the traced tensors' bytes, the same on any device; times carry the model's "
                  f"errors and those of the device figures. `cost_source` in results.csv: "
                  f"{', '.join(f'`{src}`' for src in sources)}.", "", *_target_table(spec), ""]
        unknown: dict[str, str] = {}
        for info in batches.values():
            for op, why in (info.get("unknown_ops") or {}).items():
                unknown.setdefault(op, why)
        lines += (["Ops the FLOP counter did not know (each counted as memory-bound):", "",
                   *[f"- `{op}`: {why}" for op, why in sorted(unknown.items())], ""] if unknown else
                  ["Every op had a FLOP formula or a known memory-bound class (no unknown ops).", ""])
        if run.get("device") and any(info.get("measured") for info in batches.values()):
            lines += [f"Plans executed here on `{run['device']}` check memory and correctness; their measured "
                      f"times are this machine's, so they are not compared with the estimated ones "
                      f"(`measured_overhead_pct` is empty).", ""]
    blocked = {bs: info["not_executable"] for bs, info in sorted(batches.items()) if info.get("not_executable")}
    if blocked:
        lines += ["**Not executed (chosen automatically):** this machine cannot run these batch sizes, so they "
                  "were simulated only, as with `--no-execute`:", "",
                  *[f"- batch {bs}: {why}" for bs, why in blocked.items()], ""]
    return lines


def search_section(search: pd.DataFrame | None, run: dict) -> list[str]:
    """report.md's table of the largest-batch search (`mutwo.search_run`): per solver and keep-all, the
    largest size whose plan fits the memory, its plan's figures and the sizes probed."""
    spec = ((run.get("scenario") or {}).get("search") or {}).get("largest_batch")
    if search is None or spec is None or not len(search):
        return []
    over, memory = spec["over"], search["memory"].iloc[0]
    what = "batch size" if over == "batch_size" else "sequence length"
    lines = [f"## Largest {what} that fits {memory} (search)", "",
             f"For each solver (and the unmodified step), the largest {what} in [{spec['min']}, {spec['max']}]"
             + (f" (multiples of {spec['step']})" if spec.get("step", 1) > 1 else "")
             + f" at which its plan fits {fmt_bytes(search['memory_bytes'].iloc[0])}: status optimal/feasible, "
             "simulated peak within the memory and, where executed, measured peak within it too (basis). Found "
             "by bisection, which assumes that a plan fitting at a size means one fits at every smaller size; "
             "each answer's upper neighbour was probed and did not fit, its lower neighbour was probed too, and "
             "a probe that breaks the assumption is named under the table. `≥` marks an answer at the top of the "
             "range (it may fit more).", ""]
    unit = "samples/s" if over == "batch_size" else "tokens/s"
    batch = (run.get("scenario") or {}).get("batch_size", [1])[0]
    rows = []
    for r in search.itertuples():
        largest = "none" if pd.isna(r.largest) else f"{'≥ ' if r.capped else ''}{int(r.largest)}"
        rate = np.nan
        if not pd.isna(r.largest) and r.predicted_time_s and r.predicted_time_s > 0:
            rate = int(r.largest) * (1 if over == "batch_size" else batch) / r.predicted_time_s
        rows.append({"solver": r.solver, f"largest {over}": largest, "pred peak": fmt_bytes(r.predicted_peak_bytes),
                     "meas peak": fmt_bytes(r.measured_peak_bytes), "pred step s": r.predicted_time_s,
                     f"pred {unit}": rate, "basis": r.basis or "–", "probes": r.probes})
    lines += [markdown_table(pd.DataFrame(rows)), ""]
    lines += [f"- {r.solver}: {r.warning}" for r in search.itertuples() if isinstance(r.warning, str) and r.warning]
    return lines + [""]


def write_report(path: str | Path, df: pd.DataFrame, run: dict, plots: Sequence[Path],
                 batches: dict[int, dict], search: pd.DataFrame | None = None) -> Path:
    """report.md: what ran, the best solver at each budget, the full table and the plots."""
    path = Path(path)
    sc = run["scenario"]
    everything, df = df, solver_rows(df)  # PyTorch's reference rows: their own section, and All results
    executed = bool(df["executed"].any()) if len(df) else False
    lines = [f"# {sc['name']}: activation-memory plans compared", "",
             f"- model `{sc['model']}` {sc.get('model_options') or ''}, optimizer `{sc['optimizer']['name']}` "
             f"{sc['optimizer'].get('options') or ''}, device `{run['device']}`, seed {sc['seed']}",
             f"- command: `{run['command']}`",
             f"- started {run['started']}, run id `{run['run_id']}`",
             f"- torch {run['versions'].get('torch')}, mutwo {run['versions'].get('mutwo')}",
             f"- execution: {run.get('execution_note', '')}", ""]
    lines += target_section(run, batches)
    lines += ["## Keep-all reference", "",
              "| batch | keep-all peak (predicted) | iteration (predicted) | measured peak | measured iteration "
              "| activations | floor | fixed peak |", "|---|---|---|---|---|---|---|---|"]
    for bs, info in sorted(batches.items()):
        mt = info.get("measured_time_s")
        lines.append(f"| {bs} | {fmt_bytes(info['keep_all_peak_bytes'])} | {info['keep_all_time_s']:.4g} s | "
                     f"{fmt_bytes(info.get('measured_peak_bytes'))} | "
                     f"{'–' if mt is None else f'{mt:.4g} s'} | {fmt_bytes(info['act_bytes_total'])} | "
                     f"{fmt_bytes(info.get('floor_bytes'))} | {fmt_bytes(info['fixed_peak_bytes'])} |")
    lines += ["", "The floor (`Problem.peak_floor()`, `floor_bytes` in keep_all.json) is the lowest peak any "
              "activation plan can reach: at its op, the fixed memory, the op's transient memory and every "
              "activation in use there; a budget below it is infeasible for every solver. The fixed peak is "
              "the largest fixed memory alone (every tensor that is not a decidable activation: parameters, "
              "gradients, optimizer state, inputs, temporaries), one part of the floor.", ""]
    lines += [f"- batch {bs}: executing keep-all failed: {info['execute_error']}"
              for bs, info in sorted(batches.items()) if info.get("execute_error")]
    lines += [f"- batch {bs}: noisy profile: {info['profile_warning']}"
              for bs, info in sorted(batches.items()) if info.get("profile_warning")]
    lines += ["## Best solver at each budget", "",
              "Lowest predicted iteration time among feasible plans"
              + (", and lowest measured time among executed ones." if executed else
                 " (schedules were not executed: no measured column)."), "",
              markdown_table(best_per_budget(df)) if len(df) else "(no rows)", ""]
    lines += _largest_batch_section(df, batches) if len(df) else []
    lines += search_section(search, run)
    lines += references_section(everything, batches)
    lines += ["## All results", "", markdown_table(summary_frame(everything)) if len(everything) else "(no rows)",
              ""]
    errors = df[df["status"].isin(["error", "invalid", "timeout", "oom"])]
    if len(errors):
        lines += ["## Errors", ""]
        lines += [f"- batch {r.batch_size}, {r.solver} @ {r.budget}: {r.status}: {r.message}"
                  for r in errors.itertuples()]
        lines.append("")
    lines += ["## Plots", ""]
    for p in plots:
        rel = os.path.relpath(p, path.parent)
        lines += [f"![{p.stem}]({rel})", ""]
    return write_text(path, "\n".join(lines))
