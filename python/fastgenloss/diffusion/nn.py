"""The diffusion losses as modules."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional

__all__ = ["DiffusionLoss", "EDMLoss", "FlowMatchingLoss"]


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
        weighting = self.weighting if weighting is None else weighting
        return functional.diffusion_loss(model_output, sample, noise, timesteps, table,
                                         prediction_type=self.prediction_type,
                                         weighting=weighting, snr_gamma=self.snr_gamma,
                                         loss_type=self.loss_type, huber_c=self.huber_c,
                                         reduction=self.reduction)

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
        weighting = self.weighting if weighting is None else weighting
        return functional.flow_matching_loss(model_output, sample, noise, sigmas,
                                             weighting=weighting, loss_type=self.loss_type,
                                             huber_c=self.huber_c, reduction=self.reduction)

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
        return functional.edm_loss(model_output, sample, noise, sigmas, sigma_data=self.sigma_data,
                                   prediction_type=self.prediction_type,
                                   weighting=self.weighting if weighting is None else weighting,
                                   loss_type=self.loss_type, huber_c=self.huber_c,
                                   reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"sigma_data={self.sigma_data}, prediction_type={self.prediction_type!r}, "
                f"weighting={self.weighting!r}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")
