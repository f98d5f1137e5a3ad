"""Device-agnostic measurement of device memory.

CUDA: the caching allocator's statistics (``max_memory_allocated``). CPU has no allocator statistics,
and process RSS counts everything Python and the allocator keep around, so on CPU we count bytes of real
tensor storages: a dispatch mode sees every storage an op creates and a weakref finalizer sees it die.
Both report the same quantity: bytes of live tensor storages, at their peak.

A memory limit (``with memory_limit(nbytes):``) turns the measurement into a guard: a tracker made
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

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveStorageTracker", "PeakMeasurement", "MemoryLimitExceeded", "memory_limit", "measure_peak",
           "host_bandwidth", "sync", "device_of"]

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


class LiveStorageTracker(TorchDispatchMode):
    """Counts bytes of live tensor storages created by ops run under it (plus registered ones).

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
    baseline_bytes: int
    method: str  # "cuda-allocator" or "cpu-live-storages"


def device_of(tensors: Iterable[torch.Tensor]) -> torch.device:
    for t in tensors:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(fn: Callable[[], object], inputs: list[torch.Tensor], device: torch.device) -> PeakMeasurement:
    """Peak bytes of live tensor storages while ``fn()`` runs, ``inputs`` included."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return PeakMeasurement(int(peak), int(base), "cuda-allocator")
    tracker = LiveStorageTracker(inputs)
    base = tracker.current
    with tracker:
        out = fn()
    del out
    return PeakMeasurement(int(tracker.peak), int(base), "cpu-live-storages")


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
