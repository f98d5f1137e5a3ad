"""mutwo.optimize trains the user's own model and optimizer under a plan exactly as eager PyTorch does.

On CPU the planned step runs the same kernels on the same values as eager PyTorch (recomputation
re-runs them on the same inputs), so equality is bitwise (``torch.equal``), dropout included: the
planned step draws random numbers in eager order and planning leaves the generator untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mutwo.capture import CaptureError
from mutwo.optimize import CheckError, optimize
from mutwo.optimize_state import UnsupportedOptimizerError
from mutwo.planning import BudgetError
from mutwo.workload import Workload
from mutwo.zoo import build_workload
from tests.fixtures_user_model import Branchy


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def _mlp(batch: int = 256) -> Workload:
    """Activations large enough beside the parameters that a budget of 0.9 needs recomputation."""
    return build_workload("mlp", batch, width=128, depth=6)


def _mlp_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _eager(model, optimizer, loss_fn, batches, scheduler=None) -> list[torch.Tensor]:
    losses = []
    for batch in batches:
        optimizer.zero_grad()
        loss = loss_fn(model, *batch)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
    return losses


def _planned(step, batches, scheduler=None) -> list[torch.Tensor]:
    losses = []
    for batch in batches:
        losses.append(step(*batch))
        if scheduler is not None:
            scheduler.step()
    return losses


def _same_tensors(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _same_state(opt_a: torch.optim.Optimizer, opt_b: torch.optim.Optimizer) -> bool:
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    if sa["param_groups"] != sb["param_groups"] or sa["state"].keys() != sb["state"].keys():
        return False
    return all(sa["state"][k].keys() == sb["state"][k].keys() and
               all(torch.equal(sa["state"][k][n], sb["state"][k][n]) for n in sa["state"][k]) for k in sa["state"])


# ---------------------------------------------------------------------- fifty steps equal to eager
@pytest.mark.slow
def test_resnet18_fifty_steps_equal_eager_under_the_budget():
    wl = build_workload("resnet18", 16, image_size=64, num_classes=10)
    eager_model = copy.deepcopy(wl.model)
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.05, weight_decay=5e-4)
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.05, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 64, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen))
               for _ in range(50)]
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.95, verbose=False)
    plan = step.plan
    # ResNet-18 at 64x64 is mostly parameters and gradients: 0.95 of keep-all is between the floor and
    # keep-all, so the plan must recompute
    assert plan.floor_bytes < plan.budget_bytes < plan.keep_all_peak_bytes
    assert plan.counts["n_recompute"] > 0 and plan.counts["n_swap"] == 0
    planned = _planned(step, batches)
    eager = _eager(eager_model, eager_opt, wl.loss_fn, batches)
    assert torch.equal(torch.stack(planned), torch.stack(eager))
    assert _same_tensors(wl.model.parameters(), eager_model.parameters())
    assert _same_tensors(wl.model.buffers(), eager_model.buffers())  # batch-norm running statistics
    row = step.report().rows[0]
    assert row["steps"] == 50 and row["bitwise"] is True
    assert row["peak_method"] == "cpu-allocator-events" and row["measured_peak_bytes"] <= plan.budget_bytes


@pytest.mark.slow
def test_bert_tiny_fifty_steps_equal_eager_with_dropout():
    wl = build_workload("bert-tiny", 8, seq_len=128, dropout=0.1)
    eager_model = copy.deepcopy(wl.model)
    opt = torch.optim.AdamW(wl.model.parameters(), lr=1e-3)
    eager_opt = torch.optim.AdamW(eager_model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(2)
    ids, mask, labels = wl.inputs
    batches = [(torch.randint(0, 1000, ids.shape, generator=gen), mask, torch.randint(0, 1000, ids.shape, generator=gen))
               for _ in range(50)]
    torch.manual_seed(3)  # dropout masks: both runs start from the same generator state
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.6, verbose=False)
    assert step.plan.counts["n_recompute"] > 0 and step.plan.predicted_peak_bytes <= step.plan.budget_bytes
    planned = _planned(step, batches)
    torch.manual_seed(3)
    eager = _eager(eager_model, eager_opt, wl.loss_fn, batches)
    assert torch.equal(torch.stack(planned), torch.stack(eager))
    assert _same_tensors(wl.model.parameters(), eager_model.parameters())
    assert _same_state(opt, eager_opt)  # the optimizer's own state_dict: step counts and moments
    assert step.report().rows[0]["measured_peak_bytes"] <= step.plan.budget_bytes


# ---------------------------------------------------------------------- hyperparameters, state, shapes
def test_a_learning_rate_scheduler_is_honoured():
    """OneCycleLR changes the learning rate and Adam's beta1 at every step; the planned steps use them."""
    wl = _mlp()
    eager_model, initial = copy.deepcopy(wl.model), copy.deepcopy(wl.model)
    opt = torch.optim.Adam(wl.model.parameters(), lr=1e-3)
    eager_opt = torch.optim.Adam(eager_model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12)
    eager_sched = torch.optim.lr_scheduler.OneCycleLR(eager_opt, max_lr=0.05, total_steps=12)
    gen = torch.Generator().manual_seed(0)
    batches = [_mlp_batch(256, gen) for _ in range(12)]
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False)
    lrs = []
    planned = []
    for batch in batches:
        lrs.append(opt.param_groups[0]["lr"])
        planned.append(step(*batch))
        sched.step()
    eager = _eager(eager_model, eager_opt, wl.loss_fn, batches, eager_sched)
    assert len(set(lrs)) == 12  # the schedule really moved
    assert torch.equal(torch.stack(planned), torch.stack(eager))
    assert _same_tensors(wl.model.parameters(), eager_model.parameters())
    # training with the first learning rate throughout gives other losses: a stale one would have shown
    constant = _eager(initial, torch.optim.Adam(initial.parameters(), lr=lrs[0]), wl.loss_fn, batches)
    assert not torch.equal(torch.stack(constant), torch.stack(planned))


