"""Pixel losses: drop-in replacements for torch.nn.functional's, plus Charbonnier and any
weighted sum of them in one fused pass.

Every function here checks its arguments (errors name the argument, its shape and dtype), then
calls one op, ``torch.ops.fastgenloss.pixel_fwd``; autograd and torch.compile see that op whole.

Weights
    ``weight`` may have any shape that broadcasts to ``input``'s (torch requires the same
    shape), any floating dtype or bool (a mask). It is differentiable.

Weighted ``reduction="mean"``
    Each drop-in function keeps torch's own convention, and torch has two:
    ``l1_loss`` and ``mse_loss`` divide by the sum of the weights, sum(w*l)/sum(w) (all-zero
    weights give NaN, as in torch); ``huber_loss`` divides by the element count,
    sum(w*l)/numel, and so does ``smooth_l1_loss`` (which has no weight in torch).
    ``charbonnier_loss`` and ``pixel_loss`` divide by the element count unless
    ``masked_mean=True``: then they return the *masked mean* sum(w*l)/sum(w) used by inpainting
    losses, with the weights counted after broadcasting (a [N, 1, H, W] mask over C channels
    counts each pixel C times) and 0 when every weight is 0, so an empty hole gives no loss
    and no NaN.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ._ops import (LOSS_HUBER, LOSS_L1, LOSS_L2, LOSS_PSEUDO_HUBER, MIX_ADD_NOISE, MIX_EDM,
                   MIX_FLOW, MIX_VELOCITY, PRED_EPSILON, PRED_FLOW, PRED_SAMPLE, PRED_V,
                   REDUCE_MASKED_MEAN, REDUCE_MEAN, REDUCE_NONE, REDUCE_SUM,
                   REDUCE_WEIGHT_MEAN, SCHED_ALPHAS_CUMPROD, SCHED_EDM, SCHED_FLOW,
                   WEIGHT_COSMAP, WEIGHT_EDM, WEIGHT_INVERSE_SNR, WEIGHT_MIN_SNR,
                   WEIGHT_MIN_SNR_FLOORED, WEIGHT_NONE, WEIGHT_SIGMA_SQRT, WEIGHT_SNR,
                   ContextualFwdFunction, DiffusionFwdFunction, DiffusionMixFunction,
                   GramFunction, PixelFwdFunction, StyleFwdFunction, call_op)
from ._segmentation import (dice_loss, focal_loss, iou_loss, jaccard_loss,  # noqa: F401
                            segmentation_loss, tversky_loss)

__all__ = [
    "add_noise",
    "dice_loss",
    "focal_loss",
    "iou_loss",
    "jaccard_loss",
    "segmentation_loss",
    "tversky_loss",
    "charbonnier_loss",
    "contextual_loss",
    "diffusion_loss",
    "edm_loss",
    "edm_noise",
    "flow_matching_loss",
    "flow_noise",
    "gram_matrix",
    "huber_loss",
    "l1_loss",
    "mse_loss",
    "normalize_images",
    "perceptual_loss",
    "pixel_loss",
    "smooth_l1_loss",
    "snr",
    "style_loss",
    "velocity",
]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_REDUCTIONS = {"none": REDUCE_NONE, "mean": REDUCE_MEAN, "sum": REDUCE_SUM}


def _desc(t: Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def _reduction_code(fn: str, reduction: str, size_average=None, reduce=None) -> int:
    if size_average is not None or reduce is not None:
        # torch's deprecated pair, resolved the way torch resolves it.
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = ("mean" if size_average else "sum") if reduce else "none"
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _REDUCTIONS[reduction]


def _check_pair(fn: str, input, target) -> None:
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: input must be float32, float64, float16 or bfloat16, got {_desc(input)}")
    if target.dtype != input.dtype:
        raise TypeError(
            f"{fn}: target {_desc(target)} and input {_desc(input)} must have the same dtype")
    if target.shape != input.shape:
        raise ValueError(
            f"{fn}: target {_desc(target)} and input {_desc(input)} must have the same shape")
    if target.device != input.device:
        raise ValueError(
            f"{fn}: target {_desc(target)} and input {_desc(input)} must be on the same device")


def _prepare_weight(fn: str, weight, input: Tensor):
    """The weight as input's dtype, expanded (a view, differentiable) to input's shape."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"{fn}: weight must be a torch.Tensor or None, got {type(weight).__name__}")
    if not (weight.is_floating_point() or weight.dtype == torch.bool):
        raise TypeError(f"{fn}: weight must be a floating-point or bool tensor, got {_desc(weight)}")
    if weight.device != input.device:
        raise ValueError(
            f"{fn}: weight {_desc(weight)} and input {_desc(input)} must be on the same device")
    try:
        shape = torch.broadcast_shapes(weight.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(
            f"{fn}: weight {_desc(weight)} must broadcast to input's shape {list(input.shape)}")
    if weight.dtype != input.dtype:
        weight = weight.to(input.dtype)
    return weight.expand(input.shape)


def _fused(fn: str, input: Tensor, target: Tensor, weight, *, l1=0.0, mse=0.0,
           charbonnier=0.0, huber=0.0, smooth_l1=0.0, eps=1e-3, delta=1.0, beta=1.0,
           reduction: int) -> Tensor:
    """Checks shared by every pixel loss, then one call of the fused op."""
    _check_pair(fn, input, target)
    w = _prepare_weight(fn, weight, input)
    if reduction in (REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN) and w is None:
        reduction = REDUCE_MEAN
    # The forward writes the input gradient in the same pass when one will be needed and the
    # loss is a scalar. The weight-normalized means leave a division by sum(w) to backward,
    # which would lose bits in half precision, so they recompute there instead.
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or target.requires_grad or (w is not None and w.requires_grad))
    write_grad = (
        needs_grad
        and reduction != REDUCE_NONE
        and (input.requires_grad or target.requires_grad)
        and (reduction in (REDUCE_MEAN, REDUCE_SUM)
             or input.dtype in (torch.float32, torch.float64))
    )
    args = (input, target, w, float(l1), float(mse), float(charbonnier), float(huber),
            float(smooth_l1), float(eps), float(delta), float(beta), reduction, write_grad)
    loss, _, _ = call_op(torch.ops.fastgenloss.pixel_fwd.default, PixelFwdFunction, args,
                         needs_grad)
    return loss


