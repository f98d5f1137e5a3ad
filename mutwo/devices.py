"""Named target devices: the figures a roofline estimate of op times needs (`mutwo.estimate`).

A `DeviceSpec` holds memory, dense FLOP/s per dtype, device-memory bandwidth, the host link per
direction, copy engines, a per-op launch floor and efficiency factors per op class. `get_device` finds
one by name (typos answered with the closest names) or validates a user's mapping (a missing field is
named with its unit). ``local-cpu`` is this machine, measured by a small calibration
(`mutwo.estimate.calibrate_local_cpu`) so the estimator can be checked where truth exists.

The figures, their sources and what "effective" means are in docs/devices.md. Importing this module
does not import torch (a scenario's ``target`` is checked without it).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["DeviceSpec", "DeviceSpecError", "DEVICES", "LOCAL_CPU", "OP_CLASSES", "DEFAULT_EFFICIENCY",
           "get_device", "device_names", "FLOP_DTYPES", "cuda_target"]

GB = 1e9  # vendor bandwidths and FLOP rates are decimal
GiB = 2**30
T = 1e12

LOCAL_CPU = "local-cpu"
FLOP_DTYPES = ("fp32", "tf32", "bf16", "fp16")
# what the estimator distinguishes; see mutwo.estimate.op_class
OP_CLASSES = ("matmul", "conv", "attention", "elementwise", "reduction", "norm", "copy", "memory", "unknown",
              "view", "scalar")

# Fractions of a datasheet peak that eager PyTorch kernels reach (assumed, not measured: large cuBLAS
# GEMMs reach roughly 70-80% of dense tensor-core peak, cuDNN convolutions less, fused attention less
# again; streaming kernels 70-90% of HBM bandwidth). View and scalar ops cost the launch floor only.
DEFAULT_EFFICIENCY: dict[str, float] = {
    "matmul": 0.7, "conv": 0.5, "attention": 0.4, "elementwise": 0.7, "reduction": 0.6, "norm": 0.6,
    "copy": 0.8, "memory": 0.6, "unknown": 0.6}

# Per-op floor on a GPU: eager PyTorch spends a few microseconds of host time per op (dispatch and
# cudaLaunchKernel), so a tiny kernel costs that much, not its roofline time. Assumed round figure.
GPU_LAUNCH_S = 5e-6

# Host links. Nominal: the link's raw rate per direction after line encoding (PCIe 4.0 x16: 16 GT/s x
# 16 lanes x 128/130 / 8 = 31.5 GB/s; PCIe 5.0 x16: 63 GB/s; NVLink-C2C: 900 GB/s total = 450 GB/s per
# direction, GH200 datasheet 2023). Effective: what a pinned cudaMemcpyAsync reaches; assumed 80% of
# nominal (packet and protocol overhead). The cost model uses the effective figure: measure yours
# (nvbandwidth / bandwidthTest) and pass it through a mapping with ``base``.
PCIE4 = 31.5 * GB
PCIE5 = 63.0 * GB
C2C = 450.0 * GB
EFFECTIVE_LINK = 0.8
# Copy engines: NVIDIA datasheets do not list them. Two (one per direction, so device->host and
# host->device overlap) is assumed for every target; cudaDeviceProp.asyncEngineCount tells on a device.
COPY_ENGINES = 2


class DeviceSpecError(ValueError):
    """An unknown target name or an invalid spec mapping; the message names the field and its unit."""


class DeviceSpec(BaseModel):
    """One target device. Rates are per second in SI units; sizes are bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="a short name, e.g. 'my-gpu'")
    memory_bytes: int = Field(gt=0, description="device memory, bytes (or a size like '80GiB')")
    flops_per_s: dict[Literal["fp32", "tf32", "bf16", "fp16"], float] = Field(
        description="dense FLOP/s per dtype: {fp32: ..., tf32: ..., bf16: ..., fp16: ...} (fp32 required)")
    hbm_bytes_per_s: float = Field(gt=0, description="device memory bandwidth, bytes/s (e.g. 3.35e12)")
    host_link_bytes_per_s: float = Field(
        gt=0, description="host link per direction, effective pinned-copy rate, bytes/s (e.g. 50e9)")
    host_link_nominal_bytes_per_s: float | None = Field(
        default=None, gt=0, description="host link per direction, nominal rate, bytes/s (shown, not used)")
    host_link: str = Field(default="", description="what the host link is, e.g. 'PCIe 5.0 x16'")
    copy_engines: int = Field(default=COPY_ENGINES, ge=1, description="DMA copy engines (count)")
    launch_latency_s: float = Field(default=GPU_LAUNCH_S, ge=0, description="per-op time floor, seconds")
    efficiency: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EFFICIENCY),
                                         description="fraction of peak reached per op class, in (0, 1]")
    source: str = Field(default="user", description="where the figures come from")

    @field_validator("memory_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, str):
            from mutwo.scenario import parse_size  # one size syntax for budgets and devices

            return parse_size(v)
        return v

    @field_validator("flops_per_s")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        if "fp32" not in v:
            raise ValueError("needs an 'fp32' entry (FLOP/s); other dtypes fall back to it")
        bad = [k for k, x in v.items() if not x > 0]
        if bad:
            raise ValueError(f"FLOP/s must be positive; {bad} are not")
        return v

    @field_validator("efficiency")
    @classmethod
    def _efficiency(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(DEFAULT_EFFICIENCY))
        if unknown:
            raise ValueError(f"unknown op classes {unknown}; known: {', '.join(DEFAULT_EFFICIENCY)}")
        bad = [k for k, x in v.items() if not 0 < x <= 1]
        if bad:
            raise ValueError(f"efficiencies are fractions in (0, 1]; {bad} are not")
        return {**DEFAULT_EFFICIENCY, **v}

    def flops(self, dtype: str) -> float:
        """Dense FLOP/s for ``dtype`` (fp32 / tf32 / bf16 / fp16); the fp32 rate when not given."""
        return self.flops_per_s.get(dtype, self.flops_per_s["fp32"])


def _gpu(name: str, memory_gib: float, fp32: float, tf32: float, bf16: float, hbm: float, link: str,
         nominal: float, source: str) -> DeviceSpec:
    return DeviceSpec(name=name, memory_bytes=int(memory_gib * GiB),
                      flops_per_s={"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": bf16}, hbm_bytes_per_s=hbm,
                      host_link_bytes_per_s=EFFECTIVE_LINK * nominal, host_link_nominal_bytes_per_s=nominal,
                      host_link=link, source=source)


# Dense rates (no 2:4 sparsity: datasheets print the sparse figure beside or instead of the dense one;
# dense = half of it). fp16 tensor-core rates equal bf16 on all of these. Memory: the capacity printed
# on the datasheet, read as GiB (HBM and GDDR are built in binary units); the CUDA-visible amount is a
# little lower (driver reserve, ECC on L4), and a process also spends some on its CUDA context.
DEVICES: dict[str, DeviceSpec] = {
    # NVIDIA A100 Tensor Core GPU datasheet (2021): FP32 19.5 TFLOPS, TF32 156, BF16/FP16 312 (dense);
    # 40GB HBM2 at 1,555 GB/s, 80GB HBM2e (SXM) at 2,039 GB/s; PCIe Gen4.
    "a100-40gb": _gpu("a100-40gb", 40, 19.5 * T, 156 * T, 312 * T, 1555 * GB, "PCIe 4.0 x16", PCIE4,
                      "NVIDIA A100 datasheet (2021), SXM4 40GB"),
    "a100-80gb": _gpu("a100-80gb", 80, 19.5 * T, 156 * T, 312 * T, 2039 * GB, "PCIe 4.0 x16", PCIE4,
                      "NVIDIA A100 datasheet (2021), SXM4 80GB"),
    # NVIDIA H100 Tensor Core GPU datasheet (2023): SXM FP32 67 TFLOPS, TF32 989 / BF16 1,979 with
    # sparsity (494.5 / 989.5 dense), 80GB HBM3 at 3.35 TB/s; PCIe card FP32 51, TF32 756 / BF16 1,513
    # sparse (378 / 756.5 dense), 80GB HBM2e at 2 TB/s; both PCIe Gen5 (128 GB/s both directions).
    "h100-sxm": _gpu("h100-sxm", 80, 67 * T, 494.5 * T, 989.5 * T, 3350 * GB, "PCIe 5.0 x16", PCIE5,
                     "NVIDIA H100 datasheet (2023), SXM5 80GB"),
    "h100-pcie": _gpu("h100-pcie", 80, 51 * T, 378 * T, 756.5 * T, 2000 * GB, "PCIe 5.0 x16", PCIE5,
                      "NVIDIA H100 datasheet (2023), PCIe 80GB"),
    # NVIDIA H200 Tensor Core GPU datasheet (2024): H100 SXM compute, 141GB HBM3e at 4.8 TB/s, PCIe Gen5.
    "h200": _gpu("h200", 141, 67 * T, 494.5 * T, 989.5 * T, 4800 * GB, "PCIe 5.0 x16", PCIE5,
                 "NVIDIA H200 datasheet (2024), SXM 141GB"),
    # NVIDIA GH200 Grace Hopper Superchip datasheet (2023): H100 compute, 96GB HBM3 at 4 TB/s; the host
    # (Grace) is reached over NVLink-C2C, 900 GB/s total.
    "gh200": _gpu("gh200", 96, 67 * T, 494.5 * T, 989.5 * T, 4000 * GB, "NVLink-C2C", C2C,
                  "NVIDIA GH200 datasheet (2023), 96GB HBM3"),
    # NVIDIA L4 Tensor Core GPU datasheet (2023): FP32 30.3 TFLOPS, TF32 120 / BF16 242 with sparsity
    # (60 / 121 dense), 24GB GDDR6 at 300 GB/s, PCIe Gen4 x16.
    "l4": _gpu("l4", 24, 30.3 * T, 60 * T, 121 * T, 300 * GB, "PCIe 4.0 x16", PCIE4,
               "NVIDIA L4 datasheet (2023)"),
    # NVIDIA Ada Lovelace architecture whitepaper (2022), GeForce RTX 4090: FP32 82.6 TFLOPS, TF32 tensor
    # 82.6 dense, FP16/BF16 tensor with FP32 accumulate 165.2 dense (what training uses); 24GB GDDR6X at
    # 1,008 GB/s; PCIe Gen4 x16.
    "rtx-4090": _gpu("rtx-4090", 24, 82.6 * T, 82.6 * T, 165.2 * T, 1008 * GB, "PCIe 4.0 x16", PCIE4,
                     "NVIDIA Ada Lovelace whitepaper (2022), GeForce RTX 4090"),
}


def device_names() -> list[str]:
    """Every name `get_device` accepts."""
    return [*DEVICES, LOCAL_CPU]


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def get_device(target: str | Mapping[str, Any] | DeviceSpec) -> DeviceSpec:
    """The DeviceSpec a name (``"h100-sxm"``), a mapping or a spec names.

    A mapping holds DeviceSpec's fields; with ``base: <name>`` it starts from that table entry and
    overrides what it gives (``{base: h100-sxm, memory_bytes: 94GiB}``). ``local-cpu`` is measured here
    once per process. Raises DeviceSpecError naming the closest names, or the field and its unit."""
    if isinstance(target, DeviceSpec):
        return target
    if isinstance(target, str):
        return _named(target)
    if isinstance(target, Mapping):
        return _from_mapping(dict(target))
    raise DeviceSpecError(f"a target is a device name ({', '.join(device_names())}) or a mapping of "
                          f"DeviceSpec fields, not {type(target).__name__}")


def _named(name: str) -> DeviceSpec:
    key = _normal(name)
    if key == LOCAL_CPU:
        return _local_cpu()
    if key in DEVICES:
        return DEVICES[key]
    squashed = {n.replace("-", ""): n for n in device_names()}
    if key.replace("-", "") in squashed:  # "rtx4090", "h100sxm"
        return _named(squashed[key.replace("-", "")])
    prefixed = [n for n in device_names() if key and n.startswith(key)]  # "h100" -> h100-sxm, h100-pcie first
    close = prefixed + [n for n in difflib.get_close_matches(key, device_names(), n=3, cutoff=0.4)
                        if n not in prefixed]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise DeviceSpecError(f"unknown target device {name!r}; {hint}known: {', '.join(device_names())}; or give "
                          f"a mapping of DeviceSpec fields (see docs/devices.md)")


@functools.lru_cache(maxsize=1)
def _local_cpu() -> DeviceSpec:
    from mutwo.estimate import calibrate_local_cpu  # measures with torch; this module stays torch-free

    return calibrate_local_cpu()


def _from_mapping(raw: dict[str, Any]) -> DeviceSpec:
    base = raw.pop("base", None)
    if base is not None:
        start = _named(str(base)).model_dump()
        start.update(name=raw.get("name", f"{start['name']}-custom"), source=f"{start['source']}, with overrides")
        raw = {**start, **raw}
    raw.setdefault("name", "custom")
    try:
        return DeviceSpec(**raw)
    except ValidationError as exc:
        raise DeviceSpecError(_explain(raw.get("name"), exc)) from None


def _explain(name: Any, exc: ValidationError) -> str:
    """One line per problem: the field, what it holds and its unit."""
    fields = DeviceSpec.model_fields
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        what = fields[field].description if field in fields else ""
        if err["type"] == "missing":
            lines.append(f"field {field!r} is missing: {what}")
        elif err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, list(fields), n=1, cutoff=0.5) or [  # "hbm_bandwidth"
                f for f in fields if f.split("_")[0] == field.split("_")[0]][:1]
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"unknown field {field!r}; {hint}fields: {', '.join(fields)}")
        else:
            where = ".".join(str(x) for x in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"field {where!r}: {msg} ({what})")
    return f"device spec {name!r}: " + "; ".join(lines)


# torch.cuda.get_device_name() spellings -> table names, most specific first
_CUDA_NAMES = (("gh200", "gh200"), ("h200", "h200"), ("h100 pcie", "h100-pcie"), ("h100", "h100-sxm"),
               ("a100-sxm4-80gb", "a100-80gb"), ("a100 80gb", "a100-80gb"), ("a100", "a100-40gb"), ("l4", "l4"),
               ("rtx 4090", "rtx-4090"))


def cuda_target(gpu_name: str) -> str | None:
    """The table name for a GPU as ``torch.cuda.get_device_name`` spells it ("NVIDIA H100 80GB HBM3" ->
    "h100-sxm"), or None when the table has no such device."""
    low = gpu_name.lower()
    for pattern, name in _CUDA_NAMES:
        if pattern in low and not (pattern == "l4" and "l40" in low):
            return name
    return None
