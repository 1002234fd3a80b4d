"""The main job's cases (``python -m fastgenloss``; bench/ times them too): each is our fused op
beside the plain-PyTorch reference a user would otherwise run (torch's own fused losses where
torch has them). Each family lists its own in fastgenloss/<family>/_cases.py; all_cases()
gathers them in the families' order."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from ._families import FAMILIES



@dataclass(frozen=True)
class LossCase:
    name: str
    ours: Callable
    ref: Callable
    weighted: bool = False  # takes a [N, 1, H, W]-style mask as weight

    def make_inputs(self, numel: int, dtype: torch.dtype, device, requires_grad=True):
        """Random (never zero) input/target of about `numel` elements, shaped like images
        [N, 3, H, W] when possible, plus a broadcast mask for weighted cases."""
        shape = image_shape(numel)
        g = torch.Generator(device="cpu").manual_seed(numel)
        x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        y = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        x.requires_grad_(requires_grad)
        w = None
        if self.weighted:
            mshape = (shape[0], 1) + tuple(shape[2:]) if len(shape) == 4 else shape
            w = (torch.rand(mshape, generator=g) > 0.3).to(device=device, dtype=dtype)
        return x, y, w


# Element counts the benchmarks and the main job know by name (8x3x512x512 is the issue's
# CPU target shape).
SIZE_NAMES = {65536: "64K", 1 << 20: "1M", 8 * 3 * 512 * 512: "8x3x512x512", 1 << 24: "16M",
              1 << 26: "64M"}


def parse_size(s: str) -> int:
    """An element count from a name of SIZE_NAMES or a number with an optional K, M or G."""
    s = s.strip().upper()
    for n, name in SIZE_NAMES.items():
        if name.upper() == s:
            return n
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s.rstrip("KMG")) * mult)


def image_shape(numel: int) -> tuple[int, ...]:
    """[N, 3, H, W] with H = W a power of two when numel = N*3*H*W allows, else flat."""
    for side in (512, 256, 128, 64, 32):
        if numel % (3 * side * side) == 0:
            return (numel // (3 * side * side), 3, side, side)
    return (numel,)


def parse_shape(s: str) -> tuple[int, ...]:
    """'64x4x64x64' -> (64, 4, 64, 64)."""
    return tuple(int(v) for v in s.lower().split("x"))


def all_cases() -> dict[str, LossCase]:
    """Every family's cases, by name, in the order of _families.FAMILIES."""
    cases: dict[str, LossCase] = {}
    for family in FAMILIES:
        cases.update(importlib.import_module(f"fastgenloss.{family}._cases").CASES)
    return cases
