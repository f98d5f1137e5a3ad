"""Problem: consistency checks name the field at fault; save/load keeps every field."""

from __future__ import annotations

import numpy as np
import pytest

from mutwo.problem import Problem, ProblemError
from mutwo.synthetic import random_dag, residual


def _fields(**over) -> dict:
    """A valid two-activation problem as keyword arguments, with overrides."""
    f = dict(name="p", op_names=[f"op{t}" for t in range(6)], op_time_s=np.ones(6),
             op_transient_bytes=np.zeros(6, np.int64), fixed_bytes=np.full(6, 5, np.int64), fwd_end=2,
             act_names=["x", "y"], act_bytes=[10, 20], created=[0, 1], last_fwd_use=[1, 2],
             first_bwd_use=[4, 3], last_bwd_use=[5, 4], recomputable=[True, True], swappable=[True, False],
             recompute_ops=[[0], [1]], recompute_sources=[[], [0]], recompute_temp_bytes=[0, 3])
    f.update(over)
    return f


def test_valid_problem_and_derived_properties():
    p = Problem(**_fields(host_bandwidth_bytes_per_s=10.0))
    assert (p.n_ops, p.n_act) == (6, 2)
    assert p.swap_time_s.tolist() == [1.0, 2.0]
    assert p.recompute_time_s.tolist() == [1.0, 1.0]
    assert p.summary()["n_swappable"] == 1 and p.total_compute_s == 6.0


@pytest.mark.parametrize("over, field", [
    (dict(op_names=["a"] * 5), "op_names"),
    (dict(fixed_bytes=np.zeros(7, np.int64)), "fixed_bytes"),
    (dict(op_transient_bytes=np.zeros(5, np.int64)), "op_transient_bytes"),
    (dict(created=[0]), "created"),
    (dict(swappable=[True]), "swappable"),
    (dict(recompute_ops=[[0]]), "recompute_ops"),
    (dict(recompute_temp_bytes=[0, 0, 0]), "recompute_temp_bytes"),
    (dict(fwd_end=6), "fwd_end"),
    (dict(op_time_s=np.array([1, 1, -1, 1, 1, 1.0])), "op_time_s"),
    (dict(act_bytes=[-1, 20]), "act_bytes"),
    (dict(host_bandwidth_bytes_per_s=0.0), "host_bandwidth_bytes_per_s"),
])
def test_check_names_the_field(over, field):
    with pytest.raises(ProblemError, match=field):
        Problem(**_fields(**over))


@pytest.mark.parametrize("over, act", [
    (dict(last_fwd_use=[3, 2]), "'x'"),  # last forward use after fwd_end
    (dict(first_bwd_use=[4, 2]), "'y'"),  # first backward use in forward
    (dict(last_bwd_use=[5, 2]), "'y'"),  # last before first backward use
    (dict(last_bwd_use=[6, 4]), "'x'"),  # beyond the last op
    (dict(recompute_ops=[[0], [3]]), "'y'.*forward"),  # recompute op in backward
    (dict(recompute_sources=[[], [2]]), "'y'.*out of range"),
    (dict(recompute_sources=[[1], []]), "'x'.*created after"),
])
def test_check_names_the_activation(over, act):
    with pytest.raises(ProblemError, match=act):
        Problem(**_fields(**over))


# forward dataflow of _fields(): op 0 makes x; op 1 makes a 7-byte temporary and y from x; op 2 reads both
DATAFLOW = dict(value_bytes=[10, 7, 20], value_op=[0, 1, 1], reads_offsets=[0, 0, 1, 3], reads=[0, 1, 2],
                act_value=[0, 2])


@pytest.mark.parametrize("over, field", [
    (dict(value_bytes=[10, 7]), "value_op"),
    (dict(value_op=[1, 0, 1]), "non-decreasing"),
    (dict(reads_offsets=[0, 0, 1]), "reads_offsets"),
    (dict(reads=[0, 1, 3]), "out of range"),
    (dict(act_value=[0]), "act_value"),
    (dict(act_value=None), "come together"),
])
def test_dataflow_check_names_the_field(over, field):
    with pytest.raises(ProblemError, match=field):
        Problem(**_fields(**{**DATAFLOW, **over}))


def test_non_recomputable_may_have_no_recompute_ops():
    p = Problem(**_fields(recomputable=[True, False], recompute_ops=[[0], []]))
    assert len(p.recompute_ops[1]) == 0


@pytest.mark.parametrize("problem", [Problem(**_fields(notes={"model": "toy", "batch": 2})),
                                     Problem(**_fields(**DATAFLOW)), residual(3, seed=1), random_dag(50, seed=2)])
def test_save_load_round_trip(problem, tmp_path):
    path = problem.save(tmp_path / "p.npz")
    assert path.exists() and not list(tmp_path.glob("*.tmp*"))
    q = Problem.load(path)
    for key, value in vars(problem).items():
        other = getattr(q, key)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and np.array_equal(value, other), key
        elif key in ("recompute_ops", "recompute_sources"):
            assert len(value) == len(other) and all(np.array_equal(a, b) for a, b in zip(value, other, strict=True))
        elif value is None:
            assert other is None, key
        else:
            assert value == other, key
    assert q.has_dataflow == problem.has_dataflow