def test_state_dict_round_trip_mid_training():
    wl = _mlp()
    initial = copy.deepcopy(wl.model.state_dict())
    gen = torch.Generator().manual_seed(0)
    batches = [_mlp_batch(256, gen) for _ in range(10)]
    opt = torch.optim.Adam(wl.model.parameters(), lr=1e-2)
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False)
    straight = _planned(step, batches)
    final = copy.deepcopy(wl.model.state_dict())

    # a checkpoint after 5 steps, loaded into a new model and optimizer, continues the same run
    wl.model.load_state_dict(initial)
    opt = torch.optim.Adam(wl.model.parameters(), lr=1e-2)
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False)
    first = _planned(step, batches[:5])
    checkpoint = copy.deepcopy({"model": wl.model.state_dict(), "optimizer": opt.state_dict()})
    assert checkpoint["optimizer"]["state"][0]["step"] == 5  # the user's optimizer state was trained in place
    other = _mlp().model
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-2)
    other.load_state_dict(checkpoint["model"])
    # torch.optim's load_state_dict keeps the given tensors when dtype and device match: a copy, so the
    # checkpoint stays as saved while the optimizer trains its state in place
    other_opt.load_state_dict(copy.deepcopy(checkpoint["optimizer"]))
    resumed = _planned(optimize(other, other_opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False), batches[5:])
    assert torch.equal(torch.stack(first + resumed), torch.stack(straight))
    assert _same_tensors(other.state_dict().values(), final.values())

    # loaded into the same objects mid-training (new state tensors): the step trains those
    _planned(step, batches[5:7])
    wl.model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(copy.deepcopy(checkpoint["optimizer"]))
    again = _planned(step, batches[5:])
    assert torch.equal(torch.stack(again), torch.stack(straight[5:]))


