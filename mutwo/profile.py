"""Measure a captured training step: per-op time and transient memory, and a real iteration's peak.

Times are medians over ``runs`` runs after ``warmup`` runs (CUDA events on a GPU, a monotonic clock on
CPU). The per-op transient (scratch an op allocates and frees inside itself, beyond its outputs) is the
maximum over the same runs, read from the allocator: the CUDA allocator's statistics during the timed
runs; on CPU the c10 allocator's events (`mutwo.memory.cpu_allocator_events`), in separate runs so the
profiler's own cost stays out of the op times. A real iteration's peak is measured by the allocator
(`measured_peak_bytes`) and, as a diagnostic, by the op-output tracker (`op_output_peak_bytes`).
Profiles are cached on disk, keyed by everything that changes op times: the graph, the input shapes,
the device (its name: GPU or CPU model), torch's thread count, library versions, the machine's load
class (`load_class`) and `PROFILE_FORMAT`. A profile whose own runs differ by more than
`SPREAD_WARN` is reported (`spread_warning`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
from tqdm.auto import tqdm

from mutwo.files import atomic_path, write_json
from mutwo.graph import TrainGraph
from mutwo.memory import (
    OpOutputTracker,
    allocator_peak,
    allocator_region,
    cpu_allocator_events,
    device_of,
    host_bandwidth,
    sync,
)

__all__ = ["Profile", "profile", "cache_dir", "PROFILE_FORMAT", "load_class", "iteration_spread", "spread_warning",
           "LOAD_BUSY", "SPREAD_WARN"]

# what a Profile contains and how it is measured; part of the cache key, so a change here is never
# answered by a cached profile of the old definition (2: CPU transients from the allocator's events,
# the allocator-measured peak beside the op-output one)
PROFILE_FORMAT = 2

# the machine is "busy" when the 1-minute load average, less this process's own runnable thread, is at
# least this many runnable processes per core: its op times were measured while sharing the cores
LOAD_BUSY = 0.5
# a profile whose whole-iteration times (timed iterations, and per-run sums of op times) differ by more
# than this fraction of their median is noisy: a warning, and a note in report.md
SPREAD_WARN = 0.2


@dataclass
class Profile:
    """Measured costs of one TrainGraph on one device."""

    op_time_s: np.ndarray  # median per op
    op_transient_bytes: np.ndarray  # max per op: allocator peak inside the op minus its level right after
    measured_peak_bytes: int  # allocator peak of a real iteration (generated code), the step's inputs included
    peak_method: str  # how measured_peak_bytes was measured: "cuda-allocator" or "cpu-allocator-events"
    op_output_peak_bytes: int  # diagnostic: the same iteration's peak of op-output storages (OpOutputTracker)
    iteration_time_s: float  # median wall time of a whole real iteration
    host_bandwidth_bytes_per_s: float
    bandwidth_source: str  # "measured" or "assumed"
    device: str
    runs: int
    warmup: int
    profile_time_s: float
    transient_measured: bool  # op_transient_bytes come from the allocator (always, since PROFILE_FORMAT 2)
    versions: dict = field(default_factory=dict)
    op_time_runs: np.ndarray | None = None  # [runs, n_ops]
    iteration_times_s: list = field(default_factory=list)  # every timed whole iteration (at least two)
    threads: int = 0  # torch.get_num_threads() while profiling
    load_class: str = ""  # `load_class()` when it was measured
    cache_key: str = ""  # where the cache holds it (a resumed run asks for the same entry)

    def ops_frame(self, graph: TrainGraph) -> pd.DataFrame:
        df = graph.op_frame()
        df["time_s"] = self.op_time_s
        df["transient_bytes"] = self.op_transient_bytes
        df["live_bytes"] = graph.live_bytes()
        return df

    # ---------------------------------------------------------------- disk
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray) and v is not None}
        with atomic_path(folder / "arrays.npz") as tmp:
            np.savez(tmp, op_time_s=self.op_time_s, op_transient_bytes=self.op_transient_bytes,
                     op_time_runs=self.op_time_runs if self.op_time_runs is not None else np.zeros((0, 0)))
        write_json(folder / "profile.json", meta)

    @classmethod
    def load(cls, folder: Path) -> Profile:
        meta = json.loads((folder / "profile.json").read_text())
        with np.load(folder / "arrays.npz") as z:
            runs = z["op_time_runs"]
            return cls(op_time_s=z["op_time_s"], op_transient_bytes=z["op_transient_bytes"],
                       op_time_runs=runs if runs.size else None, **meta)


class _RegionInterpreter(fx.Interpreter):
    """Runs the graph node by node, each op inside its own allocator region (its position)."""

    def __init__(self, graph: TrainGraph) -> None:
        super().__init__(graph.gm, garbage_collect_values=True)
        self.index = graph.op_index

    def run_node(self, n: fx.Node):
        pos = self.index.get(n)
        if pos is None:
            return super().run_node(n)
        with allocator_region(pos):
            return super().run_node(n)


def _cpu_transients(graph: TrainGraph, work: Sequence[torch.Tensor]) -> np.ndarray:
    """Per op, the scratch it allocated and freed inside itself in one run (CPU allocator events)."""
    with torch.no_grad(), cpu_allocator_events(work) as log:
        _RegionInterpreter(graph).run(*work)
    return log.region_transients(len(graph.ops))


class _TimingInterpreter(fx.Interpreter):
    """Runs the graph node by node, timing each op and (on CUDA) its transient memory."""

    def __init__(self, graph: TrainGraph, device: torch.device) -> None:
        super().__init__(graph.gm, garbage_collect_values=True)
        self.index = graph.op_index
        self.device = device
        n = len(graph.ops)
        self.times = np.zeros(n)
        self.transient = np.zeros(n, dtype=np.int64)
        self.cuda = device.type == "cuda"
        self.events: list = []

    def run_node(self, n: fx.Node):
        pos = self.index.get(n)
        if pos is None:
            return super().run_node(n)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = super().run_node(n)
            end.record()
            self.events.append((pos, start, end))
            after = torch.cuda.memory_allocated(self.device)
            self.transient[pos] = max(0, torch.cuda.max_memory_allocated(self.device) - after)
            return out
        t0 = time.perf_counter()
        out = super().run_node(n)
        self.times[pos] = time.perf_counter() - t0
        return out

    def finish(self) -> None:
        if self.cuda:
            sync(self.device)
            for pos, s, e in self.events:
                self.times[pos] = s.elapsed_time(e) / 1e3


def _versions() -> dict:
    import torchvision  # noqa: F401 - version recorded for the cache key

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def cache_dir() -> Path:
    return Path(os.environ.get("MUTWO_CACHE", ".mutwo_cache")) / "profiles"


def load_class() -> str:
    """``idle`` or ``busy`` (`LOAD_BUSY`), from the 1-minute load average per core; ``$MUTWO_LOAD_CLASS``
    pins it (tests comparing two runs through one cache; a machine whose load is known)."""
    pinned = os.environ.get("MUTWO_LOAD_CLASS")
    if pinned:
        return pinned
    try:
        load1 = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return "unknown"
    others = max(0.0, load1 - 1.0) / (os.cpu_count() or 1)
    return "busy" if others >= LOAD_BUSY else "idle"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"cpu {platform.machine()} {model or platform.processor()}".strip()


def _cache_key(graph: TrainGraph, flat: Sequence[torch.Tensor], device: torch.device, runs: int,
               warmup: int, bandwidth: float | None) -> str:
    h = hashlib.sha256()
    h.update(graph.gm.code.encode())
    for t in flat:
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(json.dumps([PROFILE_FORMAT, _device_name(device), runs, warmup, bandwidth, _versions(), os.cpu_count(),
                         torch.get_num_threads(), load_class()]).encode())
    return h.hexdigest()[:20]


def iteration_spread(prof: Profile) -> float | None:
    """(max - min) / median of the profile's whole-iteration times: the larger of the timed iterations'
    and of the per-run sums of op times; None when neither has two runs."""
    series = [np.asarray(prof.iteration_times_s, dtype=float)]
    if prof.op_time_runs is not None and prof.op_time_runs.ndim == 2:
        series.append(prof.op_time_runs.sum(axis=1))
    spreads = [float((x.max() - x.min()) / np.median(x)) for x in series if len(x) >= 2 and np.median(x) > 0]
    return max(spreads) if spreads else None


def spread_warning(prof: Profile) -> str | None:
    """One line when the profile's own runs differ by more than `SPREAD_WARN`; None otherwise."""
    spread = iteration_spread(prof)
    if spread is None or spread <= SPREAD_WARN:
        return None
    load = f", machine {prof.load_class}" if prof.load_class else ""
    return (f"the profile's own iterations differ by {100 * spread:.3g}% (more than {100 * SPREAD_WARN:g}%{load}): "
            f"its op times are noisy; profile again when the machine is quieter (--refresh-profile), or raise "
            f"profile.runs")


