"""swap_interval: the interval model with the host link (docs/remat_exact.md). Its plans are real (they fit
when simulated, and the objective is the simulated time), never slower than its start, never below what
any plan can reach, and it swaps where it has to."""

from __future__ import annotations

import numpy as np
import pytest

from mutwo.registry import get_solver
from mutwo.schedule import Decision, Status, default_prefetch
from mutwo.simulate import simulate
from mutwo.synthetic import chain, random_dag, residual
from solvers.brute_force import brute_force
from solvers.ilp import heuristic_names
from solvers.mutwo_greedy import mutwo_greedy
from tests.test_ilp_bound import range_budget, slow_link

swap_interval = get_solver("swap_interval")
# a named start, not "heuristics": other test modules register plug-in solvers (one sleeps 60 s) that
# the heuristics' list would run
QUICK = {"time_limit_s": 2.0, "warm_start": "mutwo_greedy"}


def _problems():
    return [chain(6), residual(2, seed=1), random_dag(10, 3), slow_link(random_dag(9, 2), 10.0)]


@pytest.mark.parametrize("p", _problems(), ids=lambda p: f"{p.name}-{p.host_bandwidth_bytes_per_s:.3g}")
def test_plans_are_real_and_never_beat_what_any_plan_can_reach(p):
    """Fits when simulated, objective = simulated time; bound <= brute force's optimum <= objective,
    unless the plan uses copy-back or recompute points brute force does not name (it takes the defaults);
    never slower than its start; OPTIMAL exactly when within rel_gap of the bound."""
    dflt = default_prefetch(p)
    planned = 0
    for f in (0.1, 0.4):
        b = range_budget(p, f)
        start = mutwo_greedy(p, b)
        s = swap_interval(p, b, **{**QUICK, "warm_start": start if start.feasible else None})
        bf = brute_force(p, b, mode="both")
        if not s.feasible:
            assert not start.feasible, s.message  # a start that fits is always an answer
            continue
        planned += 1
        sim = simulate(p, s)
        assert sim.peak_bytes <= b
        assert s.objective == pytest.approx(sim.time_s, rel=1e-12)
        assert s.bound <= s.objective * (1 + 1e-12)
        assert (s.status == Status.OPTIMAL) == (s.objective <= s.options["lower_bound_s"] * (1 + 0.01))
        if start.feasible:
            assert s.objective <= simulate(p, start).time_s * (1 + 1e-12)
        if bf.feasible:
            assert s.bound <= bf.objective * (1 + 1e-9)  # the bound holds for every plan
            if s.objective < bf.objective * (1 - 1e-9):  # only with points brute force does not try
                swaps = s.decisions == Decision.SWAP
                assert np.any(s.prefetch_at[swaps] != dflt[swaps]) or np.any(s.recompute_at >= 0)
    assert planned  # some budget had a plan (else this checks nothing)


def test_the_model_improves_on_its_start_and_lies_around_it():
    """random_dag(10, 3) at 40%: the model's plan beats the greedy's, and the greedy's plan is a solution
    of the model (completed into the engine's hint)."""
    p = random_dag(10, 3)
    b = range_budget(p, 0.4)
    start = mutwo_greedy(p, b)
    s = swap_interval(p, b, **{**QUICK, "warm_start": start})
    assert s.options["start_in_model"].startswith("yes"), s.options["start_in_model"]
    assert s.objective < simulate(p, start).time_s * (1 - 1e-6), s.message
    assert "interval model" in s.message


def test_it_swaps_where_swapping_is_required():
    """With recompute out of the plan space (mode="swap", or no activation recomputable), the plans under
    keep-all's peak swap, from the model (the heuristics' starts are not proven optimal here)."""
    p = random_dag(10, 3)
    b = range_budget(p, 0.3)
    assert b < simulate(p, swap_interval(p, 10**15, **QUICK)).peak_bytes
    s = swap_interval(p, b, mode="swap", **QUICK)
    assert s.feasible and (s.decisions == Decision.SWAP).any() and "interval model" in s.message, s.message
    assert not (s.decisions == Decision.RECOMPUTE).any()
    assert simulate(p, s).peak_bytes <= b
    p.recomputable[:] = False
    s = swap_interval(p, b, **QUICK)
    assert s.feasible and (s.decisions == Decision.SWAP).any() and "interval model" in s.message, s.message


def test_recompute_mode_is_remat_interval():
    p = residual(2, seed=1)
    s = swap_interval(p, range_budget(p, 0.5), mode="recompute", **QUICK)
    assert s.solver == "swap_interval" and "remat_interval" in s.message
    assert s.feasible and not (s.decisions == Decision.SWAP).any() and (s.decisions == Decision.RECOMPUTE).any()


def test_no_plan_below_the_floor_is_a_proof():
    p = random_dag(10, 2)
    b = int((p.fixed_bytes + p.op_transient_bytes).max()) - 1
    s = swap_interval(p, b, **QUICK)
    assert s.status == Status.INFEASIBLE and "every plan" in s.message


def test_bad_options_are_named():
    p = chain(4)
    for option, value in (("mode", "full"), ("bound", "mip"), ("time_steps", 10), ("max_chain_depth", -1),
                          ("copy_back_order", "fifo"), ("time_limit_s", 0), ("threads", 0)):
        with pytest.raises(ValueError, match=option):
            swap_interval(p, 10**12, **{option: value})
    with pytest.raises(TypeError, match=r"swap_interval got unknown options \['time_limit'\]"):
        swap_interval(p, 10**12, time_limit=3)


def test_it_is_no_start_of_the_ilps():
    """An exact model, not a heuristic: warm_start="heuristics" does not run it (nor does it run itself)."""
    assert "swap_interval" not in heuristic_names("both")
    assert "swap_interval" not in heuristic_names("swap")


def test_the_comparison_benchmark_runs(tmp_path, capsys):
    from benchmarks import interval_vs_indexed

    path = random_dag(10, 3).save(tmp_path / "tiny.npz")
    args = ["--problems", str(path), "--fractions", "0.4", "--time-limit", "2", "--threads", "1",
            "--warm-start", "mutwo_greedy"]
    df = interval_vs_indexed.main(args, out_dir=tmp_path)
    assert list(df.solver) == ["ilp_cpsat", "ilp_cpsat bound=none", "swap_interval"]
    assert (tmp_path / "interval_vs_indexed.csv").exists() and df.load_before.notna().all()
    assert (df.status != "error").all() and (df.objective_s >= df.bound_s * (1 - 1e-12)).all()
    polish = interval_vs_indexed.main([*args, "--polish"], out_dir=tmp_path)
    assert list(polish.solver) == ["ilp_cpsat", "swap_interval from ilp_cpsat"]
    assert polish.objective_s.iloc[1] <= polish.objective_s.iloc[0] * (1 + 1e-12)  # never slower than its start
    capsys.readouterr()
