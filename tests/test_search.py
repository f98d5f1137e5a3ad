"""The largest batch (or sequence) that fits: the bisection of `mutwo.search` against brute force, its
guard against non-monotone answers, the scenario's ``search`` section, a whole search on tiny models
(against a scan of every size) and its resume."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mutwo import pipeline, search_run
from mutwo.compare import main
from mutwo.registry import get_solver
from mutwo.report import KEEP_ALL_BAR
from mutwo.scenario import ScenarioError, validate_scenario
from mutwo.search import Bisection, Probe, _verdict, largest_fitting, outcome_frame
from mutwo.simulate import simulate

ROOT = Path(__file__).parent.parent
MLP = {"name": "mlp_search", "model": "mlp", "model_options": {"width": 256, "depth": 4}, "batch_size": [64],
       "optimizer": {"name": "sgd", "options": {"momentum": 0.0}}, "device": "cpu", "target": "h100-sxm",
       "budgets": [1.0], "solvers": ["keep_all", "mutwo_greedy",
                                     {"name": "mutwo_greedy", "options": {"mode": "recompute"}, "label": "greedy-r"}],
       "profile": {"runs": 1, "warmup": 1}, "execute": {"iterations": 1, "warmup": 1}, "references": False,
       "search": {"largest_batch": {"memory": "4MiB", "min": 128, "max": 1024, "step": 128}}}


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))


def _judge(fits, calls: list):
    def judge(n: int, labels: list[str]) -> dict[str, Probe]:
        calls.append((n, tuple(labels)))
        return {label: Probe(label, n, bool(fits[label](n))) for label in labels}

    return judge


# ---------------------------------------------------------------------- the bisection
@pytest.mark.parametrize("seed", range(40))
def test_bisection_agrees_with_brute_force_on_monotone_answers(seed):
    rng = random.Random(seed)
    step = rng.choice([1, 1, 2, 8, 64])
    lo = rng.randint(1, 40)
    hi = lo + rng.randint(step, 600)  # at least one multiple of step in the range
    limits = {f"s{i}": rng.randint(lo - 10, hi + 10) for i in range(4)}
    fits = {label: (lambda n, t=t: n <= t) for label, t in limits.items()}
    calls: list = []
    out = largest_fitting(limits, lo, hi, _judge(fits, calls), step=step)
    sizes = [n for n in range(lo, hi + 1) if n % step == 0]
    per_label = {label: 0 for label in limits}
    for _, labels in calls:
        for label in labels:
            per_label[label] += 1
    assert len({n for n, _ in calls}) == len(calls)  # each size prepared once per round, for every label wanting it
    for label, t in limits.items():
        brute = max((n for n in sizes if n <= t), default=None)
        o = out[label]
        assert o.largest == brute and not o.warning
        assert o.capped == (brute == sizes[-1])
        assert all(p.fits == (p.n <= t) for p in o.probes.values())
        bound = 2 * (math.log2(len(sizes) + 1) + 2) + 1
        assert per_label[label] <= bound, (per_label[label], bound)
        if brute is not None and brute != sizes[-1]:  # its upper neighbour was tried and does not fit
            assert o.probes[brute + step].fits is False
        if brute is not None and brute != sizes[0]:  # and its lower neighbour, the guard
            assert o.probes[brute - step].fits is True


def test_a_non_monotone_solver_is_flagged_not_trusted_silently():
    calls: list = []
    fits = {"odd": lambda n: n <= 20 and n != 19, "none": lambda n: False, "all": lambda n: True}
    out = largest_fitting(fits, 1, 64, _judge(fits, calls))
    assert out["odd"].largest == 20 and "19 did not fit, below 20" in out["odd"].warning
    assert out["none"].largest is None and list(out["none"].probes) == [1]
    assert out["all"].largest == 64 and out["all"].capped and not out["all"].warning
    frame = outcome_frame(out, over="batch_size", memory="1GiB", memory_bytes=2**30)
    assert frame.set_index("solver").loc["odd", "probes"].startswith("1:yes 2:yes 4:yes 8:yes 16:yes")


def test_known_probes_are_not_made_again():
    fits = {"a": lambda n: n <= 37}
    first: list = []
    full = largest_fitting(fits, 1, 64, _judge(fits, first))
    known = {("a", n): p for n, p in list(full["a"].probes.items())[:4]}
    again: list = []
    out = largest_fitting(fits, 1, 64, _judge(fits, again), known=known)
    assert out["a"].largest == 37 and len(again) == len(first) - 4
    assert not {n for n, _ in again} & {n for _, n in known}


def test_a_bisection_never_asks_for_a_size_twice():
    b = Bisection(1, 100)
    asked = []
    while (k := b.next()) is not None:
        assert k not in asked
        asked.append(k)
        b.record(k, k in (1, 2, 3, 50))  # wildly non-monotone
    assert b.fit == 3 and b.violations() == [] and len(asked) < 20


def test_mutwo_search_imports_without_torch():
    res = subprocess.run([sys.executable, "-c", "import sys, mutwo.search; print('torch' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr


# ---------------------------------------------------------------------- the scenario section
def test_search_section_errors_name_the_field():
    base = {k: v for k, v in MLP.items() if k != "search"}
    for spec, expected in [
        ({"memory": "device", "max": 8}, None),
        ({"memory": "8GB", "max": 8}, "write '8GiB'"),
        ({"memory": "8GiB", "max": 4, "min": 8}, "min 8 is above max 4"),
        ({"memory": "8GiB", "max": 8, "solvers": ["greedy"]}, "'greedy' is not one of the scenario's solvers"),
        ({"memory": "8GiB", "max": 8, "over": "seq_len"}, "seq_len is searched by passing it to the model's builder"),
        ({"memory": "8GiB", "max": 8, "over": "batch"}, "did you mean 'batch_size'?"),
        ({"memory": "8GiB", "max": 8, "max_slowdown": 0.5}, "max_slowdown': Input should be greater than or equal to 1"),
    ]:
        data = {**base, "search": {"largest_batch": spec}}
        if expected is None:
            assert validate_scenario(data).search_memory_bytes() == 80 * 2**30  # the target's memory
            with pytest.raises(ScenarioError, match="'device' is the target's memory and this scenario has no target"):
                validate_scenario({**data, "target": "local"})
            continue
        with pytest.raises(ScenarioError, match="search.largest_batch") as exc:
            validate_scenario(data, "s.yaml")
        assert expected in str(exc.value)


# ---------------------------------------------------------------------- a whole search
def _run(tmp_path: Path, data: dict, *extra: str) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main([str(path), "--out", str(tmp_path / "out"), "--quiet", "--run-id", "r", *extra]) == 0
    return tmp_path / "out" / data["name"] / "r"


def _brute_force(data: dict) -> dict[str, int | None]:
    """Every size of the range prepared and every solver solved at the memory: the largest that fits."""
    sc = validate_scenario(data)
    spec, memory = sc.search.largest_batch, sc.search_memory_bytes()
    seen: dict[str, list[tuple[int, bool]]] = {KEEP_ALL_BAR: [], **{s.label: [] for s in sc.solvers}}
    for n in range(spec.min, spec.max + 1, spec.step):
        at_n, bs = sc, n
        if spec.over == "seq_len":
            at_n, bs = sc.model_copy(update={"model_options": {**sc.model_options, "seq_len": n}}), sc.batch_size[0]
        prep = pipeline.prepare_scenario(at_n, bs, "cpu")
        seen[KEEP_ALL_BAR].append((n, prep.keep_all_peak_bytes <= memory))
        for s in sc.solvers:
            plan = get_solver(s.name)(prep.problem, memory, **s.options)
            sim = simulate(prep.problem, plan)
            seen[s.label].append((n, plan.status.value in ("optimal", "feasible") and sim.peak_bytes <= memory))
        prep.release()
    for label, points in seen.items():  # the scan itself is monotone here, so bisection's answer must be it
        flags = [ok for _, ok in points]
        assert flags == sorted(flags, reverse=True), (label, points)
    return {label: max((n for n, ok in points if ok), default=None) for label, points in seen.items()}


@pytest.fixture(scope="module")
def mlp_search(tmp_path_factory) -> Path:
    """One finished search of the MLP (estimated for the H100, not executed): the tests read or copy it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MUTWO_CACHE", str(tmp_path_factory.getbasetemp() / "mutwo_cache"))
    try:
        return _run(tmp_path_factory.mktemp("mlp"), MLP, "--no-execute")
    finally:
        mp.undo()


