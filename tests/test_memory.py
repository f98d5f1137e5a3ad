"""The allocator meter (CPU allocator events) against the op-output tracker, on tensors of known size."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mutwo import memory
from mutwo.memory import (
    AllocatorEventsUnavailable,
    OpOutputTracker,
    allocator_peak,
    allocator_region,
    cpu_allocator_events,
    host_copy_region,
    input_bytes,
    measure_peak,
)

CPU = torch.device("cpu")
SCRATCH = 100_000  # bytes the custom op allocates and frees inside itself


@torch.library.custom_op("mutwo_test::with_scratch", mutates_args=())
def with_scratch(x: torch.Tensor) -> torch.Tensor:
    """One op whose kernel needs a temporary buffer: the output is a copy of ``x``."""
    scratch = torch.empty(SCRATCH, dtype=torch.uint8)
    scratch.fill_(1)
    out = x.clone()
    del scratch
    return out


def _made_under_a_meter(n: int) -> torch.Tensor:
    """A float tensor allocated while a meter ran: the allocator knows its size and reports its free."""
    box: list[torch.Tensor] = []
    allocator_peak(lambda: box.append(torch.ones(n)), [])
    return box.pop()


def test_allocator_sees_scratch_inside_an_op_the_op_output_tracker_cannot():
    x = torch.ones(1000)  # 4,000 bytes, the baseline
    m = allocator_peak(lambda: with_scratch(x), [x])
    # scratch (100,000) is still held when the output (4,000) is allocated
    assert (m.peak_bytes, m.baseline_bytes, m.method) == (4000 + SCRATCH + 4000, 4000, "cpu-allocator-events")
    t = measure_peak(lambda: with_scratch(x), [x], CPU)  # the op-output figure: input + output only
    assert (t.peak_bytes, t.method) == (8000, "cpu-live-storages")


def test_batch_norm_backward_scratch_is_measured():
    torch.manual_seed(0)
    x, w = torch.randn(8, 16, 32, 32), torch.ones(16)
    out, mean, invstd = torch.ops.aten.native_batch_norm(x, w, torch.zeros(16), None, None, True, 0.1, 1e-5)
    grad = torch.randn_like(out)
    inputs = [x, w, grad, mean, invstd]

    def backward():
        return torch.ops.aten.native_batch_norm_backward(grad, x, w, None, None, mean, invstd, True, 1e-5,
                                                         [True, True, True])

    outputs = x.nbytes + 2 * w.nbytes  # grad input, grad weight, grad bias
    assert measure_peak(backward, inputs, CPU).peak_bytes == input_bytes(inputs) + outputs
    assert allocator_peak(backward, inputs).peak_bytes > input_bytes(inputs) + outputs
    with cpu_allocator_events(inputs) as log, allocator_region(0):
        backward()
    assert log.region_transients(1)[0] > 0


def test_region_transients_count_what_an_op_frees_inside_itself():
    with cpu_allocator_events() as log:
        with allocator_region(0):  # an output of 1,000 bytes and a scratch of 5,000 freed inside
            a = torch.empty(1000, dtype=torch.uint8)
            tmp = torch.empty(5000, dtype=torch.uint8)
            del tmp
        with allocator_region(1):  # a view: nothing allocated
            v = a.view(10, 100)
        with allocator_region(3):  # an output only
            b = torch.empty(300, dtype=torch.uint8)
        c = torch.empty(7000, dtype=torch.uint8)  # outside any region
        del c
    np.testing.assert_array_equal(log.region_transients(4), [5000, 0, 0, 0])
    assert log.peak_bytes == 1000 + 300 + 7000 and log.baseline_bytes == 0
    assert v.shape == (10, 100) and b.numel() == 300


def test_an_input_freed_during_the_call_lowers_the_level():
    holder = [torch.ones(10_000)]  # 40,000 bytes, allocated before any meter: its free is not reported

    def swap():
        holder.clear()
        return torch.ones(15_000)  # 60,000 bytes

    assert allocator_peak(swap, holder) == memory.PeakMeasurement(60_000, 40_000, "cpu-allocator-events", 60_000)
    holder = [_made_under_a_meter(10_000)]  # here the allocator reports the free (no matching allocation)
    assert allocator_peak(swap, holder).peak_bytes == 60_000


def test_a_free_of_something_outside_the_baseline_is_not_subtracted():
    other = [_made_under_a_meter(10_000)]  # exists, is freed during the call, but is not an input
    x = torch.ones(1000)

    def fn():
        other.clear()
        return torch.ones(5_000)

    assert allocator_peak(fn, [x]).peak_bytes == 4000 + 20_000


def test_allocations_of_other_threads_are_not_counted():
    def elsewhere():
        torch.ones(50_000)

    def fn():
        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
        return torch.ones(10)

    assert allocator_peak(fn, []).peak_bytes == 40


def test_unavailable_events_raise_a_clear_error(monkeypatch):
    class NoAllocations:  # what the event walk would see if the profiler reported no allocation fields
        pass

    monkeypatch.setattr(memory, "_ExtraFields_Allocation", NoAllocations)
    with pytest.raises(AllocatorEventsUnavailable, match=r"allocator meter .*probe allocation.*measure_peak"):
        allocator_peak(lambda: torch.ones(10), [])
    monkeypatch.undo()
    monkeypatch.setattr(torch.autograd, "kineto_available", lambda: False)
    with pytest.raises(AllocatorEventsUnavailable, match="no Kineto profiler"):
        allocator_peak(lambda: torch.ones(10), [])


def test_meter_refuses_to_nest_inside_another_profiler():
    with torch.autograd.profiler.profile(), pytest.raises(AllocatorEventsUnavailable, match="already running"):
        allocator_peak(lambda: torch.ones(10), [])


def test_op_output_tracker_counts_storages_once():
    with OpOutputTracker() as tr:
        a = torch.ones(1000)  # 4000 bytes
        v = a.view(10, 100)  # a view: no new storage
        b = a + 1
        assert tr.current == 8000 and tr.peak == 8000
        del a, b
    assert tr.current == 4000  # the view keeps the storage alive
    del v
    assert tr.current == 0 and tr.peak == 8000


def test_input_bytes_counts_shared_storages_once():
    a = torch.ones(1000)
    assert input_bytes([a, a.view(10, 100), a[:10], torch.ones(5), "not a tensor"]) == 4020
    assert input_bytes([a], "meta") == 0


def test_host_copies_are_left_out_of_the_emulated_device_peak_while_they_live():
    """CPU swap emulation: a host copy made in a host_copy_region counts in the process peak (it is in
    the same memory) but not in the emulated device figure; once freed it no longer counts anywhere."""
    x = torch.ones(1000)  # 4,000 bytes, the baseline

    def swap_like():
        with host_copy_region():
            host = torch.empty(8000, dtype=torch.uint8)  # the "host" copy of an activation
        y = torch.empty(3000, dtype=torch.uint8)  # the process peak: 4,000 + 8,000 + 3,000
        del host
        z = torch.empty(5000, dtype=torch.uint8)  # the device peak: 4,000 + 3,000 + 5,000
        return y, z

    m = allocator_peak(swap_like, [x])
    assert (m.peak_bytes, m.emulated_device_peak_bytes) == (15_000, 12_000)
    with cpu_allocator_events([x]) as log:
        swap_like()
    assert log.host_copy_bytes_at_peak == 8000 and log.emulated_device_peak_bytes == 12_000
    plain = allocator_peak(lambda: torch.empty(8000, dtype=torch.uint8), [x])
    assert plain.emulated_device_peak_bytes == plain.peak_bytes == 12_000  # nothing tagged: the same figure


def test_the_host_tag_follows_the_block_not_its_reused_pointer():
    """The allocator hands a freed block's address out again: a later allocation at the address of a
    freed host copy is device memory (rows as the event walk produces them: time, order, size, ptr,
    region, freed input, in a host-copy region)."""
    rows = [(0, 0, 100, 7, -1, -1, True), (1, 1, -100, 7, -1, -1, False),  # host copy made and freed
            (2, 2, 100, 7, -1, -1, False), (3, 3, 50, 8, -1, -1, False)]  # a device block at address 7
    sizes, _, hosts = memory._signed_sizes(rows, {}, [])
    assert sizes == [100, -100, 100, 50] and hosts == [True, True, False, False]
    log = memory.AllocatorLog(0, np.array(sizes), np.full(4, -1), np.array(hosts))
    assert log.device_levels().tolist() == [0, 0, 100, 150] and log.emulated_device_peak_bytes == 150
