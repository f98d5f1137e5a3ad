"""The profile cache: keyed by what changes op times (threads, device, versions, the machine's load
class), refreshed on request, reused by a resumed run, and a noisy profile reported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mutwo import profile as profile_module
from mutwo.capture import capture, flat_state
from mutwo.profile import Profile, _cache_key, iteration_spread, load_class, profile, spread_warning
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload


@pytest.fixture(scope="module")
def mlp():
    wl = build_workload("mlp", 8, width=16, depth=2)
    opt = OptimizerConfig("sgd", {"momentum": 0.0})
    return capture(wl, opt), flat_state(wl, opt)[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "profiles"


def test_load_class_buckets_the_load_per_core(monkeypatch):
    monkeypatch.delenv("MUTWO_LOAD_CLASS", raising=False)
    monkeypatch.setattr(profile_module.os, "cpu_count", lambda: 4)
    for load, expected in ((0.0, "idle"), (1.0, "idle"), (2.9, "idle"), (3.0, "busy"), (9.0, "busy")):
        monkeypatch.setattr(profile_module.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert load_class() == expected, load  # (load - this process) / cores against LOAD_BUSY = 0.5
    monkeypatch.setenv("MUTWO_LOAD_CLASS", "lab")
    assert load_class() == "lab"


def test_the_key_follows_threads_and_load(mlp, monkeypatch):
    tg, flat = mlp
    cpu = torch.device("cpu")
    key = _cache_key(tg, flat, cpu, 1, 0, None)
    assert key == _cache_key(tg, flat, cpu, 1, 0, None)
    monkeypatch.setenv("MUTWO_LOAD_CLASS", "other-load")
    assert _cache_key(tg, flat, cpu, 1, 0, None) != key
    monkeypatch.undo()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        assert _cache_key(tg, flat, cpu, 1, 0, None) != key
    finally:
        torch.set_num_threads(before)
    assert _cache_key(tg, flat, cpu, 1, 0, None) == key
    monkeypatch.setattr(profile_module, "_versions", lambda: {"torch": "0.0"})
    assert _cache_key(tg, flat, cpu, 1, 0, None) != key
    assert "cpu" in profile_module._device_name(cpu)


def test_refresh_measures_again_and_a_key_is_reused(mlp, cache, monkeypatch):
    tg, flat = mlp
    first = profile(tg, flat, runs=1, warmup=0, progress=False)
    assert first.cache_key == _cache_key(tg, flat, torch.device("cpu"), 1, 0, None)
    assert len(first.iteration_times_s) == 2 and first.threads == torch.get_num_threads() and first.load_class
    hit = profile(tg, flat, runs=1, warmup=0, progress=False)
    assert hit.profile_time_s == first.profile_time_s  # from the cache
    fresh = profile(tg, flat, runs=1, warmup=0, progress=False, refresh=True)
    assert fresh.profile_time_s != first.profile_time_s and fresh.cache_key == first.cache_key
    assert Profile.load(cache / first.cache_key).profile_time_s == fresh.profile_time_s  # it replaced the old one
    # under another load the key differs; a resumed run asking for its own entry still gets it
    monkeypatch.setenv("MUTWO_LOAD_CLASS", "changed")
    resumed = profile(tg, flat, runs=1, warmup=0, progress=False, key=first.cache_key)
    assert resumed.profile_time_s == fresh.profile_time_s and resumed.cache_key == first.cache_key
    other = profile(tg, flat, runs=1, warmup=0, progress=False)
    assert other.cache_key != first.cache_key and len(list(cache.iterdir())) == 2


def _with_times(iterations: list[float], op_runs: list[list[float]] | None = None) -> Profile:
    return Profile(op_time_s=np.zeros(2), op_transient_bytes=np.zeros(2, np.int64), measured_peak_bytes=0,
                   peak_method="cpu-allocator-events", op_output_peak_bytes=0, iteration_time_s=1.0,
                   host_bandwidth_bytes_per_s=1e9, bandwidth_source="assumed", device="cpu", runs=1, warmup=0,
                   profile_time_s=0.0, transient_measured=True, iteration_times_s=iterations,
                   op_time_runs=None if op_runs is None else np.array(op_runs), load_class="busy")


def test_spread_and_its_warning():
    assert iteration_spread(_with_times([1.0])) is None and spread_warning(_with_times([1.0])) is None
    assert iteration_spread(_with_times([1.0, 1.1, 1.05])) == pytest.approx(0.1 / 1.05)
    assert spread_warning(_with_times([1.0, 1.1, 1.05])) is None  # under SPREAD_WARN = 20%
    # the per-run sums of op times count too
    noisy = _with_times([1.0, 1.0], [[0.5, 0.5], [0.5, 1.0]])
    assert iteration_spread(noisy) == pytest.approx(0.5 / 1.25)
    text = spread_warning(noisy)
    assert text.startswith("the profile's own iterations differ by 40% (more than 20%, machine busy)")
    assert "--refresh-profile" in text


def test_a_noisy_cached_profile_warns_again(mlp, cache, monkeypatch):
    tg, flat = mlp
    profile(tg, flat, runs=1, warmup=0, progress=False)
    monkeypatch.setattr(profile_module, "SPREAD_WARN", -1.0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        profile(tg, flat, runs=1, warmup=0, progress=False)
    assert [str(w.message) for w in seen if w.category is RuntimeWarning][0].startswith("the profile's own")