def _check_positive(fn: str, name: str, value: float, *, allow_zero: bool) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: {name} must be {bound}, got {value}")


def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
            reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean absolute error |input - target|, as ``torch.nn.functional.l1_loss``.

    With ``weight`` and ``reduction="mean"``: sum(w*|d|) / sum(w), as torch.
    """
    code = _reduction_code("l1_loss", reduction, size_average, reduce)
    if weight is not None and code == REDUCE_MEAN:
        code = REDUCE_WEIGHT_MEAN
    return _fused("l1_loss", input, target, weight, l1=1.0, reduction=code)


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean squared error (input - target)^2, as ``torch.nn.functional.mse_loss``.

    With ``weight`` and ``reduction="mean"``: sum(w*d^2) / sum(w), as torch.
    """
    code = _reduction_code("mse_loss", reduction, size_average, reduce)
    if weight is not None and code == REDUCE_MEAN:
        code = REDUCE_WEIGHT_MEAN
    return _fused("mse_loss", input, target, weight, mse=1.0, reduction=code)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """Huber loss, as ``torch.nn.functional.huber_loss``:
    0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta).

    With ``weight`` and ``reduction="mean"``: sum(w*l) / numel, as torch.
    """
    _check_positive("huber_loss", "delta", delta, allow_zero=False)
    code = _reduction_code("huber_loss", reduction)
    return _fused("huber_loss", input, target, weight, huber=1.0, delta=delta, reduction=code)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0,
                   weight: Tensor | None = None) -> Tensor:
    """Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss``:
    0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta; beta = 0 is the L1 loss.

    ``weight`` is an extension (torch has none here); its mean divides by numel, like huber's.
    """
    _check_positive("smooth_l1_loss", "beta", beta, allow_zero=True)
    code = _reduction_code("smooth_l1_loss", reduction, size_average, reduce)
    return _fused("smooth_l1_loss", input, target, weight, smooth_l1=1.0, beta=beta,
                  reduction=code)


