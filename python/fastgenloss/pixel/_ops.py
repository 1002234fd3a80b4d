"""The pixel ops' Python half: the fake kernels of fastgenloss::pixel_fwd and pixel_bwd
(schemas, kernels and autograd: csrc/pixel/)."""

from __future__ import annotations

import torch

from .._core import REDUCE_MASKED_MEAN, REDUCE_NONE, REDUCE_WEIGHT_MEAN, acc_dtype

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


# Both ops' autograd is C++ (csrc/pixel/autograd.cpp, at the Autograd key): an eager forward
# and backward run no Python, torch.func transforms them as torch's own ops, and pixel_bwd's
# derivatives (double backward) come from the same formulas written as differentiable ATen ops.
