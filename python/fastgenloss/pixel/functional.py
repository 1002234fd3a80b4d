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

import torch
from torch import Tensor

from .._core import (FLOAT_DTYPES, HALF_DTYPES, REDUCE_MASKED_MEAN, REDUCE_MEAN, REDUCE_NONE,
                     REDUCE_SUM, REDUCE_WEIGHT_MEAN, call_op, check_positive, compute_dtype, desc,
                     reduction_code)
from . import _ops  # noqa: F401  (registers the fake kernels and pixel_bwd's formula)

__all__ = ["charbonnier_loss", "huber_loss", "l1_loss", "mse_loss", "pixel_loss", "smooth_l1_loss"]


def _check_pair(fn: str, input, target) -> None:
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {desc(t)}")
    if target.shape != input.shape:
        raise ValueError(
            f"{fn}: target {desc(target)} and input {desc(input)} must have the same shape")
    if target.device != input.device:
        raise ValueError(
            f"{fn}: target {desc(target)} and input {desc(input)} must be on the same device")


def _check_weight(fn: str, weight, input: Tensor) -> None:
    if not isinstance(weight, Tensor):
        raise TypeError(f"{fn}: weight must be a torch.Tensor or None, got {type(weight).__name__}")
    if not (weight.is_floating_point() or weight.dtype == torch.bool):
        raise TypeError(f"{fn}: weight must be a floating-point or bool tensor, got {desc(weight)}")
    if weight.device != input.device:
        raise ValueError(
            f"{fn}: weight {desc(weight)} and input {desc(input)} must be on the same device")
    try:
        shape = torch.broadcast_shapes(weight.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(
            f"{fn}: weight {desc(weight)} must broadcast to input's shape {list(input.shape)}")


def _operands(fn: str, input, target, weight):
    """input, target and weight (expanded, a differentiable view, to input's shape) in the
    dtype the loss computes in: torch's promotion of the three (a bool mask does not take part)
    and float32 for half precision under autocast (_core.compute_dtype)."""
    _check_pair(fn, input, target)
    if weight is not None:
        _check_weight(fn, weight, input)
    dtype = input.dtype
    if target.dtype is not dtype or (weight is not None and weight.dtype is not dtype) \
            or dtype in HALF_DTYPES:
        floats = (input, target) if weight is None or weight.dtype == torch.bool \
            else (input, target, weight)
        dtype = compute_dtype(*floats)
        input = input if input.dtype is dtype else input.to(dtype)
        target = target if target.dtype is dtype else target.to(dtype)
    if weight is not None:
        weight = (weight if weight.dtype is dtype else weight.to(dtype)).expand(input.shape)
    return input, target, weight


def _fused(fn: str, input: Tensor, target: Tensor, weight, *, l1=0.0, mse=0.0,
           charbonnier=0.0, huber=0.0, smooth_l1=0.0, eps=1e-3, delta=1.0, beta=1.0,
           reduction: int) -> Tensor:
    """Checks shared by every pixel loss, then one call of the fused op."""
    input, target, w = _operands(fn, input, target, weight)
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
    loss, _, _ = call_op(torch.ops.fastgenloss.pixel_fwd.default, None, args,
                         needs_grad)
    return loss



def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
            reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean absolute error |input - target|, as ``torch.nn.functional.l1_loss``.

    With ``weight`` and ``reduction="mean"``: sum(w*|d|) / sum(w), as torch.
    """
    code = reduction_code("l1_loss", reduction, size_average, reduce)
    if weight is not None and code == REDUCE_MEAN:
        code = REDUCE_WEIGHT_MEAN
    return _fused("l1_loss", input, target, weight, l1=1.0, reduction=code)


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean", weight: Tensor | None = None) -> Tensor:
    """Mean squared error (input - target)^2, as ``torch.nn.functional.mse_loss``.

    With ``weight`` and ``reduction="mean"``: sum(w*d^2) / sum(w), as torch.
    """
    code = reduction_code("mse_loss", reduction, size_average, reduce)
    if weight is not None and code == REDUCE_MEAN:
        code = REDUCE_WEIGHT_MEAN
    return _fused("mse_loss", input, target, weight, mse=1.0, reduction=code)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """Huber loss, as ``torch.nn.functional.huber_loss``:
    0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta).

    With ``weight`` and ``reduction="mean"``: sum(w*l) / numel, as torch.
    """
    check_positive("huber_loss", "delta", delta, allow_zero=False)
    code = reduction_code("huber_loss", reduction)
    return _fused("huber_loss", input, target, weight, huber=1.0, delta=delta, reduction=code)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0,
                   weight: Tensor | None = None) -> Tensor:
    """Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss``:
    0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta; beta = 0 is the L1 loss.

    ``weight`` is an extension (torch has none here); its mean divides by numel, like huber's.
    """
    check_positive("smooth_l1_loss", "beta", beta, allow_zero=True)
    code = reduction_code("smooth_l1_loss", reduction, size_average, reduce)
    return _fused("smooth_l1_loss", input, target, weight, smooth_l1=1.0, beta=beta,
                  reduction=code)


def charbonnier_loss(input: Tensor, target: Tensor, eps: float = 1e-3,
                     weight: Tensor | None = None, reduction: str = "mean", *,
                     masked_mean: bool = False) -> Tensor:
    """Charbonnier loss sqrt(d^2 + eps^2), the smooth L1 of image restoration (LapSRN, EDVR).

    ``masked_mean=True`` with a weight divides by sum(w) instead of numel (see module doc).
    """
    check_positive("charbonnier_loss", "eps", eps, allow_zero=True)
    code = reduction_code("charbonnier_loss", reduction)
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
    check_positive(fn, "eps", eps, allow_zero=True)
    if huber:
        check_positive(fn, "delta", delta, allow_zero=False)
    if smooth_l1:
        check_positive(fn, "beta", beta, allow_zero=True)
    code = reduction_code(fn, reduction)
    if masked_mean and code == REDUCE_MEAN:
        code = REDUCE_MASKED_MEAN
    return _fused(fn, input, target, weight, eps=eps, delta=delta, beta=beta, reduction=code,
                  **coeffs)