def charbonnier_loss(input: Tensor, target: Tensor, eps: float = 1e-3,
                     weight: Tensor | None = None, reduction: str = "mean", *,
                     masked_mean: bool = False) -> Tensor:
    """Charbonnier loss sqrt(d^2 + eps^2), the smooth L1 of image restoration (LapSRN, EDVR).

    ``masked_mean=True`` with a weight divides by sum(w) instead of numel (see module doc).
    """
    _check_positive("charbonnier_loss", "eps", eps, allow_zero=True)
    code = _reduction_code("charbonnier_loss", reduction)
    if masked_mean and code == REDUCE_MEAN:
        code = REDUCE_MASKED_MEAN
    return _fused("charbonnier_loss", input, target, weight, charbonnier=1.0, eps=eps,
                  reduction=code)


def pixel_loss(input: Tensor, target: Tensor, *, l1: float = 1.0, mse: float = 0.0,
               charbonnier: float = 0.0, huber: float = 0.0, smooth_l1: float = 0.0,
               eps: float = 1e-3, delta: float = 1.0, beta: float = 1.0,
               weight: Tensor | None = None, reduction: str = "mean",
               masked_mean: bool = False) -> Tensor:
    """Any weighted sum of the pixel losses in one fused pass (one read of each input):

        l1*|d| + mse*d^2 + charbonnier*sqrt(d^2 + eps^2) + huber*huber_delta(d)
        + smooth_l1*smooth_l1_beta(d),    d = input - target,

    each term as its own function above defines it, times ``weight`` when given, then reduced.
    Equal to the same weighted sum of the separate losses with the same reduction (with a
    weight: of their weighted, numel-normalized forms unless ``masked_mean=True``).
    """
    fn = "pixel_loss"
    coeffs = dict(l1=l1, mse=mse, charbonnier=charbonnier, huber=huber, smooth_l1=smooth_l1)
    for name, value in coeffs.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise TypeError(f"{fn}: {name} must be a finite number, got {value!r}")
    if all(v == 0 for v in coeffs.values()):
        raise ValueError(f"{fn}: every coefficient is 0 ({coeffs}); give at least one term")
    _check_positive(fn, "eps", eps, allow_zero=True)
    if huber:
        _check_positive(fn, "delta", delta, allow_zero=False)
    if smooth_l1:
        _check_positive(fn, "beta", beta, allow_zero=True)
    code = _reduction_code(fn, reduction)
    if masked_mean and code == REDUCE_MEAN:
        code = REDUCE_MASKED_MEAN
    return _fused(fn, input, target, weight, eps=eps, delta=delta, beta=beta, reduction=code,
                  **coeffs)


# ==== diffusion training losses ================================================================
#
# One op computes the whole loss: the target is formed on the fly from sample and noise (never
# materialized), each sample's coefficients and weight come from its timestep or sigma inside
# the kernel, and the per-sample means, weights and batch reduction follow in a tiny second
# stage. All arithmetic is float32 (float64 for float64 data), as diffusers' scripts compute
# the loss after ``.float()``; the loss is float32 (float64), its gradients have the data's dtype.

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
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {_desc(t)}")
    name0, t0 = items[0]
    if t0.dim() == 0:
        raise ValueError(f"{fn}: {name0} must have a batch dim [N, ...], got {_desc(t0)}")
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise ValueError(
                f"{fn}: {name} {_desc(t)} and {name0} {_desc(t0)} must have the same shape")
        if t.device != t0.device:
            raise ValueError(
                f"{fn}: {name} {_desc(t)} and {name0} {_desc(t0)} must be on the same device")
    dtype = t0.dtype
    for _, t in items[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for _, t in items)


