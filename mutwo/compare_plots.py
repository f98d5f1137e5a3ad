"""Seaborn figures of a comparison run. Each function writes one PNG (atomically, via
`mutwo.plots.save`) and returns its path, so report.md can embed whatever was made; `run_figures`
makes every figure of a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from mutwo import plots, report  # noqa: E402
from mutwo.cell import FEASIBLE, REFERENCE  # noqa: E402
from mutwo.problem import Problem  # noqa: E402
from mutwo.schedule import Schedule  # noqa: E402
from mutwo.simulate import simulate  # noqa: E402

__all__ = ["overhead_vs_peak", "plan_timelines", "solve_times", "batch_scaling", "largest_batch", "unit_for",
           "timeline_budget", "run_figures", "palette_for", "EMULATED_LABEL", "largest_batch_search"]


unit_for = plots.unit_for  # kept here too: report code and tests import it from this module
EMULATED_LABEL = "swaps emulated on CPU"  # hollow markers: the plan's swaps ran where there is no host link


def palette_for(df: pd.DataFrame) -> dict[str, tuple]:
    """The run's solver colours (`mutwo.plots.solver_palette` over every solver label in ``df``), so a
    solver has one colour in every figure, whichever of its cells a figure shows."""
    return plots.solver_palette(report.solver_rows(df)["solver"].dropna())


def _overhead_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Feasible plans as points: predicted (simulated peak and overhead) and measured where executed;
    a plan with emulated swaps is placed at its emulated device peak (the process's peak holds the host
    copies) and flagged ``emulated``."""
    ok = df[df["status"].isin(FEASIBLE)]
    ok = ok.assign(emulated=report.emulated_swaps(ok))
    parts = [pd.DataFrame({"solver": ok["solver"], "batch": ok["batch_size"], "budget": ok["budget"],
                           "peak": ok["predicted_peak_bytes"], "overhead %": ok["predicted_overhead_pct"],
                           "kind": "predicted", "emulated": ok["emulated"]})]
    measured = ok.dropna(subset=["measured_peak_bytes", "measured_overhead_pct"])
    if len(measured):
        device = pd.to_numeric(measured["emulated_device_peak_bytes"], errors="coerce")
        peak = measured["measured_peak_bytes"].where(~measured["emulated"] | device.isna(), device)
        parts.append(pd.DataFrame({"solver": measured["solver"], "batch": measured["batch_size"],
                                   "budget": measured["budget"], "peak": peak,
                                   "overhead %": measured["measured_overhead_pct"], "kind": "measured",
                                   "emulated": measured["emulated"]}))
    return pd.concat(parts, ignore_index=True)


MARKERS = {"predicted": "o", "measured": "X"}


def _draw_points(ax: plt.Axes, data: pd.DataFrame, scale: float, palette: dict) -> bool:
    """One panel's plan points; plans of several solvers at one spot drawn as concentric rings with a
    count (``×3``). Returns whether any spot is shared."""
    shared = False
    spots = data.assign(x=(data["peak"] / scale).round(6), y=data["overhead %"].astype(float).round(6))
    for (x, y, kind), spot in spots.groupby(["x", "y", "kind"], sort=False):
        solvers = list(dict.fromkeys(spot["solver"]))
        for i, solver in enumerate(solvers):  # the largest first, each smaller one on top
            colour = palette.get(solver, "black")
            emulated = bool(spot.loc[spot["solver"] == solver, "emulated"].any())
            ax.scatter([x], [y], marker=MARKERS[kind], s=70 + 90 * (len(solvers) - 1 - i), zorder=3 + i,
                       facecolors="none" if emulated else colour, edgecolors=colour,
                       linewidths=1.6 if emulated else 0.6, alpha=0.9)
        if len(solvers) > 1:
            shared = True
            ax.annotate(f"×{len(solvers)}", (x, y), xytext=(7, -11), textcoords="offset points", fontsize=8)
    return shared


