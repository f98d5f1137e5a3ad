"""Seaborn figures. Every function writes one PNG atomically and returns its path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mutwo.files import atomic_path  # noqa: E402

__all__ = ["memory_timeline", "op_times", "activation_attributes", "save", "unit_for", "solver_palette",
           "KEEP_ALL_COLOUR"]

KEEP_ALL_COLOUR = "0.3"  # the keep-all plan: the same dark grey in every figure
# tab20 without its grey pair (14, 15): the strong colours first, then their light partners
_TAB20 = sns.color_palette("tab20", 20)
_COLOURS = [_TAB20[i] for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]


def unit_for(nbytes: float) -> tuple[str, float]:
    """A readable unit for sizes up to ``nbytes``."""
    if nbytes >= 2 * 2**30:
        return "GiB", 2**30
    if nbytes >= 2 * 2**20:
        return "MiB", 2**20
    return "KiB", 2**10


def solver_palette(labels: Iterable[object], keep_all: str = "keep_all") -> dict[str, tuple]:
    """One colour per solver label, the same in every figure of a run: the sorted labels take tab20's
    colours in turn (cycling past 18), ``keep_all`` always `KEEP_ALL_COLOUR`."""
    names = sorted({str(x) for x in labels} - {keep_all})
    out = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(names)}
    out[keep_all] = matplotlib.colors.to_rgb(KEEP_ALL_COLOUR)
    return out


def save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def memory_timeline(frames: dict[str, np.ndarray], fwd_end: int, path: str | Path, *,
                    limit_bytes: float | None = None, title: str = "memory along the op order",
                    colours: dict[str, object] | None = None, dashed: Sequence[str] = ()) -> Path:
    """Live bytes against execution rank, one line per label (``colours``: label -> colour; ``dashed``:
    labels drawn dashed), in a unit for the magnitude. The backward pass is a shaded span rather than a
    line, so a one-op spike at the boundary stays visible; each line's peak is marked on it (▼) and
    given in the legend."""
    top = max([float(np.max(v)) for v in frames.values() if len(v)] + [float(limit_bytes or 0)])
    unit, scale = unit_for(top)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    n = max((len(v) for v in frames.values()), default=0)
    ax.axvspan(fwd_end, max(n - 1, fwd_end), color="0.93", zorder=0, label="backward (shaded)")
    for label, values in frames.items():
        y = np.asarray(values, dtype=float) / scale
        at = int(np.argmax(y)) if len(y) else 0
        peak = f" - peak {y[at]:.4g} {unit} at op {at}" if len(y) else ""  # in the legend: no labels overlap
        line, = ax.plot(np.arange(len(y)), y, color=(colours or {}).get(label), linewidth=1.1, zorder=3,
                        label=label + peak, linestyle="--" if label in dashed else "-")
        if len(y):  # the peak marked on the line, drawn above everything else
            ax.scatter([at], [y[at]], marker="v", s=40, color=line.get_color(), zorder=5, clip_on=False)
    if limit_bytes is not None:
        ax.axhline(limit_bytes / scale, color="red", linestyle=":", zorder=2, label="budget")
    ax.set_ylim(0, top / scale * 1.15)
    ax.set_xlabel("op position (forward, then backward)")
    ax.set_ylabel(f"live memory ({unit})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title)
    return save(fig, path)


def op_times(ops: pd.DataFrame, path: str | Path, top: int = 25) -> Path:
    """The most expensive op kinds (summed time) and per-op time along the order."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = ops.groupby("target")["time_s"].sum().nlargest(top).reset_index()
    sns.barplot(data=kinds, y="target", x="time_s", ax=a, color="steelblue")
    a.set_xlabel("total time (s)")
    a.set_ylabel("")
    a.tick_params(axis="y", labelsize=7)
    sns.scatterplot(data=ops, x="position", y="time_s", hue="phase", s=6, ax=b, linewidth=0)
    b.set_yscale("log")
    b.set_title("per-op run time (median)")
    return save(fig, path)


def activation_attributes(acts: pd.DataFrame, path: str | Path) -> Path:
    """Activation sizes against inactive time, coloured by recomputability (μ-TWO's candidates)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    df = acts.assign(MiB=acts["bytes"] / 2**20)
    sns.scatterplot(data=df, x="inactive_time_s", y="MiB", hue="recomputable", size="recompute_time_s", ax=ax)
    ax.set_title("activations: size vs inactive time")
    return save(fig, path)
