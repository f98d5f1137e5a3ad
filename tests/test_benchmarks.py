"""Smoke tests: every benchmark script's ``main`` runs end to end at tiny sizes and writes its files,
so the scripts do not rot while the code under them changes. Sizes are chosen to stay fast, not to
mean anything; the figures come from the real runs (docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import fidelity, ilp_speed, pytorch_reference, quality, solver_scale, tables
from benchmarks._common import labels, markdown, model_config, parser


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy shared CPU two OpenMP threads wait on each other (see
    benchmarks._common.set_threads), which made these tests 4x slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pytorch_reference_main(tmp_path):
    df = pytorch_reference.main(["--models", "bert-smoke", "--budgets", "0.5", "--backends", "aot_eager",
                                 "--iterations", "1"], out=tmp_path)
    assert list(df.variant) == ["eager", "checkpoint", "memory_budget"] and (df.status == "measured").all()
    assert (tmp_path / "pytorch_reference.csv").exists() and (tmp_path / "pytorch_reference.png").exists()
    # every variant measured by the allocator meter from outside; the compiled one ran compiled code there
    assert set(df.peak_method) == {"cpu-allocator-events"}
    compiled = df[df.variant == "memory_budget"].iloc[0]
    assert compiled.compiled_calls >= 1 and compiled.backend == "aot_eager" and compiled.budget == 0.5
    assert df[df.variant == "checkpoint"].backend.iloc[0] == "eager, 2 blocks"
    assert np.isfinite(df.peak_ratio).all() and (df.peak_ratio > 0.2).all()
    assert df.loss0_diff.max() < 1e-4  # same weights, same batch: the same first loss


def test_solver_scale_main(tmp_path):
    from mutwo.synthetic import residual

    real = residual(4).save(tmp_path / "tiny-real.npz")
    df = solver_scale.main(["--sizes", "12", "30", "--fractions", "0.8", "--solvers",
                            "keep_all,recompute_all,mutwo_greedy,brute_force", "--problems", str(real)],
                           out=tmp_path)
    assert (tmp_path / "solver_scale.csv").exists() and (tmp_path / "solver_scale.png").exists()
    syn = df[df.kind == "synthetic"]
    bf = syn[syn.solver == "brute_force"].set_index("n_act").status
    assert bf[12] != "skipped" and bf[30] == "skipped"  # size limit respected
    assert (df[df.status != "skipped"].solve_s >= 0).all()
    assert set(df[df.problem == "tiny-real"].budget) == {"80%", "mid"}


def test_solver_scale_skips_ilp_after_timeout():
    df = solver_scale.run_scale([30, 60], [0.8], time_limit=0.01, solvers=["mutwo_greedy", "ilp_cpsat"],
                                progress=False)
    ilp = df[df.solver == "ilp_cpsat"].set_index("n_act")
    assert ilp.status[60] == "skipped" or ilp.status[30] != "timeout"


def test_ilp_speed_problems_main(tmp_path, capsys):
    from mutwo.synthetic import chain

    path = chain(12).save(tmp_path / "tiny-real.npz")  # small enough for CP-SAT to prove in ~0.2 s
    df = ilp_speed.main(["--problems", str(path), "--fractions", "0.7", "0.05", "--backends", "ilp_cpsat",
                         "--time-limit", "1", "--threads", "1"], out=tmp_path)
    assert (tmp_path / "ilp_real.csv").exists() and (tmp_path / "ilp_real.md").exists()
    assert list(df.solver) == ["mutwo_greedy", "ilp_cpsat"] * 2 and set(df.problem) == {"tiny-real"}
    ok = df[df.fraction == 0.7].set_index("solver")
    assert ok.status["ilp_cpsat"] in ("optimal", "feasible") and ok.peak_fraction.max() <= 0.7
    assert ok.vs_greedy["mutwo_greedy"] == 0 and ok.vs_greedy["ilp_cpsat"] <= 1e-9  # warm-started from greedy
    cp = ok.loc["ilp_cpsat"]
    if cp.bound_s == cp.bound_s:  # a bound came back: both gaps agree with it
        assert cp.gap_recomputed == pytest.approx((cp.objective_s - cp.bound_s) / cp.objective_s)
        assert cp.gap == pytest.approx(cp.gap_recomputed, abs=1e-9)
    low = df[(df.fraction == 0.05) & (df.solver == "ilp_cpsat")].iloc[0]
    assert low.status == "infeasible" and low.proven == "infeasible (every plan)"
    assert df.load1_before.notna().all() and (df.cores >= 1).all() and (df.keep_peak_bytes > 0).all()
    capsys.readouterr()
    tables.main(["--results", str(tmp_path)])
    assert "ILP backends on real Problems" in capsys.readouterr().out


@pytest.fixture(scope="module")
def smoke_plans() -> pd.DataFrame:
    meter: list = []
    plans = fidelity.run_fidelity(["bert-smoke"], [0.8], solvers=["mutwo_greedy", "recompute_all"],
                                  iterations=1, progress=False, meter=meter)
    plans.attrs["meter"] = meter
    return plans


def test_fidelity_main(tmp_path, smoke_plans):
    path = tmp_path / "plans.csv"
    smoke_plans.to_csv(path, index=False)
    out = fidelity.main(["--from-csv", str(path)], out=tmp_path)
    assert (tmp_path / "fidelity.csv").exists() and (tmp_path / "fidelity.png").exists()
    summary = out["summary"].iloc[0]
    assert summary.plans >= 2  # keep-all and at least one plan that moves memory
    assert summary.max_abs_peak_err_pct < 10 and summary.worst_time_cause
    plans = out["plans"]
    assert (plans.peak_method == "cpu-allocator-events").all()
    # the allocator sees at least what ops return; the model is compared with the device's figure
    assert (plans.op_output_peak_bytes <= plans.measured_peak_bytes).all()
    swaps = plans[plans.emulated_swap.astype(bool)]
    assert (swaps.peak_against == "emulated device").all() and (swaps.device_peak_bytes < swaps.measured_peak_bytes).all()
    keep = plans[plans.budget_fraction.isna()].iloc[0]
    assert keep.peak_err == 0 and keep.peak_against == "allocator"  # the unmodified step, to the byte
    assert "peak_err_no_transients" in plans and "max_abs_peak_err_no_transients_pct" in out["summary"]
    meter = smoke_plans.attrs["meter"][0]
    assert meter["model"] == "bert-smoke" and meter["metered_step_s"] > 0 and meter["ops_with_scratch"] >= 0


def test_quality_main(tmp_path):
    # no compiled budgets here (the reference test covers them): eager and checkpoint only
    out = quality.main(["--models", "bert-smoke", "--fractions", "0.8", "--budgets", "--solvers",
                        "mutwo_greedy[recompute],recompute_all", "--iterations", "1", "--no-plot"], out=tmp_path)
    for name in ("quality_plans.csv", "quality_pytorch.csv", "quality_compare.csv", "quality_gap.csv"):
        assert (tmp_path / name).exists()
    cmp_df = out["compare"]
    assert set(cmp_df.pytorch) == {"checkpoint"}
    assert "recompute_only_holds" in cmp_df


def test_quality_compare_gap_and_plot(tmp_path, smoke_plans):
    ref = pd.DataFrame([
        {"model": "bert-smoke", "variant": "eager", "backend": "eager", "budget": np.nan, "peak_ratio": 1.0,
         "time_ratio": 1.0},
        {"model": "bert-smoke", "variant": "budget", "backend": "aot_eager", "budget": 0.5, "peak_ratio": 0.99,
         "time_ratio": 50.0},
        {"model": "bert-smoke", "variant": "checkpoint", "backend": "eager", "budget": np.nan,
         "peak_ratio": 0.01, "time_ratio": 1.0}])
    cmp_df = quality.compare(smoke_plans, ref).set_index("pytorch")
    assert cmp_df.loc["aot_eager@0.5", "all_holds"]  # something fits in 99% and beats a 50x slowdown
    assert cmp_df.loc["checkpoint", "all_solver"] == "none reaches this memory"
    quality.greedy_gap(smoke_plans)
    assert quality.plot(smoke_plans, ref, tmp_path / "q.png").exists()
    assert len(tables.compare_table(cmp_df.reset_index())) == 2
    assert set(tables.frontier_table(smoke_plans).pool) == {"recompute-only", "all"}
    front = quality.pareto(pd.DataFrame({"measured_peak_ratio": [1, 0.8, 0.9, 0.5],
                                         "measured_time_ratio": [1, 1.2, 1.5, 3]}))
    assert list(front.measured_peak_ratio) == [0.5, 0.8, 1]


def test_common_helpers():
    cfg = model_config("resnet18:4:image_size=32")
    assert cfg.batch == 4 and cfg.options == {"image_size": 32}
    assert markdown(pd.DataFrame({"a": [1.23456], "b": ["x"]})).splitlines()[2] == "| 1.23 | x |"
    args = parser("first line\nmore", "warmup", "solvers", "time-limit", warmup={"default": 2}).parse_args(
        ["--solvers", "a,b"])
    assert (args.warmup, args.time_limit, labels(args.solvers), labels(None)) == (2, 60.0, ["a", "b"], None)
    with pytest.raises(KeyError):
        parser("doc", "no-such-flag")
