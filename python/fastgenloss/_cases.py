"""The loss cases that ``python -m fastgenloss`` and bench/ time and check: each is our fused
op beside the plain-PyTorch reference a user would otherwise run (torch's own fused losses
where torch has them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import functional as F
from . import reference as R


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


CASES: dict[str, LossCase] = {c.name: c for c in [
    LossCase("l1", lambda x, y, w: F.l1_loss(x, y), lambda x, y, w: R.l1_loss(x, y)),
    LossCase("mse", lambda x, y, w: F.mse_loss(x, y), lambda x, y, w: R.mse_loss(x, y)),
    LossCase("huber", lambda x, y, w: F.huber_loss(x, y, delta=0.5),
             lambda x, y, w: R.huber_loss(x, y, delta=0.5)),
    LossCase("smooth_l1", lambda x, y, w: F.smooth_l1_loss(x, y, beta=0.5),
             lambda x, y, w: R.smooth_l1_loss(x, y, beta=0.5)),
    LossCase("charbonnier", lambda x, y, w: F.charbonnier_loss(x, y, eps=1e-3),
             lambda x, y, w: R.charbonnier_loss(x, y, eps=1e-3)),
    LossCase("l1+mse", lambda x, y, w: F.pixel_loss(x, y, l1=1.0, mse=1.0),
             lambda x, y, w: R.pixel_loss(x, y, l1=1.0, mse=1.0)),
    LossCase("masked l1+charb", lambda x, y, w: F.pixel_loss(
        x, y, l1=1.0, charbonnier=0.5, weight=w, masked_mean=True),
        lambda x, y, w: R.pixel_loss(x, y, l1=1.0, charbonnier=0.5, weight=w, masked_mean=True),
        weighted=True),
]}
