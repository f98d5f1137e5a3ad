"""The largest batch each solver fits under a fixed memory: the table (mutwo.report), the figure
(mutwo.compare_plots) and its report.md section, on hand-made results and on a real small run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mutwo import compare_plots, plots, report
from mutwo.compare import COLUMNS, main

SCENARIOS = Path(__file__).parent.parent / "scenarios"
MiB = 2**20
KEEP = {2: 0.5 * MiB, 4: 0.9 * MiB, 8: 1.7 * MiB}  # keep-all predicted peak per batch size


def _cell(bs: int, solver: str, status: str, pred: float | None, budget: str = "1MiB",
          measured: float | None = None, note: str = "not executed (--no-execute)") -> dict:
    nbytes = MiB if budget == "1MiB" else int(float(budget) * KEEP[bs])
    return {"batch_size": bs, "solver": solver, "solver_name": solver, "budget": budget, "budget_bytes": nbytes,
            "budget_fraction": nbytes / KEEP[bs], "status": status, "predicted_peak_bytes": pred,
            "keep_all_peak_bytes": KEEP[bs], "executed": measured is not None, "execute_note": note,
            "measured_peak_bytes": measured}


def _frame(cells: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: None for c in COLUMNS} | c for c in cells], columns=COLUMNS)


def _results() -> pd.DataFrame:
    """Three batch sizes, an absolute budget (1MiB) and a fraction (0.5, a different memory per batch)."""
    cells = [
        # fits at every batch size (simulated only)
        _cell(2, "all", "optimal", 0.4 * MiB), _cell(4, "all", "feasible", 0.8 * MiB),
        _cell(8, "all", "feasible", 0.95 * MiB),
        # batch 4 predicted to fit, but its measured peak is over the memory; batch 8 infeasible
        _cell(2, "measured_over", "feasible", 0.5 * MiB, measured=0.6 * MiB, note="executed"),
        _cell(4, "measured_over", "feasible", 0.9 * MiB, measured=1.1 * MiB, note="executed"),
        _cell(8, "measured_over", "infeasible", 1.2 * MiB),
        # invalid (claimed feasible over the budget) and error cells do not fit
        _cell(2, "broken", "feasible", 0.5 * MiB), _cell(4, "broken", "invalid", 1.3 * MiB),
        _cell(8, "broken", "error", None),
        # execution failed at 8, timeout is not a plan that fits; not monotone: 2 infeasible, 4 fits
        _cell(2, "odd", "infeasible", 0.6 * MiB), _cell(4, "odd", "feasible", 0.7 * MiB),
        _cell(8, "odd", "feasible", 0.9 * MiB, note="execution failed: RuntimeError: boom"),
        _cell(2, "slow", "timeout", 0.5 * MiB), _cell(4, "slow", "timeout", 0.5 * MiB),
        _cell(8, "slow", "timeout", 0.5 * MiB),
        # fits at no batch size
        _cell(2, "never", "infeasible", 1.1 * MiB), _cell(4, "never", "error", None),
        _cell(8, "never", "infeasible", 1.5 * MiB),
    ]
    fractions = [_cell(bs, "all", "feasible", 0.5 * KEEP[bs], budget="0.5") for bs in KEEP]
    return _frame(cells + fractions)


def _by_solver(table: pd.DataFrame) -> dict[str, tuple]:
    return {r.solver: (None if pd.isna(r.largest_batch) else int(r.largest_batch), r.basis)
            for r in table.itertuples()}


def test_table_largest_batch_per_solver() -> None:
    table = report.largest_batch_frame(_results())
    assert list(table.columns) == ["budget", "budget_bytes", "solver", "largest_batch", "predicted_peak_bytes",
                                   "measured_peak_bytes", "basis"]
    assert set(table["budget"]) == {"1MiB"} and (table["budget_bytes"] == MiB).all()  # 0.5 is a fraction
    assert _by_solver(table) == {
        report.KEEP_ALL_BAR: (4, "predicted"), "all": (8, "predicted"), "measured_over": (2, "measured"),
        "broken": (2, "predicted"), "odd": (4, "predicted"), "slow": (None, report.NO_FIT),
        "never": (None, report.NO_FIT)}
    assert table["solver"].iloc[0] == report.KEEP_ALL_BAR
    row = table.set_index("solver").loc["measured_over"]
    assert row["predicted_peak_bytes"] == 0.5 * MiB and row["measured_peak_bytes"] == 0.6 * MiB
    assert table.set_index("solver").loc["all", "predicted_peak_bytes"] == 0.95 * MiB
    assert table.set_index("solver").loc["never"][["predicted_peak_bytes", "measured_peak_bytes"]].isna().all()


def test_keep_all_measured_peak_counts() -> None:
    """The unmodified step's measured peak (keep_all.json) over the memory rules that batch out."""
    table = report.largest_batch_frame(_results(), {2: {"measured_peak_bytes": 0.5 * MiB},
                                                    4: {"measured_peak_bytes": 1.05 * MiB}, 8: {}})
    assert _by_solver(table)[report.KEEP_ALL_BAR] == (2, "measured")
    table = report.largest_batch_frame(_results(), {4: {"measured_peak_bytes": 0.9 * MiB}})
    row = table.set_index("solver").loc[report.KEEP_ALL_BAR]
    assert (row["largest_batch"], row["measured_peak_bytes"], row["basis"]) == (4, 0.9 * MiB, "measured")


