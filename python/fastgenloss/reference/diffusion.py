"""The diffusion losses in plain PyTorch, as diffusers' training scripts write them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["add_noise", "diffusion_loss", "edm_loss", "edm_noise", "flow_matching_loss", "flow_noise", "sd3_weighting", "snr", "snr_weights", "velocity"]


# ---- diffusion ------------------------------------------------------------------------------
# Written as diffusers' training scripts write it (DDPMScheduler.add_noise / get_velocity,
# training_utils.compute_snr, the min-SNR weights of train_text_to_image.py, the SD3 script's
# flow-matching loss, EDMEulerScheduler's preconditioning): gather, broadcast, materialize the
# target, elementwise loss, per-sample mean, weight, mean. Differences from the scripts, where
# they are wrong: min(SNR, gamma) / SNR is written to be 1 (its limit) at SNR = 0 instead of
# 0/0; float64 data stays float64 (the scripts' .float() would round it).


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _alpha_bar(timesteps: Tensor, alphas_cumprod: Tensor, like: Tensor) -> Tensor:
    return alphas_cumprod.to(like.device)[timesteps.to(like.device)]


def add_noise(sample: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    ab = _alpha_bar(timesteps, alphas_cumprod, sample).to(sample.dtype)
    return _bcast(ab ** 0.5, sample) * sample + _bcast((1 - ab) ** 0.5, sample) * noise


def velocity(sample: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    ab = _alpha_bar(timesteps, alphas_cumprod, sample).to(sample.dtype)
    return _bcast(ab ** 0.5, sample) * noise - _bcast((1 - ab) ** 0.5, sample) * sample


def flow_noise(sample: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    s = _bcast(sigmas.to(sample.device, sample.dtype), sample)
    return (1.0 - s) * sample + s * noise


def edm_noise(sample: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    return sample + noise * _bcast(sigmas.to(sample.device, sample.dtype), sample)


def snr(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    ab = alphas_cumprod.to(timesteps.device)[timesteps]
    return ((ab ** 0.5) / ((1.0 - ab) ** 0.5)) ** 2


def _rho(r: Tensor, loss_type: str, huber_c: float) -> Tensor:
    if loss_type == "l2":
        return r * r
    if loss_type == "l1":
        return r.abs()
    if loss_type == "huber":
        return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=huber_c)
    return 2 * huber_c * (torch.sqrt(r * r + huber_c ** 2) - huber_c)


def _finish(pred: Tensor, target: Tensor, weight, loss_type: str, huber_c: float,
            reduction: str) -> Tensor:
    acc = _acc(pred)
    loss = _rho(pred.to(acc) - target.to(acc), loss_type, huber_c)
    loss = loss.mean(dim=list(range(1, loss.dim()))) if loss.dim() > 1 else loss
    if weight is not None:
        loss = loss * weight.to(acc)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def snr_weights(snr_t: Tensor, prediction_type: str, weighting: str, snr_gamma: float) -> Tensor:
    """The per-sample weights of ``fastgenloss.diffusion_loss``'s SNR-based weightings."""
    gamma = torch.full_like(snr_t, snr_gamma)
    clipped = torch.stack([snr_t, gamma], dim=1).min(dim=1)[0]
    # min(SNR, gamma) / SNR, with its limit 1 at SNR = 0
    over_snr = torch.where(snr_t <= snr_gamma, torch.ones_like(snr_t), gamma / snr_t)
    if weighting == "min_snr":
        if prediction_type == "epsilon":
            return over_snr
        if prediction_type == "v_prediction":
            return clipped / (snr_t + 1)
        return clipped
    if weighting == "min_snr_floored":
        return over_snr + 1 if prediction_type == "v_prediction" else over_snr
    if weighting == "snr":
        return snr_t
    if weighting == "inverse_snr":
        return 1.0 / snr_t.clamp(min=1e-6)
    raise ValueError(weighting)


def diffusion_loss(model_output: Tensor, sample: Tensor, noise: Tensor, timesteps: Tensor,
                   alphas_cumprod: Tensor, *, prediction_type: str = "epsilon", weighting=None,
                   snr_gamma: float = 5.0, loss_type: str = "l2", huber_c: float = 0.1,
                   reduction: str = "mean") -> Tensor:
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = velocity(sample, noise, timesteps, alphas_cumprod)
    else:
        target = sample
    if isinstance(weighting, Tensor):
        w = weighting.reshape(-1)
    elif weighting is None:
        w = None
    else:
        snr_t = snr(timesteps.to(model_output.device),
                    alphas_cumprod.to(model_output.device, _acc(model_output)))
        w = snr_weights(snr_t, prediction_type, weighting, snr_gamma)
    return _finish(model_output, target, w, loss_type, huber_c, reduction)


def sd3_weighting(sigmas: Tensor, weighting) -> Tensor | None:
    """diffusers' training_utils.compute_loss_weighting_for_sd3, per sample."""
    if weighting == "sigma_sqrt":
        return sigmas ** -2.0
    if weighting == "cosmap":
        return 2 / (torch.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return None


def flow_matching_loss(model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor, *,
                       weighting=None, loss_type: str = "l2", huber_c: float = 0.1,
                       reduction: str = "mean") -> Tensor:
    s = sigmas.reshape(-1).to(model_output.device, _acc(model_output))
    target = noise - sample
    w = weighting.reshape(-1) if isinstance(weighting, Tensor) else sd3_weighting(s, weighting)
    return _finish(model_output, target, w, loss_type, huber_c, reduction)


def edm_loss(model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor, *,
             sigma_data: float = 0.5, prediction_type: str = "epsilon", weighting=None,
             loss_type: str = "l2", huber_c: float = 0.1, reduction: str = "mean") -> Tensor:
    acc = _acc(model_output)
    s = sigmas.reshape(-1).to(model_output.device, acc)
    noisy = edm_noise(sample.to(acc), noise.to(acc), s)
    sb = _bcast(s, model_output)
    c_skip = sigma_data ** 2 / (sb ** 2 + sigma_data ** 2)
    c_out = sb * sigma_data / (sb ** 2 + sigma_data ** 2) ** 0.5
    if prediction_type == "v_prediction":
        c_out = -c_out
    denoised = c_skip * noisy + c_out * model_output.to(acc)
    if isinstance(weighting, Tensor):
        w = weighting.reshape(-1)
    elif weighting == "edm":
        w = (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2
    elif weighting == "sigma_sqrt":
        w = s ** -2.0
    else:
        w = None
    return _finish(denoised, sample, w, loss_type, huber_c, reduction)
