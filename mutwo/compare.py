"""``python -m mutwo.compare SCENARIO.yaml``: every solver x budget x batch size of one scenario.

The command line only: options, overrides of the scenario, exit statuses and the printed summary. The
run itself is `mutwo.run` (the grid), `mutwo.pipeline` (one batch size) and `mutwo.cell` (one cell);
docs/compare.md explains it, results/README.md the files it writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from mutwo import report
from mutwo.cell import COLUMNS
from mutwo.run import RunOptions, run_scenario
from mutwo.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["main", "build_parser", "load", "options", "COLUMNS"]


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mutwo.compare",
        description="Compare activation-memory solvers (keep / recompute / swap) on one scenario: "
                    "solve, simulate and execute every solver x budget x batch size.")
    p.add_argument("scenario", type=Path, help="scenario YAML file (see docs/compare.md)")
    p.add_argument("--solvers", help="comma-separated solver names or labels; replaces the scenario's list")
    p.add_argument("--budgets", help="comma-separated budgets: fractions of the keep-all peak (0.7) or "
                                     "sizes (6GiB, 512MiB)")
    p.add_argument("--batch-sizes", help="comma-separated batch sizes, e.g. 2,4")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the scenario's device")
    p.add_argument("--no-execute", action="store_true", help="simulate only; do not run schedules")
    p.add_argument("--no-references", action="store_true",
                   help="no PyTorch reference rows (eager, checkpoint, memory budget; see docs/compare.md)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results/)")
    p.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest run of this scenario (or --run-id), skipping finished cells")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _overrides(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Command-line values as scenario keys (validated with the rest of the file)."""
    out: dict[str, Any] = {}
    if args.budgets:
        budgets: list[Any] = []
        for x in _split(args.budgets):
            try:
                budgets.append(float(x))
            except ValueError:
                budgets.append(x)
        out["budgets"] = budgets
    if args.batch_sizes:
        try:
            out["batch_size"] = [int(x) for x in _split(args.batch_sizes)]
        except ValueError:
            raise ScenarioError(f"{path}: --batch-sizes {args.batch_sizes!r} must be comma-separated "
                                f"integers, e.g. 2,4") from None
    if args.device:
        out["device"] = args.device
    return out


def _select_solvers(scenario: Scenario, names: str, path: Path) -> list[dict]:
    """--solvers keeps the scenario's options for names it lists, and adds plain others."""
    known = {s.label: s for s in scenario.solvers} | {s.name: s for s in scenario.solvers if s.label == s.name}
    picked = []
    for name in _split(names):
        spec = known.get(name)
        picked.append(spec.model_dump() if spec else {"name": name})
    if not picked:
        raise ScenarioError(f"{path}: --solvers is empty; name at least one solver")
    return picked


def load(args: argparse.Namespace) -> Scenario:
    """The scenario file with the command line's overrides, validated together."""
    scenario = load_scenario(args.scenario, _overrides(args, args.scenario))
    if args.solvers:
        solvers = _select_solvers(scenario, args.solvers, args.scenario)
        scenario = load_scenario(args.scenario, {**_overrides(args, args.scenario), "solvers": solvers})
    if args.no_execute:
        scenario.execute.enabled = False
    if args.no_references:
        scenario.references.enabled = False
    return scenario


def options(args: argparse.Namespace) -> RunOptions:
    """How to run, from the parsed command line."""
    return RunOptions(out=args.out, run_id=args.run_id, resume=args.resume, no_plots=args.no_plots,
                      quiet=args.quiet, debug=args.debug)


def _print_summary(df: pd.DataFrame, run_dir: Path) -> None:
    table = report.summary_frame(df)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500,
                           "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    best = report.best_per_budget(df)
    if len(best):
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.float_format", "{:.4g}".format):
            print("\nbest feasible solver per budget:")
            print(best.to_string(index=False))
    print(f"\nresults: {run_dir}  (report.md, results.csv, plots/)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 ok, 2 bad scenario or arguments, 1 the run failed,
    130 interrupted. Errors are one line on stderr (``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        scenario = load(args)
        run_dir, df = run_scenario(scenario, options(args), argv, args.scenario)
    except ScenarioError as exc:
        if args.debug:
            raise
        print("error: " + "; ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"interrupted; finished cells are kept: continue with python -m mutwo.compare {args.scenario} "
              f"--resume (and the same options)", file=sys.stderr)
        return 130
    except Exception as exc:
        from mutwo.capture import CaptureError

        if args.debug:
            raise
        text = "; ".join(str(exc).splitlines())
        if isinstance(exc, CaptureError):
            print(f"error: {text}", file=sys.stderr)
        else:
            print(f"error: the run failed: {type(exc).__name__}: {text} (run.json records it; --debug shows "
                  f"the traceback; --resume continues after the finished cells)", file=sys.stderr)
        return 1
    _print_summary(df, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

