"""The segmentation ops' Python half: fake kernels and autograd formulas of fastgenloss::seg_stats,
seg_stats_bwd, seg_labels, seg_combine and seg_combine_bwd (schemas and kernels:
csrc/segmentation/), and their eager entry points."""

from __future__ import annotations

import torch

from .._core import acc_dtype, backward_call, entry_point

# Codes of csrc/segmentation/math.h.
SEG_BINARY, SEG_MULTICLASS, SEG_MULTILABEL = range(3)


@torch.library.register_fake("fastgenloss::seg_stats")
def _seg_stats_fake(input, target, mode, has_ignore, ignore_index, focal_gamma=-1.0,
                    focal_alpha=-1.0, label_smoothing=0.0):
    acc = acc_dtype(input.dtype)
    n, c = input.shape[0], input.shape[1]
    s = 5 if focal_gamma >= 0 else 3
    return input.new_empty((n, c, s), dtype=acc), input.new_empty((n, c), dtype=acc)


@torch.library.register_fake("fastgenloss::seg_stats_bwd")
def _seg_stats_bwd_fake(grad_stats, grad_xent, input, target, mode, has_ignore, ignore_index,
                        focal_gamma=-1.0, focal_alpha=-1.0, label_smoothing=0.0):
    # as the kernels: multiclass logits in [N, M, C] memory (channels_last viewed as [N, C, M])
    # are read in place and the gradient keeps their layout; anything else is made contiguous
    n, c, m = input.shape
    if (mode == SEG_MULTICLASS and input.device.type == "cpu" and not input.is_contiguous()
            and (input.stride(1) == 1 or c == 1) and (input.stride(2) == c or m == 1)
            and (input.stride(0) == c * m or n == 1)):
        return torch.empty((n, m, c), dtype=input.dtype, device=input.device).transpose(1, 2)
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def _seg_stats_setup_context(ctx, inputs, output):
    input, target, *params = inputs
    ctx.save_for_backward(input, target)
    ctx.params = tuple(params)


def _seg_stats_backward(ctx, grad_stats, grad_xent):
    input, target = ctx.saved_tensors
    nargs = 2 + len(ctx.params)
    if not ctx.needs_input_grad[0] or (grad_stats is None and grad_xent is None):
        return (None,) * nargs
    acc = acc_dtype(input.dtype)
    n, c = input.shape[0], input.shape[1]
    if grad_stats is None:
        s = 5 if len(ctx.params) > 3 and ctx.params[3] >= 0 else 3
        grad_stats = input.new_zeros((n, c, s), dtype=acc)
    if grad_xent is None:
        grad_xent = input.new_zeros((n, c), dtype=acc)
    args = (grad_stats, grad_xent, input, target, *ctx.params)
    op = torch.ops.fastgenloss.seg_stats_bwd.default
    grad = backward_call(op, args, grad_stats)
    return (grad,) + (None,) * (nargs - 1)


torch.library.register_autograd("fastgenloss::seg_stats", _seg_stats_backward,
                                setup_context=_seg_stats_setup_context)


@torch.library.register_fake("fastgenloss::seg_labels")
def _seg_labels_fake(target, num_classes, has_ignore, ignore_index):
    return torch.empty_like(target, dtype=torch.long, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastgenloss::lovasz_fwd")
def _lovasz_fwd_fake(input, target, kind, per_image, has_ignore, ignore_index, write_grad):
    grad = (torch.empty_like(input, memory_format=torch.contiguous_format) if write_grad
            else input.new_empty((0,)))
    return input.new_empty((), dtype=acc_dtype(input.dtype)), grad


@torch.library.register_fake("fastgenloss::lovasz_bwd")
def _lovasz_bwd_fake(grad_output, grad, input):
    return torch.empty_like(grad)


@torch.library.register_fake("fastgenloss::mcc_stats")
def _mcc_stats_fake(input, target):
    return input.new_empty((3,), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("fastgenloss::mcc_stats_bwd")
def _mcc_stats_bwd_fake(grad, input, target, input_grad, target_grad):
    gp = torch.empty_like(input) if input_grad else input.new_empty((0,))
    gt = torch.empty_like(target) if target_grad else target.new_empty((0,))
    return gp, gt


# mcc_stats' and lovasz_fwd's autograd is C++ (csrc/segmentation/lovasz.cpp); lovasz_bwd is differentiated no
# further.
LOVASZ_HINGE, LOVASZ_SOFTMAX = range(2)


@torch.library.register_fake("fastgenloss::seg_combine")
def _seg_combine_fake(stats, xent, overlap, bce, count, focal, binary, per_image, sum, log_loss,
                      smooth, eps, class_weights=None):
    return stats.new_empty(())


@torch.library.register_fake("fastgenloss::seg_combine_bwd")
def _seg_combine_bwd_fake(grad, stats, xent, overlap, bce, count, focal, binary, per_image, sum,
                          log_loss, smooth, eps, class_weights=None):
    return torch.empty_like(stats), torch.empty_like(xent)


def _seg_combine_setup_context(ctx, inputs, output):
    # (the class weights, the last argument, are constants: no gradient)
    stats, xent, *params, weights = inputs
    ctx.save_for_backward(stats, xent, weights)
    ctx.nargs = len(inputs)
    ctx.params = tuple(params)


def _seg_combine_backward(ctx, grad):
    stats, xent, weights = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return (None,) * ctx.nargs
    args = (grad, stats, xent, *ctx.params, weights)
    op = torch.ops.fastgenloss.seg_combine_bwd.default
    gs, gx = backward_call(op, args, grad)
    return (gs if ctx.needs_input_grad[0] else None,
            gx if ctx.needs_input_grad[1] else None) + (None,) * (ctx.nargs - 2)


torch.library.register_autograd("fastgenloss::seg_combine", _seg_combine_backward,
                                setup_context=_seg_combine_setup_context)
# seg_stats_bwd and seg_combine_bwd are differentiated no further (csrc/segmentation/ops.cpp).


SegStatsFunction = entry_point("seg_stats", _seg_stats_setup_context, _seg_stats_backward,
                                "Eager entry point of seg_stats (focal arguments included).")
SegCombineFunction = entry_point("seg_combine", _seg_combine_setup_context,
                                  _seg_combine_backward,
                                  "Eager entry point of seg_combine (class_weights included).")
