"""Seaborn figures of a comparison run. Each function writes one PNG (atomically, via
`mutwo.plots.save`) and returns its path, so report.md can embed whatever was made; `run_figures`
makes every figure of a run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from mutwo import plots, report  # noqa: E402
from mutwo.cell import FEASIBLE, REFERENCE  # noqa: E402
from mutwo.problem import Problem  # noqa: E402
from mutwo.schedule import Schedule  # noqa: E402
from mutwo.simulate import simulate  # noqa: E402

__all__ = ["overhead_vs_peak", "plan_timelines", "solve_times", "batch_scaling", "largest_batch", "unit_for",
           "timeline_budget", "run_figures", "largest_batch_search"]


def unit_for(nbytes: float) -> tuple[str, float]:
    """A readable unit for sizes up to ``nbytes``."""
    if nbytes >= 2 * 2**30:
        return "GiB", 2**30
    if nbytes >= 2 * 2**20:
        return "MiB", 2**20
    return "KiB", 2**10


def _overhead_frame(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"].isin(FEASIBLE)]
    parts = [pd.DataFrame({"solver": ok["solver"], "batch": ok["batch_size"], "budget": ok["budget"],
                           "peak": ok["predicted_peak_bytes"], "overhead %": ok["predicted_overhead_pct"],
                           "kind": "predicted"})]
    measured = ok.dropna(subset=["measured_peak_bytes", "measured_overhead_pct"])
    if len(measured):
        parts.append(pd.DataFrame({"solver": measured["solver"], "batch": measured["batch_size"],
                                   "budget": measured["budget"], "peak": measured["measured_peak_bytes"],
                                   "overhead %": measured["measured_overhead_pct"], "kind": "measured"}))
    return pd.concat(parts, ignore_index=True)


def _reference_points(df: pd.DataFrame) -> pd.DataFrame:
    """PyTorch's measured reference rows (kind ``reference``) as points: batch, peak, overhead (%), label."""
    refs = df[(df["kind"] == REFERENCE) & (df["status"] == "measured")] if "kind" in df else df.iloc[:0]
    refs = refs.dropna(subset=["measured_peak_bytes", "measured_overhead_pct"])
    return pd.DataFrame({"batch": refs["batch_size"], "peak": refs["measured_peak_bytes"].astype(float),
                         "overhead": refs["measured_overhead_pct"],
                         "label": refs["solver"].str.removeprefix("pytorch:")})


def _draw_references(axes: dict, refs: pd.DataFrame, scale: float) -> None:
    """Each reference as a black star, labelled, on its batch size's panel (``axes``: batch -> Axes)."""
    for r in refs.itertuples():
        ax = axes.get(r.batch)
        if ax is None:
            continue
        ax.scatter([r.peak / scale], [r.overhead], marker="*", s=220, color="black", zorder=5,
                   label="PyTorch (measured)")
        ax.annotate(r.label, (r.peak / scale, r.overhead), fontsize=7, xytext=(5, 4), textcoords="offset points")
    for ax in axes.values():  # one legend entry for all stars
        handles, labels = ax.get_legend_handles_labels()
        if "PyTorch (measured)" in labels:
            ax.legend([handles[labels.index("PyTorch (measured)")]], ["PyTorch (measured)"], fontsize=7,
                      loc="upper right")