def _check_no_grad(fn: str, name: str, t: Tensor) -> None:
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{fn}: {name} {_desc(t)} requires grad, but fastgenloss differentiates the loss "
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
            f"{_desc(timesteps)}")
    if timesteps.shape != (n,):
        raise ValueError(
            f"{fn}: timesteps must have shape [{n}] (one per sample), got {_desc(timesteps)}")
    if alphas_cumprod.dim() != 1 or alphas_cumprod.numel() == 0 or \
            not alphas_cumprod.is_floating_point():
        raise ValueError(
            f"{fn}: alphas_cumprod must be a non-empty 1-D floating tensor [T], got "
            f"{_desc(alphas_cumprod)}")
    for name, t in (("timesteps", timesteps), ("alphas_cumprod", alphas_cumprod)):
        if t.device != device and t.device.type != "cpu":
            raise ValueError(
                f"{fn}: {name} {_desc(t)} cannot be read by kernels on {device}: keep it on "
                f"{device} (or on the CPU, from where it is copied)")
    _check_no_grad(fn, "alphas_cumprod", alphas_cumprod)
    # A range check costs nothing for CPU timesteps; on a GPU it would cost a device
    # synchronization, so there an out-of-range timestep gives its sample a NaN loss instead.
    if timesteps.device.type == "cpu" and timesteps.numel() > 0 and \
            not torch.compiler.is_compiling():
        lo, hi = int(timesteps.min()), int(timesteps.max())
        if lo < 0 or hi >= alphas_cumprod.numel():
            raise ValueError(
                f"{fn}: timesteps must lie in [0, {alphas_cumprod.numel()}) (the length of "
                f"alphas_cumprod), got values in [{lo}, {hi}]")


def _check_sigmas(fn: str, sigmas, n: int, device) -> None:
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"{fn}: sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if not sigmas.is_floating_point():
        raise TypeError(f"{fn}: sigmas must be a floating tensor, got {_desc(sigmas)}")
    if sigmas.numel() != n or (sigmas.dim() > 1 and sigmas.shape[0] != n):
        raise ValueError(
            f"{fn}: sigmas must hold one value per sample ([{n}] or [{n}, 1, ...]), got "
            f"{_desc(sigmas)}")
    if sigmas.device != device and sigmas.device.type != "cpu":
        raise ValueError(
            f"{fn}: sigmas {_desc(sigmas)} cannot be read by kernels on {device}: keep it on "
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
                f"got {_desc(weighting)}")
        if weighting.device != device:
            raise ValueError(
                f"{fn}: weighting {_desc(weighting)} must be on the data's device {device}")
        return WEIGHT_NONE, weighting.reshape(-1)
    return _choice(fn, "weighting", weighting, table), None


def _diffusion_reduction(fn: str, reduction: str) -> int:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _REDUCTIONS[reduction]