def test_no_table_without_absolute_budget_or_several_batches(tmp_path: Path) -> None:
    df = _results()
    one_batch = df[df["batch_size"] == 4]
    fractions = df[df["budget"] == "0.5"]
    assert "one batch size" in report.largest_batch_skip_reason(one_batch)
    assert "absolute" in report.largest_batch_skip_reason(fractions)
    assert report.largest_batch_skip_reason(df) is None
    for part in (one_batch, fractions):
        assert report.largest_batch_frame(part).empty
        assert compare_plots.largest_batch(part, tmp_path / "largest_batch.png") is None
    assert not list(tmp_path.iterdir())
    # an absolute budget tried at one batch size only is not a comparison across batches either
    assert report.fixed_budgets(_frame([_cell(2, "a", "feasible", 1.0), _cell(4, "a", "feasible", 1.0),
                                        _cell(2, "a", "feasible", 1.0, budget="0.5")])) == ["1MiB"]


def test_png_written(tmp_path: Path) -> None:
    path = compare_plots.largest_batch(_results(), tmp_path / "plots" / "largest_batch.png",
                                       {4: {"measured_peak_bytes": 0.9 * MiB}})
    assert path == tmp_path / "plots" / "largest_batch.png" and path.stat().st_size > 5000
    assert [p.name for p in path.parent.iterdir()] == ["largest_batch.png"]  # no temporary left


@pytest.fixture
def _profile_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


@pytest.mark.usefixtures("_profile_cache")
def test_tiny_batches_end_to_end(tmp_path: Path) -> None:
    """A real run: keep-all fits 600KiB up to batch 256, mutwo_greedy's plan fits batch 512 (checked by
    hand once against the run's results.csv); nothing fits 200KiB; the fraction 1.0 is left out."""
    args = [str(SCENARIOS / "tiny_batches.yaml"), "--no-execute", "--no-plots", "--quiet", "--out",
            str(tmp_path), "--run-id", "r"]
    assert main(args) == 0
    run = tmp_path / "tiny_batches" / "r"
    df = pd.read_csv(run / "results.csv")
    keep_all = {bs: json.loads((run / f"batch{bs}" / "keep_all.json").read_text()) for bs in (128, 256, 512)}
    table = report.largest_batch_frame(df, keep_all)
    assert set(table["budget"]) == {"600KiB", "200KiB"}
    fits = table[table["budget"] == "600KiB"].set_index("solver")
    assert fits["largest_batch"].to_dict() == {report.KEEP_ALL_BAR: 256, "keep_all": 256, "recompute_all": 256,
                                              "knapsack": 256, "mutwo_greedy": 512}
    assert (fits["basis"] == "predicted").all() and fits["measured_peak_bytes"].isna().all()
    greedy = df[(df["solver"] == "mutwo_greedy") & (df["budget"] == "600KiB") & (df["batch_size"] == 512)].iloc[0]
    assert greedy["status"] in ("optimal", "feasible") and greedy["predicted_peak_bytes"] <= 600 * 1024
    assert fits.loc["mutwo_greedy", "predicted_peak_bytes"] == greedy["predicted_peak_bytes"]
    assert fits.loc[report.KEEP_ALL_BAR, "predicted_peak_bytes"] == keep_all[256]["keep_all_peak_bytes"]
    assert keep_all[512]["keep_all_peak_bytes"] > 600 * 1024
    assert (table[table["budget"] == "200KiB"]["basis"] == report.NO_FIT).all()
    text = (run / "report.md").read_text()
    assert "## Largest batch under a fixed memory" in text and "largest **of the batch sizes tried**" in text
    assert f"| 600KiB | 600.00 KiB | {report.KEEP_ALL_BAR} | 256 |" in text
    assert "| 600KiB | 600.00 KiB | mutwo_greedy | 512 |" in text
    assert compare_plots.largest_batch(df, run / "plots" / "largest_batch.png", keep_all).stat().st_size > 5000


