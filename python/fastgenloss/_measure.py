"""Timing and peak-memory measurement shared by ``python -m fastgenloss``, bench/ and tests.

Peak memory is the most bytes allocated at once while a callable runs, above what was allocated
before it: on CUDA from the caching allocator's statistics; on the CPU (Linux) from the
process's resident-set high-water mark, reset through /proc/self/clear_refs, with glibc's mmap
threshold pinned so that large tensors are mapped and unmapped (not recycled in the heap).
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from typing import Callable

import torch

_MMAP_THRESHOLD_PINNED = False


def _pin_mmap_threshold() -> bool:
    global _MMAP_THRESHOLD_PINNED
    if not _MMAP_THRESHOLD_PINNED and sys.platform.startswith("linux"):
        try:
            M_MMAP_THRESHOLD = -3
            ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
            _MMAP_THRESHOLD_PINNED = True
        except OSError:
            pass
    return _MMAP_THRESHOLD_PINNED


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
    return _pin_mmap_threshold()


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
    if device.type == "cpu" and cpu_peak_supported():
        fn()  # first call: lazy initializations and first-touch of reused pages
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_bytes("VmRSS:")
        fn()
        return max(0, _status_bytes("VmHWM:") - before)
    return None


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
