"""Files written whole or not at all: every writer goes to a temporary name beside the target, then
renames it into place, so a reader (or ``--resume`` after a kill) never sees half a file.

Temporary names contain ``.tmp`` (``run_folder.remove_partial_files`` deletes what a killed writer left)
and keep the target's suffix, for writers that pick the format from it (``np.savez``, ``savefig``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["atomic_path", "write_text", "write_bytes", "write_json", "write_csv", "append_jsonl", "read_jsonl",
           "jsonable", "TMP_MARK"]

TMP_MARK = ".tmp"  # in every temporary name (and in no final one)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill; on success it is renamed to ``path``,
    on an exception it is deleted and the exception goes on (``path`` keeps its old content, if any).
    The parent folder is made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_MARK}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def jsonable(x: Any) -> Any:
    """numpy scalars / arrays and NaN -> plain JSON values (NaN becomes null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    return x


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(jsonable(obj), indent=1) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def append_jsonl(path: str | Path, row: dict) -> None:
    """One record per line, flushed and fsynced before returning (a kill loses at most this line)."""
    with open(path, "a") as f:
        f.write(json.dumps(jsonable(row)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; a torn line (its writer was killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
