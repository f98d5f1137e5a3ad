"""Executed schedules train exactly like the unmodified graph, lower the measured peak, and their
measured peak agrees with the simulator's within 5%.

Tolerance for training equivalence: bitwise. On CPU a recompute re-runs the same kernels on the same
inputs and a swap moves bytes, so loss, gradients and updated parameters / buffers / optimizer state
must be identical to the unmodified graph's (dropout included: both runs reseed before each
iteration).

Problems are built from a uniform synthetic profile (1 ms per op, no transient memory): the memory the
simulator predicts then does not depend on how loaded the test machine is, and emulated CPU transfers
(12 GB/s assumed) end within the op that issued them, as the CPU emulation frees them.
"""

from __future__ import annotations

import numpy as np
import pytest

from mutwo.capture import capture, flat_state
from mutwo.execute import ExecuteError, apply, execute, reference
from mutwo.graph import Role, is_random_op
from mutwo.problem import Problem
from mutwo.problem_build import StorageBinding, build_problem
from mutwo.profile import Profile
from mutwo.schedule import Decision, Schedule, ScheduleError, resolve_recompute
from mutwo.simulate import simulate
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload, resnet, toy_mlp
from solvers.baselines import chen_sqrt

SGD = OptimizerConfig("sgd", {"momentum": 0.0})
# iterations after the measured one: recompute-all re-runs most of the forward pass per activation, so
# the large cases run one iteration; the dropout case runs two (new masks each, same in both runs)
ITERATIONS = {"resnet18": 0, "bert-tiny": 0, "bert-tiny-dropout": 1, "mlp": 2, "mlp-b128": 0}


def _uniform_profile(n_ops: int) -> Profile:
    return Profile(op_time_s=np.full(n_ops, 1e-3), op_transient_bytes=np.zeros(n_ops, np.int64),
                   measured_peak_bytes=0, peak_method="none", op_output_peak_bytes=0,
                   iteration_time_s=n_ops * 1e-3,
                   host_bandwidth_bytes_per_s=12e9, bandwidth_source="assumed", device="cpu", runs=0,
                   warmup=0, profile_time_s=0.0, transient_measured=False)


def _workload(name: str):
    if name == "resnet18":  # SGD without momentum at 64x64: the peak is in backward, not the optimizer
        return resnet(8, image_size=64, depth=18)
    if name == "mlp":
        return toy_mlp(4)
    if name == "mlp-b128":  # activations dominate: recompute-all's chain memory is the step's peak
        return toy_mlp(128)
    dropout = 0.1 if name == "bert-tiny-dropout" else 0.0
    return build_workload("bert-tiny", 4, seq_len=64, dropout=dropout)


def _recompute_reads_swapped(problem: Problem, d: np.ndarray) -> list[int]:
    try:
        resolve_recompute(problem, d.astype(object))
    except ScheduleError:
        pass
    else:
        return []
    bad = []
    for a in np.flatnonzero(d == Decision.RECOMPUTE):
        t, stack, seen = problem.first_bwd_use[a], [int(a)], {int(a)}
        while stack:
            for s in problem.recompute_sources[stack.pop()]:
                s = int(s)
                if s in seen:
                    continue
                seen.add(s)
                resident = problem.first_bwd_use[s] <= t <= problem.last_bwd_use[s]
                if d[s] == Decision.SWAP and not resident:
                    bad.append(s)
                elif d[s] == Decision.RECOMPUTE and not resident:
                    stack.append(s)
    return bad


def _mixed(problem: Problem) -> Schedule:
    """Along creation order: recompute, swap, keep, recompute, ... A swapped activation that a recompute
    chain would read while it is on the host is kept instead. Prefetches start 3 ops early, so memory
    is reserved before the first backward use."""
    d = np.zeros(problem.n_act, np.int8)
    for k, a in enumerate(np.argsort(problem.created, kind="stable")):
        if k % 3 == 0 and problem.recomputable[a]:
            d[a] = Decision.RECOMPUTE
        elif k % 3 == 1:
            d[a] = Decision.SWAP
    while bad := _recompute_reads_swapped(problem, d):
        d[bad] = Decision.KEEP
    pf = np.where(d == Decision.SWAP, np.maximum(problem.fwd_end + 1, problem.first_bwd_use - 3), -1)
    return Schedule.from_decisions(problem, d, pf, solver="test-mixed")


