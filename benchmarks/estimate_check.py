"""The roofline estimator where truth exists: estimated against measured op times on this machine.

    python -m benchmarks.estimate_check                         # CPU, local-cpu spec, one thread
    python -m benchmarks.estimate_check --models resnet18 gpt2:2:seq_len=64

On CPU the spec is ``local-cpu`` (matmul FLOP/s, copy bandwidth and the per-op floor calibrated here,
at the same thread count as the profile). On a CUDA machine the same script compares against op times
measured on the GPU, with the table's spec for that GPU (``--target`` to name one). Per op class: the
number of ops, measured and estimated totals, the median of estimated / measured per op and the worst
(farthest from 1) with its op. Writes ``results/benchmarks/estimate_check.{csv,md}``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks._common import RESULTS, machine, markdown, model_config, parser, set_threads, write_csv
from mutwo import files
from mutwo.capture import capture, flat_state
from mutwo.devices import DeviceSpec, cuda_target, get_device
from mutwo.estimate import calibrate_local_cpu, estimate_profile
from mutwo.profile import profile
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload

DEFAULT_MODELS = ["resnet18:32:image_size=64", "bert-tiny:16:seq_len=128,dropout=0", "gpt2:2:seq_len=64"]


def local_target(device: str, threads: int, target: str | None) -> DeviceSpec:
    """The spec to check against: ``target`` if given, else this GPU's table entry or this CPU measured."""
    import torch

    if target:
        return get_device(target)
    if device == "cuda":
        name = cuda_target(torch.cuda.get_device_name())
        if name is None:
            raise SystemExit(f"{torch.cuda.get_device_name()} is not in mutwo.devices; pass --target")
        return get_device(name)
    return calibrate_local_cpu(threads)


def describe(spec: DeviceSpec) -> str:
    return (f"{spec.name} ({spec.source}): fp32 {spec.flops('fp32') / 1e9:.1f} GFLOP/s, bf16 "
            f"{spec.flops('bf16') / 1e9:.1f} GFLOP/s, memory {spec.hbm_bytes_per_s / 1e9:.2f} GB/s, floor "
            f"{spec.launch_latency_s * 1e6:.1f} us")


def compare(model: str, spec: DeviceSpec, device: str, runs: int, warmup: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-op rows (measured, estimated, class) and the per-class table of one model."""
    cfg = model_config(model)
    wl = build_workload(cfg.zoo, cfg.batch, device=device, **cfg.options)
    opt = OptimizerConfig("adamw")
    graph = capture(wl, opt)
    flat, _, _ = flat_state(wl, opt)
    measured = profile(graph, flat, runs=runs, warmup=warmup, cache=False, progress=False)
    est = estimate_profile(graph, spec)
    ops = pd.DataFrame({"model": cfg.label(), "op": [str(n.target) for n in graph.ops], "op_class": est.op_class,
                        "measured_s": measured.op_time_s, "estimated_s": est.op_time_s})
    ops["ratio"] = ops.estimated_s / ops.measured_s
    rows = [_class_row(cfg.label(), cls, g) for cls, g in ops.groupby("op_class", sort=False)]
    rows.append(_class_row(cfg.label(), "all ops", ops))
    return ops, pd.DataFrame(rows)


def _class_row(model: str, cls: str, g: pd.DataFrame) -> dict:
    ok = g[(g.measured_s > 0) & np.isfinite(g.ratio)]
    worst = ok.iloc[int(np.argmax(np.abs(np.log(ok.ratio))))] if len(ok) else None
    return {"model": model, "op_class": cls, "n_ops": len(g), "measured_ms": 1e3 * g.measured_s.sum(),
            "estimated_ms": 1e3 * g.estimated_s.sum(), "total_ratio": g.estimated_s.sum() / g.measured_s.sum(),
            "median_ratio": float(ok.ratio.median()) if len(ok) else float("nan"),
            "worst_ratio": float(worst.ratio) if worst is not None else float("nan"),
            "worst_op": worst.op if worst is not None else ""}


def main(argv: list[str] | None = None, out=RESULTS) -> pd.DataFrame:
    ap = parser(__doc__, "warmup", warmup={"default": 1})
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="zoo:batch[:key=value,...]")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (profile and calibration)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--target", default=None, help="a mutwo.devices name (default: this machine's)")
    args = ap.parse_args(argv)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    set_threads(args.threads)
    tables, all_ops, heads = [], [], []
    for model in args.models:  # this CPU is measured again before each model: its load drifts
        spec = local_target(device, args.threads, args.target)
        ops, table = compare(model, spec, device, args.runs, args.warmup)
        tables.append(table)
        all_ops.append(ops)
        heads.append(f"- {model}: {describe(spec)}")
    df = pd.concat(tables, ignore_index=True)
    write_csv(df, "estimate_check.csv", out)
    write_csv(pd.concat(all_ops, ignore_index=True), "estimate_check_ops.csv", out)
    text = f"device {device}; {machine()}\n\n" + "\n".join(heads) + "\n\n" + markdown(df, ".3g")
    files.write_text(out / "estimate_check.md", text + "\n")
    print(text)
    return df


if __name__ == "__main__":
    main()
