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


# ---- diffusion -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiffusionContext:
    """What a diffusion loss takes besides model_output and sample: the noise and the
    per-sample schedule (timesteps with alphas_cumprod, or sigmas)."""
    noise: torch.Tensor
    t: torch.Tensor
    table: torch.Tensor | None

    def double(self) -> "DiffusionContext":
        return DiffusionContext(self.noise.double(),
                                self.t.double() if self.t.is_floating_point() else self.t,
                                None if self.table is None else self.table.double())

    def numel(self) -> int:  # elements a loss reads from the context (the noise)
        return self.noise.numel()


def latent_shape(numel: int) -> tuple[int, ...]:
    """[N, 4, S, S] latents (S = 64, 32 or 16) when numel allows, else [N, 4, numel / 4N]."""
    for side in (64, 32, 16):
        if numel % (4 * side * side) == 0:
            return (numel // (4 * side * side), 4, side, side)
    return (1, 4, max(1, numel // 4))


def parse_shape(s: str) -> tuple[int, ...]:
    """'64x4x64x64' -> (64, 4, 64, 64)."""
    return tuple(int(v) for v in s.lower().split("x"))


def sd_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """Stable Diffusion's scaled-linear schedule (beta 0.00085..0.012), float32 [T]."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


@dataclass(frozen=True)
class DiffusionCase(LossCase):
    schedule: str = "ddpm"  # ddpm (timesteps + alphas_cumprod) or sigma

    def make_inputs(self, numel, dtype, device, requires_grad=True, shape=None):
        """model_output, sample (latents [N, 4, H, W]) and a DiffusionContext."""
        shape = shape or latent_shape(numel)
        g = torch.Generator(device="cpu").manual_seed(sum(shape))
        f = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        x0 = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        eps = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        f.requires_grad_(requires_grad)
        n = shape[0]
        if self.schedule == "ddpm":
            ab = sd_alphas_cumprod().to(device)
            t = torch.randint(0, ab.numel(), (n,), generator=g).to(device)
            return f, x0, DiffusionContext(eps, t, ab)
        sig = torch.sigmoid(torch.randn(n, generator=g)).to(device)  # SD3's logit-normal
        return f, x0, DiffusionContext(eps, sig, None)


DIFFUSION_CASES: dict[str, DiffusionCase] = {c.name: c for c in [
    DiffusionCase(
        "diffusion v+minsnr",
        lambda f, x, c: F.diffusion_loss(f, x, c.noise, c.t, c.table,
                                         prediction_type="v_prediction", weighting="min_snr"),
        lambda f, x, c: R.diffusion_loss(f, x, c.noise, c.t, c.table,
                                         prediction_type="v_prediction", weighting="min_snr")),
    DiffusionCase(
        "diffusion eps",
        lambda f, x, c: F.diffusion_loss(f, x, c.noise, c.t, c.table),
        lambda f, x, c: R.diffusion_loss(f, x, c.noise, c.t, c.table)),
    DiffusionCase(
        "flow cosmap",
        lambda f, x, c: F.flow_matching_loss(f, x, c.noise, c.t, weighting="cosmap"),
        lambda f, x, c: R.flow_matching_loss(f, x, c.noise, c.t, weighting="cosmap"),
        schedule="sigma"),
]}

# ---- style ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StyleCase(LossCase):
    channels: int = 128

    def make_inputs(self, numel, dtype, device, requires_grad=True):
        """Features [2, C, L] of about `numel` elements (C = 128, a VGG relu2_1-sized layer) and
        a precomputed target Gram [1, C, C] as the y; no weight."""
        c = self.channels
        length = max(1, numel // (2 * c))
        g = torch.Generator(device="cpu").manual_seed(numel)
        x = torch.randn((2, c, length), generator=g).to(device=device, dtype=dtype)
        t = torch.randn((1, c, length), generator=g).to(device=device, dtype=dtype)
        x.requires_grad_(requires_grad)
        return x, R.gram_matrix(t), None


STYLE_CASES: dict[str, LossCase] = {c.name: c for c in [
    StyleCase("style (gram target)",
              lambda x, g, w: F.style_loss(x, g, target_is_gram=True),
              lambda x, g, w: R.style_loss(x, g, target_is_gram=True)),
]}

# ---- segmentation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SegCase(LossCase):
    classes: int = 19  # Cityscapes

    def make_inputs(self, numel, dtype, device, requires_grad=True):
        """Logits [N, 19, H, W] of about `numel` elements and integer labels [N, H, W] (the
        y); no weight."""
        c = self.classes
        n = 2 if numel >= 2 * c * 64 else 1
        side = max(2, int((numel / (n * c)) ** 0.5))
        g = torch.Generator(device="cpu").manual_seed(numel)
        x = (torch.randn((n, c, side, side), generator=g) * 2).to(device=device, dtype=dtype)
        labels = torch.randint(0, c, (n, side, side), generator=g).to(device)
        x.requires_grad_(requires_grad)
        return x, labels, None


SEG_CASES: dict[str, LossCase] = {c.name: c for c in [
    SegCase("seg dice+iou+0.8ce",
            lambda x, t, w: F.segmentation_loss(x, t, "multiclass", dice=1.0, iou=1.0, bce=0.8),
            lambda x, t, w: R.segmentation_loss(x, t, mode="multiclass", dice=1.0, iou=1.0,
                                                bce=0.8)),
]}

ALL_CASES: dict[str, LossCase] = {**CASES, **DIFFUSION_CASES, **STYLE_CASES, **SEG_CASES}