def _legend_handles(palette: dict, solvers: list[str], kinds: set[str], emulated: bool, shared: bool,
                    refs: bool) -> list:
    """Colour per solver, marker per kind, hollow for emulated swaps, the star, the ring note."""
    handles = [Line2D([], [], marker="o", linestyle="", color=palette.get(s, "black"), label=s) for s in solvers]
    handles += [Line2D([], [], marker=MARKERS[k], linestyle="", color="0.4", label=f"{k} ({'simulated' if k == 'predicted' else 'executed'})")
                for k in ("predicted", "measured") if k in kinds]
    if emulated:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.4",
                              label=f"hollow: {EMULATED_LABEL} (emulated device peak)"))
    if refs:
        handles.append(Line2D([], [], marker="*", linestyle="", color="black", markersize=12, label="PyTorch (measured)"))
    if shared:
        handles.append(Line2D([], [], linestyle="", label="×N: N solvers' identical plans (rings)"))
    return handles


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
        ax.scatter([r.peak / scale], [r.overhead], marker="*", s=220, color="black", zorder=9)
        ax.annotate(r.label, (r.peak / scale, r.overhead), fontsize=7, xytext=(5, 4), textcoords="offset points")


def overhead_vs_peak(df: pd.DataFrame, path: str | Path, palette: dict | None = None) -> Path:
    """Iteration-time overhead over keep-all against peak memory, one colour per solver (``palette``,
    default `palette_for`); predicted (simulator) and measured (executed) points told apart by marker,
    hollow where the swaps were emulated on CPU. One panel per batch size. PyTorch's reference rows
    are black stars, labelled (their overhead is over the eager step)."""
    data, refs = _overhead_frame(report.solver_rows(df)), _reference_points(df)
    palette = palette or palette_for(df)
    if data.empty and refs.empty:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.text(0.5, 0.5, "no feasible plan", ha="center", va="center")
        ax.set_axis_off()
        return plots.save(fig, path)
    unit, scale = unit_for(float(pd.concat([data["peak"], refs["peak"]]).max()))
    batches = sorted(set(data["batch"]) | set(refs["batch"]))
    fig, axs = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    axes = dict(zip(batches, axs.flat))
    shared = False
    for b, ax in axes.items():
        shared |= _draw_points(ax, data[data["batch"] == b], scale, palette)
        ax.axhline(0, color="grey", linewidth=0.8, linestyle=":", zorder=1)
        ax.set_xlabel(f"peak ({unit})")
        ax.set_ylabel("overhead over keep_all (%)")
        ax.set_title(f"batch = {b}")
    _draw_references(axes, refs, scale)
    solvers = sorted(set(data["solver"]), key=lambda x: (x != report.KEEP_ALL, x))
    handles = _legend_handles(palette, solvers, set(data["kind"]), bool(data["emulated"].any()), shared,
                              not refs.empty)
    axs.flat[-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("time overhead vs peak memory (lower-left is better)", y=1.02)
    return plots.save(fig, path)


def plan_timelines(problem: Problem, schedules: dict[str, Schedule], budget_bytes: int, path: str | Path,
                   title: str = "", colours: dict[str, object] | None = None, dashed: Sequence[str] = ()) -> Path:
    """Simulated memory along the op order for keep-all and each plan, the backward pass shaded, each
    peak marked, and the budget line (drawn by `mutwo.plots.memory_timeline`; ``colours``: label ->
    colour, ``dashed``: labels drawn dashed, e.g. plans whose swaps are emulated)."""
    frames = {}
    if all(np.any(s.decisions != 0) for s in schedules.values()):  # no plan shows keep-all already
        frames[report.KEEP_ALL] = simulate(problem, Schedule.keep_all(problem)).timeline_bytes
    for label, schedule in schedules.items():
        frames[label] = simulate(problem, schedule).timeline_bytes
    colours = {report.KEEP_ALL: plots.KEEP_ALL_COLOUR, **(colours or {})}
    return plots.memory_timeline(frames, problem.fwd_end, path, limit_bytes=budget_bytes,
                                 title=title or "simulated memory of each plan", colours=colours, dashed=dashed)


def solve_times(df: pd.DataFrame, path: str | Path, palette: dict | None = None) -> Path:
    """Solve time per solver over every batch size and budget (log scale); boxes in the solver's colour,
    one marker per budget."""
    data = df[df["status"] != "error"].copy()
    data["solve time (s)"] = data["solve_time_s"].clip(lower=1e-6)
    data["budget"] = data["budget"].astype(str)
    palette = palette or palette_for(df)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * data["solver"].nunique() + 3), 4))
    order = sorted(data["solver"].unique(), key=lambda x: (x != report.KEEP_ALL, x))
    sns.boxplot(data=data, x="solver", y="solve time (s)", order=order, ax=ax, hue="solver", legend=False,
                palette={k: palette.get(k, "0.8") for k in order}, saturation=1.0, boxprops={"alpha": 0.45},
                fliersize=0)
    budgets = list(dict.fromkeys(data["budget"]))
    handles = []
    for budget, marker in zip(budgets, _cycle(BUDGET_MARKERS, len(budgets))):
        part = data[data["budget"] == budget]
        sns.stripplot(data=part, x="solver", y="solve time (s)", order=order, ax=ax, size=6, jitter=0.15,
                      marker=marker, color="0.15", alpha=0.8)
        handles.append(Line2D([], [], marker=marker, linestyle="", color="0.15", label=budget))
    ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("solve time per solver (each point: one batch size x budget)")
    ax.legend(handles=handles, title="budget", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.save(fig, path)


JITTER = 0.012  # batch_scaling: solvers drawn this fraction of the batch size apart along x
BUDGET_MARKERS = ["o", "s", "^", "D", "v", "P", "*", "<", ">", "h"]


def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def _scaling_frame(df: pd.DataFrame, keep_all: pd.DataFrame) -> pd.DataFrame:
    """batch_scaling's points: keep-all (budget ``-``) and each feasible cell that changes something
    (a solver's keep-all plan would hide the keep_all line), predicted and measured."""
    ok = df[df["status"].isin(FEASIBLE)]
    ok = ok[(ok["n_recompute"].fillna(0) + ok["n_swap"].fillna(0)) > 0]  # a keep-all plan is the keep_all line
    ok = ok.assign(emulated=report.emulated_swaps(ok))
    keep = pd.DataFrame({"batch": keep_all["batch_size"], "plan": report.KEEP_ALL, "budget": "-",
                         "peak": keep_all["keep_all_peak_bytes"], "time (s)": keep_all["keep_all_time_s"],
                         "kind": "predicted", "emulated": False})
    rows = [keep, pd.DataFrame({"batch": ok["batch_size"], "plan": ok["solver"], "budget": ok["budget"].astype(str),
                                "peak": ok["predicted_peak_bytes"], "time (s)": ok["predicted_time_s"],
                                "kind": "predicted", "emulated": ok["emulated"]})]
    measured = ok.dropna(subset=["measured_peak_bytes"])
    if len(measured):
        device = pd.to_numeric(measured["emulated_device_peak_bytes"], errors="coerce")
        rows.append(pd.DataFrame({"batch": measured["batch_size"], "plan": measured["solver"],
                                  "budget": measured["budget"].astype(str),
                                  "peak": measured["measured_peak_bytes"].where(~measured["emulated"] | device.isna(),
                                                                                device),
                                  "time (s)": measured["measured_time_s"], "kind": "measured",
                                  "emulated": measured["emulated"]}))
    if "measured_peak_bytes" in keep_all and keep_all["measured_peak_bytes"].notna().any():
        k = keep_all.dropna(subset=["measured_peak_bytes"])
        rows.append(pd.DataFrame({"batch": k["batch_size"], "plan": report.KEEP_ALL, "budget": "-",
                                  "peak": k["measured_peak_bytes"], "time (s)": k["measured_time_s"],
                                  "kind": "measured", "emulated": False}))
    return pd.concat(rows, ignore_index=True)


def batch_scaling(df: pd.DataFrame, keep_all: pd.DataFrame, path: str | Path, palette: dict | None = None) -> Path:
    """Peak memory and iteration time against batch size: keep-all, and each solver's feasible plans,
    one line per solver and budget: colour = solver, marker = budget, solid = predicted by the
    simulator, dashed = measured where executed; hollow markers where the swaps were emulated on CPU."""
    data = _scaling_frame(df, keep_all)
    palette = palette or palette_for(df)
    unit, scale = unit_for(float(np.nanmax(data["peak"].to_numpy(dtype=float))))
    data[f"peak ({unit})"] = data["peak"] / scale
    budgets = [b for b in dict.fromkeys(data["budget"]) if b != "-"]
    markers = {"-": "o", **dict(zip(budgets, _cycle(BUDGET_MARKERS[1:], len(budgets))))}
    plans_ = sorted(set(data["plan"]), key=lambda x: (x != report.KEEP_ALL, x))
    shift = {p: 1 + JITTER * (i - (len(plans_) - 1) / 2) for i, p in enumerate(plans_)}  # identical plans stay visible
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, y in ((a, f"peak ({unit})"), (b, "time (s)")):
        for (plan, budget, kind), line in data.groupby(["plan", "budget", "kind"], sort=False):
            line = line.sort_values("batch")
            colour = palette.get(plan, "black")
            hollow = bool(line["emulated"].any())
            ax.plot(line["batch"] * shift[plan], line[y], color=colour, linestyle="-" if kind == "predicted" else (0, (3, 2)),
                    linewidth=1, marker=markers[budget], markerfacecolor="none" if hollow else colour,
                    markeredgecolor=colour, markersize=6)
        ax.set_xticks(sorted(data["batch"].unique()))
        ax.set_xlabel("batch size")
        ax.set_ylabel(y)
    a.set_title("peak memory vs batch size")
    b.set_title("iteration time vs batch size")
    fig.text(0.5, -0.02, f"each solver drawn {JITTER:.1%} of the batch size apart along x, so identical plans do "
             "not hide each other", ha="center", fontsize=8)
    handles = [Line2D([], [], color=palette.get(p, "black"), label=p) for p in plans_]
    handles += [Line2D([], [], marker=markers[x], linestyle="", color="0.4",
                       label="keep_all (no budget)" if x == "-" else f"budget {x}") for x in markers]
    handles.append(Line2D([], [], linestyle="", label="a solver's plan with nothing changed: on the keep_all line"))
    handles += [Line2D([], [], color="0.4", linestyle="-" if k == "predicted" else (0, (3, 2)), label=k)
                for k in ("predicted", "measured") if k in set(data["kind"])]
    if data["emulated"].any():
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.4",
                              label=f"hollow: {EMULATED_LABEL}"))
    b.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.save(fig, path)


