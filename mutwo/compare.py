"""``python -m mutwo.compare SCENARIO.yaml [MORE.yaml ...]``: every solver x budget x batch size of
each scenario (several files make one grid; each scenario keeps its own run folder and report).

The command line only: options, overrides of the scenario, exit statuses and the printed summary. The
run itself is `mutwo.run` (the grid), `mutwo.executors` (where it runs: here, or on a Ray cluster),
`mutwo.pipeline` (one batch size) and `mutwo.cell` (one cell); docs/compare.md explains it,
results/README.md the files it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from mutwo import report
from mutwo.cell import COLUMNS, FEASIBLE
from mutwo.executors import Job, choose_executor, make_executor
from mutwo.run import RunOptions
from mutwo.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["main", "compare", "build_parser", "load", "options", "solver_listing", "whole_solver_errors", "COLUMNS",
           "EXIT_SOLVER_ERRORS"]

EXIT_SOLVER_ERRORS = 3  # every cell of some solver is an error (unless --allow-errors)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mutwo.compare",
        description="Compare activation-memory solvers (keep / recompute / swap) on one scenario: "
                    "solve, simulate and execute every solver x budget x batch size. Several scenario "
                    "files make one grid (each keeps its own run folder and report).")
    p.add_argument("scenarios", type=Path, nargs="*", metavar="scenario",
                   help="scenario YAML file(s) (see docs/compare.md)")
    p.add_argument("--solvers", help="comma-separated solver names, labels or module:function paths; replaces "
                                     "the scenario's list")
    p.add_argument("--plan-space", choices=["both", "recompute", "swap"],
                   help="the decisions any plan may use besides KEEP, for every solver (recompute: no offloading); "
                        "replaces the scenario's plan_space")
    p.add_argument("--budgets", help="comma-separated budgets: fractions of the keep-all peak (0.7) or "
                                     "sizes (6GiB, 512MiB)")
    p.add_argument("--batch-sizes", help="comma-separated batch sizes, e.g. 2,4")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the scenario's device")
    p.add_argument("--target", help="the device op times are for: local (measured here), a device name such as "
                                    "h100-sxm (estimated; see docs/devices.md); replaces the scenario's target")
    p.add_argument("--no-execute", action="store_true", help="simulate only; do not run schedules")
    p.add_argument("--no-search", action="store_true", help="skip the scenario's largest-batch search")
    p.add_argument("--no-references", action="store_true",
                   help="no PyTorch reference rows (eager, checkpoint, memory budget; see docs/compare.md)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results/)")
    p.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest run of this scenario (or --run-id), skipping finished cells")
    p.add_argument("--refresh-profile", action="store_true",
                   help="profile again instead of reusing the cached profile (a resumed run keeps the profile "
                        "each batch size started with)")
    p.add_argument("--allow-errors", action="store_true",
                   help=f"exit 0 even when every cell of a solver is an error (otherwise {EXIT_SOLVER_ERRORS})")
    p.add_argument("--list-solvers", action="store_true",
                   help="list the solvers with their decisions, options, defaults and accepted values, and exit")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where the grid runs: local (this process, one scenario after another; the default) or "
                        "ray (a Ray cluster; pip install 'mutwo[ray]'); replaces the scenario's executor.kind")
    p.add_argument("--address", help="the Ray cluster with --executor ray: auto (the one this machine belongs "
                                     "to) or HOST:PORT (default: a local cluster started for the run)")
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
    if args.plan_space:
        out["plan_space"] = args.plan_space
    if args.target:
        out["target"] = args.target
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


def load(args: argparse.Namespace, path: Path | None = None) -> Scenario:
    """The scenario file (``path``; the first given when None) with the command line's overrides,
    validated together."""
    path = args.scenarios[0] if path is None else path
    scenario = load_scenario(path, _overrides(args, path))
    if args.solvers:
        solvers = _select_solvers(scenario, args.solvers, path)
        scenario = load_scenario(path, {**_overrides(args, path), "solvers": solvers})
    if args.no_execute:
        scenario.execute.enabled = False
    if args.refresh_profile:
        scenario.profile.refresh = True
    if args.no_references:
        scenario.references.enabled = False
    if args.no_search:
        scenario.search.largest_batch = None
    return scenario


def options(args: argparse.Namespace) -> RunOptions:
    """How to run, from the parsed command line."""
    return RunOptions(out=args.out, run_id=args.run_id, resume=args.resume, no_plots=args.no_plots,
                      quiet=args.quiet, debug=args.debug)


def _short(text: object, width: int = 70) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _print_summary(df: pd.DataFrame, run_dir: Path) -> None:
    table = report.summary_frame(df)
    # why a cell has no plan (error, invalid, timeout, oom, infeasible): its message, shortened
    table["reason"] = [("" if st in FEASIBLE else _short(msg)) for st, msg in zip(df["status"], df["message"])]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500,
                           "display.max_colwidth", 80, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    best = report.best_per_budget(df)
    if len(best):
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.float_format", "{:.4g}".format):
            print("\nbest feasible solver per budget:")
            print(best.to_string(index=False))
    print(f"\nresults: {run_dir}  (report.md, results.csv, plots/)")


def whole_solver_errors(df: pd.DataFrame) -> list[str]:
    """Labels of the solvers whose every cell is ``error``: a broken solver, not a result. PyTorch
    reference rows are not solvers: a reference that fails to compile is reported, the run still succeeds."""
    if "kind" in df.columns:
        df = df[df["kind"].fillna("solver") == "solver"]
    if not len(df):
        return []
    errored = df["status"].astype(str).eq("error").groupby(df["solver"], sort=False).all()
    return list(errored[errored].index)


def _shown_default(value: object) -> str:
    from mutwo.registry import NO_DEFAULT

    if value is NO_DEFAULT:
        return "(not stated)"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def solver_listing(names: list[str] | None = None) -> str:
    """Each solver: its first docstring line, the decisions its plans use, and its options with their
    defaults and accepted values (`--list-solvers`; docs/solvers.md explains the declarations)."""
    from mutwo.registry import available_solvers, solver_info
    from mutwo.solver_options import describe

    lines = []
    for name in names or [n for n in available_solvers() if ":" not in n]:
        info = solver_info(name)
        made = ("not declared" if info.decisions is None else
                " and ".join(sorted(d.upper() for d in info.decisions)) or "KEEP only")
        modes = f" (at its defaults; option mode: {', '.join(info.modes)})" if info.modes else ""
        doc = _short(info.doc, 100)
        lines += [f"{name}: {doc}" if doc else name, f"    decisions: {made}{modes}"]
        if info.options is None:
            lines.append("    options: any (not declared, not checked)")
        elif not info.options:
            lines.append("    options: none")
        else:
            width = max(len(k) for k in info.options)
            lines.append("    options:")
            lines += [f"      {k:<{width}}  default {_shown_default(o.default):<14} {describe(o.type)}"
                      for k, o in info.options.items()]
    return "\n".join(lines)


def compare(scenario: str | Path, **overrides: Any) -> tuple[Path, pd.DataFrame]:
    """The command line's run, called from Python (``mutwo.compare``): ``overrides`` are its long options
    with underscores, a list for a comma-separated value, True for a flag (``budgets=[0.6, 0.8]``,
    ``solvers="mutwo_greedy"``, ``no_execute=True``, ``run_id="a"``). Returns the run folder and the
    results table; errors raise (`ScenarioError` for the scenario and its options) instead of exiting."""
    import difflib

    parser = build_parser()
    parser.exit_on_error = False  # a bad value raises argparse.ArgumentError, it does not exit
    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "list_solvers")}
    argv = [str(scenario)]
    for key, value in overrides.items():
        action = flags.get(key)
        if action is None:
            close = difflib.get_close_matches(key, flags, n=1)
            raise TypeError(f"compare() got an unknown option {key!r}; {f'did you mean {close[0]!r}? ' if close else ''}"
                            f"options: {', '.join(flags)}")
        if action.nargs == 0:  # a flag
            if not isinstance(value, bool):
                raise TypeError(f"compare() option {key!r} is a flag: give True or False, not {value!r}")
            argv += [action.option_strings[-1]] if value else []
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            argv += [action.option_strings[-1], text]
    args = parser.parse_args(argv)
    job = Job(load(args), options(args), argv, str(args.scenarios[0]))
    choice = choose_executor([(job.scenario, job.source)], args.executor, args.address)  # executor="ray" too
    return make_executor(choice, quiet=args.quiet).run([job])[0]


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _jobs(args: argparse.Namespace, argv: list[str]) -> list[Job]:
    """Every scenario file, loaded and checked before any work (two of one name would share a folder)."""
    jobs = [Job(load(args, path), options(args), argv, str(path)) for path in args.scenarios]
    seen: dict[str, str] = {}
    for job in jobs:
        if job.scenario.name in seen:
            raise ScenarioError(f"{job.source}: field 'name': {job.scenario.name!r} is also the name of "
                                f"{seen[job.scenario.name]}; each scenario of one command needs its own name "
                                f"(its results folder)")
        seen[job.scenario.name] = job.source
    return jobs


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    from mutwo import run

    run.STOP.set()
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """A run stopped with SIGTERM (``kill``, a job scheduler) ends like Ctrl-C: run.json says
    ``interrupted`` and finished cells stay for --resume. Only where Python allows a handler (the main
    thread); the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from mutwo import run

    run.STOP.clear()
    before = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        run.STOP.clear()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 ok, 2 bad scenario or arguments, 1 the run failed,
    3 every cell of some solver is an error (0 with ``--allow-errors``), 130 interrupted. Errors are
    one line on stderr (``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_solvers:
        print(solver_listing())
        return 0
    if not args.scenarios:
        parser.error("the scenario file is required (or --list-solvers)")
    try:
        jobs = _jobs(args, argv)
        choice = choose_executor([(j.scenario, j.source) for j in jobs], args.executor, args.address)
        executor = make_executor(choice, quiet=args.quiet)
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            warnings.showwarning = _one_line  # e.g. a noisy profile: one line, not a source listing
            outcomes = executor.run(jobs)
    except ScenarioError as exc:
        if args.debug:
            raise
        print("error: " + "; ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        files = " ".join(str(p) for p in args.scenarios)
        print(f"interrupted; finished cells are kept: continue with python -m mutwo.compare {files} "
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
    broken: list[str] = []
    for run_dir, df in outcomes:
        _print_summary(df, run_dir)
        broken += whole_solver_errors(df)
    if broken and not args.allow_errors:
        print(f"error: every cell of {', '.join(dict.fromkeys(broken))} is an error (the reasons are in the table above and in "
              f"report.md); exit status {EXIT_SOLVER_ERRORS} (--allow-errors: 0)", file=sys.stderr)
        return EXIT_SOLVER_ERRORS
    return 0


if __name__ == "__main__":
    sys.exit(main())

