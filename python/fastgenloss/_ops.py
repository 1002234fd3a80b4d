"""Fake (shape) kernels and autograd formulas of the ops defined in csrc/ops.cpp.

The schemas and the CPU/CUDA kernels live in C++; what torch.compile and autograd need to know
about them is registered here, once per op.
"""

from __future__ import annotations

import torch

# Reduction codes of csrc/include/fastgenloss/pixel_math.h (0..2 are torch's own).
REDUCE_NONE, REDUCE_MEAN, REDUCE_SUM, REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN = range(5)
_WEIGHTED_MEANS = (REDUCE_WEIGHT_MEAN, REDUCE_MASKED_MEAN)


def _direct(op, *args):
    """op's CPU/CUDA kernel, called below its Autograd-key kernel. torch.library's Python
    autograd wrapper runs even with grad mode off (a redispatch, ~20 us a call: as long as the
    kernel itself on a latent-sized tensor); where autograd is not wanted (inside an
    autograd.Function's forward, an eager first-order backward, an eager no-grad call) this
    skips it. Tracing (torch.compile's fake and functional tensors) keeps the plain call."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _eager_no_grad(t: torch.Tensor) -> bool:
    """A plain tensor (not one of torch.compile's tracing subclasses) with grad mode off."""
    return type(t) is torch.Tensor and not torch.is_grad_enabled()


def _backward_call(op, args, grad: torch.Tensor):
    """A backward op inside an autograd formula: the kernel directly in an eager first-order
    backward (grad mode off, plain tensors), else the op (double backward, tracing)."""
    return _direct(op, *args) if _eager_no_grad(grad) else op(*args)


def call_op(op, function, args, needs_grad: bool):
    """op(*args) as autograd should see it: while tracing (torch.compile) the registered op
    with its torch.library formula; in eager mode the op's autograd.Function entry point
    (``function``: the same kernel, setup_context and backward, without torch.library's per-call
    fill_defaults and redispatch, ~10-60 us a call) when a gradient is wanted, else the kernel
    directly (_direct)."""
    if torch.compiler.is_compiling():
        return op(*args)
    if needs_grad:
        return function.apply(*args)
    return _direct(op, *args)


def _entry_point(op_name: str, setup_context, backward, doc: str):
    """The eager autograd.Function entry point of fastgenloss::<op_name> (see call_op):
    forward runs the kernel below autograd and the registered setup_context, backward the
    registered formula. Called with every schema argument."""

    def forward(ctx, *args):
        out = _direct(getattr(torch.ops.fastgenloss, op_name).default, *args)
        setup_context(ctx, args, out)
        return out

    return type(f"{op_name}_function", (torch.autograd.Function,),
                {"forward": staticmethod(forward),
                 "backward": staticmethod(backward),
                 "__doc__": doc})


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


def _scaled(buf: torch.Tensor, scale: torch.Tensor, in_place: bool) -> torch.Tensor:
    """The forward-written gradient times grad_output. A CPU grad_output of exactly 1 (a plain
    ``loss.backward()``) skips the pass over the buffer: one read and one write of a
    gradient-sized tensor saved. (On a GPU, reading the value would synchronize the device.)"""
    if in_place:
        if scale.device.type == "cpu" and scale.numel() == 1 and scale.item() == 1.0:
            return buf
        return buf.mul_(scale)
    return buf * scale


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
        grad_diff = _scaled(buf, scale, in_place)

    grad_weight = None
    op_diff = need_diff and grad_diff is None
    if op_diff or need_weight:
        args = (grad_loss, input, target, weight,
                loss if loss is not None else wsum.new_empty((0,)), wsum, *params,
                op_diff, need_weight)
        op = torch.ops.fastgenloss.pixel_bwd.default
        gi, gw = _backward_call(op, args, grad_loss)
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
# rebuilds its outputs from differentiable torch ops (the formulas of pixel_math.h) on detached
# copies of its inputs and differentiates those: exact second derivatives; a third order raises.

def _pixel_terms_torch(d, params):
    """(l(d), dl/dd) from torch ops, term by term as in pixel_math.h."""
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
# functional._fused), so the compiled graph still holds the op and its registered formula.
PixelFwdFunction = _entry_point("pixel_fwd", _pixel_fwd_setup_context, _pixel_fwd_backward,
                                "Eager entry point of pixel_fwd.")


# ---- diffusion losses and noising ----------------------------------------------------------
# Codes of csrc/include/fastgenloss/diffusion_math.h.
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
    acc = _acc_dtype(model_output.dtype)
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
    eager = type(grad) is torch.Tensor  # see _pixel_fwd_setup_context
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
        gf = _scaled(buf, grad_loss, in_place)
    gx = ge = None
    op_f = need_f and gf is None
    if op_f or need_x or need_e:
        args = (grad_loss, model_output, sample, noise, t, table, weight, *params,
                op_f, need_x, need_e)
        op = torch.ops.fastgenloss.diffusion_bwd.default
        f_, x_, e_ = _backward_call(op, args, grad_loss)
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


def _diffusion_bwd_setup_context(ctx, inputs, output):
    pass


def _diffusion_bwd_backward(ctx, *grads):
    raise NotImplementedError(
        "fastgenloss: second derivatives of the diffusion losses are not implemented "
        "(differentiate the loss once, without create_graph=True)")


torch.library.register_autograd(
    "fastgenloss::diffusion_bwd", _diffusion_bwd_backward,
    setup_context=_diffusion_bwd_setup_context)


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
    gx, ge = _backward_call(op, args, grad)
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


DiffusionFwdFunction = _entry_point("diffusion_fwd", _diffusion_fwd_setup_context,
                                    _diffusion_fwd_backward, "Eager entry point of diffusion_fwd.")
DiffusionMixFunction = _entry_point("diffusion_mix", _mix_setup_context, _mix_backward,
                                    "Eager entry point of diffusion_mix.")


# ---- Gram matrices and the style loss ---------------------------------------------------------

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
    diff = input.new_empty((n, c, c), dtype=_acc_dtype(input.dtype))
    loss = input.new_empty((n, c, c) if reduction == REDUCE_NONE else (),
                           dtype=_acc_dtype(input.dtype))
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
    return (_backward_call(op, args, grad)), None


torch.library.register_autograd("fastgenloss::gram", _gram_backward,
                                setup_context=_gram_setup_context)


def _second_order_error(ctx, *grads):
    raise NotImplementedError(
        "fastgenloss: second derivatives of the Gram matrix / style loss are not implemented "
        "(differentiate once, without create_graph=True)")


def _no_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("fastgenloss::gram_bwd", _second_order_error,
                                setup_context=_no_setup)
torch.library.register_autograd("fastgenloss::style_bwd", _second_order_error,
                                setup_context=_no_setup)


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
    gi, gt = _backward_call(op, args, grad_loss)
    return (gi if need_i else None), (gt if need_t else None), None, None, None


torch.library.register_autograd("fastgenloss::style_fwd", _style_backward,
                                setup_context=_style_setup_context)
GramFunction = _entry_point("gram", _gram_setup_context, _gram_backward,
                            "Eager entry point of gram.")
StyleFwdFunction = _entry_point("style_fwd", _style_setup_context, _style_backward,
                                "Eager entry point of style_fwd.")


# ---- contextual loss ------------------------------------------------------------------------

@torch.library.register_fake("fastgenloss::contextual_fwd")
def _contextual_fwd_fake(x, y, band_width, chunk_rows):
    acc = _acc_dtype(x.dtype)
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
    gx, gy = _backward_call(op, args, grad)
    return (gx if need_x else None), (gy if need_y else None), None, None


torch.library.register_autograd("fastgenloss::contextual_fwd", _contextual_backward,
                                setup_context=_contextual_setup_context)
ContextualFwdFunction = _entry_point("contextual_fwd", _contextual_setup_context,
                                     _contextual_backward, "Eager entry point of contextual_fwd.")


def _contextual_second_order(ctx, *grads):
    raise NotImplementedError(
        "fastgenloss: second derivatives of the contextual loss are not implemented "
        "(differentiate once, without create_graph=True)")


torch.library.register_autograd("fastgenloss::contextual_bwd", _contextual_second_order,
                                setup_context=_no_setup)


# ---- segmentation statistics -----------------------------------------------------------------
# Codes of csrc/include/fastgenloss/seg_math.h.
SEG_BINARY, SEG_MULTICLASS, SEG_MULTILABEL = range(3)


@torch.library.register_fake("fastgenloss::seg_stats")
def _seg_stats_fake(input, target, mode, has_ignore, ignore_index, focal_gamma=-1.0,
                    focal_alpha=-1.0, label_smoothing=0.0):
    acc = _acc_dtype(input.dtype)
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
    acc = _acc_dtype(input.dtype)
    n, c = input.shape[0], input.shape[1]
    if grad_stats is None:
        s = 5 if len(ctx.params) > 3 and ctx.params[3] >= 0 else 3
        grad_stats = input.new_zeros((n, c, s), dtype=acc)
    if grad_xent is None:
        grad_xent = input.new_zeros((n, c), dtype=acc)
    args = (grad_stats, grad_xent, input, target, *ctx.params)
    op = torch.ops.fastgenloss.seg_stats_bwd.default
    grad = _backward_call(op, args, grad_stats)
    return (grad,) + (None,) * (nargs - 1)


def _seg_second_order_error(ctx, *grads):
    raise NotImplementedError(
        "fastgenloss: second derivatives of the segmentation losses are not implemented "
        "(differentiate once, without create_graph=True)")


torch.library.register_autograd("fastgenloss::seg_stats", _seg_stats_backward,
                                setup_context=_seg_stats_setup_context)
torch.library.register_autograd("fastgenloss::seg_stats_bwd", _seg_second_order_error,
                                setup_context=_no_setup)


@torch.library.register_fake("fastgenloss::seg_labels")
def _seg_labels_fake(target, num_classes, has_ignore, ignore_index):
    return torch.empty_like(target, dtype=torch.long, memory_format=torch.contiguous_format)


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
    gs, gx = _backward_call(op, args, grad)
    return (gs if ctx.needs_input_grad[0] else None,
            gx if ctx.needs_input_grad[1] else None) + (None,) * (ctx.nargs - 2)


torch.library.register_autograd("fastgenloss::seg_combine", _seg_combine_backward,
                                setup_context=_seg_combine_setup_context)
torch.library.register_autograd("fastgenloss::seg_combine_bwd", _seg_second_order_error,
                                setup_context=_no_setup)


SegStatsFunction = _entry_point("seg_stats", _seg_stats_setup_context, _seg_stats_backward,
                                "Eager entry point of seg_stats (focal arguments included).")
SegCombineFunction = _entry_point("seg_combine", _seg_combine_setup_context,
                                  _seg_combine_backward,
                                  "Eager entry point of seg_combine (class_weights included).")
