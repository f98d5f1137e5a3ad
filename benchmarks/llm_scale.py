"""A 7B-class Llama at sequence 4096 on this CPU: capture on meta + fake, estimate for a target GPU,
build the Problem, simulate keep-all and plan with the μ-TWO greedy at fixed budgets.

    python -m benchmarks.llm_scale                      # llama-7b, b1, seq 4096, bf16, AdamW, H100-SXM
    python -m benchmarks.llm_scale --model llama-8b --dtype float32 --budgets 80GiB 60GiB

Targets (issue 16): capture + Problem <= 10 min and <= 8 GiB peak resident, simulate <= 100 ms,
mutwo_greedy <= 5 s at each budget. Wall times are this machine's (shared: see the load column);
the peak resident size is the process's ``ru_maxrss``. Predicted peaks and times are for the target
(estimated op times, never measured). Writes ``results/benchmarks/llm_scale_{stages,plans,classes}.csv``
and ``llm_scale.md``.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import pandas as pd

from benchmarks._common import RESULTS, machine, markdown, set_threads, write_csv
from mutwo import files
from mutwo.capture import capture
from mutwo.estimate import estimate_profile
from mutwo.problem_build import build_problem
from mutwo.registry import get_solver
from mutwo.scenario import parse_size
from mutwo.schedule import Schedule
from mutwo.simulate import simulate
from mutwo.workload import OptimizerConfig
from mutwo.zoo import build_workload

GiB = 2**30
TARGETS = {"capture_problem_s": 600.0, "peak_rss_GiB": 8.0, "simulate_ms": 100.0, "greedy_s": 5.0}


def peak_rss_bytes() -> int:
    """The process's peak resident size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """The process's resident size now (VmRSS), or the peak where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


