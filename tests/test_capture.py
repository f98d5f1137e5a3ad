"""Capture: a captured step trains exactly like eager PyTorch, with roles, boundary and liveness."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mutwo import capture as capture_module
from mutwo.capture import CaptureError, capture, eager_optimizer, flat_state, run_step
from mutwo.graph import Role
from mutwo.workload import OptimizerConfig, Workload
from mutwo.zoo import build_workload
from tests.fixtures_user_model import Branchy


def _eager_vs_graph(workload: Workload, opt: OptimizerConfig, iterations: int = 3, seed: int = 0):
    """Run `iterations` eager steps and captured-graph steps from identical copies; return both."""
    eager_model = copy.deepcopy(workload.model)
    graph_wl = Workload(copy.deepcopy(workload.model), workload.inputs, workload.loss_fn, workload.name)
    tg = capture(graph_wl, opt)
    flat, _, _ = flat_state(graph_wl, opt)
    flat = [t.clone() for t in flat]
    optim = eager_optimizer(eager_model, opt)
    eager_losses, graph_losses = [], []
    for i in range(iterations):
        torch.manual_seed(seed + i)
        optim.zero_grad()
        loss = workload.loss_fn(eager_model, *workload.inputs)
        loss.backward()
        optim.step()
        eager_losses.append(loss.detach())
        torch.manual_seed(seed + i)
        graph_loss, _ = run_step(tg, flat)
        graph_losses.append(graph_loss)
    n_p = len(list(eager_model.parameters()))
    eager_state = list(eager_model.parameters()) + list(eager_model.buffers())
    graph_state = flat[: n_p + len(list(eager_model.buffers()))]
    return tg, eager_losses, graph_losses, eager_state, graph_state


def _max_abs(a, b) -> float:
    return max(float((x.detach().float() - y.detach().float()).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("opt", ["adam", "sgd", "adamw"])
def test_mlp_three_steps_bitwise(opt):
    wl = build_workload("mlp", 8)
    tg, el, gl, es, gs = _eager_vs_graph(wl, OptimizerConfig(opt))
    assert [float(x) for x in el] == [float(x) for x in gl]
    assert _max_abs(es, gs) == 0.0
    assert float(el[0]) != float(el[-1]), "the model must actually train"
    s = tg.summary()
    assert s["n_activations"] > 0 and 0 < s["fwd_end"] < s["n_ops"]


@pytest.mark.slow
def test_resnet18_three_steps_match_eager():
    wl = build_workload("resnet18", 2, image_size=32, num_classes=10)
    tg, el, gl, es, gs = _eager_vs_graph(wl, OptimizerConfig("adam"))
    # same aten kernels in the same order: bitwise on CPU (tolerance 0)
    assert torch.equal(torch.stack(el), torch.stack(gl))
    assert _max_abs(es, gs) == 0.0  # parameters and batch-norm running statistics


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_tiny_bert_three_steps_match_eager(dropout):
    wl = build_workload("bert-tiny", 2, dropout=dropout)
    tg, el, gl, es, gs = _eager_vs_graph(wl, OptimizerConfig("adam"))
    # with dropout on, the same seed gives the same masks: the graph draws random numbers in eager order
    torch.testing.assert_close(torch.stack(gl), torch.stack(el), rtol=1e-5, atol=1e-6)
    assert _max_abs(es, gs) < 1e-5
    randoms = [n for n in tg.ops if "bernoulli" in str(n.target) or "dropout" in str(n.target)]
    assert bool(randoms) == (dropout > 0)


def test_roles_boundary_and_liveness():
    wl = build_workload("mlp", 4, depth=3)
    tg = capture(wl, "sgd")
    roles = {s.role for s in tg.storages}
    assert {Role.PARAM, Role.OPT_STATE, Role.INPUT, Role.GRAD, Role.ACTIVATION} <= roles
    assert str(tg.ops[tg.fwd_end].target).startswith("mutwo.fwd_end")
    assert tg.bwd_start > tg.fwd_end
    n_params = len(list(wl.model.parameters()))
    assert sum(s.role is Role.GRAD for s in tg.storages) == n_params
    acts = tg.activation_frame()
    assert (acts.created <= acts.last_fwd_use).all()
    assert (acts.last_fwd_use <= tg.fwd_end).all() and (acts.first_bwd_use > tg.fwd_end).all()
    assert (acts.first_bwd_use <= acts.last_bwd_use).all()
    # each activation storage is counted once, however many views of it exist
    assert acts.storage.is_unique
    # no in-place ops left in forward/backward except input updates
    inplace = [n for n in tg.ops if str(n.target).split(".")[-2].endswith("_") and "copy_" not in str(n.target)]
    assert not inplace


def test_liveness_counts_storage_not_views():
    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 16)

        def forward(self, x):
            h = torch.tanh(self.lin(x))  # saved for backward
            return h.view(-1).sum() + h.t().sum()

    wl = Workload(ViewNet(), (torch.randn(4, 16),), lambda m, x: m(x), "views")
    tg = capture(wl, "sgd")
    tanh = [s for s in tg.activations if "tanh" in str(s.producer.target)]
    assert len(tanh) == 1 and tanh[0].nbytes == 4 * 16 * 4


def test_fake_tracing_of_meta_model_allocates_nothing():
    with torch.device("meta"):
        wl = build_workload("resnet18", 64, device="meta", image_size=224)
    tg = capture(wl, "sgd", tracing="fake")
    s = tg.summary()
    assert s["n_activations"] > 50
    assert s["activation_bytes"] > 1e9  # batch 64 at 224x224: several GiB, analysed without allocating it


def test_data_dependent_model_fails_with_user_line():
    wl = Workload(Branchy(), (torch.randn(2, 4),), lambda m, x: m(x), "branchy")
    with pytest.raises(CaptureError) as err:
        capture(wl, "sgd")
    assert "fixtures_user_model.py" in str(err.value) and "h.sum() > 0" in str(err.value)


def test_unknown_optimizer_is_named():
    # the types live in mutwo.workload (torch-free); mutwo.capture.Workload, the name builder error
    # messages use, is the same class
    assert capture_module.Workload is Workload and capture_module.OptimizerConfig is OptimizerConfig
    with pytest.raises(ValueError, match="optimizer.name='lion'"):
        OptimizerConfig("lion").resolved()
    with pytest.raises(ValueError, match="unknown keys \\['momentum'\\]"):
        OptimizerConfig("adam", {"momentum": 0.9}).resolved()


def test_loss_fn_with_custom_loss():
    model = torch.nn.Linear(3, 1)
    wl = Workload(model, (torch.randn(5, 3), torch.randn(5, 1)), lambda m, x, y: F.mse_loss(m(x), y), "reg")
    tg, el, gl, es, gs = _eager_vs_graph(wl, OptimizerConfig("sgd", {"lr": 0.1}))
    assert [float(x) for x in el] == [float(x) for x in gl]