def _schedules(problem: Problem) -> dict[str, Schedule]:
    rec = np.where(problem.recomputable, Decision.RECOMPUTE, Decision.KEEP)
    swap = np.where(problem.swappable, Decision.SWAP, Decision.KEEP)
    return {"keep_all": Schedule.keep_all(problem), "recompute_all": Schedule.from_decisions(problem, rec),
            "swap_all": Schedule.from_decisions(problem, swap), "mixed": _mixed(problem),
            # segments regenerated once at an early anchor and shared by their members
            "chen_shared": chen_sqrt(problem, 2**62)}


class _Case:
    def __init__(self, name: str) -> None:
        wl = _workload(name)
        self.graph = capture(wl, SGD)
        self.flat = flat_state(wl, SGD)[0]
        self.problem, self.binding = build_problem(self.graph, _uniform_profile(len(self.graph.ops)), name=name)
        self.schedules = _schedules(self.problem)
        self.iterations = ITERATIONS[name]
        self.ref = reference(self.graph, self.flat, 1 + self.iterations)
        self.results: dict = {}

    def result(self, schedule: str):
        if schedule not in self.results:
            self.results[schedule] = execute(self.graph, self.problem, self.schedules[schedule], self.flat,
                                             iterations=self.iterations, warmup=1, ref=self.ref,
                                             binding=self.binding)
        return self.results[schedule]


@pytest.fixture(scope="module")
def cases():
    built: dict[str, _Case] = {}

    def get(name: str) -> _Case:
        if name not in built:
            built[name] = _Case(name)
        return built[name]

    return get


MODELS = ["resnet18", "bert-tiny", "bert-tiny-dropout"]
CHANGED = ["recompute_all", "swap_all", "mixed", "chen_shared"]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("schedule", CHANGED)
def test_trains_identically(cases, model, schedule):
    case = cases(model)
    res = case.result(schedule)
    assert res.bitwise_equal, res.diffs
    assert res.max_rel_diff == 0.0
    assert res.emulated_swap == (case.schedules[schedule].counts()["n_swap"] > 0)
    assert res.method == "cpu-live-storages"


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("schedule", CHANGED)
def test_lowers_measured_peak(cases, model, schedule):
    case = cases(model)
    assert case.result(schedule).measured_peak_bytes < case.result("keep_all").measured_peak_bytes


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("schedule", ["keep_all", *CHANGED])
def test_measured_peak_matches_simulation(cases, model, schedule):
    case = cases(model)
    simulated = simulate(case.problem, case.schedules[schedule]).peak_bytes
    measured = case.result(schedule).measured_peak_bytes
    assert abs(measured - simulated) <= 0.05 * simulated, (measured, simulated)


@pytest.mark.slow
@pytest.mark.parametrize("model", [*MODELS, "mlp-b128"])
@pytest.mark.parametrize("schedule", ["recompute_all", "chen_shared"])
def test_chain_memory_is_predicted_byte_for_byte(cases, model, schedule):
    """Recompute-all runs the longest chains, regenerating temporaries; the cost model follows chain
    memory op by op through the Problem's forward dataflow, as the generated code frees it, so the
    peaks agree exactly."""
    case = cases(model)
    assert case.problem.has_dataflow
    simulated = simulate(case.problem, case.schedules[schedule]).peak_bytes
    assert case.result(schedule).measured_peak_bytes == simulated


def test_member_level_chain_memory_would_overstate_the_mlp_peak(cases):
    """Where the chains set the peak (the MLP at batch 128), holding each chain member whole (the rule
    without dataflow) overstates it by the intermediates the generated code has already freed."""
    case = cases("mlp-b128")
    p = case.problem
    blind = Problem(**{**{k: getattr(p, k) for k in p.__dataclass_fields__}, **{k: None for k in Problem._DATAFLOW}})
    measured = case.result("recompute_all").measured_peak_bytes
    assert simulate(blind, case.schedules["recompute_all"]).peak_bytes > 1.05 * measured


# ---------------------------------------------------------------------------- small graph checks
@pytest.fixture(scope="module")
def mlp():
    return _Case("mlp")


