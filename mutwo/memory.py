"""Device-agnostic measurement of device memory.

*Measured* means the allocator: `allocator_peak` is the peak of what the device's allocator holds while a
function runs, everything allocated during it counted (in-kernel scratch, workspaces, host copies), on top
of the bytes of the function's inputs (the caller passes them). On CUDA it reads the caching allocator's
statistics; on CPU the c10 CPU allocator's own allocation/free events, recorded by the PyTorch profiler
with ``profile_memory``. `allocator_region` marks parts of the metered call (e.g. one op each) so that
`AllocatorLog.region_transients` can tell what each part allocated and freed inside itself.

Swaps on CPU are emulated: the "host" copy of a swapped activation lives in the same memory, so the
process peak does not fall. Code that makes such a copy does it inside `host_copy_region`; the event
walk tags those allocations (by their pointer, until that block is freed) and
`PeakMeasurement.emulated_device_peak_bytes` is the allocator total minus the host copies live at each
moment: what a device with a separate host memory would have held. On CUDA host copies are pinned host
memory, outside the device allocator, so the measured peak already is the device's.

`OpOutputTracker` is a diagnostic: it adds up the storages that ops *return* (a dispatch mode sees each
one created, a weakref finalizer sees it die), which is the cost model's own quantity and misses kernels'
internal scratch; it is never reported as measured. `measure_peak` gives its figure on CPU (the CUDA
allocator on CUDA), for callers that want the op-output count explicitly.

A memory limit (``with memory_limit(nbytes):``) turns the op-output tracker into a guard: a tracker made
inside it raises `MemoryLimitExceeded` as soon as its live bytes exceed the limit, so a plan that would
not fit a (smaller, emulated) device stops at once instead of exhausting the host; on CUDA the
allocator is capped instead (``torch.cuda.set_per_process_memory_fraction``) and raises its own
``torch.cuda.OutOfMemoryError``.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["allocator_peak", "cpu_allocator_events", "allocator_region", "host_copy_region", "AllocatorLog",
           "AllocatorEventsUnavailable", "OpOutputTracker", "PeakMeasurement", "MemoryLimitExceeded", "memory_limit", "measure_peak",
           "input_bytes", "host_bandwidth", "sync", "device_of"]

# the limit trackers made now enforce (None: no limit); a context variable, so measure_peak's own
# tracker, made deep inside mutwo.execute, obeys the limit a caller set around the whole execution
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("mutwo_memory_limit", default=None)


class MemoryLimitExceeded(MemoryError):
    """Live tensor storages went above the configured memory limit (an emulated out-of-memory)."""

    def __init__(self, current: int, limit: int) -> None:
        super().__init__(f"live tensor storages reached {current} bytes, above the memory limit of {limit} "
                         f"bytes (execute.memory_limit)")
        self.current, self.limit = current, limit

    def __reduce__(self):  # picklable with its two numbers (the message is derived)
        return (type(self), (self.current, self.limit))


@contextlib.contextmanager
def memory_limit(nbytes: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Enforce ``nbytes`` (None: no limit) on what runs inside: CPU trackers raise `MemoryLimitExceeded`;
    on CUDA the allocator is capped to that fraction of the device for the duration."""
    device = torch.device(device)
    token = _LIMIT.set(None if nbytes is None else int(nbytes))
    capped = False
    try:
        if nbytes is not None and device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, int(nbytes) / total), device)
            capped = True
        yield
    finally:
        _LIMIT.reset(token)
        if capped:
            torch.cuda.set_per_process_memory_fraction(1.0, device)


