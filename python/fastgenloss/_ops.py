"""Fake (shape) kernels and autograd formulas of the ops defined in csrc/ops.cpp.

The schemas and the CPU/CUDA kernels live in C++; what torch.compile and autograd need to know
about them is registered here, once per op.
"""

from __future__ import annotations

import torch

# Reduction codes of csrc/include/fastgenloss/pixel_math.h (0..2 are torch's own).
REDUCE_NONE, REDUCE_MEAN, REDUCE_SUM, REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN = range(5)
_WEIGHTED_MEANS = (REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastgenloss::pixel_fwd")
def _pixel_fwd_fake(input, target, weight, l1, mse, charbonnier, huber, smooth_l1, eps, delta,
                    beta, reduction, write_grad):
    acc = _acc_dtype(input.dtype)
    if reduction == REDUCE_NONE:
        loss = torch.empty_like(input)
        grad = input.new_empty((0,))
    else:
        loss = input.new_empty(())
        grad = torch.empty_like(input) if write_grad else input.new_empty((0,))
    wsum = input.new_empty(() if reduction in _WEIGHTED_MEANS else (0,), dtype=acc)
    return loss, grad, wsum


@torch.library.register_fake("fastgenloss::pixel_bwd")
def _pixel_bwd_fake(grad_output, input, target, weight, loss, weight_sum, l1, mse, charbonnier,
                    huber, smooth_l1, eps, delta, beta, reduction, input_grad, weight_grad):
    gi = torch.empty_like(input) if input_grad else input.new_empty((0,))
    gw = torch.empty_like(input) if weight_grad else input.new_empty((0,))
    return gi, gw


def _pixel_fwd_setup_context(ctx, inputs, output):
    input, target, weight, *params, write_grad = inputs
    loss, grad, wsum = output
    reduction = params[-1]
    ctx.mark_non_differentiable(grad, wsum)
    # Otherwise autograd would allocate an n-sized zero "gradient" for the unused grad output
    # before every backward, doubling the peak memory.
    ctx.set_materialize_grads(False)
    ctx.params = params
    # The loss itself is only needed for d/dweight of the weight-normalized means (a scalar);
    # never keep a reduction="none" output alive for backward.
    ctx.save_for_backward(input, target, weight, loss if reduction in _WEIGHTED_MEANS else None,
                          wsum)
    # The gradient the forward already wrote. Held outside save_for_backward so the first
    # backward can scale it in place (no second buffer, so peak memory stays at one gradient);
    # it has no grad_fn (non-differentiable), so this makes no reference cycle.
    ctx.grad_buffer = grad if (write_grad and reduction != REDUCE_NONE) else None


def _pixel_fwd_backward(ctx, grad_loss, _grad_grad, _grad_wsum):
    input, target, weight, loss, wsum = ctx.saved_tensors
    params = ctx.params
    reduction = params[-1]
    need_input, need_target, need_weight = ctx.needs_input_grad[:3]
    nones = (None,) * (len(params) + 1)
    if grad_loss is None:  # the loss took no part in what is being differentiated
        return (None, None, None) + nones
    need_diff = need_input or need_target

    grad_diff = None  # d(loss)/d(input); d/d(target) is its negation
    buf, ctx.grad_buffer = ctx.grad_buffer, None
    # A second backward (retain_graph=True) or a double backward (create_graph=True) recomputes
    # through pixel_bwd instead.
    if buf is not None and need_diff and not torch.is_grad_enabled():
        if reduction in _WEIGHTED_MEANS:
            scale = grad_loss.to(wsum.dtype) / wsum
            if reduction == REDUCE_MASKED_MEAN:
                scale = torch.where(wsum == 0, torch.zeros_like(scale), scale)
            grad_diff = buf.mul_(scale)
        else:
            grad_diff = buf.mul_(grad_loss)

    grad_weight = None
    op_diff = need_diff and grad_diff is None
    if op_diff or need_weight:
        gi, gw = torch.ops.fastgenloss.pixel_bwd(
            grad_loss, input, target, weight,
            loss if loss is not None else wsum.new_empty((0,)), wsum, *params,
            op_diff, need_weight)
        if op_diff:
            grad_diff = gi
        if need_weight:
            grad_weight = gw

    grad_input = grad_diff if need_input else None
    grad_target = None
    if need_target:
        grad_target = -grad_diff if need_input else grad_diff.neg_()
    return (grad_input, grad_target, grad_weight) + nones


torch.library.register_autograd(
    "fastgenloss::pixel_fwd", _pixel_fwd_backward, setup_context=_pixel_fwd_setup_context)