def test_apply_leaves_the_train_graph_alone(mlp):
    code = mlp.graph.gm.code
    gm = apply(mlp.graph, mlp.problem, mlp.schedules["mixed"], binding=mlp.binding)
    assert mlp.graph.gm.code == code
    assert gm.code != code
    assert gm.meta["mutwo"]["n_recompute"] > 0


def test_the_binding_ties_each_activation_to_its_storage_and_is_checked(mlp, tmp_path):
    """build_problem returns the activation -> storage binding beside the Problem (which stays plain
    solver data); apply refuses a binding that is not this Problem's on this graph."""
    p, binding = mlp.problem, mlp.binding
    assert isinstance(binding, StorageBinding) and len(binding.storage_ids) == p.n_act
    for a, sid in enumerate(binding.storage_ids):
        info = mlp.graph.storages[sid]
        assert info.role is Role.ACTIVATION and (info.created, info.nbytes) == (p.created[a], p.act_bytes[a])
    assert "storage_ids" not in p.notes
    # a Problem saved and loaded again executes with the binding of a fresh capture of the same step
    again = Problem.load(p.save(tmp_path / "p.npz"))
    gm = apply(mlp.graph, again, mlp.schedules["mixed"], binding=binding)
    assert gm.code == apply(mlp.graph, p, mlp.schedules["mixed"], binding=binding).code
    shuffled = StorageBinding(binding.storage_ids[1:] + binding.storage_ids[:1])
    with pytest.raises(ExecuteError, match="does not match storage"):
        apply(mlp.graph, p, mlp.schedules["mixed"], binding=shuffled)
    with pytest.raises(ExecuteError, match="not built from this TrainGraph"):
        apply(mlp.graph, p, mlp.schedules["mixed"], binding=StorageBinding(binding.storage_ids[:-1]))
    with pytest.raises(TypeError, match="binding"):
        apply(mlp.graph, p, mlp.schedules["mixed"])  # the binding is required, by keyword


def test_times_the_iterations_after_the_measured_one(mlp):
    res = mlp.result("mixed")
    assert len(res.iteration_times_s) == 2 and res.iteration_time_s > 0 and res.reference_time_s > 0
    assert res.bitwise_equal


def test_graph_output_is_not_an_activation(mlp):
    """The loss is returned by the step: it must survive anyway (moving it would free nothing), so it
    is no decidable activation, and swap-all moves everything else and trains identically."""
    outputs = {s.sid for s in mlp.graph.storages if s.is_output}
    assert outputs
    assert not outputs & set(mlp.binding.storage_ids)
    res = mlp.result("swap_all")
    assert not any("graph output" in w for w in res.notes["warnings"])
    assert res.bitwise_equal


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_shared_segments_use_early_anchors_and_cost_less_than_recompute_all(cases, model):
    case = cases(model)
    chen = case.schedules["chen_shared"]
    early = (chen.recompute_at >= 0) & (chen.recompute_at < case.problem.first_bwd_use)
    assert early.any(), "some segment members are regenerated before their own first backward use"
    shared = simulate(case.problem, chen).recompute_s
    assert shared < simulate(case.problem, case.schedules["recompute_all"]).recompute_s


@pytest.mark.slow
def test_recomputed_batch_norm_leaves_running_stats_alone(cases):
    """Running statistics are compared as updated state; a second update would show here."""
    case = cases("resnet18")
    assert case.result("recompute_all").diffs["state"] == 0.0


@pytest.mark.slow
def test_random_ops_are_never_recomputed(cases):
    case = cases("bert-tiny-dropout")
    p = case.problem
    assert not p.recomputable.all()  # dropout (and what is made from it) may not be recomputed
    forced = Problem(**{**{k: getattr(p, k) for k in p.__dataclass_fields__},
                        "recomputable": np.ones(p.n_act, bool)})
    a = next(a for a in range(p.n_act)
             if any(is_random_op(case.graph.ops[int(i)]) for i in p.recompute_ops[a]))
    d = np.zeros(p.n_act, np.int8)
    d[a] = Decision.RECOMPUTE
    with pytest.raises(ExecuteError, match="random op"):
        apply(case.graph, forced, Schedule.from_decisions(forced, d), binding=case.binding)
