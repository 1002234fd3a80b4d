"""Timing and peak-memory measurement shared by ``python -m fastgenloss``, bench/ and tests.

Peak memory is the most bytes allocated at once while a callable runs, above what was allocated
before it: on CUDA from the caching allocator's statistics; on the CPU from the allocation
records of torch's profiler (every tensor allocation and free of the CPU allocator, with the
running total), which count tensors exactly whatever state the process heap is in. Where the
profiler cannot run (another profiler is active), the CPU falls back to the process's
resident-set high-water mark, reset through /proc/self/clear_refs (Linux), with glibc's mmap and
trim thresholds pinned low so that large tensors are mapped when allocated and unmapped when
freed; that reading also counts freed heap pages a later allocation did not reuse, so it can
read high after long runs that fragment the heap (seen in CI: one extra buffer).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import time
from typing import Callable

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except OSError:
        return False


def _set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    return _mallopt(M_MMAP_THRESHOLD, mmap_bytes) and _mallopt(M_TRIM_THRESHOLD, trim_bytes)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_bytes("VmHWM:")
    except OSError:
        return False
    return sys.platform.startswith("linux")


def _silenced_stderr(fn: Callable[[], object]) -> object:
    """fn() with file descriptor 2 pointed at /dev/null: the profiler's C++ side (kineto) logs
    every start and stop there, which would interleave with the tables of the main job."""
    import os
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            return fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_profiled(fn: Callable[[], object]) -> int | None:
    """Peak of the CPU allocator's running total of bytes allocated during fn(), from the
    allocation events of torch's profiler; None where the profiler is unavailable."""
    try:
        from torch._C._profiler import _EventType, _ExperimentalConfig, ProfilerState
        from torch.autograd import (ProfilerActivity, ProfilerConfig, _disable_profiler,
                                    _enable_profiler, _prepare_profiler)
        if torch.autograd._profiler_enabled():
            return None
        config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False,
                                _ExperimentalConfig())
        activities = {ProfilerActivity.CPU}
    except (ImportError, AttributeError, TypeError, RuntimeError):
        return None

    def profiled():
        _silenced_stderr(lambda: (_prepare_profiler(config, activities),
                                  _enable_profiler(config, activities)))
        try:
            fn()
        finally:
            result = _silenced_stderr(_disable_profiler)
        return result

    try:
        profiled()  # warm-up under the profiler: lazy initializations, a recompile if any
        result = profiled()
        events = []
        stack = list(result.experimental_event_tree())
    except RuntimeError:
        return None
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            f = e.extra_fields
            events.append((e.start_time_ns, f.alloc_size, f.total_allocated))
    if not events:
        return 0
    events.sort()
    start = events[0][2] - events[0][1]  # the running total before the first event
    return max(0, max(total for _, _, total in events) - start)


def peak_memory_bytes(fn: Callable[[], object], device: str | torch.device) -> int | None:
    """Peak bytes allocated by fn() above the level before it (None where unmeasurable)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        peak = _cpu_peak_profiled(fn)
        if peak is not None:
            return peak
    if device.type == "cpu" and cpu_peak_supported() and _set_malloc_thresholds(1 << 20, 1 << 20):
        # no cyclic garbage collection inside the measurement: what it frees (tensors of earlier
        # work held in reference cycles) and when it runs differ from one process to the next
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            fn()  # first call: lazy initializations, and buffers freed under the old thresholds
            # hand free heap pages back, so reusing a freed chunk faults its pages in (and counts)
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = _status_bytes("VmRSS:")
            fn()
            return max(0, _status_bytes("VmHWM:") - before)
        finally:
            _set_malloc_thresholds(32 << 20, 64 << 20)
            if gc_was_enabled:
                gc.enable()
    return None


def allow_many_compiles(limit: int = 256) -> None:
    """Benchmarks compile one reference for many sizes and dtypes; past dynamo's default limit of
    8 recompiles per function it silently runs eager instead, which would make the "compile"
    column time eager code. Raise the limit (the name changed across torch versions)."""
    import torch._dynamo
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


def time_ms(fn: Callable[[], object], device: str | torch.device, *, warmup: int = 3,
            min_time_s: float = 0.2, max_reps: int = 200) -> float:
    """Median milliseconds of fn() (device events on CUDA, a synchronized wall clock on CPU)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start_all = time.perf_counter()
        while len(times) < max_reps and (time.perf_counter() - start_all < min_time_s or len(times) < 5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        start_all = time.perf_counter()
        while len(times) < max_reps and (time.perf_counter() - start_all < min_time_s or len(times) < 5):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
