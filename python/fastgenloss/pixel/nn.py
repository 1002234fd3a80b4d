"""The pixel losses as modules. Where torch has the module, ours subclasses it, so isinstance
checks, constructor arguments, repr and state_dict behave as before; only forward changes (it
also accepts an optional ``weight``)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional

__all__ = ["CharbonnierLoss", "HuberLoss", "L1Loss", "MSELoss", "PixelLoss", "SmoothL1Loss"]


class L1Loss(torch.nn.L1Loss):
    """:class:`torch.nn.L1Loss` computed by :func:`fastgenloss.l1_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return functional.l1_loss(input, target, reduction=self.reduction, weight=weight)


class MSELoss(torch.nn.MSELoss):
    """:class:`torch.nn.MSELoss` computed by :func:`fastgenloss.mse_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return functional.mse_loss(input, target, reduction=self.reduction, weight=weight)


class HuberLoss(torch.nn.HuberLoss):
    """:class:`torch.nn.HuberLoss` computed by :func:`fastgenloss.huber_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return functional.huber_loss(input, target, reduction=self.reduction, delta=self.delta,
                                     weight=weight)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    """:class:`torch.nn.SmoothL1Loss` computed by :func:`fastgenloss.smooth_l1_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return functional.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta,
                                         weight=weight)


class CharbonnierLoss(torch.nn.Module):
    """sqrt((input - target)^2 + eps^2); see :func:`fastgenloss.charbonnier_loss`."""

    def __init__(self, eps: float = 1e-3, reduction: str = "mean", masked_mean: bool = False):
        super().__init__()
        self.eps = eps
        self.reduction = reduction
        self.masked_mean = masked_mean

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return functional.charbonnier_loss(input, target, eps=self.eps, weight=weight,
                                           reduction=self.reduction, masked_mean=self.masked_mean)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, masked_mean={self.masked_mean}"


class PixelLoss(torch.nn.Module):
    """A weighted sum of pixel losses in one fused pass; see :func:`fastgenloss.pixel_loss`.

    Example: ``PixelLoss(l1=1.0, mse=0.5)`` or, for inpainting,
    ``PixelLoss(l1=1.0, masked_mean=True)(out, img, weight=hole_mask)``.
    """

    def __init__(self, *, l1: float = 1.0, mse: float = 0.0, charbonnier: float = 0.0,
                 huber: float = 0.0, smooth_l1: float = 0.0, eps: float = 1e-3,
                 delta: float = 1.0, beta: float = 1.0, reduction: str = "mean",
                 masked_mean: bool = False):
        super().__init__()
        self.coeffs = dict(l1=l1, mse=mse, charbonnier=charbonnier, huber=huber,
                           smooth_l1=smooth_l1)
        self.eps, self.delta, self.beta = eps, delta, beta
        self.reduction = reduction
        self.masked_mean = masked_mean

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return functional.pixel_loss(input, target, eps=self.eps, delta=self.delta, beta=self.beta,
                                     weight=weight, reduction=self.reduction,
                                     masked_mean=self.masked_mean, **self.coeffs)

    def extra_repr(self) -> str:
        terms = ", ".join(f"{k}={v}" for k, v in self.coeffs.items() if v)
        return f"{terms}, reduction={self.reduction!r}, masked_mean={self.masked_mean}"
