"""The style family's ops, Python half: fake kernels and autograd formulas of fastgenloss::gram,
gram_bwd, style_fwd, style_bwd, contextual_fwd and contextual_bwd (schemas and kernels:
csrc/style/), and their eager entry points."""

from __future__ import annotations

import torch

from .._core import REDUCE_NONE, acc_dtype, backward_call, entry_point

@torch.library.register_fake("fastgenloss::gram")
def _gram_fake(features, scale):
    n, c = features.shape[0], features.shape[1]
    return features.new_empty((n, c, c))


@torch.library.register_fake("fastgenloss::gram_bwd")
def _gram_bwd_fake(grad, features, scale):
    return features.new_empty(features.shape)


@torch.library.register_fake("fastgenloss::style_fwd")
def _style_fwd_fake(input, target, target_is_gram, scale, reduction):
    n, c = input.shape[0], input.shape[1]
    diff = input.new_empty((n, c, c), dtype=acc_dtype(input.dtype))
    loss = input.new_empty((n, c, c) if reduction == REDUCE_NONE else (),
                           dtype=acc_dtype(input.dtype))
    return loss, diff


@torch.library.register_fake("fastgenloss::style_bwd")
def _style_bwd_fake(grad_output, diff, input, target, target_is_gram, scale, reduction,
                    input_grad, target_grad):
    gi = input.new_empty(input.shape) if input_grad else input.new_empty((0,))
    gt = target.new_empty(target.shape) if target_grad else input.new_empty((0,))
    return gi, gt


def _gram_setup_context(ctx, inputs, output):
    features, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(features)


def _gram_backward(ctx, grad):
    (features,) = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None
    op = torch.ops.fastgenloss.gram_bwd.default
    args = (grad, features, ctx.scale)
    return (backward_call(op, args, grad)), None


torch.library.register_autograd("fastgenloss::gram", _gram_backward,
                                setup_context=_gram_setup_context)
# gram_bwd, style_bwd and contextual_bwd are differentiated no further (csrc/style/).


def _style_setup_context(ctx, inputs, output):
    input, target, target_is_gram, scale, reduction = inputs
    _loss, diff = output
    ctx.mark_non_differentiable(diff)
    ctx.set_materialize_grads(False)
    ctx.params = (target_is_gram, scale, reduction)
    ctx.save_for_backward(diff, input, target)


def _style_backward(ctx, grad_loss, _grad_diff):
    diff, input, target = ctx.saved_tensors
    need_i, need_t = ctx.needs_input_grad[:2]
    if grad_loss is None or not (need_i or need_t):
        return None, None, None, None, None
    args = (grad_loss, diff, input, target, *ctx.params, need_i, need_t)
    op = torch.ops.fastgenloss.style_bwd.default
    gi, gt = backward_call(op, args, grad_loss)
    return (gi if need_i else None), (gt if need_t else None), None, None, None


torch.library.register_autograd("fastgenloss::style_fwd", _style_backward,
                                setup_context=_style_setup_context)
GramFunction = entry_point("gram", _gram_setup_context, _gram_backward,
                            "Eager entry point of gram.")
StyleFwdFunction = entry_point("style_fwd", _style_setup_context, _style_backward,
                                "Eager entry point of style_fwd.")


# ---- contextual loss ------------------------------------------------------------------------

@torch.library.register_fake("fastgenloss::contextual_fwd")
def _contextual_fwd_fake(x, y, band_width, chunk_rows):
    acc = acc_dtype(x.dtype)
    n = x.shape[0]
    q = 1
    for d in y.shape[2:]:
        q = q * d
    return (x.new_empty((), dtype=acc), x.new_empty((n, q), dtype=acc),
            x.new_empty((n, q), dtype=torch.int64))


@torch.library.register_fake("fastgenloss::contextual_bwd")
def _contextual_bwd_fake(grad_output, x, y, cmax, istar, band_width, chunk_rows, x_grad, y_grad):
    gx = x.new_empty(x.shape) if x_grad else x.new_empty((0,))
    gy = y.new_empty(y.shape) if y_grad else x.new_empty((0,))
    return gx, gy


def _contextual_setup_context(ctx, inputs, output):
    x, y, band_width, chunk_rows = inputs
    _loss, cmax, istar = output
    ctx.mark_non_differentiable(cmax, istar)
    ctx.set_materialize_grads(False)
    ctx.params = (band_width, chunk_rows)
    ctx.save_for_backward(x, y, cmax, istar)


def _contextual_backward(ctx, grad, _grad_cmax, _grad_istar):
    x, y, cmax, istar = ctx.saved_tensors
    need_x, need_y = ctx.needs_input_grad[:2]
    if grad is None or not (need_x or need_y):
        return None, None, None, None
    args = (grad, x, y, cmax, istar, *ctx.params, need_x, need_y)
    op = torch.ops.fastgenloss.contextual_bwd.default
    gx, gy = backward_call(op, args, grad)
    return (gx if need_x else None), (gy if need_y else None), None, None


torch.library.register_autograd("fastgenloss::contextual_fwd", _contextual_backward,
                                setup_context=_contextual_setup_context)
ContextualFwdFunction = entry_point("contextual_fwd", _contextual_setup_context,
                                     _contextual_backward, "Eager entry point of contextual_fwd.")