def overhead_vs_peak(df: pd.DataFrame, path: str | Path) -> Path:
    """Iteration-time overhead over keep-all against peak memory, one colour per solver; predicted
    (simulator) and measured (executed) points told apart by marker. One panel per batch size. PyTorch's
    reference rows are black stars, labelled (their overhead is over the eager step)."""
    data, refs = _overhead_frame(report.solver_rows(df)), _reference_points(df)
    if data.empty and refs.empty:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.text(0.5, 0.5, "no feasible plan", ha="center", va="center")
        ax.set_axis_off()
        return plots.save(fig, path)
    unit, scale = unit_for(float(pd.concat([data["peak"], refs["peak"]]).max()))
    if data.empty:  # only PyTorch's points
        batches = sorted(refs["batch"].unique())
        fig, axs = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
        axes = dict(zip(batches, axs.flat))
        for b, ax in axes.items():
            ax.set_xlabel(f"peak ({unit})")
            ax.set_ylabel("overhead %")
            ax.set_title(f"batch = {b}")
        figure = fig
    else:
        data[f"peak ({unit})"] = data["peak"] / scale
        batches = sorted(data["batch"].unique())
        g = sns.relplot(data=data, x=f"peak ({unit})", y="overhead %", hue="solver", style="kind",
                        markers={"predicted": "o", "measured": "X"}, col="batch" if len(batches) > 1 else None,
                        kind="scatter", s=70, alpha=0.85, height=4.2, aspect=1.3, facet_kws={"sharex": False})
        axes = dict(g.axes_dict) if len(batches) > 1 else {batches[0]: g.ax}
        figure = g.figure
    _draw_references(axes, refs, scale)
    for ax in axes.values():
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    figure.suptitle("time overhead vs peak memory (lower-left is better)", y=1.03)
    return plots.save(figure, path)


def plan_timelines(problem: Problem, schedules: dict[str, Schedule], budget_bytes: int, path: str | Path,
                   title: str = "") -> Path:
    """Simulated memory along the op order for keep-all and each plan, with the forward/backward
    boundary and the budget line (drawn by `mutwo.plots.memory_timeline`)."""
    frames = {}
    if all(np.any(s.decisions != 0) for s in schedules.values()):  # no plan shows keep-all already
        frames["keep-all (reference)"] = simulate(problem, Schedule.keep_all(problem)).timeline_bytes
    for label, schedule in schedules.items():
        frames[label] = simulate(problem, schedule).timeline_bytes
    return plots.memory_timeline(frames, problem.fwd_end, path, limit_bytes=budget_bytes,
                                 title=title or "simulated memory of each plan")


