"""The shipped scenarios' budgets are ones some plan can meet: none lies below the floor
(`Problem.peak_floor()`: no plan peaks below it) at every batch size of its scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutwo import pipeline
from mutwo.scenario import load_scenario

SCENARIOS = Path(__file__).parent.parent / "scenarios"
TINY = ["toy_mlp", "tiny_batches", "tiny_resnet", "tiny_bert"]
SKIPPED = {  # name -> why the floor is not measured here
    "resnet152": "capturing and profiling ResNet-152 at batch 2 and 4 takes minutes on this CPU, and the floor "
                 "needs the profiled per-op transients (a fake-mode capture has none); its floors (0.77 and 0.54 "
                 "of keep-all) were measured once and are in the scenario's comment",
    "bert": "capturing and profiling BERT-base at batch 8 takes minutes on this CPU, and the floor needs the "
            "profiled per-op transients (a fake-mode capture has none); its floor (0.61 of keep-all) was measured "
            "once and is in the scenario's comment",
    "llama_h100": "capturing a 7B Llama at sequence 4096 (fake tensors) takes 1-2 minutes; its floor (~51 GiB, the "
                  "bf16 weights, gradients and AdamW state) is in the scenario's comment and docs/devices.md: 80GiB "
                  "and 60GiB lie above it, 40GiB below on purpose (the issue asks for it; every solver is infeasible)",
    "gpt2_a100": "capturing GPT-2 large at sequence 1024 (fake tensors) takes minutes on this CPU; its floor is in "
                 "docs/devices.md, below each of its budgets",
}
# budgets below the floor on purpose, each said so in its scenario's comment
INTENDED = {("tiny_batches", "200KiB"): "shows report.md's 'fits at no batch size tried' row"}


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def test_every_shipped_scenario_is_covered():
    assert {p.stem for p in SCENARIOS.glob("*.yaml")} == set(TINY) | set(SKIPPED)


@pytest.mark.parametrize("name", TINY + sorted(SKIPPED))
def test_no_budget_is_below_the_floor_at_every_batch_size(name):
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    sc = load_scenario(SCENARIOS / f"{name}.yaml")
    measured = {}  # batch size -> (floor, keep-all peak), measured now (CPU transients move them)
    for bs in sc.batch_size:
        prep = pipeline.prepare_scenario(sc, bs, pipeline.target_device(sc))
        measured[bs] = (prep.floor[0], prep.keep_all_peak_bytes)
        prep.release()
    for budget in sc.budgets:
        fits = [bs for bs, (floor, keep) in measured.items() if budget.resolve(keep) >= floor]
        if (name, budget.label) in INTENDED:
            assert not fits, f"{name}: {budget.label} is no longer below every floor; drop it from INTENDED"
            continue
        shown = {bs: f"budget {budget.resolve(keep)} B, floor {floor} B" for bs, (floor, keep) in measured.items()}
        assert fits, f"{name}: budget {budget.label} is below the floor at every batch size: {shown}"
