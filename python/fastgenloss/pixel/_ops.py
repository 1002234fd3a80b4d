"""The pixel ops' Python half: fake kernels and autograd formulas of fastgenloss::pixel_fwd and
pixel_bwd (schemas and kernels: csrc/pixel/), and pixel_fwd's eager entry point."""

from __future__ import annotations

import torch

from .._core import (REDUCE_MASKED_MEAN, REDUCE_MEAN, REDUCE_NONE, REDUCE_SUM, REDUCE_WEIGHT_MEAN,
                     acc_dtype, backward_call, entry_point, scaled_grad)

_WEIGHTED_MEANS = (REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN)


@torch.library.register_fake("fastgenloss::pixel_fwd")
def _pixel_fwd_fake(input, target, weight, l1, mse, charbonnier, huber, smooth_l1, eps, delta,
                    beta, reduction, write_grad):
    acc = acc_dtype(input.dtype)
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
    # weight_sum stays differentiable (d sum(w) / dw = 1): second derivatives through the
    # weight-normalized means need it; first-order backward never receives a gradient for it.
    ctx.mark_non_differentiable(grad)
    # Otherwise autograd would allocate an n-sized zero "gradient" for the unused grad output
    # before every backward, doubling the peak memory.
    ctx.set_materialize_grads(False)
    ctx.params = params
    has_buffer = write_grad and reduction != REDUCE_NONE
    # Eager (plain tensors): the gradient the forward already wrote is held outside
    # save_for_backward, so the first backward can scale it in place and hand it to autograd
    # (no second buffer: peak memory stays at one gradient). It has no grad_fn
    # (non-differentiable), so this makes no reference cycle. Traced (torch.compile, AOT) or
    # tensor subclasses: saved normally and scaled out of place; the compiler plans memory.
    eager = type(grad) is torch.Tensor
    ctx.grad_buffer = grad if (has_buffer and eager) else None
    # The loss itself is only needed for d/dweight of the weight-normalized means (a scalar);
    # never keep a reduction="none" output alive for backward.
    ctx.save_for_backward(input, target, weight, loss if reduction in _WEIGHTED_MEANS else None,
                          wsum, grad if (has_buffer and not eager) else None)


def _pixel_fwd_backward(ctx, grad_loss, _grad_grad, grad_wsum):
    input, target, weight, loss, wsum, saved_buf = ctx.saved_tensors
    params = ctx.params
    reduction = params[-1]
    need_input, need_target, need_weight = ctx.needs_input_grad[:3]
    nones = (None,) * (len(params) + 1)
    if (grad_wsum is not None and need_weight and weight is not None
            and reduction in _WEIGHTED_MEANS):
        via_wsum = grad_wsum.to(weight.dtype).expand(weight.shape)
    else:
        via_wsum = None
    if grad_loss is None:  # the loss took no part in what is being differentiated
        return (None, None, via_wsum) + nones
    need_diff = need_input or need_target

    grad_diff = None  # d(loss)/d(input); d/d(target) is its negation
    buf, ctx.grad_buffer = ctx.grad_buffer, None
    # A second backward (retain_graph=True) or a double backward (create_graph=True) recomputes
    # through pixel_bwd instead; it rounds the same way, so the bits agree.
    in_place = buf is not None and not torch.is_grad_enabled()
    if not in_place:
        buf = saved_buf
    if buf is not None and need_diff:
        if reduction in _WEIGHTED_MEANS:
            scale = grad_loss.to(wsum.dtype) / wsum
            if reduction == REDUCE_MASKED_MEAN:
                scale = torch.where(wsum == 0, torch.zeros_like(scale), scale)
        else:
            scale = grad_loss
        grad_diff = scaled_grad(buf, scale, in_place)

    grad_weight = None
    op_diff = need_diff and grad_diff is None
    if op_diff or need_weight:
        args = (grad_loss, input, target, weight,
                loss if loss is not None else wsum.new_empty((0,)), wsum, *params,
                op_diff, need_weight)
        op = torch.ops.fastgenloss.pixel_bwd.default
        gi, gw = backward_call(op, args, grad_loss)
        if op_diff:
            grad_diff = gi
        if need_weight:
            grad_weight = gw

    if via_wsum is not None:
        grad_weight = via_wsum if grad_weight is None else grad_weight + via_wsum
    grad_input = grad_diff if need_input else None
    grad_target = None
    if need_target:
        grad_target = -grad_diff if need_input else grad_diff.neg_()
    return (grad_input, grad_target, grad_weight) + nones


torch.library.register_autograd(
    "fastgenloss::pixel_fwd", _pixel_fwd_backward, setup_context=_pixel_fwd_setup_context)