def test_a_smaller_last_batch_is_planned_once_per_shape():
    wl = _mlp()
    eager_model = copy.deepcopy(wl.model)
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.1, momentum=0.9)
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    batches = [_mlp_batch(n, gen) for n in (256, 256, 100, 256, 100)]  # two epochs with a short last batch
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False)
    planned = _planned(step, batches)
    eager = _eager(eager_model, eager_opt, wl.loss_fn, batches)
    assert torch.equal(torch.stack(planned), torch.stack(eager))
    assert _same_tensors(wl.model.parameters(), eager_model.parameters())
    assert set(step.plans) == {((256, 32), (256,)), ((100, 32), (100,))}
    assert step.plan.shapes == ((100, 32), (100,))  # the latest
    steps = {r["shapes"][0][0]: (r["steps"], r["checked"]) for r in step.report().rows}
    assert steps == {256: (3, 1), 100: (2, 1)}  # each shape planned and checked once


def test_eval_mode_and_no_grad_run_the_plain_model():
    wl = _mlp()
    opt = torch.optim.Adam(wl.model.parameters(), lr=1e-2)
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False)
    x, y = _mlp_batch(64, torch.Generator().manual_seed(0))  # a shape never planned
    before = copy.deepcopy(wl.model.state_dict())
    with torch.no_grad():
        loss = step(x, y)
        assert torch.equal(loss, wl.loss_fn(wl.model, x, y))
    wl.model.eval()
    loss = step(x, y)
    assert loss.requires_grad  # the plain model under autograd, as the user asked
    wl.model.train()
    assert _same_tensors(wl.model.state_dict().values(), before.values()) and not opt.state
    assert step.steps == 0 and len(step.plans) == 1


# ---------------------------------------------------------------------- bad input
def test_a_budget_below_the_floor_names_the_floor_and_the_lowest_plan():
    wl = _mlp()
    opt = torch.optim.Adam(wl.model.parameters())
    with pytest.raises(ValueError, match="below the floor") as err:
        optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.3, verbose=False)
    e = err.value
    assert isinstance(e, BudgetError) and 0 < e.budget_bytes < e.floor_bytes <= e.lowest_peak_bytes
    assert f"{e.floor_bytes} B" in str(e) and f"lowest plan mutwo_greedy found peaks at {e.lowest_peak_bytes} B" in str(e)
    # the budget the message names can be asked for, and is met
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=e.lowest_peak_bytes, verbose=False)
    assert step.plan.predicted_peak_bytes <= e.lowest_peak_bytes


@pytest.mark.parametrize("make, match", [
    (lambda p: torch.optim.RMSprop(p), "RMSprop is not supported.*SGD, torch.optim.Adam and torch.optim.AdamW"),
    (lambda p: torch.optim.Adam(p, amsgrad=True), "amsgrad=True"),
    (lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), "maximize=True"),
    (lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-3)), "'lr'\\] is a Tensor"),
    (lambda p: torch.optim.SGD(list(p)[1:], lr=0.1), "is in no param group"),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5), "dampening"),
])
def test_an_unsupported_optimizer_says_what_is_supported(make, match):
    wl = _mlp(16)
    with pytest.raises(UnsupportedOptimizerError, match=match):
        step = optimize(wl.model, make(wl.model.parameters()), wl.inputs, wl.loss_fn, budget=1.0, verbose=False)
        step(*wl.inputs)  # dampening is refused when the momentum buffers would be made


def test_inputs_of_another_dtype_device_or_count_are_a_clear_error():
    wl = _mlp(16)
    step = optimize(wl.model, torch.optim.SGD(wl.model.parameters(), lr=0.1), wl.inputs, wl.loss_fn, budget=1.0,
                    verbose=False)
    x, y = wl.inputs
    with pytest.raises(ValueError, match="input 0 is torch.float64 on cpu, but the example was torch.float32"):
        step(x.double(), y)
    with pytest.raises(ValueError, match="input 1 is torch.int64 on meta"):
        step(x, torch.empty_like(y, device="meta"))
    with pytest.raises(TypeError, match="takes 2 inputs"):
        step(x)
    with pytest.raises(ValueError, match="is on meta but the model's parameters are on cpu"):
        optimize(wl.model, torch.optim.SGD(wl.model.parameters(), lr=0.1), (x.to("meta"), y), wl.loss_fn,
                 verbose=False)
    assert step.steps == 0


