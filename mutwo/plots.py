"""Seaborn figures. Every function writes one PNG atomically and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mutwo.files import atomic_path  # noqa: E402

__all__ = ["memory_timeline", "op_times", "activation_attributes", "save"]


def save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def memory_timeline(frames: dict[str, np.ndarray], fwd_end: int, path: str | Path, *,
                    limit_bytes: float | None = None, title: str = "memory along the op order") -> Path:
    """Live bytes against execution rank, one line per label, with the boundary and a limit line."""
    rows = [pd.DataFrame({"op position": np.arange(len(v)), "GiB": np.asarray(v) / 2**30, "plan": k})
            for k, v in frames.items()]
    df = pd.concat(rows, ignore_index=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.lineplot(data=df, x="op position", y="GiB", hue="plan", ax=ax, linewidth=1)
    ax.axvline(fwd_end, color="grey", linestyle="--", label="forward | backward")
    if limit_bytes is not None:
        ax.axhline(limit_bytes / 2**30, color="red", linestyle=":", label="limit")
    ax.legend(loc="upper right", fontsize=8)
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
