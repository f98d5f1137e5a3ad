"""report.md's verdict at each budget and its column glossary (mutwo.report), on hand-made results:
the fastest fitting plan, ties within the noise, emulated swaps marked and never called measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mutwo import report
from mutwo.compare import COLUMNS

KEEP = 1000  # keep-all predicted peak (bytes) and time 1.0 s: overheads are (time - 1) * 100


def _cell(solver: str, budget: str, status: str = "feasible", *, r: int = 0, s: int = 0, peak: float = 800,
          time: float = 1.0, measured: float | None = None, overhead: float | None = None, spread: float = 1.0,
          emulated_peak: float | None = None, bs: int = 8, rel: float = 0.0) -> dict:
    executed = measured is not None
    return {"batch_size": bs, "solver": solver, "solver_name": solver, "budget": budget, "device": "cpu",
            "budget_bytes": int(float(budget) * KEEP), "status": status, "kind": "solver",
            "n_keep": 6 - r - s, "n_recompute": r, "n_swap": s, "predicted_peak_bytes": peak,
            "predicted_time_s": time, "predicted_overhead_pct": (time - 1.0) * 100, "keep_all_peak_bytes": KEEP,
            "executed": executed, "measured_peak_bytes": measured, "measured_overhead_pct": overhead,
            "measured_time_spread_pct": spread if executed else None, "emulated_swap": (s > 0) if executed else None,
            "emulated_device_peak_bytes": emulated_peak, "max_rel_diff": rel if executed else None}


def _ref(solver: str, peak: float, overhead: float, bs: int = 8) -> dict:
    return {"batch_size": bs, "solver": solver, "kind": "reference", "status": "measured", "executed": True,
            "measured_peak_bytes": peak, "measured_overhead_pct": overhead, "device": "cpu"}


def _frame(cells: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: None for c in COLUMNS} | c for c in cells], columns=COLUMNS)


def _results() -> pd.DataFrame:
    cells = [
        # budget 1.0: keep-all and a plan of `a` identical to it; `c` swaps (emulated) for the same time
        _cell("keep_all", "1.0", peak=1000, measured=1000, overhead=0.0, spread=5.0),
        _cell("a", "1.0", peak=1000, measured=1000, overhead=0.0, spread=5.0),
        _cell("c", "1.0", s=2, peak=700, measured=1000, emulated_peak=700, overhead=30.0),
        # budget 0.9: `c` is predicted fastest but only by emulated swaps; `a` and `b` tie when measured;
        # `d` is over the budget when measured, `e` trains differently
        _cell("keep_all", "0.9", "infeasible", peak=1000),
        _cell("a", "0.9", r=2, peak=850, time=1.10, measured=850, overhead=12.0, spread=2.0),
        _cell("b", "0.9", r=3, peak=800, time=1.20, measured=800, overhead=13.5, spread=1.0),
        _cell("c", "0.9", s=2, peak=700, measured=1000, emulated_peak=700, overhead=30.0),
        _cell("d", "0.9", r=1, peak=880, time=1.15, measured=950, overhead=5.0),
        _cell("e", "0.9", r=4, peak=880, time=1.05, measured=880, overhead=1.0, rel=0.5),
        # budget 0.75: only the swapping plan fits
        _cell("keep_all", "0.75", "infeasible", peak=1000), _cell("a", "0.75", "infeasible", r=2, peak=850),
        _cell("c", "0.75", s=2, peak=700, measured=1000, emulated_peak=700, overhead=30.0),
        # budget 0.5: nothing fits
        _cell("keep_all", "0.5", "infeasible", peak=1000), _cell("c", "0.5", "infeasible", s=2, peak=700),
    ]
    refs = [_ref("pytorch:eager", 1001, 0.0), _ref("pytorch:checkpoint", 850, 25.0),
            _ref("pytorch:memory_budget@0.5", 880, 15.0)]
    return _frame(cells + refs)


def _verdict() -> pd.DataFrame:
    return report.verdict_frame(_results()).set_index("budget")


def test_the_fastest_plan_that_fits_by_prediction_and_by_measurement() -> None:
    v = _verdict()
    assert list(v.index) == ["1.0", "0.9", "0.75", "0.5"]
    # identical plans are one plan, keep_all first; equal predicted time: a plan without emulated swaps
    # wins over c, whose swaps a CPU predicts free (a naive swap-everything plan must not beat keep-all)
    assert (v.loc["1.0", "predicted"], v.loc["1.0", "predicted_emulated"]) == ("keep_all = a", False)
    assert v.loc["1.0", "measured"] == "keep_all = a" and v.loc["1.0", "measured_spread_pct"] == 5.0
    assert v.loc["1.0", "ties"] == ""  # c at +30% is far outside keep-all's noise
    assert v.loc["0.9", "predicted"] == "c" and v.loc["0.9", "predicted_overhead_pct"] == 0.0
    # d measured fastest (+5%) but its measured peak is over the budget; e trains differently
    assert v.loc["0.9", "measured"] == "a" and v.loc["0.9", "measured_overhead_pct"] == 12.0
    assert v.loc["0.9", "over_budget"] == "d" and v.loc["0.9", "differs"] == "e" and "e" not in v.loc["0.9", "ties"]
    assert v.loc["0.75", "measured"] == "c" and bool(v.loc["0.75", "measured_emulated"])
    assert pd.isna(v.loc["0.5", "predicted"]) and pd.isna(v.loc["0.5", "measured"])


def test_near_equal_measured_plans_are_a_tie() -> None:
    v = _verdict()
    assert v.loc["0.9", "ties"] == "`b` +13.5% ±1.0"  # 1.5 points apart, within the 3-point minimum
    assert report._tied(10.0, 1.0, 12.0, 1.0) and not report._tied(10.0, 1.0, 14.0, 1.0)
    assert report._tied(10.0, 1.0, 14.0, 5.0)  # the larger spread decides
    assert not report._tied(10.0, float("nan"), 13.5, None)


def test_emulated_swaps_are_marked_with_the_best_recompute_only_plan_beside() -> None:
    v = _verdict()
    row = v.loc["0.9"]
    assert row["recompute_only"] == "e" and row["recompute_only_predicted_pct"] == pytest.approx(5.0)  # predicted
    assert (row["recompute_only_measured"], row["recompute_only_measured_pct"]) == ("a", 12.0)
    assert pd.isna(v.loc["0.75", "recompute_only"])  # nothing without swaps fits 750 bytes
    assert pd.isna(v.loc["1.0", "recompute_only"])  # neither winner swaps there: no recompute-only line needed


def test_the_best_pytorch_reference_that_fits() -> None:
    v = _verdict()
    # eager is 1 byte over budget 1.0; memory_budget (+15%) beats checkpoint (+25%) at both budgets
    assert v.loc["1.0", "pytorch"] == v.loc["0.9", "pytorch"] == "pytorch:memory_budget@0.5"
    assert v.loc["0.9", "pytorch_peak_bytes"] == 880 and pd.isna(v.loc["0.75", "pytorch"])


def test_keep_all_counts_as_a_plan_without_a_keep_all_cell() -> None:
    df = _results()
    df = df[(df["solver"] != "keep_all") & ~((df["solver"] == "a") & (df["budget"] == "1.0"))]
    measured = {"measured_peak_bytes": 1000, "measured_time_spread_pct": 4.0, "max_rel_diff": 0.0}
    v = report.verdict_frame(df, {8: {"keep_all_peak_bytes": KEEP, "keep_all_time_s": 1.0,
                                      "measured": measured}}).set_index("budget")
    assert v.loc["1.0", "measured"] == "keep_all" and v.loc["1.0", "measured_spread_pct"] == 4.0
    assert v.loc["0.9", "predicted"] == "c"  # keep-all does not fit 0.9
    v = report.verdict_frame(df, {8: {"keep_all_peak_bytes": KEEP, "keep_all_time_s": 1.0}}).set_index("budget")
    assert v.loc["1.0", "recompute_only"] == "keep_all" and v.loc["1.0", "measured"] == "c"  # keep-all not run
    # a keep-all plan found by a solver is the unmodified step: no second keep_all
    v = report.verdict_frame(_results()[lambda d: d["solver"] != "keep_all"], {8: {"keep_all_peak_bytes": KEEP}})
    assert v.set_index("budget").loc["1.0", "measured"] == "a"


def _section() -> str:
    return "\n".join(report.verdict_section(_results(), {}))


def test_the_verdict_never_calls_an_emulated_figure_measured() -> None:
    text = _section()
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert set(lines) == {"1.0", "0.9", "0.75", "0.5"}
    for line in lines.values():  # every mention of the swapping plan carries the mark
        assert line.count("`c`") == line.count(f"`c` {report.EMULATED}")
    assert "measured fastest `a` +12.0% ±2.0, a tie with `b` +13.5% ±1.0" in lines["0.9"]
    assert "predicted winner's saving rests on swaps, emulated on a CPU" in lines["0.9"]
    assert "best recompute-only plan predicted `e` +5.0%, measured `a` +12.0% ±2.0" in lines["0.9"]
    assert "measured peak over the budget: d" in lines["0.9"]
    assert "left out, results differ from the unmodified step's: e" in lines["0.9"]
    assert f"measured fastest `c` {report.EMULATED} +30.0%" in lines["0.75"]
    assert "measured winner's saving rests on swaps, emulated" in lines["0.75"]
    assert "no recompute-only plan fits" in lines["0.75"]
    assert lines["0.5"].endswith("no plan fits.")
    assert "no executed plan fits by measurement" not in text  # every budget had an executed plan that fits
    unrun = report.verdict_section(_results().assign(executed=False, measured_overhead_pct=None), {})
    assert "not executed: no measured figure" in "\n".join(unrun) and "measured fastest" not in "\n".join(unrun)
    assert "`pytorch:memory_budget@0.5` +15.0%" in lines["0.9"]
    assert "emulated device peak" in text and "never measured" in text


def test_tables_mark_emulated_swaps() -> None:
    df = _results()
    table = report.summary_frame(df)
    swaps = table["solver"] == "c"
    assert table.loc[swaps, "R/S"].str.endswith(report.EMULATED).all()
    assert not table.loc[~swaps, "R/S"].str.contains("emulated").any()
    best = report.best_per_budget(report.solver_rows(df)).set_index("budget")
    assert best.loc["0.75", "best (predicted)"] == f"c {report.EMULATED}"
    # measured: by the overhead against the unmodified step, not by raw time (the console's plain pick: e)
    assert best.loc["0.9", "best (measured)"] == "e" and best.loc["0.9", "meas overhead %"] == 1.0
    # a swap plan on CPU that was not executed is marked too
    assert report.emulated_swaps(_frame([_cell("c", "0.9", s=1)])).all()
    assert not report.emulated_swaps(_frame([_cell("c", "0.9", s=1) | {"device": "cuda:0"}])).any()
    # ... unless its swaps are priced for a target GPU's link (estimated times, nothing ran): a prediction
    assert not report.emulated_swaps(_frame([_cell("c", "0.9", s=1) | {"cost_source": "estimated:h100-sxm"}])).any()


def _write(tmp_path: Path) -> str:
    run = {"scenario": {"name": "t", "model": "mlp", "optimizer": {"name": "sgd"}, "seed": 0}, "device": "cpu",
           "command": "x", "started": "now", "run_id": "r", "versions": {"torch": "2"}}
    batches = {8: {"keep_all_peak_bytes": KEEP, "keep_all_time_s": 1.0, "act_bytes_total": 500,
                   "fixed_peak_bytes": 400, "floor_bytes": 650}}
    return report.write_report(tmp_path / "report.md", _results(), run, [], batches).read_text()


def test_report_leads_with_the_verdict_and_explains_every_column_once(tmp_path: Path) -> None:
    text = _write(tmp_path)
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Verdict at each budget" and sections[-1] == "## Columns"
    assert "## Best solver at each budget" not in text
    body, glossary = text.split("## Columns", 1)
    headers = report._table_headers(body.splitlines())
    assert {"R/S", "floor", "fixed peak", "meas overhead %", "emulated device peak MiB"} <= set(headers)
    explained = [line.split("**")[1] for line in glossary.splitlines() if line.startswith("- **")]
    assert sorted(explained) == sorted(headers)  # every column shown, once, and nothing else
    assert "not explained" not in glossary


def test_a_column_missing_from_the_glossary_is_named() -> None:
    lines = ["| batch | mystery |", "|---|---|", "| 1 | 2 |"]
    out = "\n".join(report.glossary_section(lines))
    assert f"- **batch**: {report.COLUMN_GLOSSARY['batch']}" in out
    assert "- **mystery**: (not explained: add it to `mutwo.report.COLUMN_GLOSSARY`)" in out


def test_largest_batch_counts_a_cpu_swap_plan_by_its_emulated_device_peak() -> None:
    """On CPU a swap plan's process peak keeps the host copies: whether it fits a device is the emulated
    device figure, and the table says the basis is emulated, never measured."""
    rows = []
    for bs, peak, process, device in ((2, 600, 640, 590), (4, 690, 970, 694)):
        rows.append({"batch_size": bs, "budget": "700B", "budget_bytes": 700, "solver": "swapper", "status": "feasible",
                     "predicted_peak_bytes": peak, "measured_peak_bytes": process, "emulated_device_peak_bytes": device,
                     "keep_all_peak_bytes": 900, "execute_note": "executed"})
    table = report.largest_batch_frame(pd.DataFrame(rows))
    swapper = table[table["solver"] == "swapper"].iloc[0]
    assert swapper["largest_batch"] == 4 and swapper["basis"] == "emulated" and swapper["measured_peak_bytes"] == 694
