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

SIZE_NAMES = {65536: "64K", 1 << 20: "1M", 8 * 3 * 512 * 512: "8x3x512x512", 1 << 24: "16M",
              1 << 26: "64M"}


def _parse_size(s: str) -> int:
    s = s.strip().upper()
    names = {v.upper(): k for k, v in SIZE_NAMES.items()}
    if s in names:
        return names[s]
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1:], 1)
    return int(float(s.rstrip("KM")) * mult)


def bench_device() -> str:
    return os.environ.get("FGL_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def bench_sizes() -> list[int]:
    env = os.environ.get("FGL_BENCH_SIZES")
    if env:
        return [_parse_size(s) for s in env.split(",") if s.strip()]
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
