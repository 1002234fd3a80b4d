"""The diffusion ops' Python half: fake kernels of fastgenloss::diffusion_fwd,
diffusion_bwd, diffusion_mix and diffusion_mix_bwd, and the autograd formulas of the last two
(schemas, kernels and the first two's autograd: csrc/diffusion/)."""

from __future__ import annotations

import torch

from .._core import REDUCE_NONE, acc_dtype, backward_call, entry_point

# Codes of csrc/diffusion/math.h.
SCHED_ALPHAS_CUMPROD, SCHED_FLOW, SCHED_EDM = range(3)
PRED_EPSILON, PRED_V, PRED_SAMPLE, PRED_FLOW = range(4)
(WEIGHT_NONE, WEIGHT_MIN_SNR, WEIGHT_MIN_SNR_FLOORED, WEIGHT_SNR, WEIGHT_INVERSE_SNR,
 WEIGHT_SIGMA_SQRT, WEIGHT_COSMAP, WEIGHT_EDM) = range(8)
LOSS_L2, LOSS_L1, LOSS_HUBER, LOSS_PSEUDO_HUBER = range(4)
MIX_ADD_NOISE, MIX_VELOCITY, MIX_FLOW, MIX_EDM = range(4)


def _sample_major_like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor laid out as csrc's sample_major(x): x's own strides when x is
    contiguous, channels_last or channels_last_3d (batch dim outermost), else contiguous."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)) \
            or (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)):
        return torch.empty_like(x)
    return x.new_empty(x.shape)


@torch.library.register_fake("fastgenloss::diffusion_fwd")
def _diffusion_fwd_fake(model_output, sample, noise, t, table, weight, schedule, prediction,
                        weighting, loss_type, snr_gamma, huber_c, sigma_data, reduction,
                        write_grad):
    acc = acc_dtype(model_output.dtype)
    n = model_output.shape[0]
    loss = model_output.new_empty((n,) if reduction == REDUCE_NONE else (), dtype=acc)
    sample_loss = model_output.new_empty((n,), dtype=acc)
    if write_grad and reduction != REDUCE_NONE:
        grad = _sample_major_like(model_output)
    else:
        grad = model_output.new_empty((0,))
    return loss, sample_loss, grad


@torch.library.register_fake("fastgenloss::diffusion_bwd")
def _diffusion_bwd_fake(grad_output, model_output, sample, noise, t, table, weight, schedule,
                        prediction, weighting, loss_type, snr_gamma, huber_c, sigma_data,
                        reduction, model_output_grad, sample_grad, noise_grad):
    def out(want):
        return _sample_major_like(model_output) if want else model_output.new_empty((0,))
    return out(model_output_grad), out(sample_grad), out(noise_grad)


@torch.library.register_fake("fastgenloss::diffusion_mix")
def _diffusion_mix_fake(sample, noise, t, table, kind):
    return _sample_major_like(sample)


@torch.library.register_fake("fastgenloss::diffusion_mix_bwd")
def _diffusion_mix_bwd_fake(grad, t, table, kind, sample_grad, noise_grad):
    def out(want):
        return _sample_major_like(grad) if want else grad.new_empty((0,))
    return out(sample_grad), out(noise_grad)


# diffusion_fwd's and diffusion_bwd's autograd is C++ (csrc/diffusion/autograd.cpp).


def _mix_setup_context(ctx, inputs, output):
    _sample, _noise, t, table, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(t, table)


def _mix_backward(ctx, grad):
    t, table = ctx.saved_tensors
    need_x, need_e = ctx.needs_input_grad[:2]
    if grad is None or not (need_x or need_e):
        return None, None, None, None, None
    args = (grad, t, table, ctx.kind, need_x, need_e)
    op = torch.ops.fastgenloss.diffusion_mix_bwd.default
    gx, ge = backward_call(op, args, grad)
    return (gx if need_x else None), (ge if need_e else None), None, None, None


torch.library.register_autograd(
    "fastgenloss::diffusion_mix", _mix_backward, setup_context=_mix_setup_context)


def _mix_bwd_setup_context(ctx, inputs, output):
    _grad, t, table, kind, sample_grad, noise_grad = inputs
    ctx.kind, ctx.sample_grad, ctx.noise_grad = kind, sample_grad, noise_grad
    ctx.save_for_backward(t, table)


def _mix_bwd_backward(ctx, gg_sample, gg_noise):
    # (p*g, q*g) is linear in g: its adjoint is p*gg_sample + q*gg_noise, the forward mix.
    t, table = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return (None,) * 6
    use_x = ctx.sample_grad and gg_sample is not None
    use_e = ctx.noise_grad and gg_noise is not None
    if not (use_x or use_e):
        return (None,) * 6
    xs = gg_sample if use_x else torch.zeros_like(gg_noise)
    es = gg_noise if use_e else torch.zeros_like(gg_sample)
    return (torch.ops.fastgenloss.diffusion_mix(xs, es, t, table, ctx.kind),) + (None,) * 5


torch.library.register_autograd(
    "fastgenloss::diffusion_mix_bwd", _mix_bwd_backward, setup_context=_mix_bwd_setup_context)


DiffusionMixFunction = entry_point("diffusion_mix", _mix_setup_context, _mix_backward,
                                    "Eager entry point of diffusion_mix.")