def _loss_type(fn: str, loss_type: str, huber_c: float) -> int:
    code = _choice(fn, "loss_type", loss_type, _LOSS_TYPES)
    if code in (LOSS_HUBER, LOSS_PSEUDO_HUBER):
        _check_positive(fn, "huber_c", huber_c, allow_zero=False)
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
    loss, _, _ = call_op(torch.ops.fastgenloss.diffusion_fwd.default, DiffusionFwdFunction,
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
        _check_positive(fn, "snr_gamma", snr_gamma, allow_zero=False)
    ltype = _loss_type(fn, loss_type, huber_c)
    red = _diffusion_reduction(fn, reduction)
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
    red = _diffusion_reduction(fn, reduction)
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
    _check_positive(fn, "sigma_data", sigma_data, allow_zero=False)
    pred = _choice(fn, "prediction_type", prediction_type, _EDM_PREDICTIONS)
    wcode, weight = _weighting(fn, weighting, _EDM_WEIGHTINGS, n, device)
    ltype = _loss_type(fn, loss_type, huber_c)
    red = _diffusion_reduction(fn, reduction)
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


# ==== style: Gram matrices and the style loss ================================================

def _check_features(fn: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {_desc(t)}")
    if t.dim() < 3:
        raise ValueError(
            f"{fn}: {name} must be features [N, C, H, W] (or [N, C, L], [N, C, D, H, W]), got "
            f"{_desc(t)}")


def _gram_scale(features: Tensor, normalize: bool) -> float:
    if not normalize:
        return 1.0
    m = 1
    for s in features.shape[1:]:
        m *= int(s)
    return 1.0 / m if m > 0 else 1.0


def gram_matrix(features: Tensor, *, normalize: bool = True) -> Tensor:
    """G = F F^T / (C*H*W) per sample: [N, C, H, W] (or [N, C, L], [N, C, D, H, W]) -> [N, C, C],
    in the features' dtype. ``normalize=False`` leaves out the 1/(C*H*W). The scale is applied
    inside the matrix product (float accumulation), so a float16 Gram whose unscaled sums would
    overflow stays finite. channels_last features are read in place."""
    _check_features("gram_matrix", "features", features)
    return call_op(torch.ops.fastgenloss.gram.default, GramFunction,
                   (features, _gram_scale(features, normalize)),
                   features.requires_grad and torch.is_grad_enabled())


def style_loss(input_features: Tensor, target_features_or_gram: Tensor, *,
               reduction: str = "mean", target_is_gram: bool | None = None,
               normalize: bool = True) -> Tensor:
    """MSE between the Gram matrices of ``input_features`` and of the target:
    ``mse_loss(gram_matrix(input), gram_matrix(target), reduction=reduction)``.

    The target is features of the input's shape, or a precomputed Gram (the usual case: the
    style image's Grams are computed once) of shape [N, C, C], [1, C, C] or [C, C] (broadcast
    over the batch). Which one it is follows from its shape; ``target_is_gram`` says it
    explicitly, and must when the two readings are both possible ([N, C, C] features with
    L = C). The loss is float32 for float16/bfloat16 features (float64 for float64): squared
    Gram differences overflow float16 long before the Grams do. fwd+bwd is two matrix products (bmm + mse under autograd runs three): the target
    Gram is subtracted inside the first, and the backward uses that D = G_x - G_y is symmetric.
    """
    fn = "style_loss"
    _check_features(fn, "input_features", input_features)
    tgt = target_features_or_gram
    if not isinstance(tgt, Tensor):
        raise TypeError(f"{fn}: target_features_or_gram must be a torch.Tensor, got "
                        f"{type(tgt).__name__}")
    if not tgt.is_floating_point():
        raise TypeError(f"{fn}: target_features_or_gram must be floating, got {_desc(tgt)}")
    if tgt.device != input_features.device:
        raise ValueError(f"{fn}: target_features_or_gram {_desc(tgt)} and input_features "
                         f"{_desc(input_features)} must be on the same device")
    n, c = input_features.shape[0], input_features.shape[1]
    gram_shape = tgt.dim() == 2 and tuple(tgt.shape) == (c, c) or (
        tgt.dim() == 3 and tuple(tgt.shape[1:]) == (c, c) and tgt.shape[0] in (1, n))
    feat_shape = tgt.shape == input_features.shape
    if target_is_gram is None:
        if gram_shape and feat_shape:
            raise ValueError(
                f"{fn}: target {_desc(tgt)} could be features or a Gram for input_features "
                f"{_desc(input_features)}; say which with target_is_gram=True/False")
        if not (gram_shape or feat_shape):
            raise ValueError(
                f"{fn}: target_features_or_gram {_desc(tgt)} is neither features like "
                f"input_features {_desc(input_features)} nor a Gram [{n}, {c}, {c}], "
                f"[1, {c}, {c}] or [{c}, {c}]")
        target_is_gram = gram_shape
    elif target_is_gram and not gram_shape:
        raise ValueError(f"{fn}: target Gram {_desc(tgt)} must be [{n}, {c}, {c}], "
                         f"[1, {c}, {c}] or [{c}, {c}]")
    elif not target_is_gram and not feat_shape:
        raise ValueError(f"{fn}: target features {_desc(tgt)} must have input_features' shape "
                         f"{list(input_features.shape)}")
    red = _diffusion_reduction(fn, reduction)
    args = (input_features, tgt, bool(target_is_gram), _gram_scale(input_features, normalize), red)
    loss, _ = call_op(torch.ops.fastgenloss.style_fwd.default, StyleFwdFunction, args,
                      (input_features.requires_grad or tgt.requires_grad)
                      and torch.is_grad_enabled())
    return loss


# ---- perceptual (feature) losses ------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CRITERIA = {"l1": l1_loss, "mse": mse_loss, "smooth_l1": smooth_l1_loss,
             "charbonnier": charbonnier_loss}


def _criterion(fn: str, criterion):
    if callable(criterion):
        return criterion
    if criterion not in _CRITERIA:
        raise ValueError(f"{fn}: criterion must be one of {', '.join(map(repr, _CRITERIA))} or a "
                         f"callable (input_features, target_features) -> loss, got {criterion!r}")
    return _CRITERIA[criterion]


def _check_images(fn: str, input, target) -> None:
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{fn}: {name} must be a floating tensor, got {_desc(t)}")
    if input.shape != target.shape:
        raise ValueError(f"{fn}: input {_desc(input)} and target {_desc(target)} must have the "
                         f"same shape")
    if input.device != target.device:
        raise ValueError(f"{fn}: input {_desc(input)} and target {_desc(target)} must be on the "
                         f"same device")


def normalize_images(x: Tensor, *, input_range=(0.0, 1.0), mean=_IMAGENET_MEAN,
                     std=_IMAGENET_STD) -> Tensor:
    """(x mapped from ``input_range`` to [0, 1] - mean) / std per channel (ImageNet's by
    default), as one multiply-add: what torchvision's pretrained networks expect."""
    lo, hi = float(input_range[0]), float(input_range[1])
    if not hi > lo:
        raise ValueError(f"normalize_images: input_range must be (low, high) with high > low, got "
                         f"{input_range!r}")
    c = x.shape[1] if x.dim() >= 2 else 0
    if c != len(mean) or c != len(std):
        raise ValueError(f"normalize_images: x {_desc(x)} has {c} channels, mean/std "
                         f"{len(mean)}/{len(std)}")
    shape = (1, c) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / ((hi - lo) * s)
    shift = -lo / ((hi - lo) * s) - m / s
    return torch.addcmul(shift.to(x.device, x.dtype).view(shape), x,
                         scale.to(x.device, x.dtype).view(shape))


def _perceptual(fn, capture, input, target, content_w, style_w, crit, style_target, normalize,
                input_range, reduction="mean"):
    if normalize:
        input = normalize_images(input, input_range=input_range)
        target = normalize_images(target, input_range=input_range)
    need_target = any(w != 0 for w in content_w) or (
        style_target is None and any(w != 0 for w in style_w))
    xs = capture(input)
    ys = None
    if need_target:
        with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
            ys = capture(target)
    grams = None
    if any(w != 0 for w in style_w):
        if style_target is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
                grams = [gram_matrix(y) if w != 0 else None for y, w in zip(ys, style_w)]
        else:
            grams = style_target
            if len(grams) != len(xs):
                raise ValueError(f"{fn}: style_target holds {len(grams)} Grams for {len(xs)} layers")
    total = None
    for k, fx in enumerate(xs):
        terms = []
        if content_w[k] != 0:
            terms.append(content_w[k] * crit(fx, ys[k]))
        if style_w[k] != 0:
            g = grams[k]
            if g is None:
                raise ValueError(f"{fn}: style_target has no Gram for layer {k}")
            terms.append(style_w[k] * style_loss(fx, g, target_is_gram=True))
        for t in terms:
            total = t if total is None else total + t
    if total is None:
        raise ValueError(f"{fn}: every layer weight and style weight is 0: there is no loss")
    return total


def _style_target(fn: str, capture, style_target, style_w, normalize, input_range):
    """Grams per layer from a style image, or a given list of Grams (None where unused)."""
    if style_target is None:
        return None
    if isinstance(style_target, Tensor):
        if normalize:
            style_target = normalize_images(style_target, input_range=input_range)
        with torch.no_grad():
            feats = capture(style_target)
            return [gram_matrix(f) if w != 0 else None for f, w in zip(feats, style_w)]
    return list(style_target)


def perceptual_loss(input: Tensor, target: Tensor, feature_extractor, layers, *,
                    layer_weights=None, criterion="l1", style_weights=None, style_target=None,
                    normalize_input: bool = False, input_range=(0.0, 1.0),
                    trainable_extractor: bool = False) -> Tensor:
    r"""Perceptual (feature) loss through a user's network:
    ``sum_l layer_weights[l] * criterion(phi_l(input), phi_l(target))
    + sum_l style_weights[l] * style_loss(phi_l(input), gram_matrix(phi_l(style)))``.

    ``feature_extractor`` is any ``nn.Module`` (the package downloads nothing: pass e.g.
    ``torchvision.models.vgg19(weights=...).features``). ``layers`` names the activations
    phi_l: for an ``nn.Sequential`` (or a model with a ``.features`` Sequential, as
    torchvision's VGG) by index, child name or VGG-style name (``"relu1_2"``, ``"conv3_1"``,
    ``"pool4"``: conv/bn/relu{block}_{i}, pool{block}), and the network runs only up to the last
    of them; for any other module by ``named_modules`` name (captured by forward hooks; the
    forward stops once they have all run) or index into its children.

    ``layer_weights`` / ``style_weights``: None (content 1 per layer / no style), a number for
    every layer, one per layer, or a dict keyed by layer (missing layers 0). ``criterion``:
    ``"l1"``, ``"mse"``, ``"smooth_l1"``, ``"charbonnier"`` (the fused pixel kernels) or a
    callable. Style Grams come from ``target`` unless ``style_target`` is a style image (Grams
    computed without grad) or a list of Grams per layer (see ``PerceptualLoss.style_grams``).
    ``normalize_input``: map ``input_range`` to [0, 1] and apply ImageNet's mean/std first.
    Gradients reach ``input`` (and ``target`` if it requires grad), never the network's
    parameters unless ``trainable_extractor=True``; its train/eval mode is left as it is (the
    module :class:`fastgenloss.nn.PerceptualLoss` keeps it in eval mode).
    """
    from ._features import FeatureCapture, frozen, per_layer

    fn = "perceptual_loss"
    _check_images(fn, input, target)
    capture = FeatureCapture(feature_extractor, layers, fn=fn)
    names = capture.layer_names()
    content_w = per_layer(fn, "layer_weights", layer_weights, capture.layers, names, 1.0)
    style_w = per_layer(fn, "style_weights", style_weights, capture.layers, names, 0.0)
    crit = _criterion(fn, criterion)
    ctx = contextlib.nullcontext() if trainable_extractor else frozen(feature_extractor)
    with ctx:
        grams = _style_target(fn, capture, style_target, style_w, normalize_input, input_range)
        return _perceptual(fn, capture, input, target, content_w, style_w, crit, grams,
                           normalize_input, input_range)


_CONTEXTUAL_CHUNK_ROWS = 0  # x positions per block of similarities (0: ~1M per block); for tests


def contextual_loss(x_features: Tensor, y_features: Tensor, *, band_width: float = 0.5) -> Tensor:
    r"""The contextual loss of Mechrez et al. (ECCV 2018) between two sets of features
    [N, C, H, W] (or [N, C, L]; the positions of x and y may differ): y's channel mean is
    subtracted from both, each position's feature vector is L2-normalized, d_ij = 1 - cosine
    similarity, d~_ij = d_ij / (min_k d_ik + 1e-5), w = exp((1 - d~) / band_width),
    CX_ij = w_ij / sum_k w_ik, and the loss is mean_n -log(mean_j max_i CX_ij + 1e-5): the
    common PyTorch port's definition, value and gradient.

    No [N, P, Q] matrix is ever held (autograd through the port keeps five from forward to
    backward): both passes walk the similarities in blocks of x positions (~1M similarities a
    block), backward recomputing each block with one matrix product, so memory grows with
    P + Q, not P Q. The loss is float32 for float16/bfloat16 features, which are computed in
    float32."""
    fn = "contextual_loss"
    _check_features(fn, "x_features", x_features)
    _check_features(fn, "y_features", y_features)
    if y_features.dim() != x_features.dim() or y_features.shape[:2] != x_features.shape[:2]:
        raise ValueError(f"{fn}: x_features {_desc(x_features)} and y_features "
                         f"{_desc(y_features)} must have the same batch size and channels "
                         f"(their positions may differ)")
    if x_features.device != y_features.device:
        raise ValueError(f"{fn}: x_features {_desc(x_features)} and y_features "
                         f"{_desc(y_features)} must be on the same device")
    _check_positive(fn, "band_width", band_width, allow_zero=False)
    if band_width == float("inf"):
        raise ValueError(f"{fn}: band_width must be finite, got {band_width}")
    if x_features.shape[0] > 0 and (x_features.numel() == 0 or y_features.numel() == 0):
        raise ValueError(f"{fn}: x_features {_desc(x_features)} and y_features "
                         f"{_desc(y_features)} need at least one channel and one position")
    loss, _, _ = call_op(torch.ops.fastgenloss.contextual_fwd.default, ContextualFwdFunction,
                         (x_features, y_features, float(band_width), _CONTEXTUAL_CHUNK_ROWS),
                         (x_features.requires_grad or y_features.requires_grad)
                         and torch.is_grad_enabled())
    return loss
