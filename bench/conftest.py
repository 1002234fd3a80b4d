"""Benchmark options. Sizes and dtypes come from the environment so that CI can run a quick
smoke pass (`--benchmark-disable`: each benchmark once, untimed) and a person the full sweep:

    FGL_BENCH_SIZES   comma-separated element counts (default: 64K,1M,6.3M on CPU; up to 64M on GPU)
    FGL_BENCH_DTYPES  comma-separated dtypes (default: float32,bfloat16)
    FGL_BENCH_DEVICE  cpu or cuda (default: cuda when available)
    FGL_BENCH_COMPILE 0 to leave out torch.compile of the reference
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from fastgenloss._cases import SIZE_NAMES, parse_size  # noqa: E402,F401  (bench_pixel imports SIZE_NAMES from here)

def bench_device() -> str:
    return os.environ.get("FGL_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def bench_sizes() -> list[int]:
    env = os.environ.get("FGL_BENCH_SIZES")
    if env:
        return [parse_size(s) for s in env.split(",") if s.strip()]
    if bench_device() == "cuda":
        return [65536, 1 << 20, 8 * 3 * 512 * 512, 1 << 24, 1 << 26]
    return [65536, 1 << 20, 8 * 3 * 512 * 512]


def bench_dtypes() -> list[torch.dtype]:
    env = os.environ.get("FGL_BENCH_DTYPES", "float32,bfloat16")
    return [getattr(torch, d.strip()) for d in env.split(",") if d.strip()]


def bench_impls() -> list[str]:
    impls = ["fastgenloss", "reference"]
    if os.environ.get("FGL_BENCH_COMPILE", "1") != "0":
        impls.append("compile")
    return impls
