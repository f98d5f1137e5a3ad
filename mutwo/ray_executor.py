"""The comparison grid on a Ray cluster (``--executor ray``): the same rows as a local run, from many
machines at once.

Per (scenario, batch size) one actor (`BatchWorker`, with a GPU when the scenario runs on CUDA)
captures and profiles the step, keeps the captured graph, and executes that batch size's plans: the
graph never travels. Its Problem goes to the object store once; each solver call is a CPU task on it,
run through `mutwo.sandbox.run_solver` so its hard time limit holds there too. The driver writes the
run folder: tables, schedules and each finished row (cells.jsonl) as it arrives, so ``--resume``
works after the driver or a worker dies. Imported only when Ray is chosen (`mutwo.executors`).
docs/compare.md ("Running on a Ray cluster") says what travels where and what is guaranteed.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError, RayTaskError

from mutwo import cell, files, pipeline, run_folder
from mutwo.cell import CellContext, CellStatus, Row
from mutwo.executors import Job, Outcome
from mutwo.run import REFERENCE_NOTES, STOP, RunContext, RunOptions, reference_list, run_scenario
from mutwo.scenario import ScenarioError

if TYPE_CHECKING:
    from mutwo.pipeline import Prepared
    from mutwo.scenario import Budget, Scenario, SolverSpec

__all__ = ["RayExecutor", "BatchWorker", "solve_call", "connect", "cluster_device", "worker_env", "MAX_RETRIES"]

MAX_RETRIES = 2  # a dead worker's task (or actor) is run again this many times, then its row says so
PROBE_TIMEOUT_S = 3.0
_TABLES = ("ops.csv", "activations.csv", pipeline.PROBLEM_FILE, pipeline.KEEP_ALL_FILE)


# ---------------------------------------------------------------------- the cluster
def _probe(address: str) -> None:
    """A HOST:PORT that nothing answers on is refused in seconds (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            return
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ScenarioError(f"--address {address}: no Ray cluster answers there ({why}); start one there with "
                            f"`ray start --head`, or drop --address for a local cluster") from None


def connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (None: start a local one); False when this process is
    already connected (then it is not shut down after the run)."""
    if address not in (None, "auto"):
        _probe(address)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScenarioError(f"--address {address}: cannot connect to a Ray cluster there: {first}") from None
    return True


def cluster_device(scenario: Scenario, source: str, resources: dict[str, float], where: str) -> str:
    """The device a scenario runs on in the cluster: ``auto`` is cuda when the cluster has a GPU; cuda
    on a cluster without one is refused before any work, with what it needs."""
    gpus = resources.get("GPU", 0.0)
    if scenario.device == "cuda" and gpus < 1:
        have = f"CPU {resources.get('CPU', 0):g}, memory {resources.get('memory', 0) / 2**30:.1f} GiB"
        raise ScenarioError(f"{source}: field 'device': cuda needs GPU: 1 per batch size being prepared, and {where} "
                            f"has no GPU ({have}); add a GPU node (`ray start --address ... --num-gpus N`) or set "
                            f"device: cpu")
    if scenario.device == "cpu":
        return "cpu"
    return "cuda" if gpus >= 1 else "cpu"


def worker_env() -> dict[str, str]:
    """What a worker must see as the driver does: the profile cache (one profile for a local and a Ray
    run of one grid; an absolute path, workers have their own working folder) and a pinned load class."""
    from mutwo.profile import cache_dir

    env = {"MUTWO_CACHE": str(cache_dir().parent.resolve())}
    if os.environ.get("MUTWO_LOAD_CLASS"):
        env["MUTWO_LOAD_CLASS"] = os.environ["MUTWO_LOAD_CLASS"]
    return env


# ---------------------------------------------------------------------- the work, on workers
def solve_call(problem: Any, name: str, budget_bytes: int, options: dict, timeout_s: float | None) -> tuple:
    """One solver call (a CPU task): ("ok", Schedule) or ("raise", the exception), under the sandbox's
    hard limit (`mutwo.sandbox.SolverTimeout` comes back as the exception)."""
    from mutwo.sandbox import run_solver

    try:
        return ("ok", run_solver(name, problem, budget_bytes, options, timeout_s=timeout_s))
    except Exception as exc:  # noqa: BLE001 - the row says what it was, as a local run's does
        return ("raise", exc)


def _replay(outcome: tuple):
    """`mutwo.cell.solve` as the outcome of a call already made on another worker."""
    def solved(*args: Any, **kwargs: Any):
        if outcome[0] == "ok":
            return outcome[1]
        if outcome[0] == "raise":
            raise outcome[1]
        from mutwo.sandbox import SolverProcessError

        raise SolverProcessError(outcome[1], "WorkerLost")
    return solved


class _NoBar:
    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        return None


class BatchWorker:
    """One (scenario, batch size) on a worker: it captures and profiles the step, keeps the graph, and
    runs what needs it (keep-all's execution, each cell after its solver call, the PyTorch references).
    Files go to a folder of its own; what the run folder needs comes back to the driver."""

    def __init__(self, scenario: Scenario, batch_size: int, device: str, source: str, env: dict[str, str],
                 threads: int | None, debug: bool) -> None:
        os.environ.update(env)
        if threads:  # CUDA without execute.threads: the driver's torch thread count (part of the profile key)
            import torch

            torch.set_num_threads(threads)
        self.batch_size, self.folder = batch_size, Path(tempfile.mkdtemp(prefix="mutwo-ray-"))
        execute_fn, note = cell.executor(scenario.execute.enabled)
        self.ctx = RunContext(scenario, source, "", device, self.folder, RunOptions(self.folder, resume=True),
                              CellContext(scenario, device, self.folder, execute_fn, note, debug), bar=_NoBar())
        self.prep: Prepared | None = None
        self.memo: cell.PlanMemo | None = None

    def _ensure(self, info: dict | None) -> None:
        """Capture and profile (again, after a restart: with the profile and keep-all figures it had)."""
        if self.prep is not None:
            return
        from mutwo.run import prepare_batch

        if info:
            files.write_json(self.folder / f"batch{self.batch_size}" / pipeline.KEEP_ALL_FILE, info)
        self.prep, self.memo = prepare_batch(self.ctx, self.batch_size, capture_graph=True)

    def prepare(self, old_info: dict | None) -> tuple:
        """("ok", Problem, keep_all.json, {table file: bytes}) or ("oom", why)."""
        try:
            self._ensure(old_info)
        except Exception as exc:
            if not cell.is_oom(exc):
                raise
            cell.release_memory(self.ctx.device)
            return ("oom", f"{type(exc).__name__}: {exc}".strip())
        folder = self.folder / f"batch{self.batch_size}"
        return ("ok", self.prep.problem, self.prep.info, {n: (folder / n).read_bytes() for n in _TABLES})

    def cell(self, spec: SolverSpec, budget: Budget, outcome: tuple, info: dict) -> tuple[Row, str | None]:
        """The cell's row after its solver call's ``outcome`` (checked, predicted, executed here), and its
        schedule file's text."""
        self._ensure(info)
        row = cell.run_cell(self.ctx.cell, self.prep, self.memo, spec, budget, solve_fn=_replay(outcome))
        path = self.folder / row.schedule_file if row.schedule_file else None
        text = path.read_text() if path is not None and path.exists() else None
        if path is not None:
            path.unlink(missing_ok=True)
        return row, text

    def references(self, labels: list[str], info: dict) -> list[tuple[str, Row | None, str]]:
        """PyTorch's savers named by ``labels``: (label, row, "") or (label, None, why it has no row)."""
        from mutwo.references import reference_row
        from mutwo.run import _reference_runner

        if self.prep is not None:  # as a local run: the model is freed before the references
            self.prep.release()
            gc.collect()
        sc, bs, out = self.ctx.scenario, self.batch_size, []
        runner = _reference_runner(self.ctx, bs)
        try:
            for ref in (r for r in reference_list(sc, bs) if r.label in labels):
                result = runner.measure(ref)
                if result.status == "skipped":
                    out.append((ref.label, None, result.message))
                    continue
                out.append((ref.label, reference_row(result, scenario=sc.name, model=sc.model, batch_size=bs,
                                                     device=self.ctx.device, keep_all=info,
                                                     memory_limit=sc.execute.memory_limit), ""))
        finally:
            runner.close()
        return out

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------- the driver
@dataclass
class _Batch:
    """The driver's view of one batch size."""

    bs: int
    cells: dict[str, tuple[SolverSpec, Budget]]  # to run, by key, in grid order
    refs: list[str]  # reference labels to measure
    actor: Any = None
    batch: Prepared | None = None  # no graph: the Problem and keep_all.json
    problem_ref: Any = None
    outcomes: dict[str, tuple] = field(default_factory=dict)  # solver call outcomes, by key
    sent: int = 0  # cells given to the actor so far (in grid order: plan-reuse notes as a local run's)
    left: int = 0  # cells without a row yet
    lost: set[str] = field(default_factory=set)  # cells whose solver call lost its worker every try


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _GridRun:
    """One scenario's grid on the cluster, driven from one driver thread."""

    def __init__(self, ctx: RunContext, owner: RayExecutor) -> None:
        self.ctx, self.owner = ctx, owner
        self.pending: dict[Any, tuple[str, _Batch, str]] = {}  # ObjectRef -> (what, batch, cell key)
        self.queue: deque[tuple[_Batch, str]] = deque()  # solver calls waiting for a slot
        self.batches: list[_Batch] = []
        self.rows: dict[str, Row] = {}

    def run(self) -> None:
        try:
            for bs in self.ctx.scenario.batch_size:
                self._start(bs)
            while self.pending or self.queue:
                self._submit_solves()
                ready = ray.wait(list(self.pending), num_returns=1, timeout=0.5)[0] if self.pending else []
                if not self.pending:
                    time.sleep(0.1)  # every slot is another scenario's
                if self.owner.stop.is_set() or STOP.is_set():  # Ctrl-C in a thread, or SIGTERM (compare.main)
                    raise KeyboardInterrupt("stop requested")
                for ref in ready:
                    self._finished(ref, *self.pending.pop(ref))
                self._show()
            self.ctx.rows[:] = self._in_grid_order()
        finally:
            self._stop_all()

    # -------------------------------------------------------------- starting a batch size
    def _start(self, bs: int) -> None:
        """Its finished cells (resumed), then the work it still needs: the actor prepares it (or the
        folder has it, when only references are left)."""
        ctx, sc = self.ctx, self.ctx.scenario
        folder = ctx.run_dir / f"batch{bs}"
        old = run_folder.read_json(folder / pipeline.KEEP_ALL_FILE) if ctx.options.resume else {}
        notes = old.get(REFERENCE_NOTES, {})
        todo: dict[str, tuple] = {}
        for spec in sc.solvers:
            for budget in sc.budgets:
                key = cell.cell_key(bs, spec.label, budget.label)
                if key in ctx.done:
                    self._keep(ctx.done[key])
                else:
                    todo[key] = (spec, budget)
        refs = []
        for ref in reference_list(sc, bs):
            key = cell.cell_key(bs, ref.label, None)
            if key in ctx.done or ref.label in notes:
                self._keep(ctx.done.get(key))
            else:
                refs.append(ref.label)
        b = _Batch(bs, todo, refs, left=len(todo))
        self.batches.append(b)
        if not todo:  # as a local run: no capture; the Problem (for the figures) from the folder
            if (folder / pipeline.PROBLEM_FILE).exists():
                b.batch = pipeline.reload(folder, bs)
                if b.batch is not None:
                    ctx.batches[bs] = b.batch
            self._after_cells(b)
            return
        b.actor = self.owner.actor(ctx, bs)
        self.pending[b.actor.prepare.remote(old or None)] = ("prepare", b, "")

    def _keep(self, row: Row | None) -> None:
        if row is not None:
            self.rows[row.key] = row
            self.ctx.rows.append(row)
        self.ctx.bar.update()

    # -------------------------------------------------------------- results as they arrive
    def _finished(self, ref: Any, what: str, b: _Batch, key: str) -> None:
        try:
            result = ray.get(ref)
        except RayTaskError as exc:  # a bug or a failure on the worker: the run fails, as a local one would
            raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None
        except RayError as exc:
            result = exc
        getattr(self, f"_on_{what}")(b, key, result)

    def _on_prepare(self, b: _Batch, key: str, result: Any) -> None:
        ctx = self.ctx
        if isinstance(result, RayError):  # the actor died MAX_RETRIES + 1 times
            why = f"the Ray worker preparing batch size {b.bs} was lost: {_first_line(result)}"
            b.refs = []  # they needed that worker too: not measured, no rows (a --resume measures them)
            for k in list(b.cells):
                self._lost(b, k, why)
            return
        if result[0] == "oom":
            for k, (spec, budget) in list(b.cells.items()):
                self._add(b, k, cell.batch_oom_row(ctx.cell, b.bs, spec, budget, result[1]))
            if not b.cells:
                self._after_cells(b)
            return
        _, problem, info, tables = result
        folder = ctx.run_dir / f"batch{b.bs}"
        for name, data in tables.items():
            files.write_bytes(folder / name, data)
        b.batch = pipeline.Prepared(b.bs, problem, info["keep_all_peak_bytes"], info["keep_all_time_s"], info=info)
        ctx.batches[b.bs] = b.batch
        b.problem_ref = ray.put(problem)  # once; every solver call of the batch size reads it
        self.queue.extend((b, k) for k in b.cells)
        if not b.cells:
            self._after_cells(b)

    def _submit_solves(self) -> None:
        sc = self.ctx.scenario
        while self.queue and self.owner.take_slot():
            b, key = self.queue.popleft()
            spec, budget = b.cells[key]
            budget_bytes = cell.new_row(self.ctx.cell, b.bs, spec, budget, b.batch.keep_all_peak_bytes,
                                        b.batch.keep_all_time_s, "").budget_bytes
            ref = self.owner.solve.remote(b.problem_ref, spec.name, budget_bytes, spec.options, sc.timeout_s(spec))
            self.pending[ref] = ("solve", b, key)

    def _on_solve(self, b: _Batch, key: str, result: Any) -> None:
        self.owner.give_slot()
        if isinstance(result, RayError):  # its worker died MAX_RETRIES + 1 times
            result = ("lost", f"the Ray worker running this solver call was lost ({MAX_RETRIES + 1} tries): "
                              f"{_first_line(result)}")
            b.lost.add(key)
        b.outcomes[key] = result
        keys = list(b.cells)
        while b.sent < len(keys) and keys[b.sent] in b.outcomes:
            k = keys[b.sent]
            spec, budget = b.cells[k]
            ref = b.actor.cell.remote(spec, budget, b.outcomes.pop(k), b.batch.info)
            self.pending[ref] = ("cell", b, k)
            b.sent += 1

    def _on_cell(self, b: _Batch, key: str, result: Any) -> None:
        if isinstance(result, RayError):
            self._lost(b, key, f"the Ray worker holding batch size {b.bs} was lost: {_first_line(result)}")
            return
        row, text = result
        if text is not None:
            files.write_text(self.ctx.run_dir / row.schedule_file, text)
        if key in b.lost:  # a fault of the cluster, not the solver's result: --resume tries it again
            row.execute_note = cell.WORKER_LOST
        self._add(b, key, row)

    def _add(self, b: _Batch, key: str, row: Row) -> None:
        run_folder.append_cell(self.ctx.run_dir, row)
        self._keep(row)
        b.left -= 1
        if b.left == 0:
            self.ctx.write_results()
            self._after_cells(b)

    def _lost(self, b: _Batch, key: str, why: str) -> None:
        spec, budget = b.cells[key]
        batch = b.batch
        row = cell.new_row(self.ctx.cell, b.bs, spec, budget, batch and batch.keep_all_peak_bytes,
                           batch and batch.keep_all_time_s, cell.WORKER_LOST)
        row.status, row.message = CellStatus.ERROR, why
        self._add(b, key, row)

    def _after_cells(self, b: _Batch) -> None:
        if b.refs:
            if b.actor is None:
                b.actor = self.owner.actor(self.ctx, b.bs)
            info = run_folder.read_json(self.ctx.run_dir / f"batch{b.bs}" / pipeline.KEEP_ALL_FILE)
            self.pending[b.actor.references.remote(b.refs, info)] = ("references", b, "")
        else:
            self._release(b)

    def _on_references(self, b: _Batch, key: str, result: Any) -> None:
        if isinstance(result, RayError):
            raise RuntimeError(f"the Ray worker measuring batch size {b.bs}'s PyTorch references was lost: "
                               f"{_first_line(result)}")
        info_path = self.ctx.run_dir / f"batch{b.bs}" / pipeline.KEEP_ALL_FILE
        info = run_folder.read_json(info_path)
        notes = dict(info.get(REFERENCE_NOTES, {}))
        for label, row, note in result:
            if row is None:
                notes[label] = note
                self.ctx.bar.update()
            else:
                run_folder.append_cell(self.ctx.run_dir, row)
                self._keep(row)
        if notes and info:
            info[REFERENCE_NOTES] = notes
            files.write_json(info_path, info)
            if b.batch is not None:
                b.batch.info[REFERENCE_NOTES] = notes
        self.ctx.write_results()
        self._release(b)

    # -------------------------------------------------------------- the end
    def _release(self, b: _Batch) -> None:
        """Free the batch size's worker (and its GPU) as soon as its work is done: it removes its folder,
        then it is ended (`_on_close`)."""
        b.problem_ref = None  # the object store may drop the Problem now
        if b.actor is not None:
            self.pending[b.actor.close.remote()] = ("close", b, "")

    def _on_close(self, b: _Batch, key: str, result: Any) -> None:
        ray.kill(b.actor, no_restart=True)
        b.actor = None

    def _stop_all(self) -> None:
        for ref, (what, _, _) in self.pending.items():
            if what == "solve":
                ray.cancel(ref, force=True)
                self.owner.give_slot()
        self.pending.clear()
        for b in self.batches:
            if b.actor is not None:
                ray.kill(b.actor)
                b.actor = None

    def _in_grid_order(self) -> list[Row]:
        """The rows as a local run lists them: per batch size its cells, then its references."""
        sc, out = self.ctx.scenario, []
        for bs in sc.batch_size:
            keys = [cell.cell_key(bs, s.label, b.label) for s in sc.solvers for b in sc.budgets]
            keys += [cell.cell_key(bs, r.label, None) for r in reference_list(sc, bs)]
            out += [self.rows[k] for k in keys if k in self.rows]
        return out

    def _show(self) -> None:
        running = sum(what in ("solve", "cell") for what, _, _ in self.pending.values())
        done = self.ctx.bar.n
        queued = max(0, (self.ctx.bar.total or 0) - done - running)
        self.ctx.status(f"{done} done, {running} running, {queued} queued")


class RayExecutor:
    """Runs the jobs' grids on a Ray cluster, submitted together (one driver thread per scenario)."""

    def __init__(self, address: str | None = None, *, max_concurrent: int | None = None, quiet: bool = False) -> None:
        self.address, self.quiet = address, quiet
        self.stop = threading.Event()
        self.max_concurrent = max_concurrent
        self._slots: threading.BoundedSemaphore | None = None
        self.env: dict[str, str] = {}
        self.solve = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(solve_call)
        self._worker = ray.remote(BatchWorker)

    def take_slot(self) -> bool:
        return self._slots is None or self._slots.acquire(blocking=False)

    def give_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def actor(self, ctx: RunContext, bs: int) -> Any:
        """The batch size's worker: no CPU held (solver calls need them), a GPU when it runs on CUDA."""
        from mutwo.timing import threads_for

        cuda = ctx.device.startswith("cuda")
        threads = None
        if cuda and threads_for(ctx.device, ctx.scenario.execute.threads) is None:
            import torch

            threads = torch.get_num_threads()
        return self._worker.options(num_cpus=0, num_gpus=1 if cuda else 0, max_restarts=MAX_RETRIES,
                                    max_task_retries=MAX_RETRIES).remote(
            ctx.scenario, bs, ctx.device, ctx.source, self.env, threads, ctx.options.debug)

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        started = connect(self.address)
        try:
            where = f"the Ray cluster at {self.address}" if self.address else "the Ray cluster"
            resources = ray.cluster_resources()
            devices = [cluster_device(j.scenario, j.source, resources, where) for j in jobs]  # before any work
            # solver calls in flight: the cluster's CPUs unless said (the rest wait in the driver, in grid order)
            self._slots = threading.BoundedSemaphore(self.max_concurrent or max(1, int(resources.get("CPU", 1))))
            self.env = worker_env()
            return self._run_threads(jobs, devices)
        finally:
            if started:
                ray.shutdown()

    def _run_threads(self, jobs: Sequence[Job], devices: list[str]) -> list[Outcome]:
        results: list[Any] = [None] * len(jobs)

        def one(i: int) -> None:
            job = jobs[i]
            try:
                results[i] = run_scenario(job.scenario, job.options, job.argv, job.source,
                                          grid=lambda ctx: _GridRun(ctx, self).run(), device=devices[i])
            except BaseException as exc:  # noqa: BLE001 - raised in the main thread below
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,), name=f"mutwo-ray-{j.scenario.name}", daemon=True)
                   for i, j in enumerate(jobs)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            for t in threads:
                t.join()
            raise
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results
