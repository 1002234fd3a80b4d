"""Per-call breakdown of one small loss call (mse_loss, 4K elements, fwd+bwd, 1 thread): the time
per call, torch.profiler's events (self CPU time per call) and cProfile's Python frames. The
issue-19 numbers in docs/performance.md came from it:

    python tools/percall_profile.py
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fastgenloss as fgl

CALLS = 500


def main() -> None:
    torch.set_num_threads(1)
    x = torch.randn(16, 256, requires_grad=True)
    y = torch.randn(16, 256)

    def step():
        fgl.mse_loss(x, y).backward()
        x.grad = None

    for _ in range(300):
        step()
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            step()
        times.append((time.perf_counter() - t0) / CALLS * 1e6)
    print(f"mse_loss 4K fwd+bwd, 1 thread: {statistics.median(times):.1f} us/call "
          f"(9 x {CALLS}, median)")

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(CALLS):
            step()
    rows = sorted(((e.self_cpu_time_total / CALLS, e.key, e.count // CALLS)
                   for e in prof.key_averages()
                   if e.count >= CALLS and e.self_cpu_time_total / CALLS >= 0.3), reverse=True)
    print("torch.profiler, self CPU us per call (events >= 0.3 us):")
    for t, key, count in rows[:14]:
        print(f"  {t:6.1f}  {key} (x{count})")

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(CALLS):
        step()
    pr.disable()
    stats = pstats.Stats(pr, stream=io.StringIO()).stats
    print("cProfile, Python frames, self us per call:")
    for (path, line, name), (_, _, tottime, _, _) in sorted(stats.items(),
                                                            key=lambda kv: -kv[1][2])[:10]:
        short = path.split("site-packages/")[-1].split("/python/")[-1]
        print(f"  {tottime / CALLS * 1e6:6.1f}  {short}:{line}({name})")


if __name__ == "__main__":
    main()