class Stages:
    """Wall time and resident size after each stage."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def run(self, name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.rows.append({"stage": name, "wall_s": time.perf_counter() - t0, "rss_GiB": rss_bytes() / GiB,
                          "peak_rss_GiB": peak_rss_bytes() / GiB})
        return out


def _plans(problem, keep, budgets: list[str], modes: list[str], repeat: int) -> list[dict]:
    greedy = get_solver("mutwo_greedy")
    rows = []
    for label in budgets:
        budget = parse_size(label)
        for mode in modes:
            times, sched = [], None
            for _ in range(repeat):
                t0 = time.perf_counter()
                sched = greedy(problem, budget, mode=mode)
                times.append(time.perf_counter() - t0)
            sim = simulate(problem, sched)
            rows.append({"budget": label, "solver": f"mutwo_greedy[{mode}]", "status": sched.status.value,
                         "solve_s": statistics.median(times), "predicted_peak_GiB": sim.peak_bytes / GiB,
                         "predicted_time_s": sim.time_s, "overhead_pct": 100 * (sim.time_s / keep.time_s - 1),
                         "stall_s": sim.stall_s, "recompute_s": sim.recompute_s, **sched.counts()})
    return rows


def run(model: str = "llama-7b", batch: int = 1, seq_len: int = 4096, dtype: str = "bfloat16",
        target: str = "h100-sxm", optimizer: str = "adamw", budgets: tuple[str, ...] = ("80GiB", "60GiB", "40GiB"),
        modes: tuple[str, ...] = ("both", "recompute", "swap"), repeat: int = 3,
        model_options: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The stage table, the plan table, where the estimated step time goes (per op class) and a summary
    of one model at one size."""
    st = Stages()
    opts = {"seq_len": seq_len, "dtype": dtype, "meta": True, **(model_options or {})}
    wl = st.run("build (meta)", lambda: build_workload(model, batch, **opts))
    graph = st.run("capture (fake)", lambda: capture(wl, OptimizerConfig(optimizer)))
    est = st.run(f"estimate ({target})", lambda: estimate_profile(graph, target))
    problem, _ = st.run("build_problem", lambda: build_problem(graph, est, name=f"{model}-b{batch}-s{seq_len}"))
    keep_sched = Schedule.keep_all(problem)
    keep = simulate(problem, keep_sched)
    sim_times = []
    for _ in range(max(repeat, 3)):
        t0 = time.perf_counter()
        simulate(problem, keep_sched)
        sim_times.append(time.perf_counter() - t0)
    stages = pd.DataFrame(st.rows)
    stages.loc[len(stages)] = {"stage": "simulate keep-all (median)", "wall_s": statistics.median(sim_times),
                               "rss_GiB": rss_bytes() / GiB, "peak_rss_GiB": peak_rss_bytes() / GiB}
    plans = pd.DataFrame(_plans(problem, keep, list(budgets), list(modes), repeat))
    classes = (pd.DataFrame({"op_class": est.op_class, "time_s": est.op_time_s, "flops": est.op_flops,
                             "bytes": est.op_bytes})
               .groupby("op_class").agg(n_ops=("time_s", "size"), time_s=("time_s", "sum"), TFLOP=("flops", "sum"),
                                        GB=("bytes", "sum"))
               .assign(TFLOP=lambda d: d.TFLOP / 1e12, GB=lambda d: d.GB / 1e9,
                       share=lambda d: d.time_s / d.time_s.sum())
               .sort_values("time_s", ascending=False).reset_index())
    floor, _ = problem.peak_floor()
    summary = {
        "model": model, "batch": batch, "seq_len": seq_len, "dtype": dtype, "optimizer": optimizer, "target": target,
        "cost_source": problem.cost_source, "params_B": sum(p.numel() for p in wl.model.parameters()) / 1e9,
        "n_ops": problem.n_ops, "n_act": problem.n_act, "n_recomputable": int(problem.recomputable.sum()),
        "act_GiB": problem.act_bytes.sum() / GiB, "fixed_peak_GiB": problem.fixed_bytes.max() / GiB,
        "keep_all_peak_GiB": keep.peak_bytes / GiB, "floor_GiB": floor / GiB,
        "keep_all_time_s": keep.time_s, "unknown_ops": ", ".join(est.unknown_ops) or "none",
        "capture_problem_s": float(stages.wall_s[:4].sum()), "peak_rss_GiB": peak_rss_bytes() / GiB,
        "simulate_ms": 1e3 * statistics.median(sim_times),
        "greedy_s_max": float(plans.solve_s.max()) if len(plans) else float("nan"), **machine()}
    return stages, plans, classes, summary


def main(argv: list[str] | None = None, out: Path = RESULTS) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                                                  dict]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-7b")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--target", default="h100-sxm")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--budgets", nargs="+", default=["80GiB", "60GiB", "40GiB"])
    ap.add_argument("--modes", nargs="+", default=["both", "recompute", "swap"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.torch_threads)
    stages, plans, classes, summary = run(args.model, args.batch, args.seq_len, args.dtype, args.target,
                                          args.optimizer, tuple(args.budgets), tuple(args.modes), args.repeat)
    write_csv(stages, "llm_scale_stages.csv", out)
    write_csv(plans, "llm_scale_plans.csv", out)
    write_csv(classes, "llm_scale_classes.csv", out)
    checks = {k: f"{summary[k]:.3g} (target <= {v:g})" for k, v in
              {"capture_problem_s": TARGETS["capture_problem_s"], "peak_rss_GiB": TARGETS["peak_rss_GiB"],
               "simulate_ms": TARGETS["simulate_ms"], "greedy_s_max": TARGETS["greedy_s"]}.items()}
    text = "\n\n".join([
        "\n".join(f"- {k}: {v}" for k, v in summary.items()), "Targets:\n" + "\n".join(f"- {k}: {v}" for k, v in
                                                                                      checks.items()),
        markdown(stages), markdown(plans), "Estimated keep-all step time per op class:\n\n" + markdown(classes)])
    files.write_text(out / "llm_scale.md", text + "\n")
    print(text)
    return stages, plans, classes, summary


if __name__ == "__main__":
    main()
