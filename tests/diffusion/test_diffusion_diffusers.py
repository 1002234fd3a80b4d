"""fastgenloss's diffusion ops against diffusers itself (the `test` extra installs it; these
tests skip when it is absent): DDPMScheduler.add_noise / get_velocity, training_utils.
compute_snr, the min-SNR weights of train_text_to_image.py and of train_dreambooth.py (their
lines, run with diffusers' compute_snr), the SD3 script's weighting and flow-matching target,
EDMEulerScheduler's preconditioning. Linear, scaled-linear and squaredcos schedules, with and
without zero terminal SNR."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastgenloss as fgl

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, EDMEulerScheduler  # noqa: E402
from diffusers.training_utils import compute_loss_weighting_for_sd3, compute_snr  # noqa: E402

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]


def scheduler(beta_schedule, zero_snr, prediction_type="epsilon"):
    kw = dict(beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr,
              prediction_type=prediction_type)
    if beta_schedule == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    return DDPMScheduler(num_train_timesteps=1000, **kw)


def batch(n=6, shape=(4, 8, 8), device="cpu"):
    x0 = torch.randn((n,) + shape, device=device)
    eps = torch.randn_like(x0)
    t = torch.randint(0, 1000, (n,), device=device)
    t[0], t[-1] = 0, 999
    return x0, eps, t


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_add_noise_and_velocity(device, beta_schedule, zero_snr):
    sch = scheduler(beta_schedule, zero_snr)
    x0, eps, t = batch(device=device)
    ab = sch.alphas_cumprod.to(device)
    torch.testing.assert_close(fgl.add_noise(x0, eps, t, ab), sch.add_noise(x0, eps, t),
                               rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(fgl.velocity(x0, eps, t, ab), sch.get_velocity(x0, eps, t),
                               rtol=2e-6, atol=2e-6)
    # alphas_cumprod left on the CPU (where diffusers keeps it until first use) works too
    torch.testing.assert_close(fgl.add_noise(x0, eps, t, sch.alphas_cumprod.cpu()),
                               sch.add_noise(x0, eps, t), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_snr(device, beta_schedule, zero_snr):
    sch = scheduler(beta_schedule, zero_snr)
    _, _, t = batch(device=device)
    ours = fgl.snr(t, sch.alphas_cumprod)
    theirs = compute_snr(sch, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-12)


def _text_to_image_weights(sch, t, gamma):
    """train_text_to_image.py's lines (snr_gamma branch)."""
    snr = compute_snr(sch, t)
    w = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    if sch.config.prediction_type == "epsilon":
        w = w / snr
    elif sch.config.prediction_type == "v_prediction":
        w = w / (snr + 1)
    return w


def _dreambooth_weights(sch, t, gamma):
    """train_dreambooth.py's lines (snr_gamma branch)."""
    snr = compute_snr(sch, t)
    base = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0] / snr
    return base + 1 if sch.config.prediction_type == "v_prediction" else base


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("weighting", ["min_snr", "min_snr_floored"])
def test_min_snr_losses_match_the_scripts(device, weighting, prediction, beta_schedule, zero_snr):
    sch = scheduler(beta_schedule, zero_snr, prediction)
    x0, eps, t = batch(device=device)
    model_pred = torch.randn_like(x0)
    gamma = 5.0
    # the scripts' loss, per sample
    if prediction == "epsilon":
        target = eps
    elif prediction == "v_prediction":
        target = sch.get_velocity(x0, eps, t)
    else:
        target = x0
    w = (_text_to_image_weights if weighting == "min_snr" else _dreambooth_weights)(sch, t, gamma)
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=list(range(1, per_sample.dim()))) * w
    ours = fgl.diffusion_loss(model_pred, x0, eps, t, sch.alphas_cumprod.to(device),
                              prediction_type=prediction, weighting=weighting, snr_gamma=gamma,
                              reduction="none")
    finite = torch.isfinite(per_sample)
    torch.testing.assert_close(ours[finite], per_sample[finite], rtol=2e-5, atol=1e-6)
    assert torch.isfinite(ours).all()
    if zero_snr and (weighting == "min_snr_floored" or prediction == "epsilon"):
        # the scripts' min(SNR, gamma) / SNR is 0/0 at the zero-terminal-SNR step; ours is its
        # limit 1, so the loss there is the unweighted one
        assert not finite[-1]
        unweighted = F.mse_loss(model_pred[-1].float(), target[-1].float())
        expect = unweighted * (2.0 if prediction == "v_prediction" else 1.0)
        torch.testing.assert_close(ours[-1], expect, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("weighting", [None, "sigma_sqrt", "cosmap"])
def test_flow_matching_matches_sd3_script(device, weighting):
    sch = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    n = 6
    x0 = torch.randn(n, 16, 8, 8, device=device)
    eps = torch.randn_like(x0)
    idx = torch.randint(0, 1000, (n,))
    sigmas = sch.sigmas[idx].to(device).reshape(n, 1, 1, 1)  # the script's get_sigmas
    noisy = (1.0 - sigmas) * x0 + sigmas * eps
    torch.testing.assert_close(fgl.flow_noise(x0, eps, sigmas), noisy, rtol=2e-6, atol=2e-6)
    model_pred = torch.randn_like(x0)
    w = compute_loss_weighting_for_sd3(weighting_scheme=weighting or "none", sigmas=sigmas)
    target = eps - x0
    theirs = torch.mean((w.float() * (model_pred.float() - target.float()) ** 2).reshape(n, -1), 1)
    ours = fgl.flow_matching_loss(model_pred, x0, eps, sigmas, weighting=weighting,
                                  reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(
        fgl.flow_matching_loss(model_pred, x0, eps, sigmas, weighting=weighting), theirs.mean(),
        rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_matches_edm_euler_scheduler(device, prediction):
    sch = EDMEulerScheduler(sigma_data=0.5, prediction_type=prediction)
    n = 5
    x0 = torch.randn(n, 4, 8, 8, device=device)
    eps = torch.randn_like(x0)
    sigmas = (torch.randn(n) * 1.2 - 1.2).exp().to(device)
    sb = sigmas.reshape(n, 1, 1, 1)
    noisy = x0 + eps * sb  # EDMEulerScheduler.add_noise at these sigmas
    torch.testing.assert_close(fgl.edm_noise(x0, eps, sigmas), noisy, rtol=2e-6, atol=2e-6)
    model_pred = torch.randn_like(x0)
    denoised = sch.precondition_outputs(noisy, model_pred, sb)
    theirs = torch.mean(((denoised.float() - x0.float()) ** 2).reshape(n, -1), 1)
    ours = fgl.edm_loss(model_pred, x0, eps, sigmas, prediction_type=prediction,
                        reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-6)
