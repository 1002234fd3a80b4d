"""The diffusion ops' Python half: fake kernels and autograd formulas of fastgenloss::diffusion_fwd,
diffusion_bwd, diffusion_mix and diffusion_mix_bwd (schemas and kernels: csrc/diffusion/), and
their eager entry points."""

from __future__ import annotations

import torch

from .._core import (REDUCE_MEAN, REDUCE_NONE, acc_dtype, backward_call, entry_point,
                     register_first_order_only, scaled_grad)

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


_DIFF_N_PARAMS = 9  # schedule ... write_grad: the non-tensor arguments after weight


def _diffusion_fwd_setup_context(ctx, inputs, output):
    model_output, sample, noise, t, table, weight, *params = inputs
    loss, sample_loss, grad = output
    params, write_grad = tuple(params[:-1]), params[-1]
    reduction = params[-1]
    ctx.mark_non_differentiable(sample_loss, grad)
    ctx.set_materialize_grads(False)
    ctx.params = params
    has_buffer = write_grad and reduction != REDUCE_NONE
    eager = type(grad) is torch.Tensor  # see pixel/_ops.py's _pixel_fwd_setup_context
    ctx.grad_buffer = grad if (has_buffer and eager) else None
    ctx.save_for_backward(model_output, sample, noise, t, table, weight,
                          sample_loss if weight is not None else None,
                          grad if (has_buffer and not eager) else None)


def _diffusion_fwd_backward(ctx, grad_loss, _grad_sample_loss, _grad_grad):
    model_output, sample, noise, t, table, weight, sample_loss, saved_buf = ctx.saved_tensors
    params = ctx.params
    reduction = params[-1]
    need_f, need_x, need_e = ctx.needs_input_grad[:3]
    need_w = ctx.needs_input_grad[5]
    nones = (None,) * _DIFF_N_PARAMS
    if grad_loss is None:
        return (None,) * 6 + nones
    buf, ctx.grad_buffer = ctx.grad_buffer, None
    in_place = buf is not None and not torch.is_grad_enabled()
    if not in_place:
        buf = saved_buf
    gf = None
    if buf is not None and need_f:
        gf = scaled_grad(buf, grad_loss, in_place)
    gx = ge = None
    op_f = need_f and gf is None
    if op_f or need_x or need_e:
        args = (grad_loss, model_output, sample, noise, t, table, weight, *params,
                op_f, need_x, need_e)
        op = torch.ops.fastgenloss.diffusion_bwd.default
        f_, x_, e_ = backward_call(op, args, grad_loss)
        if op_f:
            gf = f_
        gx = x_ if need_x else None
        ge = e_ if need_e else None
    gw = None
    if need_w:
        gw = grad_loss * sample_loss
        if reduction == REDUCE_MEAN:
            gw = gw / sample_loss.shape[0]
        gw = gw.to(weight.dtype)
    return (gf, gx, ge, None, None, gw) + nones


torch.library.register_autograd(
    "fastgenloss::diffusion_fwd", _diffusion_fwd_backward,
    setup_context=_diffusion_fwd_setup_context)


register_first_order_only(
    ["diffusion_bwd"],
    "fastgenloss: second derivatives of the diffusion losses are not implemented "
    "(differentiate the loss once, without create_graph=True)")


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


DiffusionFwdFunction = entry_point("diffusion_fwd", _diffusion_fwd_setup_context,
                                    _diffusion_fwd_backward, "Eager entry point of diffusion_fwd.")
DiffusionMixFunction = entry_point("diffusion_mix", _mix_setup_context, _mix_backward,
                                    "Eager entry point of diffusion_mix.")
