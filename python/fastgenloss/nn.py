"""Loss modules. Where torch has the module, ours subclasses it, so isinstance checks,
constructor arguments, repr and state_dict behave as before; only forward changes (it also
accepts an optional ``weight``)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F

__all__ = ["CharbonnierLoss", "DiffusionLoss", "EDMLoss", "FlowMatchingLoss", "HuberLoss", "L1Loss",
           "MSELoss", "PixelLoss", "SmoothL1Loss"]


class L1Loss(torch.nn.L1Loss):
    """:class:`torch.nn.L1Loss` computed by :func:`fastgenloss.l1_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction, weight=weight)


class MSELoss(torch.nn.MSELoss):
    """:class:`torch.nn.MSELoss` computed by :func:`fastgenloss.mse_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction, weight=weight)


class HuberLoss(torch.nn.HuberLoss):
    """:class:`torch.nn.HuberLoss` computed by :func:`fastgenloss.huber_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta,
                            weight=weight)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    """:class:`torch.nn.SmoothL1Loss` computed by :func:`fastgenloss.smooth_l1_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta,
                                weight=weight)


class CharbonnierLoss(torch.nn.Module):
    """sqrt((input - target)^2 + eps^2); see :func:`fastgenloss.charbonnier_loss`."""

    def __init__(self, eps: float = 1e-3, reduction: str = "mean", masked_mean: bool = False):
        super().__init__()
        self.eps = eps
        self.reduction = reduction
        self.masked_mean = masked_mean

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.charbonnier_loss(input, target, eps=self.eps, weight=weight,
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
        return F.pixel_loss(input, target, eps=self.eps, delta=self.delta, beta=self.beta,
                            weight=weight, reduction=self.reduction,
                            masked_mean=self.masked_mean, **self.coeffs)

    def extra_repr(self) -> str:
        terms = ", ".join(f"{k}={v}" for k, v in self.coeffs.items() if v)
        return f"{terms}, reduction={self.reduction!r}, masked_mean={self.masked_mean}"


class DiffusionLoss(torch.nn.Module):
    """:func:`fastgenloss.diffusion_loss` as a module. ``alphas_cumprod`` (optional) is kept as
    a non-persistent buffer, so ``.to(device)`` moves it with the model and ``forward`` then
    takes only the step's tensors; without it, pass ``alphas_cumprod`` to ``forward``."""

    def __init__(self, alphas_cumprod: Tensor | None = None, *,
                 prediction_type: str = "epsilon", weighting: str | None = None,
                 snr_gamma: float = 5.0, loss_type: str = "l2", huber_c: float = 0.1,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod",
                             None if alphas_cumprod is None else alphas_cumprod.detach().clone(),
                             persistent=False)
        self.prediction_type, self.weighting, self.snr_gamma = prediction_type, weighting, snr_gamma
        self.loss_type, self.huber_c, self.reduction = loss_type, huber_c, reduction

    def forward(self, model_output: Tensor, sample: Tensor, noise: Tensor, timesteps: Tensor,
                alphas_cumprod: Tensor | None = None, weighting: Tensor | None = None) -> Tensor:
        table = self.alphas_cumprod if alphas_cumprod is None else alphas_cumprod
        if table is None:
            raise ValueError("DiffusionLoss: no alphas_cumprod (give it to the constructor or "
                             "to forward)")
        return F.diffusion_loss(model_output, sample, noise, timesteps, table,
                                prediction_type=self.prediction_type,
                                weighting=self.weighting if weighting is None else weighting,
                                snr_gamma=self.snr_gamma, loss_type=self.loss_type,
                                huber_c=self.huber_c, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"prediction_type={self.prediction_type!r}, weighting={self.weighting!r}, "
                f"snr_gamma={self.snr_gamma}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")


class FlowMatchingLoss(torch.nn.Module):
    """:func:`fastgenloss.flow_matching_loss` as a module."""

    def __init__(self, *, weighting: str | None = None, loss_type: str = "l2",
                 huber_c: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.weighting, self.loss_type, self.huber_c = weighting, loss_type, huber_c
        self.reduction = reduction

    def forward(self, model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor,
                weighting: Tensor | None = None) -> Tensor:
        return F.flow_matching_loss(model_output, sample, noise, sigmas,
                                    weighting=self.weighting if weighting is None else weighting,
                                    loss_type=self.loss_type, huber_c=self.huber_c,
                                    reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"weighting={self.weighting!r}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")


class EDMLoss(torch.nn.Module):
    """:func:`fastgenloss.edm_loss` as a module."""

    def __init__(self, *, sigma_data: float = 0.5, prediction_type: str = "epsilon",
                 weighting: str | None = None, loss_type: str = "l2", huber_c: float = 0.1,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.sigma_data, self.prediction_type, self.weighting = sigma_data, prediction_type, weighting
        self.loss_type, self.huber_c, self.reduction = loss_type, huber_c, reduction

    def forward(self, model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor,
                weighting: Tensor | None = None) -> Tensor:
        return F.edm_loss(model_output, sample, noise, sigmas, sigma_data=self.sigma_data,
                          prediction_type=self.prediction_type,
                          weighting=self.weighting if weighting is None else weighting,
                          loss_type=self.loss_type, huber_c=self.huber_c,
                          reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"sigma_data={self.sigma_data}, prediction_type={self.prediction_type!r}, "
                f"weighting={self.weighting!r}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")