# ---------------------------------------------------------------------- one colour per solver, one keep-all label
def test_palette_is_one_colour_per_label_keep_all_grey() -> None:
    pal = plots.solver_palette(["mutwo_greedy", "keep_all", "knapsack", "a:b", "knapsack"])
    assert set(pal) == {"keep_all", "knapsack", "mutwo_greedy", "a:b"}
    assert pal["keep_all"] == matplotlib.colors.to_rgb(plots.KEEP_ALL_COLOUR)
    others = [pal[k] for k in ("a:b", "knapsack", "mutwo_greedy")]
    assert len(set(others)) == 3 and pal["keep_all"] not in others
    # keyed by label, not by position: the same label keeps its colour whatever else is listed beside it
    assert plots.solver_palette(["knapsack", "mutwo_greedy", "keep_all", "a:b"]) == pal
    assert plots.solver_palette(["keep_all"])["keep_all"] == pal["keep_all"]
    many = plots.solver_palette([f"s{i:02d}" for i in range(18)])
    assert len({v for k, v in many.items() if k != "keep_all"}) == 18  # 18 distinct before it cycles


def _colours(fig: plt.Figure) -> set[tuple]:
    """Every RGB a figure draws points, lines or boxes in (face and edge)."""
    out = set()
    for ax in fig.axes:
        for art in [*ax.collections, *ax.patches]:
            for c in [*np.atleast_2d(art.get_facecolor()), *np.atleast_2d(art.get_edgecolor())]:
                if len(c) and c[-1] > 0:
                    out.add(tuple(np.round(c[:3], 4)))
        for line in ax.lines:
            for c in (line.get_color(), line.get_markeredgecolor()):
                out.add(tuple(np.round(matplotlib.colors.to_rgb(c), 4)))
    return out


def _figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, plt.Figure]:
    """Catch each figure as it is saved (plots.save closes it)."""
    caught = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: caught.setdefault(Path(path).name, fig) and Path(path))
    return caught


def _plans() -> pd.DataFrame:
    """Two batch sizes, keep_all and two solvers; greedy's plan swaps (emulated on CPU); at budget 1.0
    all three return the keep-all plan (one spot)."""
    cells = []
    for bs in (2, 4):
        for solver, r, s in (("keep_all", 0, 0), ("knapsack", 3, 0), ("mutwo_greedy", 0, 2)):
            for budget in ("1.0", "0.8"):
                keep = solver == "keep_all" or budget == "1.0"
                peak = KEEP[bs] * (1.0 if keep else 0.7)
                cells.append({**_cell(bs, solver, "feasible" if keep or solver != "keep_all" else "infeasible",
                                      peak, budget="1.0" if budget == "1.0" else "0.8"),
                              "budget_bytes": int(float(budget) * KEEP[bs]), "device": "cpu",
                              "n_recompute": 0 if keep else r, "n_swap": 0 if keep else s,
                              "predicted_overhead_pct": 0.0 if keep else 10.0 + r, "predicted_time_s": 1.0,
                              "solve_time_s": 0.01, "executed": True, "measured_peak_bytes": peak,
                              "measured_overhead_pct": 0.0 if keep else 12.0 + r, "measured_time_s": 1.0,
                              "emulated_swap": bool(not keep and s), "kind": "solver",
                              "emulated_device_peak_bytes": peak * 0.9 if not keep and s else None})
    return _frame(cells)


