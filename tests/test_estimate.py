"""The roofline estimator: per-op times from torch's FLOP formulas and the bytes of the (fake) tensors,
against hand-computed figures on a device with round numbers; unknown ops listed, never a crash; the
estimate turned into a device-costed Problem whose cost source is recorded and survives save / load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from mutwo.capture import capture, flat_state
from mutwo.devices import DEVICES, get_device
from mutwo.estimate import EstimatedProfile, calibrate_local_cpu, estimate_profile, op_cost, roofline_time
from mutwo.problem import Problem
from mutwo.problem_build import build_problem
from mutwo.profile import profile
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.workload import OptimizerConfig, Workload
from mutwo.zoo import toy_mlp

# round figures: 1 TFLOP/s fp32, 4 TFLOP/s bf16, 100 GB/s, 10 us floor; matmul at half of peak
ROUND = get_device({"name": "round", "memory_bytes": "16GiB", "flops_per_s": {"fp32": 1e12, "tf32": 2e12,
                                                                              "bf16": 4e12},
                    "hbm_bytes_per_s": 1e11, "host_link_bytes_per_s": 1e10, "launch_latency_s": 1e-5,
                    "efficiency": {"matmul": 0.5, "elementwise": 0.8}})


def _nodes(fn, *shapes, dtype=torch.float32):
    gm = make_fx(fn, tracing_mode="fake")(*[torch.empty(s, dtype=dtype) for s in shapes])
    return [n for n in gm.graph.nodes if n.op == "call_function"]


def test_roofline_is_the_larger_of_compute_and_memory_at_least_the_floor():
    assert roofline_time(1e9, 1e6, 1e12, 1e11, 0.5, 1e-5) == pytest.approx(2e-3)  # compute-bound
    assert roofline_time(1e6, 1e9, 1e12, 1e11, 0.5, 1e-5) == pytest.approx(2e-2)  # memory-bound
    assert roofline_time(10, 10, 1e12, 1e11, 0.5, 1e-5) == 1e-5  # launch-bound


def test_large_matmul_is_compute_bound():
    (mm,) = _nodes(torch.mm, (1024, 1024), (1024, 1024))
    c = op_cost(mm, ROUND)
    assert c.op_class == "matmul" and c.dtype == "fp32"
    assert c.flops == 2 * 1024**3
    assert c.nbytes == 3 * 1024 * 1024 * 4
    assert c.time_s == pytest.approx(2 * 1024**3 / (1e12 * 0.5))  # > 12 MiB / 50 GB/s = 0.25 ms


def test_outer_product_matmul_is_memory_bound():
    (mm,) = _nodes(torch.mm, (4096, 1), (1, 4096))
    c = op_cost(mm, ROUND)
    nbytes = 4 * (4096 + 4096 + 4096 * 4096)
    assert c.nbytes == nbytes and c.flops == 2 * 4096 * 4096
    assert c.time_s == pytest.approx(nbytes / (1e11 * 0.5))  # 1.3 ms > 67 us of compute


def test_tiny_matmul_costs_the_launch_floor():
    (mm,) = _nodes(torch.mm, (2, 2), (2, 2))
    assert op_cost(mm, ROUND).time_s == 1e-5


def test_dtype_picks_the_rate():
    (mm,) = _nodes(torch.mm, (1024, 1024), (1024, 1024), dtype=torch.bfloat16)
    c = op_cost(mm, ROUND)
    assert c.dtype == "bf16" and c.time_s == pytest.approx(2 * 1024**3 / (4e12 * 0.5))
    (mm32,) = _nodes(torch.mm, (1024, 1024), (1024, 1024))
    tf32 = op_cost(mm32, ROUND, tf32_matmul=True)
    assert tf32.dtype == "tf32" and tf32.time_s == pytest.approx(2 * 1024**3 / (2e12 * 0.5))


def test_elementwise_moves_inputs_and_output():
    (add,) = _nodes(torch.add, (1 << 20,), (1 << 20,))
    c = op_cost(add, ROUND)
    assert c.op_class == "elementwise" and c.flops == 0 and c.nbytes == 3 * 4 * (1 << 20)
    assert c.time_s == pytest.approx(3 * 4 * (1 << 20) / (1e11 * 0.8))


def test_broadcast_input_is_read_once():
    (add,) = _nodes(lambda x, b: x + b, (1024, 1024), (1024,))
    assert op_cost(add, ROUND).nbytes == 4 * (1024 * 1024 + 1024 + 1024 * 1024)


def test_embedding_reads_the_rows_it_gathers_not_the_table():
    gm = make_fx(lambda w, i: torch.nn.functional.embedding(i, w), tracing_mode="fake")(
        torch.empty(1000, 64), torch.zeros(8, dtype=torch.int64))
    (emb,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    c = op_cost(emb, ROUND)
    out = 8 * 64 * 4
    assert c.op_class == "memory" and c.nbytes == out + 8 * 8 + out  # rows read, ids read, rows written


def test_views_cost_the_floor_and_move_nothing():
    nodes = _nodes(lambda x: x.view(-1, 32).t(), (64, 64))
    assert len(nodes) == 2
    for n in nodes:
        c = op_cost(n, ROUND)
        assert (c.op_class, c.nbytes, c.time_s) == ("view", 0, 1e-5)


@torch.library.custom_op("mutwo_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _mystery_fake(x):
    return torch.empty_like(x)


def _mystery_workload() -> Workload:
    def loss(model, x, y):
        return torch.nn.functional.cross_entropy(model(x), y) + mystery(x).sum()  # x needs no gradient

    wl = toy_mlp(8)
    return Workload(wl.model, wl.inputs, loss, "mlp-mystery")


def test_unknown_op_is_memory_bound_and_listed():
    graph = capture(_mystery_workload(), "sgd")
    est = estimate_profile(graph, ROUND)
    assert list(est.unknown_ops) == ["mutwo_test.mystery.default"]
    pos = next(i for i, n in enumerate(graph.ops) if "mystery" in str(n.target))
    assert est.op_class[pos] == "unknown"
    nbytes = 2 * 8 * 32 * 4  # reads x, writes its double
    assert est.op_bytes[pos] == nbytes
    assert est.op_time_s[pos] == max(nbytes / (1e11 * 0.6), 1e-5)


@pytest.fixture(scope="module")
def mlp():
    wl = toy_mlp(16, width=256)
    graph = capture(wl, "adam")
    return wl, graph


def test_estimated_problem_is_costed_for_the_target(mlp):
    wl, graph = mlp
    h100 = DEVICES["h100-sxm"]
    est = estimate_profile(graph, "h100-sxm")
    assert isinstance(est, EstimatedProfile)
    assert len(est.op_time_s) == len(graph.ops) and (est.op_time_s >= h100.launch_latency_s).all()
    assert est.measured_peak_bytes is None and est.iteration_time_s is None  # nothing claimed as measured
    assert not est.op_transient_bytes.any()
    problem, _ = build_problem(graph, est)
    assert problem.cost_source == "estimated:h100-sxm" and problem.device == "h100-sxm"
    assert problem.host_bandwidth_bytes_per_s == h100.host_link_bytes_per_s
    np.testing.assert_array_equal(problem.op_time_s, est.op_time_s)
    # the matmuls carry FLOPs and the step's time is the sum of the estimates
    assert est.op_flops.sum() > 0 and set(est.op_class) >= {"matmul", "elementwise", "view"}
    sim = simulate(problem, Schedule.keep_all(problem))
    assert sim.time_s == pytest.approx(est.op_time_s.sum())
    frame = est.ops_frame(graph)
    assert {"op_class", "flops", "bytes_moved", "time_s"} <= set(frame.columns)


def test_a_slower_target_gives_longer_times():
    graph = capture(toy_mlp(4096, width=1024), "adam")  # fake tracing: nothing of the batch is allocated
    fast, slow = estimate_profile(graph, "h100-sxm"), estimate_profile(graph, "l4")
    big = fast.op_flops > 1e6
    assert (slow.op_time_s[big] > fast.op_time_s[big]).all()


def test_measured_problem_records_cpu(mlp):
    wl, graph = mlp
    flat, _, _ = flat_state(wl, OptimizerConfig("adam"))
    prof = profile(graph, flat, runs=1, warmup=0, cache=False, progress=False)
    problem, _ = build_problem(graph, prof)
    assert problem.cost_source == "measured:cpu"


def test_cost_source_round_trips(tmp_path, mlp):
    _, graph = mlp
    problem, _ = build_problem(graph, estimate_profile(graph, "a100-80gb"))
    again = Problem.load(problem.save(tmp_path / "p.npz"))
    assert again.cost_source == "estimated:a100-80gb"


def test_old_problem_files_default_to_measured_on_their_device(tmp_path, mlp):
    _, graph = mlp
    problem, _ = build_problem(graph, estimate_profile(graph, "l4"))
    with np.load(problem.save(tmp_path / "p.npz")) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    del meta["cost_source"]  # as written before the field existed
    meta["device"] = "cpu"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    assert Problem.load(tmp_path / "old.npz").cost_source == "measured:cpu"


def test_local_cpu_calibration_measures_positive_rates():
    spec = calibrate_local_cpu(size=128, copy_bytes=4 << 20)
    assert spec.name == "local-cpu" and spec.source.startswith("calibrated")
    assert spec.flops("fp32") > 1e8 and spec.flops("bf16") > 1e8 and spec.hbm_bytes_per_s > 1e8
    assert 0 < spec.launch_latency_s < 1e-2 and set(spec.efficiency.values()) == {1.0}


def test_estimate_check_script_runs(tmp_path):
    from benchmarks import estimate_check

    threads = torch.get_num_threads()
    try:  # a benchmark's main pins torch's threads for its process; the test process gets its own back
        df = estimate_check.main(["--models", "mlp:4", "--runs", "1", "--warmup", "0", "--device", "cpu"],
                                 out=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "estimate_check.csv").exists() and (tmp_path / "estimate_check.md").exists()
    total = df[df.op_class == "all ops"].iloc[0]
    assert total.n_ops == df[df.op_class != "all ops"].n_ops.sum() and total.measured_ms > 0
    assert total.estimated_ms > 0 and np.isfinite(total.median_ratio)


def test_copy_reads_the_source_and_writes_the_destination():
    (copy,) = _nodes(lambda dst, src: dst.copy_(src), (1024,), (1024,))
    c = op_cost(copy, ROUND)
    assert c.op_class == "copy" and c.nbytes == 2 * 1024 * 4  # not 3: the old values are not read