def largest_batch(df: pd.DataFrame, path: str | Path, keep_all: dict[int, dict] | None = None,
                  palette: dict | None = None) -> Path | None:
    """Per absolute budget, the largest of the batch sizes tried at which each solver fits that memory
    (`mutwo.report.largest_batch_frame`; ``keep_all``: the keep_all.json of each batch size, for the
    unmodified step's measured peak). Bars in the solver's colour (``palette``), solid where the
    measured peak fits too, hatched where only the predicted one is known, annotated with the batch and
    the peaks. None (no figure) when there is no absolute budget or only one batch size
    (`mutwo.report.largest_batch_skip_reason`)."""
    if report.largest_batch_skip_reason(df) is not None:
        return None
    table = report.largest_batch_frame(df, keep_all)
    palette = {report.KEEP_ALL_BAR: plots.KEEP_ALL_COLOUR, **(palette or palette_for(df))}
    sizes = sorted(int(b) for b in df["batch_size"].unique())
    budgets = list(table["budget"].unique())
    n_solvers = table["solver"].nunique()
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 1.2 + 0.5 * n_solvers), sharey=True,
                             squeeze=False)
    for ax, budget in zip(axes.flat, budgets):
        part = table[table["budget"] == budget].reset_index(drop=True)
        width = part["largest_batch"].astype(float).fillna(0)
        for i, r in part.iterrows():
            colour = palette.get(r["solver"], "0.5")
            predicted_only = r["basis"] == "predicted"
            ax.barh(i, width[i], height=0.7, color="none" if predicted_only else colour, edgecolor=colour,
                    hatch="///" if predicted_only else "..." if r["basis"] == "emulated" else None, linewidth=1.2,
                    alpha=0.5 if r["basis"] == "emulated" else 1.0)
            text = report.NO_FIT if pd.isna(r["largest_batch"]) else (
                f"{r['largest_batch']}: {report.fmt_bytes(r['predicted_peak_bytes'])} predicted"
                + (f", {report.fmt_bytes(r['measured_peak_bytes'])} "
                   f"{'emulated' if r['basis'] == 'emulated' else 'measured'}" if pd.notna(r["measured_peak_bytes"])
                   else ""))
            ax.text(width[i] + 0.01 * sizes[-1], i, " " + text, va="center", fontsize=8)
        ax.set_yticks(range(len(part)), part["solver"])
        ax.invert_yaxis()
        ax.set_xticks(sizes)
        ax.set_xlim(0, 2.1 * sizes[-1])
        ax.set_xlabel("largest batch that fits")
        ax.set_title(f"{budget} ({report.fmt_bytes(part['budget_bytes'].iloc[0])})")
    handles = [Patch(facecolor="0.5", edgecolor="0.5", label="solid: measured peak (and predicted) fit"),
               Patch(facecolor="none", edgecolor="0.5", hatch="///", label="hatched: predicted peak fits (not executed)"),
               Patch(facecolor="0.5", edgecolor="0.5", hatch="...", alpha=0.5,
                     label="dotted: swaps emulated on CPU, emulated device peak fits")]
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


