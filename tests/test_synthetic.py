"""Synthetic generators: valid, deterministic, shaped like training graphs, fast at scale."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mutwo.problem import Problem
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual


def _same(p: Problem, q: Problem) -> bool:
    for key, value in vars(p).items():
        other = getattr(q, key)
        if isinstance(value, np.ndarray):
            if not np.array_equal(value, other):
                return False
        elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            if not all(np.array_equal(a, b) for a, b in zip(value, other, strict=True)):
                return False
        elif value != other:
            return False
    return True


def test_chain_structure():
    p = chain(5, act_bytes=100, param_bytes=10, op_time_s=1.0)
    assert (p.n_ops, p.n_act, p.fwd_end) == (12, 5, 5)
    # layer i's backward is op 10 - i; it reads its input a[i-1] and its output a[i]
    assert p.first_bwd_use.tolist() == [9, 8, 7, 6, 6]
    assert p.last_bwd_use.tolist() == [10, 9, 8, 7, 6]
    assert [s.tolist() for s in p.recompute_sources] == [[], [0], [1], [2], [3]]
    assert p.fixed_bytes[-1] - p.fixed_bytes[0] == 50  # all parameter gradients present at the end
    assert simulate(p, Schedule.keep_all(p)).time_s == 12.0


def test_residual_recompute_sources_include_block_input():
    p = residual(3, seed=1)
    names = p.act_names
    for b in range(3):
        out = names.index(f"block{b}.out")
        x = names.index("stem" if b == 0 else f"block{b - 1}.out")
        c2 = names.index(f"block{b}.c2")
        assert sorted(p.recompute_sources[out].tolist()) == sorted([x, c2])
        assert len(p.recompute_ops[out]) == 2 and p.recompute_temp_bytes[out] > 0
        # the skip keeps the block input alive in forward until the add
        assert p.last_fwd_use[x] == p.created[out]
    assert p.n_act == 13 and p.n_ops == 2 * (1 + 5 * 3) + 2


@pytest.mark.parametrize("gen", [lambda s: random_dag(300, seed=s), lambda s: residual(6, seed=s)])
def test_deterministic_per_seed(gen):
    assert _same(gen(3), gen(3))
    assert not _same(gen(3), gen(4))


def test_random_dag_shape():
    p = random_dag(1000, seed=0)
    assert 6.0 <= p.n_ops / p.n_act <= 7.0
    assert 0.01 < (~p.recomputable).mean() < 0.1
    assert (~p.swappable).any()
    assert np.all(np.diff(p.created) > 0)
    assert len(np.unique(p.act_bytes)) > 100 and len(np.unique(p.op_time_s)) > 100
    # fixed memory rises through backward as gradients appear
    assert p.fixed_bytes[-1] > p.fixed_bytes[: p.fwd_end + 1].max()
    grads_before_bwd = p.fixed_bytes[p.fwd_end + 1]
    assert p.fixed_bytes[-1] - grads_before_bwd > 0.1 * p.act_bytes.sum()
    # some activations have skip sources (two recompute sources), chains are a few ops
    n_src = np.array([len(s) for s in p.recompute_sources])
    assert (n_src == 2).any() and (n_src <= 2).all()
    assert max(len(o) for o in p.recompute_ops) <= 3
    # the link is sized so that a few swaps hide and swapping everything does not
    cum = np.concatenate([[0.0], np.cumsum(p.op_time_s)])
    hides = cum[p.first_bwd_use] - cum[p.last_fwd_use + 1] >= 2 * p.swap_time_s
    assert 0.5 < hides.mean() < 1.0
    early = p.swappable & (np.arange(p.n_act) < p.n_act // 20)
    few = simulate(p, Schedule.from_decisions(p, np.where(early, 2, 0)))
    every = simulate(p, Schedule.from_decisions(p, np.where(p.swappable, 2, 0)))
    assert few.stall_s < 0.02 * few.compute_s
    assert every.stall_s > 0.1 * every.compute_s


def test_random_dag_scales_to_10k_activations():
    start = time.perf_counter()
    p = random_dag(10_000, seed=1)
    elapsed = time.perf_counter() - start
    assert p.n_act == 10_000 and p.n_ops > 60_000
    assert elapsed < 3.0, f"random_dag(10_000) took {elapsed:.2f} s"


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(0, 10**6), st.floats(3.0, 10.0), st.floats(0.0, 0.5))
def test_random_dag_always_valid(n_act, seed, ops_per_act, frac_random):
    p = random_dag(n_act, seed=seed, ops_per_act=ops_per_act, frac_random=frac_random)
    p.check()
    assert p.n_act == n_act
    for a in range(n_act):  # a producer reads its sources, so they live at least until it runs
        src = p.recompute_sources[a]
        assert np.all(p.last_fwd_use[src] >= p.created[a])
        assert p.recompute_ops[a][-1] == p.created[a]
    sim = simulate(p, Schedule.keep_all(p))
    assert sim.peak_bytes >= p.fixed_bytes.max()


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 30), st.integers(0, 1000))
def test_small_generators_valid(n, seed):
    chain(n).check()
    residual(n, seed=seed).check()
