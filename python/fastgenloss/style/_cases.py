"""The style family's case of the main job: a style loss against a precomputed target Gram."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import reference as R
from .._cases import LossCase
from . import functional


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


CASES: dict[str, LossCase] = {c.name: c for c in [
    StyleCase("style (gram target)",
              lambda x, g, w: functional.style_loss(x, g, target_is_gram=True),
              lambda x, g, w: R.style_loss(x, g, target_is_gram=True)),
]}