def _op_runs(graph: TrainGraph, work: list[torch.Tensor], device: torch.device, runs: int, warmup: int,
             progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-op times and transients, one row per measured run (after ``warmup`` runs)."""
    all_times, all_transient = [], []
    bar = tqdm(total=warmup + runs, desc=f"profile {graph.description.get('workload', '')}",
               disable=not progress, leave=False)
    for i in range(warmup + runs):
        interp = _TimingInterpreter(graph, device)
        with torch.no_grad():
            interp.run(*work)
        interp.finish()
        if i >= warmup:
            all_times.append(interp.times)
            all_transient.append(interp.transient if interp.cuda else _cpu_transients(graph, work))
        bar.update()
    bar.close()
    return np.stack(all_times), np.stack(all_transient)


def profile(graph: TrainGraph, flat: Sequence[torch.Tensor], *, runs: int = 3, warmup: int = 1,
            host_bandwidth_bytes_per_s: float | None = None, cache: bool = True, progress: bool = True,
            refresh: bool = False, key: str | None = None) -> Profile:
    """Profile ``graph`` on ``flat`` (parameters, buffers, optimizer state, inputs — as from
    `mutwo.capture.flat_state`). The inputs are cloned: profiling trains on copies, never on yours.

    ``refresh``: measure again even when the cache holds a profile (the new one replaces it). ``key``:
    the cache entry to reuse when it is there (a resumed run's, whatever the load or threads now).
    A noisy profile (`spread_warning`) is a RuntimeWarning, from the cache too."""
    device = device_of(flat)
    prof = None
    if cache and key and (cache_dir() / key / "profile.json").exists():
        prof = Profile.load(cache_dir() / key)
    key = _cache_key(graph, flat, device, runs, warmup, host_bandwidth_bytes_per_s) if prof is None else key
    folder = cache_dir() / key
    if prof is None and cache and not refresh and (folder / "profile.json").exists():
        prof = Profile.load(folder)
    if prof is None:
        prof = _measure(graph, flat, device, runs, warmup, host_bandwidth_bytes_per_s, progress)
        prof.cache_key = key
        if cache:
            prof.save(folder)
    warning = spread_warning(prof)
    if warning:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
    return prof


def _measure(graph: TrainGraph, flat: Sequence[torch.Tensor], device: torch.device, runs: int, warmup: int,
             host_bandwidth_bytes_per_s: float | None, progress: bool) -> Profile:
    """One fresh profile (no cache)."""
    load = load_class()
    t_start = time.perf_counter()
    work = [t.detach().clone() for t in flat]
    times, transients = _op_runs(graph, work, device, runs, warmup, progress)
    iter_times = []
    with torch.no_grad():
        # the two measuring iterations first: they also warm the generated code, whose first call after
        # the op-by-op runs is several times slower on small graphs (it would pass for noise)
        peak = allocator_peak(lambda: graph.gm(*work), work, device)
        with OpOutputTracker(work) as outputs:
            graph.gm(*work)
        for _ in range(max(runs, 2)):  # two at least: the spread of one is unknown
            sync(device)
            t0 = time.perf_counter()
            graph.gm(*work)
            sync(device)
            iter_times.append(time.perf_counter() - t0)
    if host_bandwidth_bytes_per_s is None:
        bw, source = host_bandwidth(device)
    else:
        bw, source = float(host_bandwidth_bytes_per_s), "configured"
    return Profile(
        op_time_s=np.median(times, axis=0), op_transient_bytes=np.max(transients, axis=0),
        measured_peak_bytes=peak.peak_bytes, peak_method=peak.method, op_output_peak_bytes=int(outputs.peak),
        iteration_time_s=float(np.median(iter_times)), host_bandwidth_bytes_per_s=bw,
        bandwidth_source=source, device=str(device), runs=runs, warmup=warmup,
        profile_time_s=time.perf_counter() - t_start, transient_measured=True,
        versions=_versions(), op_time_runs=times, iteration_times_s=iter_times, threads=torch.get_num_threads(),
        load_class=load)