def _timeline(df: pd.DataFrame, bs: int, problem: Problem, run_dir: Path, palette: dict | None = None) -> Path | None:
    """The plans of one batch size at `timeline_budget` (invalid ones left out), or None."""
    cells = df[(df["batch_size"] == bs) & df["schedule_file"].notna()]
    if cells.empty:
        return None
    budget = timeline_budget(cells)
    chosen = cells[(cells["budget"] == budget) & (cells["status"] != "invalid")]
    chosen = chosen.assign(emulated=report.emulated_swaps(chosen))
    palette = palette or palette_for(df)
    schedules, colours, dashed = {}, {}, []
    for r in chosen.itertuples():
        label = r.solver if r.status in FEASIBLE else f"{r.solver} ({r.status})"
        if r.emulated:
            label += f" {report.EMULATED}"
            dashed.append(label)
        schedules[label] = Schedule.load(run_dir / r.schedule_file)
        colours[label] = palette.get(r.solver)
    if not schedules:
        return None
    budget_bytes = int(chosen["budget_bytes"].iloc[0])
    return plan_timelines(problem, schedules, budget_bytes, run_dir / "plots" / f"timeline_b{bs}.png",
                          title=f"batch {bs}, budget {budget} ({report.fmt_bytes(budget_bytes)}): simulated memory",
                          colours=colours, dashed=dashed)


def run_figures(df: pd.DataFrame, problems: dict[int, Problem], keep_all: dict[int, dict], run_dir: Path) -> list[Path]:
    """Every figure of a run into ``run_dir/plots`` (``problems`` and ``keep_all``: each batch size's
    Problem and keep_all.json), a solver in one colour throughout (`palette_for`); returns the files made."""
    out = run_dir / "plots"
    palette = palette_for(df)
    made = [overhead_vs_peak(df, out / "overhead_vs_peak.png", palette)]  # with PyTorch's reference points
    df = report.solver_rows(df)
    made.append(solve_times(df, out / "solve_times.png", palette))
    for bs, problem in sorted(problems.items()):
        path = _timeline(df, bs, problem, run_dir, palette)
        if path is not None:
            made.append(path)
    if len(problems) > 1:
        keep = pd.DataFrame([{**keep_all[bs], "batch_size": bs} for bs in sorted(problems)])
        made.append(batch_scaling(df, keep, out / "batch_scaling.png", palette))
    largest = largest_batch(df, out / "largest_batch.png", keep_all, palette)
    if largest is not None:
        made.append(largest)
    return made