def test_figures_use_the_runs_palette(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    df = _plans()
    pal = compare_plots.palette_for(df)
    assert pal == plots.solver_palette(["keep_all", "knapsack", "mutwo_greedy"])
    figs = _figures(monkeypatch)
    compare_plots.overhead_vs_peak(df, tmp_path / "o.png", pal)
    compare_plots.solve_times(df, tmp_path / "s.png", pal)
    keep = pd.DataFrame({"batch_size": [2, 4], "keep_all_peak_bytes": [KEEP[2], KEEP[4]],
                         "keep_all_time_s": [1.0, 1.0]})
    compare_plots.batch_scaling(df, keep, tmp_path / "b.png", pal)
    wanted = {tuple(np.round(c, 4)) for c in pal.values()}
    for name, fig in figs.items():
        assert wanted <= _colours(fig), name  # every solver in its colour, in every figure
    # a figure drawn alone (no palette passed) picks the same colours from its own frame
    compare_plots.overhead_vs_peak(df[df["budget"] == "0.8"], tmp_path / "alone.png")
    assert {tuple(np.round(pal[s], 4)) for s in ("knapsack", "mutwo_greedy")} <= _colours(figs["alone.png"])


def _legend_texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]


def test_legends_mark_emulated_swaps_shared_spots_and_budgets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    df = _plans()
    figs = _figures(monkeypatch)
    compare_plots.overhead_vs_peak(df, tmp_path / "o.png")
    keep = pd.DataFrame({"batch_size": [2, 4], "keep_all_peak_bytes": [KEEP[2], KEEP[4]],
                         "keep_all_time_s": [1.0, 1.0]})
    compare_plots.batch_scaling(df, keep, tmp_path / "b.png")
    over, scaling = _legend_texts(figs["o.png"]), _legend_texts(figs["b.png"])
    assert any(compare_plots.EMULATED_LABEL in t for t in over) and any("×N" in t for t in over)
    counts = [t.get_text() for ax in figs["o.png"].axes for t in ax.texts if t.get_text().startswith("×")]
    assert counts == ["×3", "×3", "×3", "×3"]  # per batch: keep-all's spot, predicted and measured
    hollow = [c for ax in figs["o.png"].axes for c in ax.collections if not np.atleast_2d(c.get_facecolor()).any()]
    assert len(hollow) == 4  # greedy's swap plan, predicted and measured, in both panels
    assert {"budget 0.8", "keep_all (no budget)"} <= set(scaling)
    assert "budget 1.0" not in scaling  # every plan at 1.0 is keep-all's: drawn once, as the keep_all line
    assert any(compare_plots.EMULATED_LABEL in t for t in scaling)
    for texts in (over, scaling):  # one keep-all label
        assert "keep_all" in texts and not any("keep-all" in t for t in texts)


def test_timeline_unit_follows_the_magnitude_and_marks_the_peak(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    figs = _figures(monkeypatch)
    spike = np.array([1, 2, 3, 9, 3, 2, 1], dtype=float) * 2**20  # the one-op peak sits at the boundary
    plots.memory_timeline({"keep_all": spike, "p": spike / 2}, 3, tmp_path / "t.png", limit_bytes=5 * 2**20)
    ax = figs["t.png"].axes[0]
    assert ax.get_ylabel() == "live memory (MiB)" and ax.get_ylim()[1] >= 9
    assert _legend_texts(figs["t.png"])[1:3] == ["keep_all - peak 9 MiB at op 3", "p - peak 4.5 MiB at op 3"]
    peaks = [c.get_offsets()[0].tolist() for c in ax.collections if len(c.get_offsets()) == 1]
    assert peaks == [[3, 9], [3, 4.5]]  # each marked at its op
    assert not [line for line in ax.lines if len(set(line.get_xdata())) == 1]  # no vertical line over the spike
    plots.memory_timeline({"x": spike / 2**10}, 3, tmp_path / "k.png")
    assert figs["k.png"].axes[0].get_ylabel() == "live memory (KiB)"


def test_largest_batch_bars_in_the_solvers_colours(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    df = _results()
    pal = compare_plots.palette_for(df)
    figs = _figures(monkeypatch)
    compare_plots.largest_batch(df, tmp_path / "l.png", {4: {"measured_peak_bytes": 0.9 * MiB}}, pal)
    fig = figs["l.png"]
    assert {tuple(np.round(c, 4)) for c in pal.values()} <= _colours(fig)
    bars = {t.get_text(): p for ax in fig.axes for t, p in zip(ax.get_yticklabels(), ax.patches)}
    assert np.allclose(bars[report.KEEP_ALL_BAR].get_edgecolor()[:3], pal["keep_all"])  # one keep-all colour
    assert bars["measured_over"].get_hatch() is None and bars["all"].get_hatch() == "///"  # measured: solid
