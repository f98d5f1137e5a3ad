"""Shared pieces of the benchmark scripts: the model configurations they agree on, the command-line
flags they share, their output files and a note of how busy the machine was (timings on a shared CPU
mean little without it)."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mutwo import files
from mutwo.timing import set_threads

__all__ = ["RESULTS", "MODELS", "ModelConfig", "model_config", "machine", "set_threads", "write_csv", "markdown",
           "parser", "labels"]

RESULTS = Path("results/benchmarks")


@dataclass(frozen=True)
class ModelConfig:
    """A zoo workload at one size. Chosen so activations, not parameters, dominate the peak."""

    key: str  # short name used in tables and on the command line
    zoo: str  # mutwo.zoo name
    batch: int
    options: dict = field(default_factory=dict)
    # budgets (fractions of the keep-all peak) worth sweeping: where plans exist and differ
    fractions: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.options.items() if k != "dropout")
        return f"{self.zoo} b{self.batch}" + (f" ({extra})" if extra else "")


# ResNet-18 at batch 8 / 64x64 has 13.5 MiB of activations against 44.6 MiB of parameters (and as much
# again of gradients): no activation plan could move its peak much. Batch 32 at 64x64 puts activations
# (54 MiB) above the parameters; even so parameters, gradients and activation gradients keep 77% of its
# 138 MiB peak out of reach (recompute-all reaches 0.86), hence its finer budget grid. BERT-tiny at
# sequence 128 has ~20x more activation than parameter bytes. Dropout 0 makes every BERT run identical.
MODELS: dict[str, ModelConfig] = {
    "resnet18": ModelConfig("resnet18", "resnet18", 32, {"image_size": 64},
                            (0.97, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84)),
    "bert-tiny": ModelConfig("bert-tiny", "bert-tiny", 16, {"seq_len": 128, "dropout": 0.0},
                             (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)),
    "resnet152": ModelConfig("resnet152", "resnet152", 2, {"image_size": 224}, (0.9, 0.8, 0.7, 0.6)),
    # tiny variants for the smoke tests
    "resnet18-smoke": ModelConfig("resnet18-smoke", "resnet18", 2, {"image_size": 32, "num_classes": 10}),
    "bert-smoke": ModelConfig("bert-smoke", "bert-tiny", 4, {"seq_len": 64, "dropout": 0.0}),
}


def model_config(spec: str) -> ModelConfig:
    """``key`` from MODELS, or ``zoo:batch[:opt=value,...]`` (e.g. ``resnet18:16:image_size=128``)."""
    if spec in MODELS:
        return MODELS[spec]
    parts = spec.split(":")
    if len(parts) < 2:
        raise ValueError(f"model {spec!r}: use one of {sorted(MODELS)} or zoo:batch[:key=value,...]")
    opts: dict = {}
    for item in (parts[2].split(",") if len(parts) > 2 and parts[2] else []):
        k, v = item.split("=")
        try:
            opts[k] = int(v)
        except ValueError:
            opts[k] = float(v)
    return ModelConfig(spec, parts[0], int(parts[1]), opts)


def machine() -> dict:
    """What ran the benchmark and how loaded it was (1-minute load average over the core count)."""
    import torch

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__.split("+")[0],
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "load_avg_1min": round(load1, 2)}


def write_csv(df: pd.DataFrame, name: str, out: Path = RESULTS) -> Path:
    """Write ``out/name`` atomically: readers never see half a table."""
    return files.write_csv(out / name, df)


# flags several scripts take, with the defaults they share (a script may override any keyword)
FLAGS: dict[str, dict[str, Any]] = {
    "models": {"nargs": "+", "default": ["resnet18", "bert-tiny"],
               "help": f"keys of {sorted(MODELS)} or zoo:batch[:key=value,...]"},
    "fractions": {"type": float, "nargs": "+", "default": None,
                  "help": "budgets as fractions of the keep-all peak (default: each model's own grid)"},
    "ilps": {"default": "distinct", "choices": ["distinct", "all", "none"]},
    "solvers": {"default": None, "help": "comma-separated labels, e.g. mutwo_greedy,recompute_all"},
    "time-limit": {"type": float, "default": 60.0},
    "threads": {"type": int, "default": 2},
    "iterations": {"type": int, "default": 5},
    "warmup": {"type": int, "default": 1},
    "torch-threads": {"type": int, "default": None, "help": "torch intra-op threads (default: torch's)"},
    "no-plot": {"action": "store_true"},
}


def parser(doc: str, *flags: str, **overrides: dict[str, Any]) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc``, with the shared ``flags`` (names of
    `FLAGS`); ``overrides`` change a flag's keywords, e.g. ``warmup={"default": 2}`` (``time_limit``
    for ``--time-limit``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name in flags:
        ap.add_argument(f"--{name}", **{**FLAGS[name], **overrides.get(name.replace("-", "_"), {})})
    return ap


def labels(text: str | None) -> list[str] | None:
    """A comma-separated ``--solvers`` value as a list (None: not given)."""
    return text.split(",") if text else None


def markdown(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A pipe table (for docs/benchmarks.md), without needing the optional ``tabulate`` package."""
    cols = list(df.columns)

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if v != v else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
