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
           "best_at_each_reference", "references_section", "TIME_TIE", "PLAN_RTOL", "verdict_frame",
           "verdict_section", "emulated_swaps", "KEEP_ALL", "EMULATED", "TIE_MIN_POINTS", "VERDICT_COLUMNS",
           "COLUMN_GLOSSARY", "glossary_section", "target_section",
           "search_section", "PREDICTIONS_ONLY"]

KEEP_ALL_BAR = "keep_all (unmodified step)"  # the one keep-all label (`KEEP_ALL`), as the largest-batch row
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
        "meas peak MiB": df["measured_peak_bytes"] / 2**20,
        "emulated device peak MiB": _column(df, "emulated_device_peak_bytes") / 2**20,
        "meas time s": df["measured_time_s"], "meas overhead %": df["measured_overhead_pct"],
        "max rel diff": df["max_rel_diff"], "solve s": df["solve_time_s"],
        "R/S": (df["n_recompute"].astype("Int64").astype(str) + "/" + df["n_swap"].astype("Int64").astype(str)
                + np.where(emulated_swaps(df), " " + EMULATED, "")),
    })
    return out


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, NaN where the table predates it."""
    return pd.to_numeric(df[name], errors="coerce") if name in df else pd.Series(np.nan, index=df.index)


def _measurement_section(df: pd.DataFrame, batches: dict[int, dict]) -> list[str]:
    """How peaks and times were measured, the eager check, and every note a measured time carries."""
    executed = df[df["executed"].fillna(False).astype(bool)] if len(df) else df
    lines = ["## How it was measured", ""]
    methods = sorted({str(m) for m in _series(executed, "peak_method").dropna()})
    threads = sorted({int(t) for t in _column(executed, "torch_threads").dropna()})
    lines += [f"- peak: the allocator meter ({', '.join(f'`{m}`' for m in methods) or 'none'}): in-kernel scratch "
              "and, on CPU, the host copies of swapped tensors included. `emulated device peak`: rows whose "
              "swaps were emulated on CPU, the allocator total minus the host copies live at each moment - "
              "what a device with its own memory would hold; **emulated, not measured**.",
              f"- time: each plan iteration between two runs of the unmodified step, torch threads "
              f"{', '.join(map(str, threads)) or '–'}; `meas overhead %` is the median of the per-iteration "
              "ratios to those brackets (on CPU with one thread, of the timing thread's CPU time)."]
    noted = executed[_series(executed, "timing_note").fillna("").astype(str) != ""]
    for note, group in noted.groupby("timing_note", sort=False):
        cells = ", ".join(f"{r.solver} @ {r.budget} (b{r.batch_size})" for r in group.itertuples())
        lines.append(f"- {note}: {cells}")
    return lines + [""]


def _eager_lines(batches: dict[int, dict]) -> list[str]:
    """The check of the captured, unmodified step against eager PyTorch, per batch size."""
    lines = []
    for bs, info in sorted(batches.items()):
        eager = info.get("eager_check") or {}
        if eager.get("error"):
            lines.append(f"- batch {bs}: the check against eager PyTorch failed: {eager['error']}")
        elif eager:
            verdict = "within" if eager.get("within_tolerance") else "**outside**"
            lines.append(f"- batch {bs}: the captured step against eager PyTorch ({eager.get('compared')}): max "
                         f"rel diff {eager.get('max_rel_diff', float('nan')):.3g}, {verdict} tolerance "
                         f"({eager.get('tolerance')})")
    return lines + [""] if lines else []


def _series(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series(None, index=df.index, dtype=object)


def best_per_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Per batch size and budget: the feasible solver with the lowest predicted time, and the one with
    the lowest measured overhead where schedules were executed (the interleaved ratio to the unmodified
    step: raw times of different plans were taken at different moments of a shared machine). The
    console's summary; report.md weighs noise and emulated swaps too (`verdict_frame`)."""
    rows = []
    for (bs, budget), group in df.groupby(["batch_size", "budget"], sort=False):
        ok = group[group["status"].isin(FEASIBLE)]
        row = {"batch": bs, "budget": budget, "budget MiB": group["budget_bytes"].iloc[0] / 2**20,
               "feasible": f"{len(ok)}/{len(group)}"}
        if len(ok):
            p = ok.sort_values(["predicted_time_s", "predicted_peak_bytes"], kind="stable").iloc[0]  # tie: less memory
            emulated = emulated_swaps(ok)
            row.update({"best (predicted)": p["solver"] + (f" {EMULATED}" if emulated[p.name] else ""),
                        "pred time s": p["predicted_time_s"],
                        "pred peak MiB": p["predicted_peak_bytes"] / 2**20})
            measured = ok.dropna(subset=["measured_overhead_pct"])
            if len(measured):
                m = measured.sort_values(["measured_overhead_pct", "measured_peak_bytes"], kind="stable").iloc[0]
                row.update({"best (measured)": m["solver"] + (f" {EMULATED}" if emulated[m.name] else ""),
                            "meas overhead %": m["measured_overhead_pct"],
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
        basis = "predicted" if pd.isna(measured) else "emulated" if best.get("emulated", False) else "measured"
        row.update({"largest_batch": int(best["batch_size"]), "predicted_peak_bytes": best["predicted_peak_bytes"],
                    "measured_peak_bytes": measured, "basis": basis})
    return row


def largest_batch_frame(df: pd.DataFrame, keep_all: dict[int, dict] | None = None) -> pd.DataFrame:
    """Per absolute budget and solver, the largest of the batch sizes tried whose cell fits that memory.

    A solver's cell fits when its status is optimal/feasible, its simulated peak is within the budget,
    its execution did not fail and, where it was executed, its measured peak is within the budget too
    (basis: ``measured``; not executed: ``predicted``; swaps emulated on CPU: the emulated device peak,
    basis ``emulated``). The ``KEEP_ALL_BAR`` row is the unmodified step:
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
        if "emulated_device_peak_bytes" in cells:  # CPU swaps: what a device would hold (emulated), not the host's
            device = pd.to_numeric(cells["emulated_device_peak_bytes"], errors="coerce")
            cells = cells.assign(measured_peak_bytes=device.fillna(cells["measured_peak_bytes"]),
                                 emulated=device.notna())
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


# ---------------------------------------------------------------------- the verdict
TIE_MIN_POINTS = 3.0  # measured overheads closer than this many percentage points are a tie, whatever the spreads
EMULATED = "(emulated swaps)"  # after a plan whose saving rests on swaps emulated on CPU (no host link there)
KEEP_ALL = "keep_all"  # the one label of the keep-all plan (the solver's name), in tables and plots
VERDICT_COLUMNS = ["batch", "budget", "budget_bytes", "predicted", "predicted_overhead_pct", "predicted_emulated",
                   "executed", "measured", "measured_overhead_pct", "measured_spread_pct", "measured_emulated", "ties",
                   "over_budget", "differs", "recompute_only", "recompute_only_predicted_pct",
                   "recompute_only_measured", "recompute_only_measured_pct", "recompute_only_spread_pct", "pytorch",
                   "pytorch_overhead_pct", "pytorch_peak_bytes"]


def emulated_swaps(df: pd.DataFrame) -> pd.Series:
    """Rows whose plan swaps where there is no host/device link (CPU): executed rows say so in
    ``emulated_swap``; a plan not executed swaps on CPU when ``n_swap`` > 0 and the device is a CPU,
    unless its times are estimated for a target GPU (``cost_source`` estimated:...): its swaps are then
    priced on that GPU's host link, a prediction like its other times, not an emulation."""
    flagged = _series(df, "emulated_swap").astype(object).where(lambda s: s.notna(), False).astype(bool)
    cpu = _series(df, "device").fillna("").astype(str).str.startswith("cpu")
    for_target = _series(df, "cost_source").fillna("").astype(str).str.startswith("estimated:")
    return flagged | ((_column(df, "n_swap").fillna(0) > 0) & cpu & ~for_target)


def _plans(group: pd.DataFrame, info: dict) -> pd.DataFrame:
    """The distinct plans that fit one budget by prediction: cells with the same decisions counts and
    simulated peak and time are one plan (their labels joined, keep_all first); the unmodified step
    counts as a plan (``KEEP_ALL``) where it fits and no keep-all cell is there."""
    ok = group[group["status"].isin(FEASIBLE)]
    ok = ok.assign(emulated=emulated_swaps(ok))  # of ok itself: a Series assigned to an empty frame adds rows
    nbytes = group["budget_bytes"].iloc[0]
    if not ((ok["n_recompute"] == 0) & (ok["n_swap"] == 0)).any() and info.get("keep_all_peak_bytes", np.inf) <= nbytes:
        measured = info.get("measured") or {}
        ok = pd.concat([ok, pd.DataFrame([{
            "solver": KEEP_ALL, "n_recompute": 0, "n_swap": 0, "emulated": False,
            "predicted_peak_bytes": info["keep_all_peak_bytes"], "predicted_time_s": info.get("keep_all_time_s"),
            "predicted_overhead_pct": 0.0, "executed": bool(measured), "max_rel_diff": measured.get("max_rel_diff"),
            "measured_peak_bytes": measured.get("measured_peak_bytes"),
            "measured_overhead_pct": 0.0 if measured else np.nan,
            "measured_time_spread_pct": measured.get("measured_time_spread_pct")}])], ignore_index=True)
    rows = []
    key = ["n_recompute", "n_swap", "predicted_peak_bytes", "predicted_time_s"]
    for _, same in ok.groupby(key, sort=False, dropna=False):
        names = list(dict.fromkeys(same["solver"]))
        names.sort(key=lambda n: n != KEEP_ALL)
        ran = same[same["executed"].fillna(False).astype(bool) & _column(same, "measured_overhead_pct").notna()]
        first = (ran if len(ran) else same).iloc[0]
        rows.append({**first.to_dict(), "label": " = ".join(names), "ran": bool(len(ran))})
    return pd.DataFrame(rows)


def _fits_measured(plans: pd.DataFrame, nbytes: float) -> pd.Series:
    """Executed plans whose memory fits by measurement: the measured peak, or for emulated swaps the
    emulated device peak (the process's own peak holds the host copies)."""
    peak = _column(plans, "measured_peak_bytes").where(~plans["emulated"], _column(plans, "emulated_device_peak_bytes"))
    return peak <= nbytes


def _tied(a: float, spread_a: float, b: float, spread_b: float) -> bool:
    """Two measured overheads (%) within the noise of each other: the larger spread, at least `TIE_MIN_POINTS`."""
    noise = max([TIE_MIN_POINTS] + [float(s) for s in (spread_a, spread_b) if _has(s)])
    return abs(a - b) <= noise


def _verdict_row(bs: int, budget: object, group: pd.DataFrame, info: dict, refs: pd.DataFrame) -> dict:
    """One budget's verdict (a `VERDICT_COLUMNS` row)."""
    nbytes = float(group["budget_bytes"].iloc[0])
    row = dict.fromkeys(VERDICT_COLUMNS, None) | {"batch": bs, "budget": budget, "budget_bytes": nbytes}
    plans = _plans(group, info)
    if plans.empty:
        return row
    # equal predicted times: a plan without emulated swaps first (on CPU a swap is predicted free), then less memory
    plans = plans.assign(_emulated=plans["emulated"].astype(bool))
    plans = plans.sort_values(["predicted_time_s", "_emulated", "predicted_peak_bytes"], kind="stable")
    best = plans.iloc[0]
    row.update(predicted=best["label"], predicted_overhead_pct=best["predicted_overhead_pct"],
               predicted_emulated=bool(best["emulated"]))
    ran = plans[plans["ran"]]
    row["executed"] = bool(len(ran))
    same = ran["max_rel_diff"].fillna(0) <= PLAN_RTOL if len(ran) else pd.Series(dtype=bool)
    row["differs"] = ", ".join(ran.loc[~same, "label"]) if len(ran) else ""
    ran = ran[same] if len(ran) else ran
    fits = _fits_measured(ran, nbytes) if len(ran) else pd.Series(dtype=bool)
    row["over_budget"] = ", ".join(ran.loc[~fits, "label"]) if len(ran) else ""
    ran = ran[fits] if len(ran) else ran
    if len(ran):
        ran = ran.sort_values(["measured_overhead_pct", "predicted_peak_bytes"], kind="stable")
        win = ran.iloc[0]
        ties = [r for r in ran.iloc[1:].itertuples() if _tied(r.measured_overhead_pct, r.measured_time_spread_pct,
                                                            win["measured_overhead_pct"], win["measured_time_spread_pct"])]
        row.update(measured=win["label"], measured_overhead_pct=win["measured_overhead_pct"],
                   measured_spread_pct=win["measured_time_spread_pct"], measured_emulated=bool(win["emulated"]),
                   ties="; ".join(_plan_text(r.label, r.emulated, r.measured_overhead_pct, r.measured_time_spread_pct)
                                  for r in ties))
    if row["predicted_emulated"] or row["measured_emulated"]:
        plain = plans[~plans["emulated"].astype(bool)]  # sorted by predicted time
        if len(plain):
            row.update(recompute_only=plain["label"].iloc[0],
                       recompute_only_predicted_pct=plain["predicted_overhead_pct"].iloc[0])
        measured = ran[~ran["emulated"].astype(bool)] if len(ran) else ran  # sorted by measured overhead
        if len(measured):
            row.update(recompute_only_measured=measured["label"].iloc[0],
                       recompute_only_measured_pct=measured["measured_overhead_pct"].iloc[0],
                       recompute_only_spread_pct=measured["measured_time_spread_pct"].iloc[0])
    fit = refs[(refs["batch_size"] == bs) & (refs["measured_peak_bytes"] <= nbytes)]
    if len(fit):
        r = fit.sort_values(["measured_overhead_pct", "measured_peak_bytes"], kind="stable").iloc[0]
        row.update(pytorch=r["solver"], pytorch_overhead_pct=r["measured_overhead_pct"],
                   pytorch_peak_bytes=r["measured_peak_bytes"])
    return row


def verdict_frame(df: pd.DataFrame, batches: dict[int, dict] | None = None) -> pd.DataFrame:
    """Per batch size and budget, the plan to pick (`VERDICT_COLUMNS`).

    ``predicted``: the plan with the lowest simulated time among those whose simulated peak fits (less
    memory breaks a tie); identical plans of several solvers are one plan, labels joined by `` = ``;
    keep-all counts (``KEEP_ALL``, from ``batches``' keep_all.json where no keep-all cell is there).
    ``executed``: whether any fitting plan ran. ``measured``: among executed plans that train like the
    unmodified step and whose measured peak fits (for swaps emulated on CPU, the *emulated* device
    peak), the lowest measured overhead; ``ties``: the others within the noise of it (`_tied`).
    ``over_budget``: executed plans whose measured peak is over; ``differs``: executed plans whose
    result differs from the unmodified step's by more than `PLAN_RTOL` (left out of the contest).
    ``recompute_only``: where a winner's saving rests on emulated swaps, the best plan without swaps.
    ``pytorch``: the fastest measured PyTorch reference whose measured peak fits the budget."""
    batches = batches or {}
    refs = df[(df["kind"] == REFERENCE) & (df["status"] == "measured")] if "kind" in df else df.iloc[:0]
    cells = solver_rows(df)
    rows = [_verdict_row(int(bs), budget, group, batches.get(int(bs)) or {}, refs)
            for (bs, budget), group in cells.groupby(["batch_size", "budget"], sort=False)]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _has(x: object) -> bool:
    """A verdict cell that holds a value (the frame turns a missing one into None or NaN)."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _pct(x: float | None) -> str:
    return f"{x:+.1f}%" if _has(x) else "–"


def _figure(overhead: float | None, spread: float | None = None) -> str:
    """An overhead in percent, with its spread (percentage points) where measured."""
    return _pct(overhead) + (f" ±{spread:.1f}" if _has(spread) else "")


def _plan_text(label: str, emulated: bool, overhead: float | None, spread: float | None = None) -> str:
    return f"`{label}`" + (f" {EMULATED}" if emulated else "") + f" {_figure(overhead, spread)}"


def _verdict_line(v: pd.Series) -> str:
    head = f"- **{v['budget']}** ({fmt_bytes(v['budget_bytes'])}): "
    if not _has(v["predicted"]):
        return head + "no plan fits."
    parts = [f"predicted fastest {_plan_text(v['predicted'], v['predicted_emulated'], v['predicted_overhead_pct'])}"]
    if _has(v["measured"]):
        measured = _plan_text(v["measured"], v["measured_emulated"], v["measured_overhead_pct"], v["measured_spread_pct"])
        parts.append(f"measured fastest {measured}" + (f", a tie with {v['ties']}" if _has(v["ties"]) and v["ties"] else ""))
    elif v["executed"]:
        parts.append("no executed plan fits by measurement")
    else:
        parts.append("not executed: no measured figure")
    if _has(v["over_budget"]) and v["over_budget"]:
        parts.append(f"measured peak over the budget: {v['over_budget']}")
    if _has(v["differs"]) and v["differs"]:
        parts.append(f"left out, results differ from the unmodified step's: {v['differs']}")
    if v["predicted_emulated"] or v["measured_emulated"]:
        which = "the measured winner's" if v["measured_emulated"] else "the predicted winner's"
        line = f"{which} saving rests on swaps, emulated on a CPU (no host link here)"
        if _has(v["recompute_only"]):
            line += f"; best recompute-only plan predicted `{v['recompute_only']}` {_pct(v['recompute_only_predicted_pct'])}"
            if _has(v["recompute_only_measured"]):
                line += (f", measured `{v['recompute_only_measured']}` "
                         f"{_figure(v['recompute_only_measured_pct'], v['recompute_only_spread_pct'])}")
        else:
            line += "; no recompute-only plan fits"
        parts.append(line)
    if _has(v["pytorch"]):
        parts.append(f"best PyTorch reference that fits: `{v['pytorch']}` {_pct(v['pytorch_overhead_pct'])} "
                     f"at {fmt_bytes(v['pytorch_peak_bytes'])} (over the eager step)")
    return head + "; ".join(parts) + "."


def verdict_section(df: pd.DataFrame, batches: dict[int, dict]) -> list[str]:
    """report.md's opening section: `verdict_frame` in words, one line per budget, per batch size."""
    lines = ["## Verdict at each budget", "",
             "Per budget: the fastest plan whose simulated peak fits (overhead over keep-all, predicted), and "
             "among executed plans whose measured peak fits, the one with the lowest measured overhead, ± its "
             "spread (`measured_time_spread_pct`). Measured overheads within the larger of two plans' spreads, "
             f"or {TIE_MIN_POINTS:g} percentage points, are a tie. Identical plans found by several solvers are joined by `=`; "
             f"`{KEEP_ALL}` is the unmodified step. {EMULATED}: the plan swaps on a CPU, where no host link "
             "exists: its memory saving is emulated (the emulated device peak), never measured, and its "
             "measured time includes the copies done on the compute thread.", ""]
    table = verdict_frame(df, batches)
    if table.empty:
        return lines + ["(no rows)", ""]
    for bs, part in table.groupby("batch", sort=False):
        lines += [f"### batch {bs}", ""] + [_verdict_line(v) for _, v in part.iterrows()] + [""]
    return lines


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


# ---------------------------------------------------------------------- the glossary
COLUMN_GLOSSARY: dict[str, str] = {
    "batch": "batch size of the training step",
    "budget": "the memory budget as written in the scenario: a fraction of keep-all's predicted peak (0.9) or a "
              "size (900MiB)",
    "budget MiB": "the budget in MiB",
    "memory": "an absolute budget, the same bytes at every batch size",
    "solver": "the label a solver is reported under (`keep_all`: the unmodified step, every activation kept)",
    "status": "`optimal` / `feasible`: a plan whose simulated peak fits the budget; `infeasible`: none found "
              "(below the floor: none exists); `timeout`, `error`, `invalid` (fails validation or simulates over "
              "the budget), `oom`; `measured`: a PyTorch reference that ran",
    "keep-all peak (predicted)": "simulated peak of the unmodified step, what budget fractions are of",
    "iteration (predicted)": "simulated time of one unmodified step, from the profiled op times",
    "measured peak": "allocator peak of one executed unmodified step",
    "measured iteration": "median wall time of the unmodified step's timed iterations",
    "activations": "total size of the activations a plan may keep, recompute or swap",
    "floor": "the lowest peak any plan can reach (`Problem.peak_floor()`): fixed memory, transient memory and "
             "the activations in use at its op; a budget below it is infeasible for every solver",
    "fixed peak": "the largest fixed memory alone (parameters, gradients, optimizer state, inputs, "
                  "temporaries), one part of the floor",
    "pred peak MiB": "peak of the plan simulated by `mutwo.simulate` (the one cost model)",
    "pred peak": "peak of the plan simulated by `mutwo.simulate`",
    "pred time s": "iteration time simulated by `mutwo.simulate` (recomputation and swap stalls included)",
    "pred overhead %": "simulated time over keep-all's simulated time, minus 1, in %",
    "meas peak MiB": "allocator peak of the executed plan's first iteration (on CPU: host copies of swapped "
                     "tensors included)",
    "meas peak": "allocator peak of the executed plan (empty: not executed; basis `emulated`: the emulated device "
                 "peak of a plan whose swaps ran on CPU)",
    "emulated device peak MiB": "plans whose swaps were emulated on CPU only: the allocator total minus the "
                                "host copies live at each moment, what a device would hold. Emulated, not measured",
    "meas time s": "median wall time of the plan's timed iterations",
    "meas overhead %": "median over the plan's timed iterations of its time over the unmodified step timed just "
                       "before and after it, minus 1, in % (keep-all and identical plans: 0)",
    "max rel diff": "largest relative difference of loss, gradients and updated state from the unmodified step",
    "solve s": "wall time of the solver call",
    "R/S": "activations the plan recomputes / swaps to the host; " + EMULATED + ": the swaps ran on a CPU, "
           "where no host link exists (memory saving emulated, copies on the compute thread)",
    "largest batch": "the largest of the batch sizes tried whose plan fits the memory",
    "basis": "`measured`: the plan ran and its measured peak fits too; `emulated`: it ran with swaps emulated on "
             "CPU and its emulated device peak fits; `predicted`: simulated only",
    "pytorch": "a PyTorch saver: `pytorch:eager`, per-block `pytorch:checkpoint`, or `torch.compile` at "
               "`pytorch:memory_budget@knob`",
    "pytorch peak": "allocator peak of the PyTorch reference's step",
    "pytorch overhead %": "the reference's time over the eager steps timed beside it, minus 1, in %",
    "best mutwo plan": "the executed plan with the lowest measured time among those at no more measured memory "
                       "(emulated swaps and plans that train differently left out)",
    "plan peak": "the best mutwo plan's measured peak",
    "plan overhead %": "the best mutwo plan's measured overhead (over the captured keep-all step)",
    "ties": f"other plans within {TIME_TIE:.0%} of the best's time",
    "verdict": f"the two overheads compared: within {TIME_TIE:.0%} of each other a tie",
    "largest batch_size": "largest-batch search: the largest batch size at which the plan fits the memory "
                          "(`≥`: the top of the range searched)",
    "largest seq_len": "largest-batch search: the largest sequence length at which the plan fits the memory",
    "pred step s": "simulated time of one step at that size",
    "pred samples/s": "that size over its simulated step time",
    "fastest probed (samples/s)": "largest-batch search: among the sizes probed that fit, the most samples per "
                                  "simulated second, and at which size (the largest size is rarely the fastest)",
    "pred tokens/s": "batch x that sequence length over its simulated step time",
    "fastest probed (tokens/s)": "largest-sequence search: among the lengths probed that fit, the most tokens "
                                 "per simulated second, and at which length",
    "probes": "every size tried and whether it fitted (`n:yes/no`; `n:timeout`, `n:error`: the solver gave no "
              "answer there, counted as not fitting)",
    "target": "the device the times are estimated for (`target:` in the scenario, docs/devices.md)",
    "fp32 / tf32 / bf16 TFLOP/s": "the target's dense peak rates the roofline uses",
    "memory bandwidth": "the target's device-memory bandwidth",
    "host link (effective, per direction)": "host <-> device bandwidth swaps are costed with",
    "copy engines": "transfers that can run beside compute at once",
    "per-op floor": "the least time any op takes on the target (launch latency)",
    "source": "where the target's figures come from",
}


def _table_headers(lines: Sequence[str]) -> list[str]:
    """The column headers of every markdown table in ``lines`` (a header row is followed by ``|---``)."""
    heads = []
    for line, nxt in zip(lines, lines[1:]):
        if line.startswith("| ") and nxt.startswith("|---"):
            heads += [c.strip() for c in line.strip().strip("|").split(" | ")]
    return list(dict.fromkeys(heads))


def glossary_section(lines: Sequence[str]) -> list[str]:
    """report.md's closing "Columns" section: each column its tables show, explained once
    (`COLUMN_GLOSSARY`, in its order; a header it lacks is listed as unexplained rather than left out)."""
    shown = set(_table_headers([x for line in lines for x in line.split("\n")]))
    out = ["## Columns", ""]
    out += [f"- **{name}**: {text}" for name, text in COLUMN_GLOSSARY.items() if name in shown]
    out += [f"- **{name}**: (not explained: add it to `mutwo.report.COLUMN_GLOSSARY`)"
            for name in sorted(shown - set(COLUMN_GLOSSARY))]
    return out + [""]


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
    if not estimated:  # the usual case: one line among the setup lines, and the verdict leads
        shown = ", ".join(f"`{src}`" for src in sources) or "this machine"
        lines = [f"- op times: measured on this machine ({shown})", ""]
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
        if not estimated:
            lines += ["## Where the times come from", ""]
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
             "range (it may fit more)."
             + (f" A plan counts only when its predicted step is at most {spec['max_slowdown']:g}x keep-all's "
                "at the same size (`max_slowdown`; `n:slow` probes fit the memory but not that)."
                if spec.get("max_slowdown") else ""), ""]
    unit = "samples/s" if over == "batch_size" else "tokens/s"
    batch = (run.get("scenario") or {}).get("batch_size", [1])[0]
    rows = []
    for r in search.itertuples():
        largest = "none" if pd.isna(r.largest) else f"{'≥ ' if r.capped else ''}{int(r.largest)}"
        rate = np.nan
        if not pd.isna(r.largest) and r.predicted_time_s and r.predicted_time_s > 0:
            rate = int(r.largest) * (1 if over == "batch_size" else batch) / r.predicted_time_s
        fastest = "–"
        n_best, t_best = getattr(r, "fastest_n", None), getattr(r, "fastest_time_s", None)
        if n_best is not None and not pd.isna(n_best) and t_best:
            fastest = f"{int(n_best) * (1 if over == 'batch_size' else batch) / t_best:.4g} at {int(n_best)}"
        rows.append({"solver": r.solver, f"largest {over}": largest, "pred peak": fmt_bytes(r.predicted_peak_bytes),
                     "meas peak": fmt_bytes(r.measured_peak_bytes), "pred step s": r.predicted_time_s,
                     "x keep-all": getattr(r, "slowdown", np.nan),
                     f"pred {unit}": rate, f"fastest probed ({unit})": fastest, "basis": r.basis or "–",
                     "probes": r.probes})
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
    where = target_section(run, batches)
    if where and where[0].startswith("- "):  # times measured here: one more setup line
        lines.insert(len(lines) - 1, where[0])
        where = where[2:]
    lines += where
    lines += verdict_section(everything, batches)
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
    lines += _eager_lines(batches)
    lines += _largest_batch_section(df, batches) if len(df) else []
    lines += search_section(search, run)
    lines += references_section(everything, batches)
    lines += ["## All results", "", markdown_table(summary_frame(everything)) if len(everything) else "(no rows)",
              ""]
    lines += _measurement_section(df, batches) if executed else []
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
    lines += glossary_section(lines)
    return write_text(path, "\n".join(lines))
