"""Transformer and LLM workloads of the zoo: presets with their published sizes, built on meta (nothing
allocated) and captured in fake mode into an estimated Problem; dtype and attention options; a model
too large for this machine refused before anything is allocated; a real tiny Llama executes a
recompute plan (fused attention recomputed) exactly like the unmodified step."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import mutwo.zoo as zoo
from mutwo.capture import capture, flat_state
from mutwo.estimate import estimate_profile
from mutwo.execute import execute, reference
from mutwo.graph import Role
from mutwo.problem_build import build_problem
from mutwo.schedule import Decision, Schedule
from mutwo.workload import OptimizerConfig
from mutwo.zoo import ZOO, build_workload, check_builder_options

ATTN = "aten._scaled_dot_product_flash_attention_for_cpu.default"


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# parameter counts of the published models these presets copy (tied embeddings counted once)
@pytest.mark.parametrize("key, count", [("gpt2", 124_439_808), ("gpt2-xl", 1_557_611_200),
                                        ("llama-1b", 1_235_814_400), ("llama-7b", 6_738_415_616),
                                        ("llama-8b", 8_030_261_248), ("vit-b16", 86_567_656)])
def test_presets_have_the_published_sizes(key, count):
    wl = build_workload(key, 1, meta=True, seq_len=16) if key != "vit-b16" else build_workload(key, 1, meta=True)
    assert _n_params(wl.model) == count
    assert all(p.is_meta for p in wl.model.parameters())


@functools.cache  # captures shared between tests (each takes seconds)
def _cached(key: str, options: tuple):
    return _build_estimated(key, **dict(options))


def _estimated(key: str, **options):
    return _cached(key, tuple(sorted(options.items())))


def _build_estimated(key: str, **options):
    wl = build_workload(key, 2, meta=True, **options)
    graph = capture(wl, "adamw")
    est = estimate_profile(graph, "h100-sxm")
    problem, _ = build_problem(graph, est)
    return wl, graph, est, problem


def test_tiny_gpt2_on_meta_becomes_an_estimated_problem():
    wl, graph, est, problem = _estimated("gpt2-tiny")
    assert all(p.is_meta for p in wl.model.parameters())  # no weight was allocated
    assert problem.cost_source == "estimated:h100-sxm" and problem.n_act > 20
    targets = [str(n.target) for n in graph.ops]
    assert targets.count(ATTN) == 2  # fused attention, one per layer (meta alone would give the math path)
    assert problem.recomputable.all()  # dropout 0: nothing random, fused attention included
    assert est.unknown_ops == {}


def test_tiny_llama_has_grouped_query_attention_and_counted_attention_flops():
    wl, graph, est, problem = _estimated("llama-tiny", seq_len=32)
    layer = wl.model.model.layers[0]
    head_dim = 64 // 4
    assert layer.self_attn.k_proj.weight.shape == (2 * head_dim, 64)  # 2 key/value heads for 4 query heads
    assert layer.mlp.gate_proj.weight.shape == (172, 64)  # SwiGLU
    assert type(layer.input_layernorm).__name__ == "LlamaRMSNorm"
    fwd = [i for i, n in enumerate(graph.ops) if str(n.target) == ATTN]
    assert len(fwd) == 2
    b, h, s = 2, 4, 32
    for i in fwd:  # torch's formula: two batched matmuls of b*h (s x d) @ (d x s), the key heads broadcast
        assert est.op_class[i] == "attention" and est.op_flops[i] == 4 * b * h * s * s * head_dim
    assert problem.recomputable.all()


def test_tiny_vit_on_meta():
    _, graph, est, problem = _estimated("vit-b16", image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128, num_classes=10)
    assert "conv" in est.op_class  # the patch embedding
    assert problem.n_act > 10 and problem.cost_source == "estimated:h100-sxm"


def _mm_dtypes(graph) -> set:
    return {n.meta["val"].dtype for n in graph.ops if str(n.target) in ("aten.mm.default", "aten.addmm.default")}


def test_bfloat16_holds_parameters_state_and_activations_in_bf16():
    wl = build_workload("llama-tiny", 2, meta=True, dtype="bfloat16")
    graph = capture(wl, "adamw")
    flat, roles, _ = flat_state(wl, OptimizerConfig("adamw"))
    assert {t.dtype for t, r in zip(flat, roles) if r is Role.PARAM} == {torch.bfloat16}
    # exp_avg / exp_avg_sq in the parameters' dtype, as torch.optim keeps them (the step counters are fp32)
    state = {t.dtype for t, r in zip(flat, roles) if r is Role.OPT_STATE and t.dim() > 0}
    assert state == {torch.bfloat16}
    assert _mm_dtypes(graph) == {torch.bfloat16}


def test_autocast_keeps_fp32_parameters_and_runs_matmuls_in_bf16():
    wl = build_workload("llama-tiny", 2, meta=True, dtype="autocast-bf16")
    assert {p.dtype for p in wl.model.parameters()} == {torch.float32}
    graph = capture(wl, "adamw")
    assert torch.bfloat16 in _mm_dtypes(graph)


def test_eager_attention_saves_the_score_matrix():
    def softmax_saved(graph) -> list[int]:
        return [a.nbytes for a in graph.activations if a.producer.target is torch.ops.aten._softmax.default]

    assert softmax_saved(_estimated("gpt2-tiny")[1]) == []  # fused: no S x S matrix kept
    # eager: each layer keeps its batch x heads x seq x seq fp32 probabilities
    assert softmax_saved(_estimated("gpt2-tiny", attention="eager")[1]) == [2 * 4 * 32 * 32 * 4] * 2


def test_builder_options_are_checked_by_name():
    check_builder_options(ZOO["llama-7b"], "llama-7b", {"seq_len": 4096, "meta": True, "dtype": "bfloat16"})
    with pytest.raises(ValueError, match="did you mean 'seq_len'"):
        check_builder_options(ZOO["llama-7b"], "llama-7b", {"seq_length": 4096})
    with pytest.raises(ValueError, match="autocast-bf16"):
        build_workload("gpt2-tiny", 1, meta=True, dtype="fp16")
    with pytest.raises(ValueError, match="sdpa"):
        build_workload("llama-tiny", 1, meta=True, attention="flash")


def test_too_large_for_ram_is_refused_before_allocation(monkeypatch):
    monkeypatch.setattr(zoo, "available_ram_bytes", lambda: 4 << 30)
    with pytest.raises(MemoryError, match="meta=True") as err:
        build_workload("llama-1b", 1)  # ~15 GiB of weights and AdamW state in fp32
    assert "GiB" in str(err.value)
    build_workload("llama-1b", 1, meta=True, seq_len=16)  # on meta it fits
    monkeypatch.setattr(zoo, "available_ram_bytes", lambda: 1 << 30)
    with pytest.raises(MemoryError, match="16 layers in fake mode"):
        build_workload("llama-1b", 1, meta=True)


def test_real_tiny_llama_recompute_plan_trains_like_the_unmodified_step():
    wl = build_workload("llama-tiny", 2)
    opt = OptimizerConfig("adamw")
    graph = capture(wl, opt)
    flat = flat_state(wl, opt)[0]
    problem, binding = build_problem(graph, estimate_profile(graph, "l4"))
    rec = np.where(problem.recomputable, Decision.RECOMPUTE, Decision.KEEP)
    assert (rec == Decision.RECOMPUTE).all()
    res = execute(graph, problem, Schedule.from_decisions(problem, rec), flat, iterations=0, warmup=0,
                  ref=reference(graph, flat, 1), binding=binding)
    assert res.bitwise_equal


def test_llm_scale_script_runs(tmp_path):
    from benchmarks import llm_scale

    stages, plans, classes, summary = llm_scale.main(["--model", "llama-tiny", "--seq-len", "32", "--batch", "2",
                                             "--budgets", "64MiB", "2MiB", "--modes", "both", "--repeat", "1"],
                                            out=tmp_path)
    assert (tmp_path / "llm_scale.md").exists() and (tmp_path / "llm_scale_plans.csv").exists()
    assert summary["cost_source"] == "estimated:h100-sxm" and summary["peak_rss_GiB"] > 0
    assert list(plans.status) == ["feasible", "infeasible"]  # 2 MiB is below the fixed memory
    assert summary["floor_GiB"] <= summary["keep_all_peak_GiB"]
    assert classes.time_s.sum() == pytest.approx(summary["keep_all_time_s"])  # keep-all: no recompute, no stall
