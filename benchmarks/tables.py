"""Markdown tables from the benchmark CSVs under ``results/benchmarks/`` (what docs/benchmarks.md and the
README quote), so a re-run's figures can be pasted without retyping.

    python -m benchmarks.tables [--results results/benchmarks]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks._common import RESULTS, markdown

__all__ = ["reference_table", "fidelity_table", "compare_table", "gap_table", "frontier_table", "main"]


def _load(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    return pd.read_csv(path) if path.exists() else None


def reference_table(df: pd.DataFrame) -> pd.DataFrame:
    """PyTorch's points: peak (MiB and / eager) and time / eager (interleaved eager steps)."""
    point = [("eager" if r.variant == "eager" else "checkpoint per block" if r.variant == "checkpoint"
              else f"{r.backend} budget {r.budget:g}") for r in df.itertuples()]
    return pd.DataFrame({"model": df.model, "PyTorch": point, "peak MiB": (df.peak_bytes / 2**20).round(1),
                         "peak / eager": df.peak_ratio.round(3), "time / eager": df.time_ratio.round(2)})


def fidelity_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "plans", "peak_within_3pct", "max_abs_peak_err_pct", "worst_peak", "time_within_10pct",
            "overhead_within_10pct", "overhead_within_10pct_min", "median_abs_time_err_pct",
            "median_abs_overhead_err_pct", "max_abs_time_err_pct", "worst_time"]
    return df[[c for c in cols if c in df]].round(1)


def compare_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per PyTorch point: the best recompute-only mutwo plan at no more memory, then the best of all."""
    out = pd.DataFrame({"model": df.model, "PyTorch point": df.pytorch,
                        "PyTorch peak / time (min)": [
                            f"{p:.3f} / {t:.2f}" + (f" ({m:.2f})" if m == m else "") for p, t, m in
                            zip(df.pytorch_peak_ratio, df.pytorch_time_ratio,
                                df.get("pytorch_time_min_ratio", pd.Series(float("nan"), index=df.index)))]})
    for pool, title in (("recompute_only", "mutwo recompute-only"), ("all", "mutwo any plan (CPU swaps emulated)")):
        best = []
        for r in df.itertuples():
            solver = getattr(r, f"{pool}_solver")
            peak = getattr(r, f"{pool}_peak_ratio", float("nan"))
            if peak != peak:
                best.append(f"{solver}")
                continue
            verdict = getattr(r, f"{pool}_verdict", None) or ("holds" if getattr(r, f"{pool}_holds") else "slower")
            vmin = getattr(r, f"{pool}_verdict_min", None)
            tmin = getattr(r, f"{pool}_time_min_ratio", float("nan"))
            extra = f"; min {tmin:.2f}: {vmin}" if vmin and tmin == tmin else ""
            best.append(f"{solver}: {peak:.3f} / {getattr(r, f'{pool}_time_ratio'):.2f} ({verdict}{extra})")
        out[title] = best
    return out


def gap_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "pool", "budget_fraction", "greedy_time_s", "best_ilp", "best_ilp_status", "best_ilp_time_s",
            "gap_pct"]
    return df[[c for c in cols if c in df]].round(4)


def frontier_table(plans: pd.DataFrame) -> pd.DataFrame:
    """Each model's measured trade-off frontier (recompute-only plans, then all plans)."""
    from benchmarks.quality import _usable, pareto

    rows = []
    ok = _usable(plans)
    for model, d in ok.groupby("model", sort=False):
        for pool, sel in (("recompute-only", d[~d.has_swap.astype(bool)]), ("all", d)):
            for r in pareto(sel).itertuples():
                rows.append({"model": model, "pool": pool, "plan": r.solver if r.budget_fraction != r.budget_fraction
                             else f"{r.solver}@{r.budget_fraction:.3g}", "peak / unmodified": round(r.measured_peak_ratio, 3),
                             "time / unmodified": round(r.measured_time_ratio, 2),
                             "predicted time ratio": round(r.predicted_time_ratio, 2)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    f = args.results
    sections = [("PyTorch reference (pytorch_reference.csv)", "pytorch_reference.csv", reference_table),
                ("Fidelity (fidelity_summary.csv)", "fidelity_summary.csv", fidelity_table),
                ("Quality: mutwo against PyTorch (quality_compare.csv)", "quality_compare.csv", compare_table),
                ("Quality: measured frontier (quality_plans.csv)", "quality_plans.csv", frontier_table),
                ("Quality: greedy against the best ILP (quality_gap.csv)", "quality_gap.csv", gap_table)]
    for title, name, fn in sections:
        df = _load(f, name)
        if df is None or df.empty:
            continue
        print(f"### {title}\n\n{markdown(fn(df))}\n")
    for name, title in (("ilp_real.csv", "ILP backends on real Problems"), ("ilp_speed.csv", "ILP backends, synthetic")):
        ilp = _load(f, name)
        if ilp is not None and len(ilp):
            from benchmarks.ilp_speed import table as ilp_table

            print(f"### {title} ({name})\n\n{markdown(ilp_table(ilp))}\n")
    scale = _load(f, "solver_scale.csv")
    if scale is not None and len(scale):
        from benchmarks.solver_scale import table

        print(f"### Solver scale (solver_scale.csv; seconds)\n\n{markdown(table(scale))}\n")


if __name__ == "__main__":
    main()
