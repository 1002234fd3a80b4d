"""The segmentation family's case of the main job: Dice + IoU + 0.8 CE on Cityscapes-like logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import reference as R
from .._cases import LossCase
from . import functional


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


CASES: dict[str, LossCase] = {c.name: c for c in [
    SegCase("seg dice+iou+0.8ce",
            lambda x, t, w: functional.segmentation_loss(x, t, "multiclass", dice=1.0, iou=1.0,
                                                         bce=0.8),
            lambda x, t, w: R.segmentation_loss(x, t, mode="multiclass", dice=1.0, iou=1.0,
                                                bce=0.8)),
]}
