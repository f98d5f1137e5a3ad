"""Scenario files: every mistake is a ScenarioError naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mutwo.scenario import Budget, ScenarioError, load_scenario, parse_size, validate_scenario
from mutwo.workload import resolve_device
from mutwo.zoo import call_builder

TESTS = Path(__file__).parent
SCENARIOS = TESTS.parent / "scenarios"
BASE = {"name": "t", "model": "mlp", "batch_size": 4, "budgets": [1.0, 0.5], "solvers": ["keep_all"]}


def _error(tmp_path: Path, **changes) -> str:
    data = {**BASE, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    text = str(info.value)
    assert str(path) in text  # names the file
    return text


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path):
    s = load_scenario(path)
    assert s.name == path.stem and s.solvers and s.budgets and all(b > 0 for b in s.batch_size)


def test_defaults_and_normalisation():
    s = validate_scenario({**BASE, "solvers": ["keep_all", {"name": "mutwo_greedy", "options": {"mode": "swap"}},
                                               "mutwo_greedy"], "budgets": [0.5, "512MiB", 0.5]})
    assert s.batch_size == [4]
    assert [x.label for x in s.solvers] == ["keep_all", "mutwo_greedy[mode=swap]", "mutwo_greedy"]
    assert [b.label for b in s.budgets] == ["0.5", "512MiB"]  # duplicates dropped
    assert s.budgets[1].resolve(10**12) == 512 * 2**20 and s.budgets[0].resolve(1000) == 500
    assert s.device == "auto" and s.optimizer.name == "adam" and s.execute.enabled


def test_unknown_key_suggests_the_closest(tmp_path):
    text = _error(tmp_path, budget=[0.5])
    assert "'budget'" in text and "did you mean 'budgets'" in text
    text = _error(tmp_path, profile={"run": 3})
    assert "profile.run" in text and "did you mean 'runs'" in text
    text = _error(tmp_path, solvers=[{"name": "keep_all", "option": {}}])
    assert "solvers[0].option" in text and "'options'" in text


def test_sizes_need_binary_units(tmp_path):
    text = _error(tmp_path, budgets=["6GB"])
    assert "budgets[0]" in text and "6GiB" in text
    assert parse_size("6GiB") == 6 * 2**30 and parse_size("1.5 MiB") == int(1.5 * 2**20)
    for bad in ("6 gigs", "GiB", "-1GiB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_budget_fraction_range(tmp_path):
    assert "budgets[1]" in _error(tmp_path, budgets=[0.5, 2])
    assert "budgets[0]" in _error(tmp_path, budgets=[0])
    assert "budgets" in _error(tmp_path, budgets=[])
    assert Budget.model_validate("0.25").fraction == 0.25


def test_batch_size_must_be_positive(tmp_path):
    assert "batch_size" in _error(tmp_path, batch_size=0)
    assert "batch_size" in _error(tmp_path, batch_size=[2, -1])
    assert "batch_size" in _error(tmp_path, batch_size="two")


def test_solvers_unknown_or_empty(tmp_path):
    text = _error(tmp_path, solvers=["mutwo_gredy"])
    assert "solvers[0].name" in text and "did you mean 'mutwo_greedy'" in text
    text = _error(tmp_path, solvers=[])
    assert "'solvers'" in text and "at least one" in text
    text = _error(tmp_path, solvers=[{"name": "chen_sqrt", "options": {"segments": 2}},
                                     {"name": "chen_sqrt", "options": {"segments": 2}}])
    assert "label" in text


def test_model_errors(tmp_path):
    assert "did you mean 'resnet152'" in _error(tmp_path, model="resnet15")
    text = _error(tmp_path, model="no_such_module_xyz:build")
    assert "'model'" in text and "cannot import" in text
    text = _error(tmp_path, model="json:dumpz")
    assert "no function 'dumpz'" in text and "dumps" in text
    assert "module:function" in _error(tmp_path, model="json:")


def test_user_builder_must_return_a_workload(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    # a return annotation that is not a Workload is refused when the scenario is loaded
    with pytest.raises(ScenarioError, match="'model'.*annotated to return dict.*expected|'model'.*Workload"):
        validate_scenario({**BASE, "model": "fixtures_user_model:not_a_workload"})
    # without one, the first call says what came back and what was expected
    s = validate_scenario({**BASE, "model": "fixtures_bad_builders:returns_a_dict"})
    with pytest.raises(ScenarioError, match="'model'.*returned dict, expected mutwo.capture.Workload"):
        call_builder(s, 2, "cpu")
    s = validate_scenario({**BASE, "model": "fixtures_user_model:build", "model_options": {"hidden": 8}})
    wl = call_builder(s, 3, "cpu")
    assert wl.inputs[0].shape == (3, 16)
    # options the builder does not take: at load time when its signature lists its parameters ...
    with pytest.raises(ScenarioError, match="'model_options': 'hiden' is not a parameter.*did you mean 'hidden'"):
        validate_scenario({**BASE, "model": "fixtures_user_model:build", "model_options": {"hiden": 8}})
    # (the zoo presets carry their builder's signature, so they are checked at load too) ...
    with pytest.raises(ScenarioError, match="'model_options': 'widht' is not a parameter.*did you mean 'width'"):
        validate_scenario({**BASE, "model": "mlp", "model_options": {"widht": 8}})
    # ... and at the first call, before any model is made, when it takes **options
    s = validate_scenario({**BASE, "model": "fixtures_bad_builders:takes_anything", "model_options": {"widht": 8}})
    with pytest.raises(ScenarioError, match="'model_options' does not fit 'fixtures_bad_builders:takes_anything'.*widht"):
        call_builder(s, 3, "cpu")


def test_optimizer_options_are_checked(tmp_path):
    assert "momentom" in _error(tmp_path, optimizer={"name": "sgd", "options": {"momentom": 0.0}})
    assert "optimizer.name" in _error(tmp_path, optimizer={"name": "lion"})


def test_cuda_without_gpu_is_refused_when_the_device_is_resolved(monkeypatch):
    """Loading does not probe the device; resolving ``cuda`` without a GPU says what to write instead
    (the CLI reports it as the file's 'device' field before any run folder: test_reliability)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert validate_scenario({**BASE, "device": "cuda"}).device == "cuda"
    with pytest.raises(ValueError, match="device 'cuda' was asked for .* use device: auto or cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"


def test_unsafe_yaml_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(path)
    path.write_text("- a list\n")
    with pytest.raises(ScenarioError, match="top level"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------- option values, plan_space, solver paths
def test_solver_option_values_are_checked_at_load(tmp_path):
    """A value a solver does not accept is refused when the file loads, with the closest allowed value."""
    text = _error(tmp_path, solvers=[{"name": "mutwo_greedy", "options": {"mode": "recomput"}}])
    assert ("field 'solvers[0].options': mutwo_greedy option 'mode' is 'recomput'; did you mean 'recompute'? it "
            "takes 'both', 'recompute' or 'swap'") in text
    assert "'segments' is 0; it takes an integer >= 1 or null" in _error(
        tmp_path, solvers=[{"name": "chen_sqrt", "options": {"segments": 0}}])
    assert "'threads' is 2.5; it takes an integer >= 1" in _error(
        tmp_path, solvers=[{"name": "ilp_cpsat", "options": {"threads": 2.5}}])
    assert "'verify' is 'yes'; it takes true or false" in _error(
        tmp_path, solvers=[{"name": "mutwo_greedy", "options": {"verify": "yes"}}])
    assert "did you mean 'events'?" in _error(tmp_path, solvers=[{"name": "checkmate_exact",
                                                                 "options": {"grid": "event"}}])
    s = validate_scenario({**BASE, "solvers": [{"name": "ilp_cpsat", "options": {"time_limit_s": 5, "seed": 1}},
                                               {"name": "chen_sqrt", "options": {"segments": None}}]})
    assert s.solvers[0].options == {"time_limit_s": 5, "seed": 1}  # an int is a number


def test_plan_space_is_passed_as_each_solvers_mode():
    s = validate_scenario({**BASE, "plan_space": {"recompute": True, "swap": False},
                           "solvers": ["keep_all", "mutwo_greedy", "chen_sqrt", "ilp_cpsat", "checkmate_exact",
                                       {"name": "brute_force", "options": {"mode": "recompute"}}]})
    assert [x.options for x in s.solvers] == [{}, {"mode": "recompute"}, {}, {"mode": "recompute"},
                                              {"mode": "recompute"}, {"mode": "recompute"}]
    assert [x.label for x in s.solvers][:2] == ["keep_all", "mutwo_greedy"]  # labels are the names given
    s = validate_scenario({**BASE, "plan_space": "swap", "solvers": ["keep_all", "swap_hidden", "mutwo_greedy"]})
    assert (s.plan_space.recompute, s.plan_space.swap) == (False, True)
    assert [x.options for x in s.solvers] == [{}, {}, {"mode": "swap"}]
    s = validate_scenario({**BASE, "solvers": ["mutwo_greedy", "swap_hidden"]})  # default: both, nothing added
    assert [x.options for x in s.solvers] == [{}, {}] and s.plan_space.space().mode == "both"


def test_plan_space_refusals_name_the_solver_and_the_fix(tmp_path):
    text = _error(tmp_path, plan_space={"recompute": True, "swap": False}, solvers=["keep_all", "swap_hidden"])
    assert ("field 'solvers[1]': swap_hidden makes SWAP plans (it has no mode option), but plan_space allows "
            "recompute only; remove swap_hidden from solvers, or allow SWAP in plan_space") in text
    for name in ("recompute_all", "chen_sqrt", "knapsack", "largest_first", "checkmate_exact"):
        assert f"{name} makes RECOMPUTE plans" in _error(tmp_path, plan_space="swap", solvers=[name])
    text = _error(tmp_path, plan_space="recompute", solvers=[{"name": "mutwo_greedy", "options": {"mode": "both"}}])
    assert ("mutwo_greedy has options mode: both, which makes RECOMPUTE and SWAP plans, but plan_space allows "
            "recompute only; drop the option, or write mode: recompute") in text
    assert "allow at least one" in _error(tmp_path, plan_space={"recompute": False, "swap": False})
    assert "did you mean 'recompute'?" in _error(tmp_path, plan_space="recomput")
    assert "did you mean 'swap'?" in _error(tmp_path, plan_space={"recompute": True, "swp": False})


def test_a_solver_named_by_module_function(tmp_path):
    path = "tests.fixtures_user_solver:recompute_share"
    s = validate_scenario({**BASE, "plan_space": "recompute", "solvers": [{"name": path, "options": {"share": 0.3}}]})
    assert s.solvers[0].label == path and s.solvers[0].options == {"share": 0.3}
    assert "'share' is 2; it takes a number >= 0 and <= 1" in _error(
        tmp_path, solvers=[{"name": path, "options": {"share": 2}}])
    assert "did you mean 'share'?" in _error(tmp_path, solvers=[{"name": path, "options": {"shar": 2}}])
    assert "makes RECOMPUTE plans" in _error(tmp_path, plan_space="swap", solvers=[path])
    text = _error(tmp_path, solvers=["tests.fixtures_user_solver:one_argument"])
    assert "'solvers[0].name'" in text and "cannot be called as one_argument(problem, budget_bytes)" in text
    text = _error(tmp_path, solvers=["no_such_pkg_xyz.solvers:mine"])
    assert "cannot import module 'no_such_pkg_xyz.solvers'" in text and "PYTHONPATH" in text


def test_profile_refresh_is_not_what_a_resume_compares():
    s = validate_scenario({**BASE, "profile": {"runs": 1, "refresh": True}})
    assert s.profile.refresh and "refresh" not in s.model_dump()["profile"]
