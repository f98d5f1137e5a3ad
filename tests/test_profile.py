"""Profile and Problem building on real captured graphs (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mutwo import plots
from mutwo import profile as profile_module
from mutwo.capture import capture, flat_state
from mutwo.graph import is_view_op
from mutwo.problem import Problem
from mutwo.problem_build import activation_table, build_problem
from mutwo.profile import Profile, _cache_key, profile
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload


@pytest.fixture(scope="module")
def resnet18_small(tmp_path_factory):
    wl = build_workload("resnet18", 4, image_size=64, num_classes=10)
    opt = OptimizerConfig("sgd", {"momentum": 0.0})
    tg = capture(wl, opt)
    flat, _, _ = flat_state(wl, opt)
    return tg, flat


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "profiles"


def test_profile_tables_cache_and_fidelity(resnet18_small, cache):
    tg, flat = resnet18_small
    before = [t.clone() for t in flat]
    prof = profile(tg, flat, runs=2, warmup=1, progress=False)
    assert all((a == b).all() for a, b in zip(before, flat)), "profiling must not train the caller's tensors"
    n = len(tg.ops)
    assert prof.op_time_s.shape == (n,) and (prof.op_time_s >= 0).all() and prof.op_time_s.sum() > 0
    assert prof.op_time_runs.shape == (2, n)
    assert prof.peak_method == "cpu-allocator-events" and prof.bandwidth_source == "assumed"
    assert prof.transient_measured
    # on CPU the generated code frees values after their last use: the liveness count of op outputs is exact
    assert abs(int(tg.live_bytes().max()) - prof.op_output_peak_bytes) <= 0.01 * prof.op_output_peak_bytes
    # the allocator also holds kernels' scratch: its peak is at least the op outputs', and the liveness
    # count plus each op's measured transient predicts it (no transients inside recompute chains here)
    estimate = int((tg.live_bytes() + prof.op_transient_bytes).max())
    assert prof.measured_peak_bytes >= prof.op_output_peak_bytes
    assert abs(estimate - prof.measured_peak_bytes) <= 0.01 * prof.measured_peak_bytes
    again = profile(tg, flat, runs=2, warmup=1, progress=False)  # cache hit: identical numbers
    np.testing.assert_array_equal(again.op_time_s, prof.op_time_s)
    assert len(list(cache.iterdir())) == 1
    loaded = Profile.load(next(cache.iterdir()))
    assert (loaded.measured_peak_bytes, loaded.op_output_peak_bytes) == (prof.measured_peak_bytes,
                                                                          prof.op_output_peak_bytes)
    np.testing.assert_array_equal(loaded.op_transient_bytes, prof.op_transient_bytes)


def test_cpu_transients_from_the_allocator(resnet18_small, cache):
    tg, flat = resnet18_small
    prof = profile(tg, flat, runs=2, warmup=0, progress=False)
    targets = [n.target for n in tg.ops]
    bn_backward = [i for i, t in enumerate(targets) if t is torch.ops.aten.native_batch_norm_backward.default]
    views = [i for i, n in enumerate(tg.ops) if is_view_op(n)]
    assert len(bn_backward) == 20 and len(views) > 0  # ResNet-18: 20 batch norms
    # batch-norm backward allocates a buffer inside its kernel; a view allocates nothing
    assert (prof.op_transient_bytes[bn_backward] > 0).all()
    assert (prof.op_transient_bytes[views] == 0).all()
    assert prof.op_transient_bytes.dtype == np.int64 and (prof.op_transient_bytes >= 0).all()


def test_cache_key_follows_the_profile_format(resnet18_small, monkeypatch):
    tg, flat = resnet18_small
    key = _cache_key(tg, flat, torch.device("cpu"), 3, 1, None)
    assert key == _cache_key(tg, flat, torch.device("cpu"), 3, 1, None)
    monkeypatch.setattr(profile_module, "PROFILE_FORMAT", profile_module.PROFILE_FORMAT + 1)
    assert _cache_key(tg, flat, torch.device("cpu"), 3, 1, None) != key, "old cached profiles must not be reused"


def test_problem_from_real_graph(resnet18_small, cache, tmp_path):
    tg, flat = resnet18_small
    prof = profile(tg, flat, runs=1, warmup=0, progress=False)
    problem, _ = build_problem(tg, prof)
    assert problem.n_act == len(tg.activations) and problem.n_ops == len(tg.ops)
    # keep-all simulated peak equals the profile's liveness estimate
    keep = simulate(problem, Schedule.keep_all(problem))
    assert keep.peak_bytes == int((tg.live_bytes() + prof.op_transient_bytes).max())
    table = activation_table(problem)
    # earlier attempts had zero recompute ratios for most activations
    assert (table.loc[table.recomputable, "recompute_ratio"] > 0).all()
    assert table.recomputable.all()  # ResNet has no random ops
    # conv outputs are recomputed from their input activation: chains are short and sourced
    assert table.recompute_ops.median() <= 2
    assert (problem.recompute_sources[-1] < problem.n_act).all()
    path = problem.save(tmp_path / "p.npz")
    again = Problem.load(path)
    assert again.summary() == problem.summary()


def test_dropout_activations_are_not_recomputable(cache):
    wl = build_workload("bert-tiny", 2, dropout=0.1)
    opt = OptimizerConfig("adam")
    tg = capture(wl, opt)
    flat, _, _ = flat_state(wl, opt)
    problem, _ = build_problem(tg, profile(tg, flat, runs=1, warmup=0, progress=False))
    assert 0 < (~problem.recomputable).sum() < problem.n_act


def test_profile_plots(resnet18_small, cache, tmp_path):
    tg, flat = resnet18_small
    prof = profile(tg, flat, runs=1, warmup=0, progress=False)
    problem, _ = build_problem(tg, prof)
    out = [
        plots.memory_timeline({"keep-all": tg.live_bytes()}, tg.fwd_end, tmp_path / "mem.png",
                              limit_bytes=0.8 * tg.live_bytes().max()),
        plots.op_times(prof.ops_frame(tg), tmp_path / "ops.png"),
        plots.activation_attributes(activation_table(problem), tmp_path / "acts.png"),
    ]
    for p in out:
        assert p.exists() and p.stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp*"))
