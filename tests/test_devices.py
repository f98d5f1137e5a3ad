"""Target devices: lookup by name, typos answered with the closest names, user mappings validated with
the field and its unit named, and the table's figures consistent with what they say they are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mutwo.devices import (
    DEFAULT_EFFICIENCY,
    DEVICES,
    EFFECTIVE_LINK,
    DeviceSpec,
    DeviceSpecError,
    cuda_target,
    device_names,
    get_device,
)

GiB = 2**30


def test_table_has_the_targets_users_train_on():
    for name in ("a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l4", "rtx-4090"):
        assert name in DEVICES
    assert "local-cpu" in device_names()


def test_h100_sxm_figures_are_the_dense_datasheet_rates():
    h = get_device("h100-sxm")
    assert h.memory_bytes == 80 * GiB
    assert h.flops("bf16") == pytest.approx(989.5e12) and h.flops("fp32") == pytest.approx(67e12)
    assert h.flops("tf32") == pytest.approx(494.5e12)
    assert h.hbm_bytes_per_s == pytest.approx(3.35e12)
    assert h.host_link == "PCIe 5.0 x16" and h.copy_engines >= 2


@pytest.mark.parametrize("name", list(DEVICES))
def test_every_gpu_is_consistent(name):
    d = DEVICES[name]
    assert d.name == name and d.source
    # tensor cores: bf16 at least the tf32 rate, tf32 at least the fp32 (CUDA core) rate
    assert d.flops("bf16") >= d.flops("tf32") >= d.flops("fp32") > 0
    assert d.host_link_bytes_per_s == pytest.approx(EFFECTIVE_LINK * d.host_link_nominal_bytes_per_s)
    # the host link is far slower than device memory: swapping is never free on a GPU
    assert d.host_link_bytes_per_s < d.hbm_bytes_per_s / 5
    assert d.efficiency == DEFAULT_EFFICIENCY


@pytest.mark.parametrize("spelled", ["H100-SXM", "h100_sxm", " h100 sxm ", "h100sxm"])
def test_names_are_normalised(spelled):
    assert get_device(spelled) is DEVICES["h100-sxm"]


def test_rtx4090_without_dash():
    assert get_device("rtx4090").name == "rtx-4090"


def test_typo_names_the_closest_and_lists_all():
    with pytest.raises(DeviceSpecError) as err:
        get_device("h100-smx")
    msg = str(err.value)
    assert "'h100-sxm'" in msg.split("known:")[0]  # a suggestion, before the list
    for name in device_names():
        assert name in msg.split("known:")[1]


def test_ambiguous_prefix_suggests_each():
    with pytest.raises(DeviceSpecError) as err:
        get_device("h100")
    hint = str(err.value).split("known:")[0]
    assert "'h100-sxm'" in hint and "'h100-pcie'" in hint


def test_mapping_missing_fields_are_named_with_their_unit():
    with pytest.raises(DeviceSpecError) as err:
        get_device({"name": "my-gpu", "memory_bytes": "16GiB", "flops_per_s": {"fp32": 1e13}})
    msg = str(err.value)
    assert "'my-gpu'" in msg
    assert "field 'hbm_bytes_per_s' is missing" in msg and "bytes/s" in msg
    assert "field 'host_link_bytes_per_s' is missing" in msg


def test_mapping_needs_an_fp32_rate():
    with pytest.raises(DeviceSpecError) as err:
        get_device({"name": "x", "memory_bytes": 2**30, "flops_per_s": {"bf16": 1e14}, "hbm_bytes_per_s": 1e12,
                    "host_link_bytes_per_s": 2e10})
    assert "flops_per_s" in str(err.value) and "'fp32'" in str(err.value)


def test_mapping_unknown_field_suggests_the_right_one():
    with pytest.raises(DeviceSpecError) as err:
        get_device({"base": "h100-sxm", "memory_byte": "94GiB"})
    assert "unknown field 'memory_byte'" in str(err.value) and "did you mean 'memory_bytes'" in str(err.value)


def test_mapping_with_a_bad_size_names_the_field():
    with pytest.raises(DeviceSpecError) as err:
        get_device({"base": "h100-sxm", "memory_bytes": "94GB"})
    assert "memory_bytes" in str(err.value) and "GiB" in str(err.value)


def test_mapping_efficiency_out_of_range():
    with pytest.raises(DeviceSpecError) as err:
        get_device({"base": "l4", "efficiency": {"matmul": 1.5}})
    assert "efficiency" in str(err.value) and "matmul" in str(err.value)


def test_mapping_from_a_base_overrides_only_what_it_gives():
    d = get_device({"base": "h100-sxm", "name": "h100-94", "memory_bytes": "94GiB",
                    "efficiency": {"matmul": 0.6}})
    h = DEVICES["h100-sxm"]
    assert d.name == "h100-94" and d.memory_bytes == 94 * GiB
    assert d.flops_per_s == h.flops_per_s and d.hbm_bytes_per_s == h.hbm_bytes_per_s
    assert d.efficiency["matmul"] == 0.6 and d.efficiency["copy"] == h.efficiency["copy"]


def test_full_mapping_and_fp32_fallback():
    d = get_device({"name": "cpu-like", "memory_bytes": 8 * GiB, "flops_per_s": {"fp32": 5e10},
                    "hbm_bytes_per_s": 1e10, "host_link_bytes_per_s": 5e9, "launch_latency_s": 1e-5})
    assert isinstance(d, DeviceSpec) and d.flops("bf16") == d.flops("tf32") == 5e10
    assert d.launch_latency_s == 1e-5


def test_specs_are_frozen():
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        DEVICES["l4"].memory_bytes = 1


@pytest.mark.parametrize("gpu, name", [("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
                                       ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
                                       ("NVIDIA H200", "h200"), ("NVIDIA L4", "l4"), ("NVIDIA L40S", None),
                                       ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("Tesla T4", None)])
def test_cuda_names_map_to_the_table(gpu, name):
    assert cuda_target(gpu) == name


def test_devices_imports_without_torch():
    code = ("import sys\nimport mutwo.devices as d\nd.get_device('h100-sxm')\n"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_docs_table_lists_every_device_with_its_figures():
    doc = (Path(__file__).parent.parent / "docs" / "devices.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in doc.splitlines() if line.startswith("| `")}
    for name, d in DEVICES.items():
        assert name in rows, f"docs/devices.md has no row for {name}"
        assert f"{d.hbm_bytes_per_s / 1e9:,.0f} GB/s" in rows[name]
        assert f"{d.memory_bytes / GiB:g} GiB" in rows[name]