# ---- pixel_bwd: double backward -------------------------------------------------------------
# Second derivatives are rare in loss training (gradient penalties differentiate a network, not
# the loss), so they are not worth kernels; but they must be right. pixel_bwd's backward
# rebuilds its outputs from differentiable torch ops (the formulas of csrc/pixel/math.h) on detached
# copies of its inputs and differentiates those: exact second derivatives; a third order raises.

def _pixel_terms_torch(d, params):
    """(l(d), dl/dd) from torch ops, term by term as in csrc/pixel/math.h."""
    l1, mse, charbonnier, huber, smooth_l1, eps, delta, beta, _ = params
    ad = d.abs()
    value = torch.zeros_like(d)
    deriv = torch.zeros_like(d)
    if l1:
        value = value + l1 * ad
        deriv = deriv + l1 * torch.sign(d)
    if mse:
        value = value + mse * d * d
        deriv = deriv + mse * 2 * d
    if charbonnier:
        r = torch.sqrt(d * d + eps * eps)
        value = value + charbonnier * r
        deriv = deriv + charbonnier * d / r
    if huber:
        value = value + huber * torch.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
        deriv = deriv + huber * torch.clamp(d, -delta, delta)
    if smooth_l1:
        if beta == 0:
            value = value + smooth_l1 * ad
            deriv = deriv + smooth_l1 * torch.sign(d)
        else:
            value = value + smooth_l1 * torch.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
            deriv = deriv + smooth_l1 * torch.where(ad < beta, d / beta, torch.sign(d))
    return value, deriv


def _pixel_bwd_torch(grad_output, input, target, weight, loss, weight_sum, params, input_grad,
                     weight_grad):
    reduction = params[-1]
    d = input - target
    value, deriv = _pixel_terms_torch(d, params)
    if reduction == REDUCE_NONE or reduction == REDUCE_SUM:
        scale = grad_output
    elif reduction == REDUCE_MEAN:
        scale = grad_output / input.numel()
    else:
        scale = grad_output / weight_sum
        if reduction == REDUCE_MASKED_MEAN:
            scale = torch.where(weight_sum == 0, torch.zeros_like(scale), scale)
    gi = scale * deriv * (weight if weight is not None else 1.0) if input_grad else None
    gw = None
    if weight_grad:
        gw = scale * (value - loss if reduction in _WEIGHTED_MEANS else value)
    return gi, gw


def _pixel_bwd_setup_context(ctx, inputs, output):
    grad_output, input, target, weight, loss, weight_sum, *rest = inputs
    ctx.params = tuple(rest[:9])
    ctx.input_grad, ctx.weight_grad = rest[9], rest[10]
    ctx.save_for_backward(grad_output, input, target, weight, loss, weight_sum)


def _pixel_bwd_backward(ctx, grad_gi, grad_gw):
    n_rest = 11
    needs = ctx.needs_input_grad[:6]
    if not any(needs):
        return (None,) * (6 + n_rest)
    if torch.is_grad_enabled():
        raise NotImplementedError(
            "fastgenloss: third-order derivatives of the pixel losses are not supported "
            "(second order is: differentiate the gradient once, without create_graph)")
    # Partial derivatives only: the rebuilt graph starts at detached copies, and autograd
    # chains the returned gradients into each input's own history (e.g. loss -> pixel_fwd).
    leaves = [None if t is None else t.detach().requires_grad_(need)
              for t, need in zip(ctx.saved_tensors, needs)]
    with torch.enable_grad():
        gi, gw = _pixel_bwd_torch(*leaves, ctx.params, ctx.input_grad, ctx.weight_grad)
        outs, grads = [], []
        for out, g in ((gi, grad_gi), (gw, grad_gw)):
            if out is not None and g is not None and out.requires_grad:
                outs.append(out)
                grads.append(g)
        wanted = [t for t, need in zip(leaves, needs) if need]
        if not outs:
            return (None,) * (6 + n_rest)
        got = torch.autograd.grad(outs, wanted, grads, allow_unused=True)
    it = iter(got)
    return tuple(next(it) if need else None for need in needs) + (None,) * n_rest


torch.library.register_autograd(
    "fastgenloss::pixel_bwd", _pixel_bwd_backward, setup_context=_pixel_bwd_setup_context)


# The eager entry point of pixel_fwd: the same op, setup_context and backward as the
# torch.library registration above, without torch.library's generic per-call argument handling
# (fill_defaults and a redispatch: ~60 us per call, more than the kernel itself below about a
# million elements). Under torch.compile the registered op is used instead (see
# functional.py's _fused), so the compiled graph still holds the op and its registered formula.
PixelFwdFunction = entry_point("pixel_fwd", _pixel_fwd_setup_context, _pixel_fwd_backward,
                                "Eager entry point of pixel_fwd.")
