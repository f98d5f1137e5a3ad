"""Where a comparison's grid runs: in this process (the default), or on a Ray cluster.

An executor takes the scenarios of one command (`Job` s) and returns each one's run folder and results
table; every executor writes the same run folders (`mutwo.run`). The local executor is the grid as it
always ran, one scenario after another. The Ray executor (`mutwo.ray_executor`) is imported only when
chosen, so Ray is an optional extra (``pip install 'mutwo[ray]'``). docs/compare.md ("Running on a Ray
cluster") says what each guarantees.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mutwo.scenario import ScenarioError

if TYPE_CHECKING:
    import pandas as pd

    from mutwo.run import RunOptions
    from mutwo.scenario import Scenario

__all__ = ["Job", "Outcome", "Executor", "LocalExecutor", "ExecutorChoice", "choose_executor", "make_executor",
           "RAY_INSTALL"]

RAY_INSTALL = "pip install 'mutwo[ray]'"


@dataclass(frozen=True)
class Job:
    """One scenario of the command: what `mutwo.run.run_scenario` takes."""

    scenario: Scenario
    options: RunOptions
    argv: list[str]
    source: str  # the scenario file, as given


Outcome = tuple[Path, "pd.DataFrame"]  # a scenario's run folder and results table


class Executor(Protocol):
    """Runs the jobs' grids; a job's failure (or Ctrl-C) is recorded in its run.json and raised."""

    def run(self, jobs: Sequence[Job]) -> list[Outcome]: ...


class LocalExecutor:
    """Today's grid: every scenario in this process, one after another."""

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        from mutwo.run import run_scenario

        return [run_scenario(j.scenario, j.options, j.argv, j.source) for j in jobs]


@dataclass(frozen=True)
class ExecutorChoice:
    """The executor a command runs with: ``kind`` (local | ray), the Ray ``address`` and the most
    solver calls in flight (``max_concurrent``)."""

    kind: str = "local"
    address: str | None = None
    max_concurrent: int | None = None


def choose_executor(scenarios: Sequence[tuple[Scenario, str]], kind: str | None = None,
                    address: str | None = None) -> ExecutorChoice:
    """The command line's ``--executor`` / ``--address`` over the scenarios' ``executor`` sections, which
    must agree when several files are given (one grid runs in one place)."""
    sections = {(s.executor.kind, s.executor.address, s.executor.max_concurrent): src for s, src in scenarios}
    if kind is None and len(sections) > 1:
        (a, first), (b, second) = list(sections.items())[:2]
        raise ScenarioError(f"{second}: field 'executor' is {_shown(b)} but {first} says {_shown(a)}; one command "
                            f"runs one grid in one place: make them agree, or choose with --executor")
    file_kind, file_address, most = next(iter(sections)) if sections else ("local", None, None)
    kind = kind or file_kind
    if address is not None and kind != "ray":
        raise ScenarioError(f"--address {address} is a Ray cluster's; add --executor ray (or drop --address)")
    return ExecutorChoice(kind, address if address is not None else file_address, most)


def _shown(section: tuple) -> str:
    kind, address, most = section
    return f"{{kind: {kind}, address: {address}, max_concurrent: {most}}}"


def make_executor(choice: ExecutorChoice, *, quiet: bool = False) -> Executor:
    """The executor ``choice`` names; Ray's is imported here only. Without Ray installed: ScenarioError
    with the install command."""
    if choice.kind == "local":
        return LocalExecutor()
    if importlib.util.find_spec("ray") is None:
        raise ScenarioError(f"--executor ray needs Ray, which is not installed here: {RAY_INSTALL}")
    from mutwo.ray_executor import RayExecutor

    return RayExecutor(choice.address, max_concurrent=choice.max_concurrent, quiet=quiet)