def test_a_search_on_a_tiny_model_matches_a_scan_of_every_batch_size(mlp_search):
    run = mlp_search
    found = pd.read_csv(run / "search.csv").set_index("solver")
    expected = _brute_force(MLP)
    assert {k: (None if pd.isna(v) else int(v)) for k, v in found["largest"].items()} == expected
    assert expected["mutwo_greedy"] > expected[KEEP_ALL_BAR] > 128  # a plan fits a larger batch than keep-all
    assert (found["basis"] == "predicted").all() and (found["memory_bytes"] == 4 * 2**20).all()
    assert (found["predicted_peak_bytes"] <= 4 * 2**20).all()
    report = (run / "report.md").read_text()
    assert "## Largest batch size that fits 4MiB (search)" in report
    assert "plots/largest_batch_search.png" in report and (run / "plots" / "largest_batch_search.png").is_file()
    probes = [json.loads(line) for line in (run / "search" / "probes.jsonl").read_text().splitlines()]
    assert {p["label"] for p in probes} == {KEEP_ALL_BAR, "keep_all", "mutwo_greedy", "greedy-r"}
    assert all(p["n"] % 128 == 0 for p in probes)


def test_a_resumed_search_makes_only_the_missing_probes(mlp_search, tmp_path, monkeypatch):
    shutil.copytree(mlp_search.parent.parent, tmp_path / "out")
    run = tmp_path / "out" / MLP["name"] / "r"
    before = pd.read_csv(run / "search.csv")
    probes = run / "search" / "probes.jsonl"
    lines = probes.read_text().splitlines()
    kept = lines[: len(lines) // 2]
    probes.write_text("\n".join(kept) + '\n{"over": "batch_size", "mem')  # killed mid-search: a torn line
    (run / "search.csv").unlink()
    dropped = {json.loads(line)["n"] for line in lines[len(lines) // 2:]} - {json.loads(line)["n"] for line in kept}
    for n in dropped:  # these sizes must be prepared again; the others are reloaded from search/
        shutil.rmtree(run / "search" / f"batch_size{n}")
    prepared: list[int] = []
    real = pipeline.prepare_scenario
    monkeypatch.setattr(pipeline, "prepare_scenario", lambda sc, bs, *a, **k: prepared.append(bs) or real(sc, bs, *a, **k))
    _run(tmp_path, MLP, "--no-execute", "--resume")
    assert set(prepared) <= dropped  # sizes still cached are reloaded, not captured again
    after = pd.read_csv(run / "search.csv")
    pd.testing.assert_frame_equal(before.drop(columns="probes"), after.drop(columns="probes"))
    again = [json.loads(line) for line in probes.read_text().splitlines()]  # the torn line is gone
    assert [json.dumps(p) for p in again[: len(kept)]] == [json.dumps(json.loads(line)) for line in kept]
    made = {(p["label"], p["n"]) for p in again[len(kept):]}
    assert made and not made & {(json.loads(line)["label"], json.loads(line)["n"]) for line in kept}


def test_a_search_is_measured_where_plans_run_here(tmp_path):
    data = {**MLP, "name": "mlp_local", "target": "local",
            "search": {"largest_batch": {"memory": "6MiB", "min": 256, "max": 1024, "step": 256}}}
    run = _run(tmp_path, data)
    found = pd.read_csv(run / "search.csv").set_index("solver")
    fits = found.dropna(subset=["largest"])
    assert len(fits) == 4 and (fits["basis"] == "measured").all()
    assert (fits["measured_peak_bytes"] <= 6 * 2**20).all() and (fits["predicted_peak_bytes"] <= 6 * 2**20).all()


def test_a_sequence_length_search_on_a_tiny_llama(tmp_path):
    data = {**MLP, "name": "llama_seq", "model": "llama-tiny", "model_options": {"meta": True}, "batch_size": [2],
            "solvers": ["keep_all", "mutwo_greedy"],
            "search": {"largest_batch": {"memory": "4MiB", "over": "seq_len", "min": 64, "max": 256, "step": 64}}}
    run = _run(tmp_path, data)
    found = pd.read_csv(run / "search.csv").set_index("solver")
    expected = _brute_force(data)
    assert {k: (None if pd.isna(v) else int(v)) for k, v in found["largest"].items()} == expected
    assert expected["mutwo_greedy"] > expected[KEEP_ALL_BAR]
    assert (found["over"] == "seq_len").all() and (run / "search" / "seq_len64").is_dir()
    assert "## Largest sequence length that fits 4MiB (search)" in (run / "report.md").read_text()


def test_the_grid_size_is_not_captured_again_by_the_search(tmp_path, monkeypatch):
    # a meta model: not executed (chosen automatically), so a prepared size is reloaded, never re-captured
    data = {**MLP, "name": "llama_grid", "model": "llama-tiny", "model_options": {"meta": True}, "batch_size": [2],
            "solvers": ["keep_all", "mutwo_greedy"],
            "search": {"largest_batch": {"memory": "64MiB", "min": 1, "max": 2}}}
    prepared: list[int] = []
    real = pipeline.prepare_scenario
    monkeypatch.setattr(pipeline, "prepare_scenario", lambda sc, bs, *a, **k: prepared.append(bs) or real(sc, bs, *a, **k))
    run = _run(tmp_path, data)
    probed = {json.loads(line)["n"] for line in (run / "search" / "probes.jsonl").read_text().splitlines()}
    assert 2 in probed and sorted(prepared) == sorted(probed)  # each size prepared once: 2 by the grid only
    assert not (run / "search" / "batch_size2" / pipeline.PROBLEM_FILE).exists()
    assert pd.read_csv(run / "search.csv").set_index("solver").loc[KEEP_ALL_BAR, "probes"].startswith("1:yes 2:yes")


def test_a_probe_without_an_answer_shows_its_status_not_a_plain_no():
    """A solver that timed out at a size did not say the size does not fit: search.csv names the status."""
    def judge(n, labels):
        return {lab: Probe(lab, n, n <= 3, status="feasible" if n <= 3 else ("timeout" if n < 8 else "infeasible"))
                for lab in labels}

    out = largest_fitting(["slow"], 1, 16, judge)
    probes = outcome_frame(out, over="batch_size", memory="1GiB", memory_bytes=2**30)["probes"].iloc[0]
    assert "4:timeout" in probes.split() and "3:yes" in probes.split()
    assert all(p.endswith(("yes", "timeout", "no")) for p in probes.split())


def test_the_fastest_fitting_probe_is_reported_beside_the_largest():
    """Step time grows faster than the batch past 4 here: the largest batch that fits (12) is not the one
    with the most samples per second (4), and search.csv says both."""
    def judge(n, labels):
        return {lab: Probe(lab, n, n <= 12, predicted_time_s=1.0 if n <= 4 else n / 4 * (n - 3), status="feasible")
                for lab in labels}

    out = largest_fitting(["s"], 1, 32, judge)
    row = outcome_frame(out, over="batch_size", memory="1GiB", memory_bytes=2**30).iloc[0]
    assert row["largest"] == 12 and row["fastest_n"] == 4 and row["fastest_time_s"] == 1.0


def test_max_slowdown_counts_only_plans_fast_enough(tmp_path, mlp_search):
    """At 640 the recompute-only greedy fits 4 MiB at 1.14x keep-all's step (the swapping greedy hides its
    copies: 1.0x); with max_slowdown 1.1 its answer falls to 512 and the 640 probe reads `slow`."""
    spec = {**MLP["search"]["largest_batch"], "max_slowdown": 1.1}
    data = {**MLP, "name": "mlp_slow", "search": {"largest_batch": spec}}
    run = _run(tmp_path, data, "--no-execute")
    found = pd.read_csv(run / "search.csv").set_index("solver")
    free = pd.read_csv(mlp_search / "search.csv").set_index("solver")
    assert free.loc["greedy-r", "largest"] == 640 and free.loc["greedy-r", "slowdown"] > 1.1  # it bites
    assert found.loc["greedy-r", "largest"] == 512 and "640:slow" in found.loc["greedy-r", "probes"]
    assert found.loc["mutwo_greedy", "largest"] == free.loc["mutwo_greedy", "largest"]
    assert (found["slowdown"].dropna() <= 1.1).all()
    assert "at most 1.1x keep-all's" in (run / "report.md").read_text()
    # every probe is judged again on resume: the same probes without the limit give the free answers
    known = search_run._known(run / "search" / "probes.jsonl", "batch_size", 4 * 2**20, None)
    assert known[("greedy-r", 640)].fits and not known[("greedy-r", 640)].too_slow
    assert search_run._known(run / "search" / "probes.jsonl", "batch_size", 4 * 2**20, 1.1)[("greedy-r", 640)].too_slow


def test_probe_judged_by_max_slowdown():
    p = Probe("s", 8, True, slowdown=1.5)
    assert p.judged(None).fits and p.judged(2.0).fits
    slow = p.judged(1.2)
    assert not slow.fits and slow.too_slow and _verdict(slow) == "slow"
    assert slow.judged(2.0).fits  # a limit raised later lets it count again
    assert not Probe("s", 8, False, slowdown=1.0).judged(2.0).fits  # over the memory stays "no"
    assert _verdict(Probe("s", 8, False, slowdown=1.0).judged(2.0)) == "no"


def test_probes_from_before_slowdowns_get_keep_alls_time_from_the_prepared_size(tmp_path):
    """probes.jsonl lines written before probes carried a slowdown: keep-all's time at that size comes from
    its probe, else from the size's cached keep_all.json, so --resume with max_slowdown judges them too."""
    root = tmp_path / "search"
    (root / "batch_size8").mkdir(parents=True)
    (root / "batch_size8" / pipeline.KEEP_ALL_FILE).write_text(json.dumps({"keep_all_time_s": 2.0}))
    lines = [{"over": "batch_size", "memory_bytes": 10, "label": "greedy", "n": n, "fits": True,
              "predicted_time_s": t} for n, t in ((4, 9.0), (8, 5.0))]
    lines.append({"over": "batch_size", "memory_bytes": 10, "label": KEEP_ALL_BAR, "n": 4, "fits": False,
                  "predicted_time_s": 1.0})
    (root / "probes.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    known = search_run._known(root / "probes.jsonl", "batch_size", 10, 3.0)
    assert known[("greedy", 4)].slowdown == pytest.approx(9.0) and known[("greedy", 4)].too_slow
    assert known[("greedy", 8)].slowdown == pytest.approx(2.5) and known[("greedy", 8)].fits