def solve_times(df: pd.DataFrame, path: str | Path) -> Path:
    """Solve time per solver over every batch size and budget (log scale)."""
    data = df[df["status"] != "error"].copy()
    data["solve time (s)"] = data["solve_time_s"].clip(lower=1e-6)
    data["budget"] = data["budget"].astype(str)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * data["solver"].nunique() + 3), 4))
    order = sorted(data["solver"].unique())
    sns.boxplot(data=data, x="solver", y="solve time (s)", order=order, ax=ax, color="0.9", fliersize=0)
    sns.stripplot(data=data, x="solver", y="solve time (s)", hue="budget", order=order, ax=ax, size=6,
                  jitter=0.15, dodge=False)
    ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("solve time per solver (each point: one batch size x budget)")
    ax.legend(title="budget", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.save(fig, path)


def batch_scaling(df: pd.DataFrame, keep_all: pd.DataFrame, path: str | Path) -> Path:
    """Peak memory and iteration time against batch size: keep-all, and each solver's feasible plans
    (one line per solver and budget; predicted by the simulator, measured where executed)."""
    ok = df[df["status"].isin(FEASIBLE)]
    rows = [pd.DataFrame({"batch": keep_all["batch_size"], "plan": "keep-all", "budget": "-",
                          "peak": keep_all["keep_all_peak_bytes"], "time (s)": keep_all["keep_all_time_s"],
                          "kind": "predicted"})]
    rows.append(pd.DataFrame({"batch": ok["batch_size"], "plan": ok["solver"], "budget": ok["budget"],
                              "peak": ok["predicted_peak_bytes"], "time (s)": ok["predicted_time_s"],
                              "kind": "predicted"}))
    measured = ok.dropna(subset=["measured_peak_bytes"])
    if len(measured):
        rows.append(pd.DataFrame({"batch": measured["batch_size"], "plan": measured["solver"],
                                  "budget": measured["budget"], "peak": measured["measured_peak_bytes"],
                                  "time (s)": measured["measured_time_s"], "kind": "measured"}))
    if "measured_peak_bytes" in keep_all and keep_all["measured_peak_bytes"].notna().any():
        k = keep_all.dropna(subset=["measured_peak_bytes"])
        rows.append(pd.DataFrame({"batch": k["batch_size"], "plan": "keep-all", "budget": "-",
                                  "peak": k["measured_peak_bytes"], "time (s)": k["measured_time_s"],
                                  "kind": "measured"}))
    data = pd.concat(rows, ignore_index=True)
    unit, scale = unit_for(float(np.nanmax(data["peak"].to_numpy(dtype=float))))
    data[f"peak ({unit})"] = data["peak"] / scale
    data["line"] = data["plan"] + np.where(data["budget"] == "-", "", " @ " + data["budget"].astype(str))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, y in ((a, f"peak ({unit})"), (b, "time (s)")):
        sns.lineplot(data=data, x="batch", y=y, hue="plan", style="kind", units="line", estimator=None,
                     markers=True, dashes={"predicted": "", "measured": (3, 2)}, ax=ax, linewidth=1)
        ax.set_xticks(sorted(data["batch"].unique()))
    a.set_title("peak memory vs batch size")
    b.set_title("iteration time vs batch size")
    a.get_legend().remove()
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.save(fig, path)


def largest_batch(df: pd.DataFrame, path: str | Path, keep_all: dict[int, dict] | None = None) -> Path | None:
    """Per absolute budget, the largest of the batch sizes tried at which each solver fits that memory
    (`mutwo.report.largest_batch_frame`; ``keep_all``: the keep_all.json of each batch size, for the
    unmodified step's measured peak). Bars annotated with the batch and the peaks. None (no figure)
    when there is no absolute budget or only one batch size (`mutwo.report.largest_batch_skip_reason`)."""
    if report.largest_batch_skip_reason(df) is not None:
        return None
    table = report.largest_batch_frame(df, keep_all)
    sizes = sorted(int(b) for b in df["batch_size"].unique())
    budgets = list(table["budget"].unique())
    n_solvers = table["solver"].nunique()
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 1.2 + 0.5 * n_solvers), sharey=True,
                             squeeze=False)
    palette = {"measured": "tab:green", "predicted": "tab:blue", report.NO_FIT: "0.7"}
    for ax, budget in zip(axes.flat, budgets):
        part = table[table["budget"] == budget].copy()
        part["largest batch"] = part["largest_batch"].astype(float).fillna(0)
        sns.barplot(data=part, y="solver", x="largest batch", hue="basis", palette=palette, dodge=False,
                    orient="h", legend=False, ax=ax)
        for i, r in enumerate(part.itertuples()):
            if pd.isna(r.largest_batch):
                text = report.NO_FIT
            else:
                text = f"{r.largest_batch}: {report.fmt_bytes(r.predicted_peak_bytes)} predicted"
                if pd.notna(r.measured_peak_bytes):
                    text += f", {report.fmt_bytes(r.measured_peak_bytes)} measured"
            ax.text(part["largest batch"].iloc[i] + 0.01 * sizes[-1], i, " " + text, va="center", fontsize=8)
        ax.set_xticks(sizes)
        ax.set_xlim(0, 2.1 * sizes[-1])
        ax.set_xlabel("largest batch that fits")
        ax.set_ylabel("")
        ax.set_title(f"{budget} ({report.fmt_bytes(part['budget_bytes'].iloc[0])})")
    names = {"measured": "measured peak (and predicted) fit", "predicted": "predicted peak fits (not executed)",
             report.NO_FIT: report.NO_FIT}
    handles = [Patch(color=c, label=names[k]) for k, c in palette.items() if k in set(table["basis"])]
    axes.flat[-1].legend(handles=handles, title="fits by", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"largest of the batch sizes tried ({', '.join(map(str, sizes))}) that fits each device memory",
                 y=1.02)
    return plots.save(fig, path)


