"""Diffusion training losses and the forward noising they need.

One op computes the whole loss: the target is formed on the fly from sample and noise (never
materialized), each sample's coefficients and weight come from its timestep or sigma inside
the kernel, and the per-sample means, weights and batch reduction follow in a tiny second
stage. All arithmetic is float32 (float64 for float64 data), as diffusers' scripts compute
the loss after ``.float()``; the loss is float32 (float64), its gradients have the data's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._core import (FLOAT_DTYPES, REDUCE_NONE, call_op, check_positive, desc, host_readable,
                     reduction_code)
from ._ops import (LOSS_HUBER, LOSS_L1, LOSS_L2, LOSS_PSEUDO_HUBER, MIX_ADD_NOISE, MIX_EDM,
                   MIX_FLOW, MIX_VELOCITY, PRED_EPSILON, PRED_FLOW, PRED_SAMPLE, PRED_V,
                   SCHED_ALPHAS_CUMPROD, SCHED_EDM, SCHED_FLOW, WEIGHT_COSMAP, WEIGHT_EDM,
                   WEIGHT_INVERSE_SNR, WEIGHT_MIN_SNR, WEIGHT_MIN_SNR_FLOORED, WEIGHT_NONE,
                   WEIGHT_SIGMA_SQRT, WEIGHT_SNR, DiffusionMixFunction)

__all__ = ["add_noise", "diffusion_loss", "edm_loss", "edm_noise", "flow_matching_loss",
           "flow_noise", "snr", "velocity"]

_PREDICTIONS = {"epsilon": PRED_EPSILON, "v_prediction": PRED_V, "sample": PRED_SAMPLE}
_EDM_PREDICTIONS = {"epsilon": PRED_EPSILON, "v_prediction": PRED_V}
_DDPM_WEIGHTINGS = {None: WEIGHT_NONE, "min_snr": WEIGHT_MIN_SNR,
                    "min_snr_floored": WEIGHT_MIN_SNR_FLOORED, "snr": WEIGHT_SNR,
                    "inverse_snr": WEIGHT_INVERSE_SNR}
_FLOW_WEIGHTINGS = {None: WEIGHT_NONE, "none": WEIGHT_NONE, "sigma_sqrt": WEIGHT_SIGMA_SQRT,
                    "cosmap": WEIGHT_COSMAP}
_EDM_WEIGHTINGS = {None: WEIGHT_NONE, "edm": WEIGHT_EDM, "sigma_sqrt": WEIGHT_SIGMA_SQRT}
_LOSS_TYPES = {"l2": LOSS_L2, "l1": LOSS_L1, "huber": LOSS_HUBER,
               "pseudo_huber": LOSS_PSEUDO_HUBER}
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_data(fn: str, **tensors) -> tuple:
    """model_output / sample / noise: tensors of one shape and device with a batch dim, cast
    to their common floating dtype (the kernels read one dtype)."""
    items = list(tensors.items())
    for name, t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {desc(t)}")
    name0, t0 = items[0]
    if t0.dim() == 0:
        raise ValueError(f"{fn}: {name0} must have a batch dim [N, ...], got {desc(t0)}")
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise ValueError(
                f"{fn}: {name} {desc(t)} and {name0} {desc(t0)} must have the same shape")
        if t.device != t0.device:
            raise ValueError(
                f"{fn}: {name} {desc(t)} and {name0} {desc(t0)} must be on the same device")
    dtype = t0.dtype
    for _, t in items[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for _, t in items)


def _check_no_grad(fn: str, name: str, t: Tensor) -> None:
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{fn}: {name} {desc(t)} requires grad, but fastgenloss differentiates the loss "
            f"only with respect to the data, not the noise schedule; pass {name}.detach()")


def _check_timesteps(fn: str, timesteps, alphas_cumprod, n: int, device) -> None:
    if not isinstance(timesteps, Tensor):
        raise TypeError(f"{fn}: timesteps must be a torch.Tensor, got {type(timesteps).__name__}")
    if not isinstance(alphas_cumprod, Tensor):
        raise TypeError(
            f"{fn}: alphas_cumprod must be a torch.Tensor, got {type(alphas_cumprod).__name__}")
    if timesteps.dtype not in _INT_DTYPES:
        raise TypeError(
            f"{fn}: timesteps must be an integer tensor (indices into alphas_cumprod), got "
            f"{desc(timesteps)}")
    if timesteps.shape != (n,):
        raise ValueError(
            f"{fn}: timesteps must have shape [{n}] (one per sample), got {desc(timesteps)}")
    if alphas_cumprod.dim() != 1 or alphas_cumprod.numel() == 0 or \
            not alphas_cumprod.is_floating_point():
        raise ValueError(
            f"{fn}: alphas_cumprod must be a non-empty 1-D floating tensor [T], got "
            f"{desc(alphas_cumprod)}")
    for name, t in (("timesteps", timesteps), ("alphas_cumprod", alphas_cumprod)):
        if t.device != device and t.device.type != "cpu":
            raise ValueError(
                f"{fn}: {name} {desc(t)} cannot be read by kernels on {device}: keep it on "
                f"{device} (or on the CPU, from where it is copied)")
    _check_no_grad(fn, "alphas_cumprod", alphas_cumprod)
    # A range check costs nothing for CPU timesteps; on a GPU it would cost a device
    # synchronization, so there an out-of-range timestep gives its sample a NaN loss instead.
    if timesteps.device.type == "cpu" and timesteps.numel() > 0 and host_readable(timesteps):
        lo, hi = int(timesteps.min()), int(timesteps.max())
        if lo < 0 or hi >= alphas_cumprod.numel():
            raise ValueError(
                f"{fn}: timesteps must lie in [0, {alphas_cumprod.numel()}) (the length of "
                f"alphas_cumprod), got values in [{lo}, {hi}]")


def _check_sigmas(fn: str, sigmas, n: int, device) -> None:
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"{fn}: sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if not sigmas.is_floating_point():
        raise TypeError(f"{fn}: sigmas must be a floating tensor, got {desc(sigmas)}")
    if sigmas.numel() != n or (sigmas.dim() > 1 and sigmas.shape[0] != n):
        raise ValueError(
            f"{fn}: sigmas must hold one value per sample ([{n}] or [{n}, 1, ...]), got "
            f"{desc(sigmas)}")
    if sigmas.device != device and sigmas.device.type != "cpu":
        raise ValueError(
            f"{fn}: sigmas {desc(sigmas)} cannot be read by kernels on {device}: keep it on "
            f"{device} (or on the CPU, from where it is copied)")
    _check_no_grad(fn, "sigmas", sigmas)


def _per_sample(sigmas: Tensor) -> Tensor:
    """[N] view of sigmas given as [N] or broadcastable [N, 1, ...] (as diffusers' get_sigmas)."""
    return sigmas.reshape(-1)


def _choice(fn: str, name: str, value, table: dict):
    if isinstance(value, Tensor) or value not in table:
        names = ", ".join(repr(k) for k in table)
        raise ValueError(f"{fn}: {name} must be one of {names}, got {value!r}")
    return table[value]


def _weighting(fn: str, weighting, table: dict, n: int, device):
    """(weighting code, per-sample weight tensor or None)."""
    if isinstance(weighting, Tensor):
        if not weighting.is_floating_point() or weighting.numel() != n or \
                (weighting.dim() > 1 and weighting.shape[0] != n):
            raise ValueError(
                f"{fn}: a weighting tensor must be floating with one weight per sample ([{n}]), "
                f"got {desc(weighting)}")
        if weighting.device != device:
            raise ValueError(
                f"{fn}: weighting {desc(weighting)} must be on the data's device {device}")
        return WEIGHT_NONE, weighting.reshape(-1)
    return _choice(fn, "weighting", weighting, table), None


def _loss_type(fn: str, loss_type: str, huber_c: float) -> int:
    code = _choice(fn, "loss_type", loss_type, _LOSS_TYPES)
    if code in (LOSS_HUBER, LOSS_PSEUDO_HUBER):
        check_positive(fn, "huber_c", huber_c, allow_zero=False)
    return code


def _diffusion_call(model_output, sample, noise, t, table, weight, schedule, prediction,
                    weighting, loss_type, snr_gamma, huber_c, sigma_data, reduction) -> Tensor:
    needs_grad = torch.is_grad_enabled() and (
        model_output.requires_grad or sample.requires_grad or noise.requires_grad
        or (weight is not None and weight.requires_grad))
    # The forward writes the model_output gradient in the same pass when it will be needed and
    # the loss is a scalar: backward then only scales it by grad_output.
    write_grad = needs_grad and model_output.requires_grad and reduction != REDUCE_NONE
    args = (model_output, sample, noise, t, table, weight, schedule, prediction, weighting,
            loss_type, float(snr_gamma), float(huber_c), float(sigma_data), reduction,
            write_grad)
    loss, _, _ = call_op(torch.ops.fastgenloss.diffusion_fwd.default, None,
                         args, needs_grad)
    return loss


def diffusion_loss(model_output: Tensor, sample: Tensor, noise: Tensor, timesteps: Tensor,
                   alphas_cumprod: Tensor, *, prediction_type: str = "epsilon",
                   weighting=None, snr_gamma: float = 5.0, loss_type: str = "l2",
                   huber_c: float = 0.1, reduction: str = "mean") -> Tensor:
    r"""The noise-prediction loss of a DDPM-style training step, fused into one pass.

    With ab = ``alphas_cumprod[timesteps]`` per sample and x_t = sqrt(ab) x0 + sqrt(1-ab) eps
    the model's input (see :func:`add_noise`), the target is

    - ``"epsilon"``: eps (``noise``);
    - ``"v_prediction"``: v = sqrt(ab) eps - sqrt(1-ab) x0 (as ``DDPMScheduler.get_velocity``);
    - ``"sample"``: x0 (``sample``).

    The target is formed on the fly, never materialized. Per sample n:
    ``L_n = w_n * mean over the non-batch dims of rho(model_output - target)``, then
    ``reduction`` over the batch ("none" returns the [N] per-sample losses). rho by
    ``loss_type``: ``"l2"`` r^2 (``F.mse_loss``), ``"l1"`` |r|, ``"huber"`` torch's
    ``F.huber_loss`` with ``delta=huber_c``, ``"pseudo_huber"`` 2c(sqrt(r^2 + c^2) - c) with
    c = ``huber_c`` (diffusers' ``conditional_loss(loss_type="huber")``, default c = 0.1).

    ``weighting`` (w_n), with SNR = ab / (1 - ab) (diffusers' ``training_utils.compute_snr``):

    - ``None``: 1.
    - ``"min_snr"``: Min-SNR-gamma (Hang et al. 2023, arXiv:2303.09556) exactly as diffusers'
      ``examples/text_to_image/train_text_to_image.py`` applies it: min(SNR, gamma) / SNR for
      epsilon, min(SNR, gamma) / (SNR + 1) for v_prediction, min(SNR, gamma) for sample.
    - ``"min_snr_floored"``: the variant of diffusers' ``examples/dreambooth/
      train_dreambooth.py``: min(SNR, gamma) / SNR, plus 1 for v_prediction ("floored to an SNR
      weight of one").
    - ``"snr"``: SNR (an epsilon loss weighted so that it equals the x0 loss).
    - ``"inverse_snr"``: 1 / SNR (an x0 loss weighted like the epsilon loss), with SNR taken as
      at least 1e-6 so that a zero-terminal-SNR step gets 1e6 instead of infinity.
    - a float tensor [N]: per-sample weights, used as given (differentiable).

    Zero terminal SNR (ab = 0 at the last step, Lin et al. 2023): the scripts' min(SNR, gamma)
    / SNR is 0/0 = NaN there; here it is its limit, 1, so losses and gradients stay finite.

    ``timesteps``: integer [N]; ``alphas_cumprod``: float [T], on the data's device or the CPU
    (then copied; keep it on the device to avoid the copy). CPU timesteps are range-checked;
    GPU timesteps are not (that would synchronize the device): one outside [0, T) makes its
    sample's loss NaN, never an out-of-bounds read. Gradients flow to ``model_output`` and, when
    they require grad, to ``sample``, ``noise`` and a weighting tensor.
    """
    fn = "diffusion_loss"
    model_output, sample, noise = _check_data(fn, model_output=model_output, sample=sample,
                                              noise=noise)
    n, device = model_output.shape[0], model_output.device
    _check_timesteps(fn, timesteps, alphas_cumprod, n, device)
    pred = _choice(fn, "prediction_type", prediction_type, _PREDICTIONS)
    wcode, weight = _weighting(fn, weighting, _DDPM_WEIGHTINGS, n, device)
    if wcode in (WEIGHT_MIN_SNR, WEIGHT_MIN_SNR_FLOORED):
        check_positive(fn, "snr_gamma", snr_gamma, allow_zero=False)
    ltype = _loss_type(fn, loss_type, huber_c)
    red = reduction_code(fn, reduction)
    return _diffusion_call(model_output, sample, noise, timesteps, alphas_cumprod, weight,
                           SCHED_ALPHAS_CUMPROD, pred, wcode, ltype, snr_gamma, huber_c, 0.5, red)


def flow_matching_loss(model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor, *,
                       weighting=None, loss_type: str = "l2", huber_c: float = 0.1,
                       reduction: str = "mean") -> Tensor:
    r"""Rectified-flow (flow matching) loss as in diffusers' SD3 / Flux training scripts.

    The model's input is x_s = (1 - s) x0 + s eps (see :func:`flow_noise`), the target the
    velocity eps - x0; per sample ``w_n * mean(rho(model_output - (noise - sample)))``, then
    ``reduction``. ``sigmas``: float, one per sample ([N], or [N, 1, ...] as the scripts'
    ``get_sigmas`` returns). ``weighting`` as diffusers' ``training_utils.
    compute_loss_weighting_for_sd3``: ``None`` (1), ``"sigma_sqrt"`` (s^-2), ``"cosmap"``
    (2 / (pi (1 - 2s + 2s^2))), or a float tensor [N]. ``loss_type``/``huber_c`` as in
    :func:`diffusion_loss`.
    """
    fn = "flow_matching_loss"
    model_output, sample, noise = _check_data(fn, model_output=model_output, sample=sample,
                                              noise=noise)
    n, device = model_output.shape[0], model_output.device
    _check_sigmas(fn, sigmas, n, device)
    wcode, weight = _weighting(fn, weighting, _FLOW_WEIGHTINGS, n, device)
    ltype = _loss_type(fn, loss_type, huber_c)
    red = reduction_code(fn, reduction)
    return _diffusion_call(model_output, sample, noise, _per_sample(sigmas), None, weight,
                           SCHED_FLOW, PRED_FLOW, wcode, ltype, 5.0, huber_c, 0.5, red)


def edm_loss(model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor, *,
             sigma_data: float = 0.5, prediction_type: str = "epsilon", weighting=None,
             loss_type: str = "l2", huber_c: float = 0.1, reduction: str = "mean") -> Tensor:
    r"""EDM loss (Karras et al. 2022) with the preconditioning of diffusers'
    ``EDMEulerScheduler``: the model sees x = x0 + s eps (see :func:`edm_noise`), its raw
    output F becomes the denoised D = c_skip x + c_out F with c_skip = sd^2 / (s^2 + sd^2),
    c_out = s sd / sqrt(s^2 + sd^2) (negated for ``"v_prediction"``), sd = ``sigma_data``, and
    the loss compares D with x0: per sample ``w_n * mean(rho(D - sample))``, then
    ``reduction``. ``weighting``: ``None`` (1, diffusers' EDM training path), ``"edm"`` (the
    paper's lambda(s) = (s^2 + sd^2) / (s sd)^2), ``"sigma_sqrt"`` (s^-2, diffusers' path for
    non-EDM schedulers), or a float tensor [N]. ``model_output`` is F, before preconditioning.
    """
    fn = "edm_loss"
    model_output, sample, noise = _check_data(fn, model_output=model_output, sample=sample,
                                              noise=noise)
    n, device = model_output.shape[0], model_output.device
    _check_sigmas(fn, sigmas, n, device)
    check_positive(fn, "sigma_data", sigma_data, allow_zero=False)
    pred = _choice(fn, "prediction_type", prediction_type, _EDM_PREDICTIONS)
    wcode, weight = _weighting(fn, weighting, _EDM_WEIGHTINGS, n, device)
    ltype = _loss_type(fn, loss_type, huber_c)
    red = reduction_code(fn, reduction)
    return _diffusion_call(model_output, sample, noise, _per_sample(sigmas), None, weight,
                           SCHED_EDM, pred, wcode, ltype, 5.0, huber_c, sigma_data, red)


def _mix(fn: str, sample, noise, t, table, kind: int) -> Tensor:
    sample, noise = _check_data(fn, sample=sample, noise=noise)
    n, device = sample.shape[0], sample.device
    if kind in (MIX_ADD_NOISE, MIX_VELOCITY):
        _check_timesteps(fn, t, table, n, device)
    else:
        _check_sigmas(fn, t, n, device)
        t = _per_sample(t)
    args = (sample, noise, t, table, kind)
    return call_op(torch.ops.fastgenloss.diffusion_mix.default, DiffusionMixFunction, args,
                   torch.is_grad_enabled() and (sample.requires_grad or noise.requires_grad))


def add_noise(sample: Tensor, noise: Tensor, timesteps: Tensor,
              alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(ab) sample + sqrt(1 - ab) noise, ab = alphas_cumprod[timesteps] per sample:
    ``DDPMScheduler.add_noise`` in one pass (one read of each input, one write). Coefficients
    are computed in double and applied in float32 (diffusers rounds them to the data's dtype
    first, so half-precision results differ from it by that rounding)."""
    return _mix("add_noise", sample, noise, timesteps, alphas_cumprod, MIX_ADD_NOISE)


def velocity(sample: Tensor, noise: Tensor, timesteps: Tensor,
             alphas_cumprod: Tensor) -> Tensor:
    """v = sqrt(ab) noise - sqrt(1 - ab) sample: ``DDPMScheduler.get_velocity`` in one pass."""
    return _mix("velocity", sample, noise, timesteps, alphas_cumprod, MIX_VELOCITY)


def flow_noise(sample: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x_s = (1 - s) sample + s noise, the rectified-flow model input of diffusers' SD3 script."""
    return _mix("flow_noise", sample, noise, sigmas, None, MIX_FLOW)


def edm_noise(sample: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x = sample + s noise, ``EDMEulerScheduler.add_noise``."""
    return _mix("edm_noise", sample, noise, sigmas, None, MIX_EDM)


def snr(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """SNR(t) = ab / (1 - ab), float32 [N] on timesteps' device: diffusers'
    ``training_utils.compute_snr`` (0 at a zero-terminal-SNR step)."""
    fn = "snr"
    if not isinstance(timesteps, Tensor):
        raise TypeError(f"{fn}: timesteps must be a torch.Tensor, got {type(timesteps).__name__}")
    _check_timesteps(fn, timesteps, alphas_cumprod, timesteps.numel(), timesteps.device)
    ab = alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps]
    return (ab / (1.0 - ab)).to(torch.float32)
