"""The diffusion family's cases of the main job and bench/bench_diffusion.py: latents, noise and a
per-sample schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import reference as R
from .._cases import LossCase
from . import functional


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


CASES: dict[str, DiffusionCase] = {c.name: c for c in [
    DiffusionCase(
        "diffusion v+minsnr",
        lambda f, x, c: functional.diffusion_loss(f, x, c.noise, c.t, c.table,
                                                  prediction_type="v_prediction",
                                                  weighting="min_snr"),
        lambda f, x, c: R.diffusion_loss(f, x, c.noise, c.t, c.table,
                                         prediction_type="v_prediction", weighting="min_snr")),
    DiffusionCase(
        "diffusion eps",
        lambda f, x, c: functional.diffusion_loss(f, x, c.noise, c.t, c.table),
        lambda f, x, c: R.diffusion_loss(f, x, c.noise, c.t, c.table)),
    DiffusionCase(
        "flow cosmap",
        lambda f, x, c: functional.flow_matching_loss(f, x, c.noise, c.t, weighting="cosmap"),
        lambda f, x, c: R.flow_matching_loss(f, x, c.noise, c.t, weighting="cosmap"),
        schedule="sigma"),
]}