def largest_batch_search(search: pd.DataFrame, path: str | Path) -> Path:
    """The largest-batch search (search.csv, `mutwo.search_run`): per solver a bar to the largest size
    that fits the memory, annotated with its predicted (and measured) peak, and every size probed as a
    dot (filled: fits, open: does not), so the bisection's evidence is on the figure."""
    n = len(search)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.45 * n))
    over, memory = search["over"].iloc[0], search["memory"].iloc[0]
    top = 1
    for i, r in enumerate(search.itertuples()):
        probes = [(int(k), v == "yes") for k, v in (x.split(":") for x in str(r.probes).split() if ":" in x)]
        top = max([top, *(k for k, _ in probes)])
        largest = 0 if pd.isna(r.largest) else int(r.largest)
        colour = {"measured": "tab:green", "predicted": "tab:blue"}.get(r.basis, "0.7")
        ax.barh(i, largest, color=colour, alpha=0.35, height=0.6)
        for k, ok in probes:
            ax.scatter([k], [i], s=28, zorder=3, facecolors="black" if ok else "white", edgecolors="black")
        text = report.NO_FIT.replace("tried", "probed") if not largest else (
            f"{'≥' if r.capped else ''}{largest}: {report.fmt_bytes(r.predicted_peak_bytes)} predicted"
            + (f", {report.fmt_bytes(r.measured_peak_bytes)} measured" if pd.notna(r.measured_peak_bytes) else ""))
        ax.text(largest, i + 0.32, " " + text, va="center", fontsize=7)
    ax.set_yticks(range(n), search["solver"])
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, 2.5 * top)
    ticks = [2**i for i in range(int(np.log2(top)) + 2)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(f"{over} (log scale)")
    handles = [Patch(color="tab:blue", alpha=0.35, label="largest that fits (predicted)"),
               Patch(color="tab:green", alpha=0.35, label="largest that fits (measured)"),
               plt.Line2D([], [], marker="o", color="black", linestyle="", label="probe: fits"),
               plt.Line2D([], [], marker="o", markerfacecolor="white", color="black", linestyle="",
                          label="probe: does not fit")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"largest {over} whose plan fits {memory}, per solver (bisection)")
    return plots.save(fig, path)


def timeline_budget(cells: pd.DataFrame) -> str:
    """The budget whose plans are most worth seeing: the tightest at which some solver other than
    keep-all found a plan (memory pressure shows differences); else the tightest with any plan."""
    ok = cells[cells["status"].isin(FEASIBLE)]
    for pool in (ok[ok["n_recompute"].fillna(0) + ok["n_swap"].fillna(0) > 0], ok, cells):
        if len(pool):
            return pool.sort_values("budget_bytes")["budget"].iloc[0]
    return cells["budget"].iloc[0]


def _timeline(df: pd.DataFrame, bs: int, problem: Problem, run_dir: Path) -> Path | None:
    """The plans of one batch size at `timeline_budget` (invalid ones left out), or None."""
    cells = df[(df["batch_size"] == bs) & df["schedule_file"].notna()]
    if cells.empty:
        return None
    budget = timeline_budget(cells)
    chosen = cells[(cells["budget"] == budget) & (cells["status"] != "invalid")]
    schedules = {}
    for r in chosen.itertuples():
        label = r.solver if r.status in FEASIBLE else f"{r.solver} ({r.status})"
        schedules[label] = Schedule.load(run_dir / r.schedule_file)
    if not schedules:
        return None
    budget_bytes = int(chosen["budget_bytes"].iloc[0])
    return plan_timelines(problem, schedules, budget_bytes, run_dir / "plots" / f"timeline_b{bs}.png",
                          title=f"batch {bs}, budget {budget} ({report.fmt_bytes(budget_bytes)}): simulated memory")


def run_figures(df: pd.DataFrame, problems: dict[int, Problem], keep_all: dict[int, dict], run_dir: Path) -> list[Path]:
    """Every figure of a run into ``run_dir/plots`` (``problems`` and ``keep_all``: each batch size's
    Problem and keep_all.json); returns the files made."""
    out = run_dir / "plots"
    made = [overhead_vs_peak(df, out / "overhead_vs_peak.png")]  # with PyTorch's reference points
    df = report.solver_rows(df)
    made.append(solve_times(df, out / "solve_times.png"))
    for bs, problem in sorted(problems.items()):
        path = _timeline(df, bs, problem, run_dir)
        if path is not None:
            made.append(path)
    if len(problems) > 1:
        keep = pd.DataFrame([{**keep_all[bs], "batch_size": bs} for bs in sorted(problems)])
        made.append(batch_scaling(df, keep, out / "batch_scaling.png"))
    largest = largest_batch(df, out / "largest_batch.png", keep_all)
    if largest is not None:
        made.append(largest)
    return made
