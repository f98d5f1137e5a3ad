"""A scenario's ``target``: validated at load, op times estimated for it in the run, every row's
``cost_source``, measured times never compared with estimated ones, and the automatic no-execute of
a model that cannot run here (built on meta, or too large)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mutwo import pipeline
from mutwo.cell import COLUMNS, not_the_target
from mutwo.compare import main
from mutwo.report import PREDICTIONS_ONLY
from mutwo.scenario import ScenarioError, validate_scenario
from mutwo.zoo import build_workload

BASE = {"name": "t", "model": "mlp", "batch_size": 4, "budgets": [1.0], "solvers": ["keep_all"]}
TINY = {"name": "tiny_target", "model": "llama-tiny", "model_options": {"seq_len": 64}, "batch_size": [2],
        "optimizer": {"name": "sgd", "options": {"momentum": 0.0}}, "device": "cpu", "target": "h100-sxm",
        "budgets": [1.0, 0.8], "solvers": ["keep_all", "mutwo_greedy"], "profile": {"runs": 1, "warmup": 1},
        "execute": {"iterations": 1, "warmup": 1}, "references": False}


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def _error(data: dict) -> str:
    with pytest.raises(ScenarioError) as exc:
        validate_scenario(data, "s.yaml")
    return str(exc.value)


def _run(tmp_path: Path, data: dict, *extra: str) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main([str(path), "--out", str(tmp_path / "out"), "--quiet", "--run-id", "r", "--no-plots", *extra]) == 0
    return tmp_path / "out" / data["name"] / "r"


# ---------------------------------------------------------------------- validation
def test_target_defaults_to_local_and_names_are_normalised():
    assert validate_scenario(BASE).target == "local" and validate_scenario(BASE).target_spec() is None
    sc = validate_scenario({**BASE, "target": "H100_SXM"})
    assert sc.target == "h100-sxm" and sc.target_spec().memory_bytes == 80 * 2**30
    assert validate_scenario({**BASE, "target": "rtx4090"}).target == "rtx-4090"


def test_an_unknown_target_names_the_closest_ones_and_local():
    msg = _error({**BASE, "target": "h100"})
    assert msg.startswith("s.yaml: field 'target': unknown target device 'h100'")
    assert "did you mean 'h100-sxm', 'h100-pcie'" in msg and "'local'" in msg and "a100-80gb" in msg


def test_a_bad_mapping_names_the_field_and_its_unit():
    msg = _error({**BASE, "target": {"name": "my-gpu", "memory_bytes": "40GiB", "flops_per_s": {"fp32": 1e13},
                                      "host_link_bytes_per_s": 25e9}})
    assert "field 'target'" in msg and "field 'hbm_bytes_per_s' is missing" in msg and "bytes/s" in msg
    msg = _error({**BASE, "target": {"base": "a100-80gb", "memory_bytes": "79GB"}})
    assert "'79GB' has unit 'GB'" in msg and "write '79GiB'" in msg
    msg = _error({**BASE, "target": {"base": "a100-80gb", "hbm_bandwidth": 2e12}})
    assert "unknown field 'hbm_bandwidth'" in msg and "did you mean 'hbm_bytes_per_s'" in msg
    spec = validate_scenario({**BASE, "target": {"base": "a100-80gb", "memory_bytes": "79GiB"}}).target_spec()
    assert spec.memory_bytes == 79 * 2**30 and spec.hbm_bytes_per_s == 2039e9


def test_a_meta_model_needs_a_target():
    msg = _error({**TINY, "target": "local", "model_options": {"meta": True}})
    assert "field 'target'" in msg and "meta: true" in msg and "target: h100-sxm" in msg


def test_the_command_line_target_replaces_the_scenarios(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert main([str(path), "--target", "h10", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "unknown target device 'h10'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / TINY["name"]).exists()  # refused before anything was built


def test_not_the_target_only_for_estimated_costs():
    assert not_the_target("measured:cpu", "cpu") == ""
    assert "not on the target h100-sxm" in not_the_target("estimated:h100-sxm", "cpu")


# ---------------------------------------------------------------------- a run for a target
def test_an_estimated_run_is_predictions_only_and_compares_no_times(tmp_path):
    run = _run(tmp_path, TINY)
    df = pd.read_csv(run / "results.csv")
    assert list(df.columns) == COLUMNS and "cost_source" in COLUMNS
    assert (df["cost_source"] == "estimated:h100-sxm").all()
    ran = df[df["executed"]]
    assert len(ran) >= 2 and ran["measured_peak_bytes"].gt(0).all() and ran["max_rel_diff"].lt(1e-3).all()
    assert ran["measured_overhead_pct"].isna().all()  # this CPU's times say nothing of the H100's
    assert ran["execute_note"].str.contains("not on the target h100-sxm").all()
    info = json.loads((run / "batch2" / "keep_all.json").read_text())
    assert info["cost_source"] == "estimated:h100-sxm" and info["target"]["name"] == "h100-sxm"
    assert info["unknown_ops"] == {} and info["profile_iteration_time_s"] is None
    report = (run / "report.md").read_text()
    top = report[:report.index("## Keep-all reference")]
    assert PREDICTIONS_ONLY in top and "`h100-sxm`" in top and "989.5" in top and "no unknown ops" in top
    assert "times are this machine's" in top
    # the measured run of the same scenario: measured cost source, overheads compared
    local = _run(tmp_path, {**TINY, "name": "tiny_local", "target": "local"})
    df = pd.read_csv(local / "results.csv")
    assert (df["cost_source"] == "measured:cpu").all()
    assert df[df["executed"]]["measured_overhead_pct"].notna().all()
    assert PREDICTIONS_ONLY not in (local / "report.md").read_text()


def test_unknown_ops_are_listed_once_per_run():
    batches = {2: {"cost_source": "estimated:l4", "target": {"name": "l4"}, "unknown_ops": {"my::op": "why"}},
               4: {"cost_source": "estimated:l4", "target": {"name": "l4"}, "unknown_ops": {"my::op": "why"}}}
    from mutwo.report import target_section

    text = "\n".join(target_section({"device": "cpu"}, batches))
    assert text.count("`my::op`") == 1 and PREDICTIONS_ONLY in text


def test_a_meta_model_is_not_executed_and_every_row_says_so(tmp_path):
    run = _run(tmp_path, {**TINY, "name": "tiny_meta", "model_options": {"seq_len": 64, "meta": True},
                          "references": True})
    df = pd.read_csv(run / "results.csv")
    assert (df["kind"] == "solver").all()  # PyTorch's references run the step: not here
    assert not df["executed"].any() and df["measured_peak_bytes"].isna().all()
    assert df["execute_note"].str.startswith("not executed (chosen automatically): the model is built on the "
                                             "meta device").all()
    run_info = json.loads((run / "run.json").read_text())
    assert "meta device" in run_info["not_executable"]["2"]
    assert run_info["execution_note"].startswith("not executed (chosen automatically)")
    info = json.loads((run / "batch2" / "keep_all.json").read_text())
    assert "measured" not in info and len(info["reference_notes"]) == 3
    report = (run / "report.md").read_text()
    assert "**Not executed (chosen automatically):**" in report and "- batch 2: the model is built on" in report


def test_a_model_too_large_for_this_machine_is_built_on_meta_for_a_target(tmp_path, monkeypatch):
    import mutwo.zoo as zoo

    monkeypatch.setattr(zoo, "available_ram_bytes", lambda: 1000)  # its weights do not fit; tracing does
    monkeypatch.setattr(zoo, "FAKE_BASE_BYTES", 0)
    monkeypatch.setattr(zoo, "FAKE_BYTES_PER_LAYER", 0)
    sc = validate_scenario(TINY)
    prep = pipeline.prepare_scenario(sc, 2, "cpu")
    assert prep.info[pipeline.NOT_EXECUTABLE].startswith("built on meta (too large to allocate here: ")
    assert prep.problem.cost_source == "estimated:h100-sxm"
    with pytest.raises(MemoryError):  # measured here, it cannot be built at all: the batch size's oom rows
        pipeline.prepare_scenario(validate_scenario({**TINY, "target": "local"}), 2, "cpu")


def test_execution_blocker_names_the_fixed_memory_against_the_machine(monkeypatch):
    import mutwo.zoo as zoo

    wl, meta = build_workload("mlp", 4), build_workload("llama-tiny", 1, meta=True)
    assert pipeline.execution_blocker(wl, 10_000, "cpu") is None
    assert "meta device" in pipeline.execution_blocker(meta, 0, "cpu")
    monkeypatch.setattr(zoo, "available_ram_bytes", lambda: 0)
    why = pipeline.execution_blocker(wl, 2**40, "cpu")
    assert why.startswith("its parameters, gradients and optimizer state need 1024.0 GiB")
