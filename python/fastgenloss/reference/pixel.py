"""The pixel losses in plain PyTorch: torch's own fused losses where torch has them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["charbonnier_loss", "huber_loss", "l1_loss", "mse_loss", "pixel_loss", "smooth_l1_loss"]


def _reduce(loss: Tensor, reduction: str, weight: Tensor | None, by_weight: bool,
            nan_if_no_weight: bool = True) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weight is not None and by_weight:
        wsum = weight.expand_as(loss).sum()
        total = loss.sum()
        if nan_if_no_weight:
            return total / wsum
        return torch.where(wsum == 0, torch.zeros_like(total), total / wsum)
    return loss.mean()


def _weighted(loss: Tensor, weight: Tensor | None) -> Tensor:
    return loss if weight is None else loss * weight.to(loss.dtype)


def l1_loss(input, target, reduction="mean", weight=None):
    """torch's l1_loss; with a weight, mean = sum(w|d|)/sum(w), as torch."""
    if weight is None:
        return F.l1_loss(input, target, reduction=reduction)
    w = weight.to(input.dtype)
    return _reduce(_weighted((input - target).abs(), w), reduction, w, by_weight=True)


def mse_loss(input, target, reduction="mean", weight=None):
    """torch's mse_loss; with a weight, mean = sum(w d^2)/sum(w), as torch."""
    if weight is None:
        return F.mse_loss(input, target, reduction=reduction)
    w = weight.to(input.dtype)
    return _reduce(_weighted((input - target) ** 2, w), reduction, w, by_weight=True)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """torch's huber_loss; with a weight, mean = sum(w l)/numel, as torch."""
    if weight is None:
        return F.huber_loss(input, target, reduction=reduction, delta=delta)
    loss = F.huber_loss(input, target, reduction="none", delta=delta)
    return _reduce(_weighted(loss, weight), reduction, None, by_weight=False)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0, weight=None):
    """torch's smooth_l1_loss; a weight (our extension) reduces like huber's."""
    if weight is None:
        return F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)
    loss = F.smooth_l1_loss(input, target, reduction="none", beta=beta)
    return _reduce(_weighted(loss, weight), reduction, None, by_weight=False)


def charbonnier_loss(input, target, eps=1e-3, weight=None, reduction="mean", masked_mean=False):
    loss = torch.sqrt((input - target) ** 2 + eps * eps)
    return _reduce(_weighted(loss, weight), reduction, weight, by_weight=masked_mean,
                   nan_if_no_weight=False)


def pixel_loss(input, target, *, l1=1.0, mse=0.0, charbonnier=0.0, huber=0.0, smooth_l1=0.0,
               eps=1e-3, delta=1.0, beta=1.0, weight=None, reduction="mean", masked_mean=False):
    """The weighted sum of the separate losses. Unweighted, each term keeps its own fused
    torch kernel and reduction (what a user writes: ``F.l1_loss(x, y) + F.mse_loss(x, y)``)."""
    if weight is None:
        total = None
        for coef, term in (
            (l1, lambda: F.l1_loss(input, target, reduction=reduction)),
            (mse, lambda: F.mse_loss(input, target, reduction=reduction)),
            (charbonnier, lambda: charbonnier_loss(input, target, eps, reduction=reduction)),
            (huber, lambda: F.huber_loss(input, target, reduction=reduction, delta=delta)),
            (smooth_l1, lambda: F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)),
        ):
            if coef:
                t = coef * term()
                total = t if total is None else total + t
        return total
    loss = None
    for coef, term in (
        (l1, lambda: (input - target).abs()),
        (mse, lambda: (input - target) ** 2),
        (charbonnier, lambda: torch.sqrt((input - target) ** 2 + eps * eps)),
        (huber, lambda: F.huber_loss(input, target, reduction="none", delta=delta)),
        (smooth_l1, lambda: F.smooth_l1_loss(input, target, reduction="none", beta=beta)),
    ):
        if coef:
            t = coef * term()
            loss = t if loss is None else loss + t
    w = weight.to(input.dtype)
    return _reduce(loss * w, reduction, w, by_weight=masked_mean, nan_if_no_weight=False)
