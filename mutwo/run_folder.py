"""The folder of one comparison run: its name, the lock, the checks before ``--resume``, and the finished
cells it holds (results/README.md lists its files; docs/compare.md says how resuming works)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mutwo import files
from mutwo.cell import WORKER_LOST, Row
from mutwo.scenario import ScenarioError

if TYPE_CHECKING:
    from mutwo.scenario import Scenario

__all__ = ["choose", "open_run", "locked", "remove_partial_files", "check_resumable", "read_json",
           "finished_cells", "append_cell", "CELLS_FILE", "RUN_FILE"]

CELLS_FILE = "cells.jsonl"
RUN_FILE = "run.json"

# what a finished cell depends on, beyond its solver and budget: resuming with any of them changed
# would mix rows of two different experiments in one table
_RESUME_KEYS = ("model", "model_options", "optimizer", "profile", "seed", "target")
_RESUME_EXECUTE_KEYS = ("enabled", "iterations", "warmup", "max_slowdown", "memory_limit")


def choose(scenario: Scenario, out: Path, run_id: str | None, resume: bool) -> Path:
    """``out/<scenario>/<run-id>``; without a run id the latest run when resuming, else a new timestamp."""
    root = out / scenario.name
    if run_id:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", run_id):
            raise ScenarioError(f"--run-id {run_id!r}: use letters, digits, '_', '-' or '.' only")
        return root / run_id
    if resume and root.exists():
        runs = sorted(p for p in root.iterdir() if p.is_dir() and (p / RUN_FILE).exists())
        if runs:
            return runs[-1]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, k = root / stamp, 1
    while folder.exists():
        folder, k = root / f"{stamp}-{k}", k + 1
    return folder


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def open_run(scenario: Scenario, device: str, out: Path, run_id: str | None, resume: bool,
             source: str) -> tuple[Path, dict]:
    """The run folder (made) and its previous run.json ({} when new). Refuses, before anything is built,
    an existing run without ``resume`` and a resume under changed settings (ScenarioError)."""
    run_dir = choose(scenario, out, run_id, resume)
    previous = read_json(run_dir / RUN_FILE)
    if not resume and (previous or (run_dir / CELLS_FILE).exists()):
        raise ScenarioError(f"{run_dir} already holds a run; continue it with --resume, or pick another "
                            f"--run-id")
    if resume and previous:
        check_resumable(previous, scenario, device, run_dir, source)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, previous


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold run.lock for the run's duration, so two processes cannot write one run folder. A POSIX
    record lock: the kernel drops it when the process dies, even by SIGKILL (a killed run never blocks
    --resume), and forked solver children do not inherit it."""
    with open(run_dir / "run.lock", "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ScenarioError(f"{run_dir} is in use by another mutwo.compare process (pid "
                                f"{f.read().strip() or '?'}); wait for it, or pick another --run-id") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Temporary files a killed run left mid-write (`mutwo.files` writes to *.tmp*, then renames)."""
    stale = [p for p in run_dir.rglob(f"*{files.TMP_MARK}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_resumable(previous: dict, scenario: Scenario, device: str, run_dir: Path, source: str) -> None:
    """Refuse to resume a run whose finished cells were made under other settings (ScenarioError)."""
    old, new = previous.get("scenario") or {}, scenario.model_dump()
    changed = [(k, old[k], new[k]) for k in _RESUME_KEYS if k in old and old[k] != new[k]]
    old_ex = old.get("execute") or {}
    changed += [(f"execute.{k}", old_ex[k], new["execute"][k]) for k in _RESUME_EXECUTE_KEYS
                if k in old_ex and old_ex[k] != new["execute"][k]]
    old_ref, new_ref = old.get("references") or {}, new["references"]  # reference labels omit the backend
    if old_ref.get("enabled") and new_ref["enabled"] and old_ref.get("backend", new_ref["backend"]) != new_ref["backend"]:
        changed.append(("references.backend", old_ref["backend"], new_ref["backend"]))
    if previous.get("device") not in (None, device):
        changed.append(("device", previous["device"], device))
    old_solvers = {s["label"]: s for s in old.get("solvers", [])}
    for s in new["solvers"]:
        o = old_solvers.get(s["label"])
        if o is not None and (o["name"], o["options"]) != (s["name"], s["options"]):
            changed.append((f"solver {s['label']!r}", {"name": o["name"], "options": o["options"]},
                            {"name": s["name"], "options": s["options"]}))
    if changed:
        what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in changed)
        raise ScenarioError(f"{source}: cannot --resume {run_dir}: its finished cells were made with other "
                            f"settings ({what}); use the settings it started with, or start a new run "
                            f"(drop --resume, or give another --run-id)")


def finished_cells(run_dir: Path) -> dict[str, Row]:
    """The cells a previous run finished, by `Row.key`, after deleting what a kill left half written
    (temporary files, a torn last line of cells.jsonl: appended cells then start on a line of their own).
    A cell whose Ray worker was lost (`WORKER_LOST`) is a fault, not a result: it is dropped, to run again."""
    remove_partial_files(run_dir)
    rows = [Row.from_dict(d) for d in files.read_jsonl(run_dir / CELLS_FILE)]
    rows = [r for r in rows if r.execute_note != WORKER_LOST]
    files.write_text(run_dir / CELLS_FILE, "".join(json.dumps(files.jsonable(r.to_dict())) + "\n" for r in rows))
    return {r.key: r for r in rows}


def append_cell(run_dir: Path, row: Row) -> None:
    """A finished cell, on disk before the next one starts."""
    files.append_jsonl(run_dir / CELLS_FILE, row.to_dict())