class OpOutputTracker(TorchDispatchMode):
    """Counts bytes of live tensor storages that ops run under it return (plus registered ones).

    A diagnostic and the CPU memory-limit guard, not a measurement: storages a kernel allocates and
    frees inside itself never reach it (see `allocator_peak` for what the allocator held).

    ``limit_bytes`` (default: the enclosing `memory_limit`, if any): raise `MemoryLimitExceeded` as soon
    as the live bytes exceed it; the op that crossed it has run, its output is freed as the error unwinds.
    """

    def __init__(self, known: Iterable[torch.Tensor] = (), limit_bytes: int | None = None) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.op_peaks: list[int] = []
        self.limit_bytes = _LIMIT.get() if limit_bytes is None else int(limit_bytes)
        for t in known:
            self._add(t)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def _add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._live:
            return
        nbytes = int(st.nbytes())
        self._live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, key)
        if self.limit_bytes is not None and self.current > self.limit_bytes:
            raise MemoryLimitExceeded(self.current, self.limit_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._add(t)
        return out


@dataclass
class PeakMeasurement:
    peak_bytes: int
    baseline_bytes: int  # what the peak counts as already there (see the function that made it)
    method: str  # "cuda-allocator", "cpu-allocator-events" or "cpu-live-storages" (op outputs only)
    # CPU allocator only: the peak of the total minus the live host copies (`host_copy_region`), what a
    # device with its own memory would hold; None elsewhere (on CUDA peak_bytes is the device's own)
    emulated_device_peak_bytes: int | None = None


def device_of(tensors: Iterable[torch.Tensor]) -> torch.device:
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _on(t: torch.Tensor, device: torch.device | None) -> bool:
    """``t`` is on ``device`` (None: any); ``cuda`` without an index means any CUDA device."""
    return device is None or (t.device.type == device.type and device.index in (None, t.device.index))


def input_bytes(tensors: Iterable, device: torch.device | str | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (on ``device``, if given): views count once."""
    device = None if device is None else torch.device(device)
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and _on(t, device):
            st = t.untyped_storage()
            if st.nbytes():
                seen[st.data_ptr()] = int(st.nbytes())
    return sum(seen.values())


def measure_peak(fn: Callable[[], object], inputs: list[torch.Tensor], device: torch.device) -> PeakMeasurement:
    """Peak while ``fn()`` runs, ``inputs`` included: the allocator's on CUDA, but on CPU only the storages
    ops return (`OpOutputTracker`, method "cpu-live-storages"); `allocator_peak` is the CPU allocator's."""
    if device.type == "cuda":
        return allocator_peak(fn, inputs, device)
    tracker = OpOutputTracker(inputs)
    base = tracker.current
    with tracker:
        out = fn()
    del out
    return PeakMeasurement(int(tracker.peak), int(base), "cpu-live-storages")


# ---------------------------------------------------------------------------- the allocator meter
_REGION = "mutwo::meter::region::"  # record-function names the event walk recognises
_INPUT_FREED = "mutwo::meter::input_freed::"
_PROBE = "mutwo::meter::probe"
_HOST = "mutwo::meter::host_copy"  # allocations inside are host copies of swapped tensors (emulated)
_PROBE_BYTES = 64
_OUTSIDE, _IN_PROBE = -1, -2  # region of events outside any marked region / in the availability probe

try:  # private names, present in the torch versions mutwo supports; the probe checks them at every use
    from torch._C._profiler import _ExtraFields_Allocation, _RecordFunctionFast
except ImportError:  # pragma: no cover - depends on the torch build
    _ExtraFields_Allocation = _RecordFunctionFast = None


class AllocatorEventsUnavailable(RuntimeError):
    """The c10 CPU allocator's events cannot be read here (no silent fallback to the op-output figure)."""


def _unavailable(why: str) -> AllocatorEventsUnavailable:
    return AllocatorEventsUnavailable(
        f"allocator meter (mutwo.memory.allocator_peak): c10 CPU allocator events are unavailable ({why}); "
        f"the fallback is mutwo.memory.measure_peak, whose CPU figure counts op outputs only (no in-kernel "
        f"scratch)")


@contextlib.contextmanager
def allocator_region(index: int) -> Iterator[None]:
    """Attribute the allocator events inside to region ``index`` (e.g. an op position) of the enclosing
    `cpu_allocator_events`; outside a meter it costs one no-op record-function call."""
    with _RecordFunctionFast(f"{_REGION}{index}"):
        yield


@contextlib.contextmanager
def host_copy_region() -> Iterator[None]:
    """Tag what is allocated inside as host copies of swapped tensors (CPU swap emulation): the
    enclosing meter leaves them out of the emulated device figure until they are freed."""
    with _RecordFunctionFast(_HOST):
        yield


@dataclass
class AllocatorLog:
    """What the CPU allocator did during one metered call, in time order.

    ``sizes`` are signed bytes (allocations positive, frees negative); frees of the caller's inputs are
    included (they lower the level below the baseline), frees of other blocks that existed before are
    not (they were never counted). ``regions`` is the `allocator_region` each event fell in, -1 if none.
    ``host`` marks the events of host-copy blocks (allocated in a `host_copy_region`, and their frees).
    """

    baseline_bytes: int
    sizes: np.ndarray
    regions: np.ndarray
    host: np.ndarray | None = None  # bool per event; None: no host copies

    def levels(self) -> np.ndarray:
        """Bytes held above the baseline after each event."""
        return np.cumsum(self.sizes, dtype=np.int64)

    def device_levels(self) -> np.ndarray:
        """`levels` without the host copies live after each event (the emulated device's share)."""
        if self.host is None:
            return self.levels()
        return np.cumsum(np.where(self.host, 0, self.sizes), dtype=np.int64)

    @property
    def peak_bytes(self) -> int:
        return self._peak(self.levels())

    @property
    def emulated_device_peak_bytes(self) -> int:
        """The peak without host copies: what a device with a separate host memory would hold."""
        return self._peak(self.device_levels())

    @property
    def host_copy_bytes_at_peak(self) -> int:
        """Host-copy bytes live at the moment of the process peak (0 without host copies)."""
        levels = self.levels()
        if not levels.size or self.host is None:
            return 0
        at = int(np.argmax(levels))
        return int(levels[at] - self.device_levels()[at])

    def _peak(self, levels: np.ndarray) -> int:
        return self.baseline_bytes + max(0, int(levels.max()) if levels.size else 0)

    def region_transients(self, n_regions: int) -> np.ndarray:
        """Per region ``0 .. n_regions-1``: the highest level reached inside it minus the level right after
        it, i.e. bytes allocated and freed inside beyond what it leaves behind (its outputs); 0 if none."""
        out = np.zeros(n_regions, dtype=np.int64)
        inside = (self.regions >= 0) & (self.regions < n_regions)
        if inside.any():
            levels = pd.Series(self.levels()[inside]).groupby(self.regions[inside])
            scratch = levels.max() - levels.last()
            out[scratch.index.to_numpy()] = scratch.to_numpy()
        return out


def _mark_input_freed(k: int) -> None:
    with _RecordFunctionFast(f"{_INPUT_FREED}{k}"):
        pass


def _watch_inputs(tensors: Iterable) -> tuple[dict[int, int], list[int], list[weakref.finalize]]:
    """The distinct input storages as {data pointer: index} and their sizes, and finalizers that mark
    the moment each one dies in the event stream (the allocator does not report the free of a block it
    saw allocated before profiling started). Holds no reference to the storages."""
    index: dict[int, int] = {}
    sizes: list[int] = []
    watchers = []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            continue
        st = t.untyped_storage()
        if st.nbytes() == 0 or st.data_ptr() in index:
            continue
        index[st.data_ptr()] = len(sizes)
        watchers.append(weakref.finalize(st, _mark_input_freed, len(sizes)))
        sizes.append(int(st.nbytes()))
    return index, sizes, watchers


def _last_first(events) -> list:
    """Events in reverse time order (ties in reverse given order): popped from a stack, they come out in
    time order with ties in their given (program) order."""
    return sorted(events, key=lambda e: e.start_time_ns)[::-1]


def _events(result) -> tuple[list[tuple], int]:
    """(time, order, size, ptr, region, freed input, in a host-copy region) for every CPU allocation
    event and input-death marker in the profiler's event tree, in time order; and how many probe
    events were seen."""
    rows: list[tuple] = []
    probe = 0
    stack = [(e, _OUTSIDE, False) for e in _last_first(result.experimental_event_tree())]
    while stack:  # depth-first, children in time order: one thread's events stay in program order
        e, region, host = stack.pop()
        f = e.extra_fields
        if isinstance(f, _ExtraFields_Allocation):
            if region == _IN_PROBE:
                probe += f.alloc_size == _PROBE_BYTES
            elif f.device.type == "cpu":
                rows.append((e.start_time_ns, len(rows), int(f.alloc_size), int(f.ptr), region, -1, host))
            continue
        name = e.name
        if name.startswith(_INPUT_FREED):
            rows.append((e.start_time_ns, len(rows), 0, 0, region, int(name[len(_INPUT_FREED):]), False))
        elif name.startswith(_REGION):
            region = int(name[len(_REGION):])
        elif name == _PROBE:
            region = _IN_PROBE
        elif name == _HOST:
            host = True
        stack.extend((c, region, host) for c in _last_first(e.children))
    rows.sort(key=lambda r: (r[0], r[1]))  # threads interleave by time; ties keep program order
    return rows, probe


def _signed_sizes(rows: list[tuple], input_index: dict[int, int], input_sizes: list[int]) -> tuple[list, list, list]:
    """Match frees to allocations: a free of a block allocated during the call undoes it (a host copy's
    free is a host-copy event: the tag follows the block, not the pointer, which the allocator reuses);
    the first sign of an input's death (its free, if the allocator knew its size, or its finalizer)
    removes it from the baseline once; a free of anything else that existed before was never counted."""
    live: dict[int, tuple[int, bool]] = {}
    released: set[int] = set()
    sizes, regions, hosts = [], [], []
    for _, _, size, ptr, region, freed, host in rows:
        if freed < 0 and size > 0:
            live[ptr] = (size, host)
        elif freed < 0 and ptr in live:
            size, host = live.pop(ptr)
            size = -size
        else:
            k = freed if freed >= 0 else input_index.get(ptr, -1)
            if k < 0 or k in released:
                continue
            released.add(k)
            size, host = -input_sizes[k], False
        sizes.append(size)
        regions.append(region)
        hosts.append(host)
    return sizes, regions, hosts


@contextlib.contextmanager
def cpu_allocator_events(inputs: Iterable = ()) -> Iterator[AllocatorLog]:
    """Record the c10 CPU allocator's events while the block runs; the yielded `AllocatorLog` is filled
    when it exits. ``inputs``: the tensors that already exist and count as the baseline.

    Counted: allocations of the calling thread and of work that inherits its profiler state; not those
    of unrelated Python threads. Raises `AllocatorEventsUnavailable` when the events cannot be read.
    """
    if _ExtraFields_Allocation is None or not torch.autograd.kineto_available():
        raise _unavailable("this torch build has no Kineto profiler with allocation events")
    if torch.autograd._profiler_enabled():
        raise _unavailable("another torch profiler is already running in this thread")
    input_index, input_sizes, watchers = _watch_inputs(inputs)
    log = AllocatorLog(sum(input_sizes), np.zeros(0, np.int64), np.zeros(0, np.int64))
    prof = torch.autograd.profiler.profile(use_cpu=True, profile_memory=True)
    try:
        with prof:
            with _RecordFunctionFast(_PROBE):
                torch.empty(_PROBE_BYTES, dtype=torch.uint8)
            yield log
    finally:
        for w in watchers:
            w.detach()
    rows, probe = _events(prof.kineto_results)
    if probe == 0:
        raise _unavailable("the profiler recorded no event for a probe allocation")
    sizes, regions, hosts = _signed_sizes(rows, input_index, input_sizes)
    log.sizes, log.regions = np.asarray(sizes, np.int64), np.asarray(regions, np.int64)
    log.host = np.asarray(hosts, bool) if any(hosts) else None


def allocator_peak(fn: Callable[[], object], inputs: Iterable[torch.Tensor],
                   device: torch.device | str | None = None) -> PeakMeasurement:
    """Peak of what the allocator holds while ``fn()`` runs: the bytes of ``inputs`` (the baseline: the
    tensors the caller already holds, e.g. the step's parameters, optimizer state and batch) plus the
    highest rise of the allocator's total during the call, in-kernel scratch and workspaces included (on
    CPU also host copies of "swapped" tensors: they live in the same memory; the result's
    ``emulated_device_peak_bytes`` leaves out those made in a `host_copy_region`). ``device`` defaults
    to the inputs' device."""
    inputs = inputs if isinstance(inputs, list | tuple) else list(inputs)
    device = device_of(inputs) if device is None else torch.device(device)
    if device.type == "cuda":
        base = input_bytes(inputs, device)
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        rise = torch.cuda.max_memory_allocated(device) - start
        del out
        # host copies of swapped tensors are pinned host memory, outside this allocator: the figure is
        # the device's own, nothing is emulated
        return PeakMeasurement(base + max(0, int(rise)), base, "cuda-allocator")
    with cpu_allocator_events(inputs) as log:
        out = fn()
    del out
    return PeakMeasurement(log.peak_bytes, log.baseline_bytes, "cpu-allocator-events",
                           emulated_device_peak_bytes=log.emulated_device_peak_bytes)


def host_bandwidth(device: torch.device, nbytes: int = 64 << 20, default: float = 12e9) -> tuple[float, str]:
    """Host<->device bandwidth in bytes/s and how it was obtained.

    Measured with pinned memory on CUDA; on CPU there is no link, so the configured ``default``
    (a PCIe 4.0 x16-like figure) is returned and the result says it was assumed.
    """
    if device.type != "cuda":
        return float(default), "assumed"
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    times = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    return nbytes / sorted(times)[len(times) // 2], "measured"