def test_cpu_swaps_are_refused_unless_emulated():
    wl = _mlp()
    opt = torch.optim.SGD(wl.model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="allow_emulated_swaps=True"):
        optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, solver_options={"mode": "swap"}, verbose=False)
    assert optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False).plan.counts["n_swap"] == 0
    # opted in: swaps run emulated (byte-exact copies), and train exactly as eager
    eager_model = copy.deepcopy(wl.model)
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.1)
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, solver_options={"mode": "swap"},
                    allow_emulated_swaps=True, verbose=False)
    assert step.plan.counts["n_swap"] > 0 and step.plan.plan_space == "recompute and swap"
    gen = torch.Generator().manual_seed(0)
    batches = [_mlp_batch(256, gen) for _ in range(3)]
    assert torch.equal(torch.stack(_planned(step, batches)), torch.stack(_eager(eager_model, eager_opt, wl.loss_fn,
                                                                                batches)))


def test_a_model_that_does_not_capture_names_the_op_and_the_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Branchy())
    with pytest.raises(CaptureError) as err:
        optimize(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(2, 4), lambda m, x: m(x),
                 verbose=False)
    text = str(err.value)
    assert "op Tensor.__bool__ in module 1 (Branchy)" in text and "h.sum() > 0" in text and "torch.where" in text


# ---------------------------------------------------------------------- the check
def test_check_always_compares_every_step_and_says_how():
    wl = _mlp()
    opt = torch.optim.Adam(wl.model.parameters())
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, check="always", verbose=False)
    gen = torch.Generator().manual_seed(0)
    _planned(step, [_mlp_batch(256, gen) for _ in range(3)])
    checks = step.report().checks
    assert [c.step for c in checks] == [1, 2, 3] and all(c.bitwise and c.passed for c in checks)
    n = len(list(wl.model.parameters()))
    assert "bitwise equal" in str(checks[0]) and f"{n} gradients, {n} parameters" in str(checks[0])
    assert checks[0].tolerance == 0.0  # on CPU: the same kernels, so nothing less than bitwise passes


def test_a_failing_check_raises_and_leaves_the_eager_result():
    wl = _mlp()
    eager_model = copy.deepcopy(wl.model)
    opt = torch.optim.Adam(wl.model.parameters())
    eager_opt = torch.optim.Adam(eager_model.parameters())
    step = optimize(wl.model, opt, wl.inputs, wl.loss_fn, budget=0.9, verbose=False)
    compiled = next(iter(step._compiled.values()))
    good = compiled.module

    def broken(*flat):  # the planned step with a wrong loss
        loss, grads = good(*flat)
        return loss + 1, grads

    compiled.module = broken
    with pytest.raises(CheckError, match="ABOVE the tolerance 0") as err:
        step(*wl.inputs)
    assert not err.value.result.passed and err.value.result.diffs["loss"] > 0
    _eager(eager_model, eager_opt, wl.loss_fn, [wl.inputs])
    assert _same_tensors(wl.model.parameters(), eager_model.parameters())
    assert _same_state(opt, eager_opt)
    with pytest.raises(ValueError, match="check='sometimes'"):
        optimize(wl.model, opt, wl.inputs, wl.loss_fn, check="sometimes", verbose=False)


# ---------------------------------------------------------------------- the example
@pytest.mark.slow
def test_the_example_trains_bitwise_equal_to_eager_under_its_budget(tmp_path, capsys):
    """examples/train_with_plan.py (docs/optimize.md shows its output), a few steps of its GPT-2: its
    exit status is 0 only when every loss and final weight equals eager training and the measured peak
    is under the budget."""
    from examples.train_with_plan import main

    plot = tmp_path / "curves.png"
    assert main(["--steps", "3", "--models", "gpt2", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "losses at all 3 steps and the final weights BITWISE EQUAL" in out
    assert plot.stat().st_size > 0
