"""Diffusion losses and noising ops against fastgenloss.reference (float64 oracle, flash-attn
2x rule), gradients, layouts, dtypes, schedules with zero terminal SNR, compile and opcheck."""

from __future__ import annotations

import math

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R
from helpers import assert_error_within, check_against_reference

PREDICTIONS = ["epsilon", "v_prediction", "sample"]
WEIGHTINGS = [None, "min_snr", "min_snr_floored", "snr", "inverse_snr", "tensor"]
LOSS_TYPES = ["l2", "l1", "huber", "pseudo_huber"]
REDUCTIONS = ["mean", "sum", "none"]
HALF = [torch.float16, torch.bfloat16]


def make_schedule(kind: str = "scaled_linear", T: int = 1000, zero_terminal: bool = False):
    """alphas_cumprod of diffusers' beta schedules (float32, as its schedulers hold them)."""
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    else:  # squaredcos_cap_v2
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)],
                             dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    if zero_terminal:  # Lin et al. 2023: shift and scale sqrt(ab) so that the last is 0
        s = ab.sqrt()
        s0, sT = s[0].clone(), s[-1].clone()
        ab = ((s - sT) * s0 / (s0 - sT)) ** 2
    return ab.float()


def data(shape, device, dtype=torch.float32, requires_grad=True):
    g = [torch.randn(shape, dtype=torch.float64) for _ in range(3)]
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in g]


def timesteps_for(n, T, device):
    t = torch.randint(0, T, (n,))
    t[0], t[-1] = 0, T - 1  # both ends, including a zero-terminal-SNR step when there is one
    return t.to(device)


def _weighting_arg(weighting, n, device):
    if weighting == "tensor":
        return (torch.rand(n, dtype=torch.float64) + 0.5).to(device)
    return weighting


# ---- diffusion_loss against the reference ----------------------------------------------------

def _check_diffusion(device, dtype, prediction, weighting, loss_type, reduction, shape=(5, 3, 7, 9),
                     schedule="scaled_linear", zero_terminal=False):
    ab = make_schedule(schedule, zero_terminal=zero_terminal).to(device)
    n = shape[0]
    t = timesteps_for(n, ab.numel(), device)
    w = _weighting_arg(weighting, n, device)
    kw = dict(prediction_type=prediction, loss_type=loss_type, reduction=reduction,
              huber_c=0.3)

    def ours(f, x, e, *wt):
        return fgl.diffusion_loss(f, x, e, t, ab, weighting=wt[0] if wt else w, **kw)

    def plain(f, x, e, *wt):
        return R.diffusion_loss(f, x, e, t, ab, weighting=wt[0] if wt else w, **kw)

    tensors = data(shape, device, torch.float64)
    if isinstance(w, torch.Tensor):
        tensors.append(w.clone().requires_grad_(True))
    # the weights (not the data) are in float32 in both: gradients w.r.t. a weight tensor are
    # sums over the whole sample, as torch's
    check_against_reference(ours, plain, tensors, dtype, factor=16.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffusion_loss_matches_reference(device, dtype, prediction, weighting, loss_type,
                                          reduction):
    _check_diffusion(device, dtype, prediction, weighting, loss_type, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("dtype", HALF)
def test_diffusion_loss_half_precision(device, dtype, prediction, weighting, loss_type, reduction):
    _check_diffusion(device, dtype, prediction, weighting, loss_type, reduction)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_terminal", [False, True])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", ["min_snr", "min_snr_floored", "snr", "inverse_snr"])
def test_schedules_and_zero_terminal_snr(device, schedule, zero_terminal, prediction, weighting):
    _check_diffusion(device, torch.float32, prediction, weighting, "l2", "none",
                     schedule=schedule, zero_terminal=zero_terminal)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", [None, "min_snr", "min_snr_floored", "snr", "inverse_snr"])
def test_zero_terminal_snr_is_finite(device, prediction, weighting):
    ab = make_schedule(zero_terminal=True).to(device)
    assert ab[-1].item() == 0.0
    f, x, e = data((4, 4, 8, 8), device)
    t = torch.full((4,), ab.numel() - 1, device=device)
    loss = fgl.diffusion_loss(f, x, e, t, ab, prediction_type=prediction, weighting=weighting)
    loss.backward()
    assert torch.isfinite(loss)
    for g in (f.grad, x.grad, e.grad):
        assert g is None or torch.isfinite(g).all()


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (2, 5), (4, 2, 3, 5, 7), (2, 4, 129), (7, 4, 16, 16)])
def test_shapes(device, shape):
    _check_diffusion(device, torch.float32, "v_prediction", "min_snr", "l2", "mean", shape=shape)
    _check_diffusion(device, torch.float32, "epsilon", None, "l1", "none", shape=shape)


def test_large_sample_many_blocks(device):
    # several deterministic blocks per sample (CPU kBlock = 8192) and a ragged tail
    _check_diffusion(device, torch.float32, "v_prediction", "min_snr", "pseudo_huber", "mean",
                     shape=(3, 4, 73, 61))


# ---- flow matching and EDM -----------------------------------------------------------------

def _sigmas(n, device, lo=0.02, hi=0.98, shape=None):
    s = torch.rand(n, dtype=torch.float64) * (hi - lo) + lo
    s = s.float().to(device)
    return s.reshape(shape) if shape is not None else s


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("weighting", [None, "sigma_sqrt", "cosmap", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flow_matching_matches_reference(device, dtype, weighting, loss_type, reduction):
    n = 6
    s = _sigmas(n, device, shape=(n, 1, 1, 1))
    w = _weighting_arg(weighting, n, device)
    kw = dict(loss_type=loss_type, reduction=reduction, huber_c=0.3)

    def ours(f, x, e, *wt):
        return fgl.flow_matching_loss(f, x, e, s, weighting=wt[0] if wt else w, **kw)

    def plain(f, x, e, *wt):
        return R.flow_matching_loss(f, x, e, s, weighting=wt[0] if wt else w, **kw)

    tensors = data((n, 4, 6, 10), device, torch.float64)
    if isinstance(w, torch.Tensor):
        tensors.append(w.clone().requires_grad_(True))
    check_against_reference(ours, plain, tensors, dtype, factor=16.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_type", ["l2", "l1", "huber", "pseudo_huber"])
@pytest.mark.parametrize("weighting", [None, "edm", "sigma_sqrt", "tensor"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_edm_matches_reference(device, dtype, prediction, weighting, loss_type, reduction):
    n = 5
    s = (torch.randn(n, dtype=torch.float64) * 1.2 - 1.2).exp().float().to(device)  # log-normal
    w = _weighting_arg(weighting, n, device)
    kw = dict(prediction_type=prediction, loss_type=loss_type, reduction=reduction,
              huber_c=0.3, sigma_data=0.5)

    def ours(f, x, e, *wt):
        return fgl.edm_loss(f, x, e, s, weighting=wt[0] if wt else w, **kw)

    def plain(f, x, e, *wt):
        return R.edm_loss(f, x, e, s, weighting=wt[0] if wt else w, **kw)

    tensors = data((n, 3, 5, 7), device, torch.float64)
    if isinstance(w, torch.Tensor):
        tensors.append(w.clone().requires_grad_(True))
    check_against_reference(ours, plain, tensors, dtype, factor=16.0)


# ---- noising ops -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["add_noise", "velocity", "flow_noise", "edm_noise"])
def test_noising_matches_reference(device, dtype, op):
    n = 5
    if op in ("add_noise", "velocity"):
        ab = make_schedule(zero_terminal=True).to(device)
        t = timesteps_for(n, ab.numel(), device)
        args = (t, ab)
    else:
        args = (_sigmas(n, device),)
    ours = lambda x, e: getattr(fgl, op)(x, e, *args)  # noqa: E731
    plain = lambda x, e: getattr(R, op)(x, e, *args)  # noqa: E731
    x, e, _ = data((n, 4, 9, 7), device, torch.float64)
    out = check_against_reference(ours, plain, [x, e], dtype)
    assert out.dtype == dtype


# ---- gradients -------------------------------------------------------------------------------

def test_gradcheck(device):
    ab = make_schedule(zero_terminal=True).double().to(device)
    n = 3
    t = timesteps_for(n, ab.numel(), device)
    s = _sigmas(n, device).double()
    w = torch.rand(n, dtype=torch.float64, device=device, requires_grad=True)
    f, x, e = data((n, 2, 3, 4), device, torch.float64)
    for pred in PREDICTIONS:
        for loss_type in ("l2", "pseudo_huber", "huber"):
            for red in REDUCTIONS:
                fn = lambda f, x, e, w: fgl.diffusion_loss(  # noqa: E731
                    f, x, e, t, ab, prediction_type=pred, weighting=w, loss_type=loss_type,
                    huber_c=0.5, reduction=red)
                assert torch.autograd.gradcheck(fn, (f, x, e, w))
        fn = lambda f, x, e: fgl.diffusion_loss(  # noqa: E731
            f, x, e, t, ab, prediction_type=pred, weighting="min_snr", reduction="mean")
        assert torch.autograd.gradcheck(fn, (f, x, e))
    for weighting in (None, "cosmap", "sigma_sqrt"):
        fn = lambda f, x, e: fgl.flow_matching_loss(f, x, e, s, weighting=weighting)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (f, x, e))
    for pred in ("epsilon", "v_prediction"):
        fn = lambda f, x, e: fgl.edm_loss(f, x, e, s, prediction_type=pred,  # noqa: E731
                                          weighting="edm", reduction="none")
        assert torch.autograd.gradcheck(fn, (f, x, e))
    for op, args in (("add_noise", (t, ab)), ("velocity", (t, ab)), ("flow_noise", (s,)),
                     ("edm_noise", (s,))):
        fn = lambda x, e: getattr(fgl, op)(x, e, *args)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, e))
        assert torch.autograd.gradgradcheck(fn, (x, e))


def test_only_model_output_grad_uses_forward_buffer_and_retain_graph_agrees(device):
    ab = make_schedule().to(device)
    f, x, e = data((4, 4, 16, 16), device, requires_grad=False)
    f.requires_grad_(True)
    t = timesteps_for(4, ab.numel(), device)
    loss = fgl.diffusion_loss(f, x, e, t, ab, prediction_type="v_prediction", weighting="min_snr")
    g1, = torch.autograd.grad(loss * 3.0, f, retain_graph=True)
    g2, = torch.autograd.grad(loss * 3.0, f)
    assert torch.equal(g1, g2)


def test_second_derivative_is_a_clear_error(device):
    ab = make_schedule().to(device)
    f, x, e = data((2, 3, 4), device)
    t = timesteps_for(2, ab.numel(), device)
    loss = fgl.diffusion_loss(f, x, e, t, ab, reduction="none").sum()
    g, = torch.autograd.grad(loss, f, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        g.sum().backward()


# ---- layouts, dtypes, edge cases -------------------------------------------------------------

@pytest.mark.parametrize("layout", ["channels_last", "sliced", "mixed", "permuted_batch", "video_cl3d"])
def test_layouts(device, layout):
    ab = make_schedule().to(device)
    shape = (4, 3, 6, 10) if layout != "video_cl3d" else (3, 4, 5, 6, 7)
    f, x, e = [t.detach() for t in data(shape, device)]
    if layout == "channels_last":
        f, x, e = [t.to(memory_format=torch.channels_last) for t in (f, x, e)]
    elif layout == "sliced":
        f, x, e = [torch.cat([t, t], dim=-1)[..., ::2] for t in (f, x, e)]
    elif layout == "mixed":
        f = f.to(memory_format=torch.channels_last)
    elif layout == "permuted_batch":
        f, x, e = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in (f, x, e)]
    else:
        f, x, e = [t.to(memory_format=torch.channels_last_3d) for t in (f, x, e)]
    t = timesteps_for(shape[0], ab.numel(), device)
    tensors = [f.requires_grad_(), x.requires_grad_(), e.requires_grad_()]
    ref_in = [z.detach().contiguous().requires_grad_() for z in tensors]
    kw = dict(prediction_type="v_prediction", weighting="min_snr")
    out = fgl.diffusion_loss(*tensors, t, ab, **kw)
    ref = R.diffusion_loss(*ref_in, t, ab, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    out.backward()
    ref.backward()
    for a, b in zip(tensors, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
        if layout in ("channels_last", "video_cl3d") and a is tensors[0]:
            assert a.grad.stride() == a.stride()  # the gradient keeps the input's layout
    noisy = fgl.add_noise(x.detach(), e.detach(), t, ab)
    torch.testing.assert_close(noisy, R.add_noise(x.detach(), e.detach(), t, ab))


def test_mixed_dtypes_promote(device):
    ab = make_schedule().to(device)
    f, x, e = data((3, 4, 8, 8), device)
    t = timesteps_for(3, ab.numel(), device)
    fb = f.detach().to(torch.bfloat16).requires_grad_()
    loss = fgl.diffusion_loss(fb, x, e, t, ab, prediction_type="v_prediction")
    ref = R.diffusion_loss(fb.detach().float(), x.detach(), e.detach(), t, ab,
                           prediction_type="v_prediction")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert fb.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.float32


def test_empty(device):
    ab = make_schedule().to(device)
    for shape in [(0, 3, 4), (3, 0, 4)]:
        f, x, e = data(shape, device)
        t = timesteps_for(shape[0], ab.numel(), device) if shape[0] else \
            torch.zeros(0, dtype=torch.long, device=device)
        for red in REDUCTIONS:
            out = fgl.diffusion_loss(f, x, e, t, ab, reduction=red)
            ref = R.diffusion_loss(f.detach(), x.detach(), e.detach(), t, ab, reduction=red)
            torch.testing.assert_close(out, ref, equal_nan=True)
            if red != "none":
                out.backward()


def test_deterministic_across_threads():
    ab = make_schedule()
    f, x, e = data((3, 4, 64, 97), "cpu", requires_grad=False)
    t = timesteps_for(3, ab.numel(), "cpu")
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(fgl.diffusion_loss(f, x, e, t, ab, prediction_type="v_prediction",
                                           weighting="min_snr"))
        assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(old)


def test_int32_timesteps_and_float64_table(device):
    ab = make_schedule().double().to(device)
    f, x, e = data((4, 3, 5), device, requires_grad=False)
    t = timesteps_for(4, ab.numel(), device)
    a = fgl.diffusion_loss(f, x, e, t.int(), ab, prediction_type="v_prediction", reduction="none")
    b = fgl.diffusion_loss(f, x, e, t, ab.float(), prediction_type="v_prediction", reduction="none")
    torch.testing.assert_close(a, b)


def test_snr_function(device):
    ab = make_schedule(zero_terminal=True).to(device)
    t = timesteps_for(6, ab.numel(), device)
    torch.testing.assert_close(fgl.snr(t, ab), R.snr(t, ab.double()).float())
    assert fgl.snr(t, ab)[-1].item() == 0.0


def test_modules(device):
    ab = make_schedule().to(device)
    f, x, e = data((3, 4, 6, 6), device)
    t = timesteps_for(3, ab.numel(), device)
    m = fgl.nn.DiffusionLoss(ab, prediction_type="v_prediction", weighting="min_snr")
    assert "alphas_cumprod" not in m.state_dict()
    torch.testing.assert_close(
        m(f, x, e, t), fgl.diffusion_loss(f, x, e, t, ab, prediction_type="v_prediction",
                                          weighting="min_snr"))
    s = _sigmas(3, device)
    torch.testing.assert_close(fgl.nn.FlowMatchingLoss(weighting="cosmap")(f, x, e, s),
                               fgl.flow_matching_loss(f, x, e, s, weighting="cosmap"))
    torch.testing.assert_close(fgl.nn.EDMLoss(weighting="edm")(f, x, e, s),
                               fgl.edm_loss(f, x, e, s, weighting="edm"))
    assert "min_snr" in repr(m)


# ---- torch.library: opcheck and torch.compile ------------------------------------------------

def _op_samples(device):
    ab = make_schedule().to(device)
    f, x, e = data((3, 4, 5, 6), device)
    t = timesteps_for(3, ab.numel(), device)
    s = _sigmas(3, device)
    w = torch.rand(3, device=device, requires_grad=True)
    for red in (0, 1, 2):
        for write_grad in (False, True):
            yield "diffusion_fwd", (f, x, e, t, ab, None, 0, 1, 1, 0, 5.0, 0.1, 0.5, red, write_grad)
        yield "diffusion_fwd", (f, x, e, t, ab, w, 0, 0, 0, 3, 5.0, 0.1, 0.5, red, False)
        yield "diffusion_fwd", (f, x, e, s, None, None, 1, 3, 6, 1, 5.0, 0.1, 0.5, red, False)
        yield "diffusion_fwd", (f, x, e, s, None, None, 2, 1, 7, 2, 5.0, 0.1, 0.5, red, False)
    for kind, args in ((0, (t, ab)), (1, (t, ab)), (2, (s, None)), (3, (s, None))):
        yield "diffusion_mix", (x, e, *args, kind)


@pytest.mark.parametrize("i", range(16))
def test_opcheck(device, i):
    samples = list(_op_samples(device))
    name, args = samples[i]
    test_utils = ("test_schema", "test_autograd_registration", "test_faketensor",
                  "test_aot_dispatch_dynamic")
    if name == "diffusion_fwd" and args[-1]:
        # the forward-written gradient is donated to backward (scaled in place in eager mode),
        # which AOT's comparison of two backward runs cannot see
        test_utils = test_utils[:3]
    torch.library.opcheck(getattr(torch.ops.fastgenloss, name).default, args,
                          test_utils=test_utils)


def test_compile_training_step_fullgraph(device):
    torch._dynamo.reset()
    ab = make_schedule().to(device)
    model = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    x0 = torch.randn(2, 4, 8, 8, device=device)
    eps = torch.randn_like(x0)
    t = timesteps_for(2, ab.numel(), device)

    def loss_of(x0, eps, t):
        noisy = fgl.add_noise(x0, eps, t, ab)
        pred = model(noisy)
        return fgl.diffusion_loss(pred, x0, eps, t, ab, prediction_type="v_prediction",
                                  weighting="min_snr")

    eager = loss_of(x0, eps, t)
    eager.backward()
    g_eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(loss_of, fullgraph=True)  # a graph break raises
    got = compiled(x0, eps, t)
    got.backward()
    torch.testing.assert_close(got, eager)
    for p, g in zip(model.parameters(), g_eager):
        torch.testing.assert_close(p.grad, g)
    # sample and noise requiring grad (the data path is differentiable too) and dynamic shapes
    x1 = torch.randn(3, 4, 8, 8, device=device, requires_grad=True)
    e1 = torch.randn_like(x1, requires_grad=True)
    t1 = timesteps_for(3, ab.numel(), device)
    flow = torch.compile(lambda f, x, e, s: fgl.flow_matching_loss(f, x, e, s, weighting="cosmap")
                         + fgl.flow_noise(x, e, s).square().mean(), fullgraph=True, dynamic=True)
    s1 = _sigmas(3, device)
    f1 = torch.randn_like(x1, requires_grad=True)
    got = flow(f1, x1, e1, s1)
    got.backward()
    ref_in = [z.detach().clone().requires_grad_() for z in (f1, x1, e1)]
    ref = R.flow_matching_loss(*ref_in, s1, weighting="cosmap") + \
        R.flow_noise(ref_in[1], ref_in[2], s1).square().mean()
    ref.backward()
    torch.testing.assert_close(got, ref)
    for a, b in zip((f1, x1, e1), ref_in):
        torch.testing.assert_close(a.grad, b.grad)
    del t1


# ---- errors: each names the argument, its shape and dtype ------------------------------------

def _good(device="cpu"):
    ab = make_schedule()
    f, x, e = data((3, 4, 5, 5), device)
    t = torch.tensor([0, 500, 999])
    return f, x, e, t, ab


@pytest.mark.parametrize("bad,match", [
    (dict(t=torch.tensor([0, 5, 1000])), r"timesteps must lie in \[0, 1000\).*\[0, 1000\]"),
    (dict(t=torch.tensor([-1, 5, 10])), r"timesteps must lie in \[0, 1000\)"),
    (dict(t=torch.tensor([0.0, 5.0, 10.0])), r"timesteps must be an integer tensor.*float32"),
    (dict(t=torch.tensor([0, 5])), r"timesteps must have shape \[3\].*\[2\] int64"),
    (dict(ab=torch.rand(10, 10)), r"alphas_cumprod must be a non-empty 1-D floating.*\[10, 10\]"),
    (dict(ab=torch.arange(10)), r"alphas_cumprod must be a non-empty 1-D floating.*int64"),
    (dict(ab=torch.rand(1000, device="meta")), r"alphas_cumprod .* on meta cannot be read by kernels on cpu"),
    (dict(t=torch.zeros(3, dtype=torch.long, device="meta")), r"timesteps .* on meta cannot be read"),
    (dict(x=torch.randn(3, 4, 5, 6)), r"sample \[3, 4, 5, 6\] float32 on cpu and model_output \[3, 4, 5, 5\]"),
    (dict(e=torch.randn(3, 4, 5)), r"noise \[3, 4, 5\] float32 .* must have the same shape"),
    (dict(f=torch.randn(3, 4, 5, 5).long()), r"model_output must be float32, float64, float16 or bfloat16, got \[3, 4, 5, 5\] int64"),
    (dict(f=torch.tensor(1.0)), r"model_output must have a batch dim"),
    (dict(prediction_type="x0"), r"prediction_type must be one of 'epsilon', 'v_prediction', 'sample', got 'x0'"),
    (dict(weighting="minsnr"), r"weighting must be one of None, 'min_snr'.*got 'minsnr'"),
    (dict(weighting=torch.ones(4)), r"weighting tensor must be floating with one weight per sample \(\[3\]\), got \[4\]"),
    (dict(loss_type="l3"), r"loss_type must be one of 'l2', 'l1', 'huber', 'pseudo_huber', got 'l3'"),
    (dict(loss_type="huber", huber_c=0.0), r"huber_c must be > 0, got 0.0"),
    (dict(weighting="min_snr", snr_gamma=-1.0), r"snr_gamma must be > 0, got -1.0"),
    (dict(reduction="avg"), r"reduction must be 'none', 'mean' or 'sum', got 'avg'"),
    (dict(ab=torch.rand(1000, requires_grad=True)), r"alphas_cumprod \[1000\] float32 on cpu requires grad"),
])
def test_diffusion_loss_errors(bad, match):
    f, x, e, t, ab = _good()
    args = dict(f=f, x=x, e=e, t=t, ab=ab)
    kw = {}
    for k, v in bad.items():
        (args if k in args else kw)[k] = v
    with pytest.raises((ValueError, TypeError), match=match):
        fgl.diffusion_loss(args["f"], args["x"], args["e"], args["t"], args["ab"], **kw)


@pytest.mark.parametrize("fn", ["flow_matching_loss", "edm_loss", "flow_noise", "edm_noise"])
def test_sigma_errors(fn):
    f, x, e, _, _ = _good()
    call = (lambda s, **kw: getattr(fgl, fn)(f, x, e, s, **kw)) if fn.endswith("loss") else \
        (lambda s, **kw: getattr(fgl, fn)(x, e, s, **kw))
    with pytest.raises(TypeError, match=r"sigmas must be a floating tensor, got \[3\] int64"):
        call(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"sigmas must hold one value per sample \(\[3\] or \[3, 1, \.\.\.\]\), got \[4\]"):
        call(torch.rand(4))
    with pytest.raises(ValueError, match=r"sigmas \[3\] float32 on cpu requires grad"):
        call(torch.rand(3, requires_grad=True))
    if fn == "flow_matching_loss":
        with pytest.raises(ValueError, match=r"weighting must be one of None, 'none', 'sigma_sqrt', 'cosmap', got 'edm'"):
            call(torch.rand(3), weighting="edm")
    if fn == "edm_loss":
        with pytest.raises(ValueError, match=r"prediction_type must be one of 'epsilon', 'v_prediction', got 'sample'"):
            call(torch.rand(3), prediction_type="sample")
        with pytest.raises(ValueError, match=r"sigma_data must be > 0, got 0.0"):
            call(torch.rand(3), sigma_data=0.0)


def test_mix_errors():
    _, x, e, t, ab = _good()
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        fgl.add_noise(x, e, t + 1, ab)
    with pytest.raises(ValueError, match=r"noise \[3, 4, 5\] float32 on cpu and sample \[3, 4, 5, 5\]"):
        fgl.velocity(x, e[..., 0], t, ab)
    with pytest.raises(TypeError, match=r"timesteps must be a torch.Tensor, got list"):
        fgl.add_noise(x, e, [0, 1, 2], ab)
    with pytest.raises(TypeError, match=r"timesteps must be a torch.Tensor, got int"):
        fgl.snr(3, ab)


def test_direct_op_call_is_checked_in_cpp_diffusion():
    # the op itself backs up the API's checks; CPU timesteps are range-checked exactly (GPU
    # timesteps are not: that would synchronize; their out-of-range samples get a NaN loss)
    f, x, e, _, ab = _good()
    f, x, e = f.detach(), x.detach(), e.detach()
    with pytest.raises(RuntimeError, match=r"fastgenloss::diffusion_fwd: timesteps must lie in "
                                           r"\[0, 1000\), got values in \[0, 1000\]"):
        torch.ops.fastgenloss.diffusion_fwd(f, x, e, torch.tensor([0, 1000, 999]), ab, None, 0,
                                            0, 0, 0, 5.0, 0.1, 0.5, 0, False)
    with pytest.raises(RuntimeError, match=r"fastgenloss::diffusion_fwd: noise dtype Double "
                                           r"differs from model_output's Float"):
        torch.ops.fastgenloss.diffusion_fwd(f, x, e.double(), torch.tensor([0, 1, 2]), ab, None,
                                            0, 0, 0, 0, 5.0, 0.1, 0.5, 0, False)
    with pytest.raises(RuntimeError, match=r"fastgenloss::diffusion_mix: unknown kind 7"):
        torch.ops.fastgenloss.diffusion_mix(x, e, torch.tensor([0, 1, 2]), ab, 7)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_peak_memory_one_gradient_buffer(device, prediction):
    """fwd+bwd of a scalar loss holds one gradient-sized buffer (written by the forward, scaled
    in place by backward and handed to autograd), never the target or the elementwise loss."""
    from fastgenloss._measure import peak_memory_bytes
    ab = make_schedule().to(device)
    shape = (8, 4, 128, 128)
    n = 8 * 4 * 128 * 128
    f, x, e = data(shape, device, requires_grad=False)
    f.requires_grad_(True)
    t = timesteps_for(8, ab.numel(), device)

    def run():
        fgl.diffusion_loss(f, x, e, t, ab, prediction_type=prediction,
                           weighting="min_snr").backward()
        f.grad = None

    def run_ref():
        R.diffusion_loss(f, x, e, t, ab, prediction_type=prediction,
                         weighting="min_snr").backward()
        f.grad = None

    ours = [peak_memory_bytes(run, device) for _ in range(3)]
    theirs = [peak_memory_bytes(run_ref, device) for _ in range(3)]
    if None in ours or None in theirs:
        pytest.skip("peak memory is not measurable on this platform")
    assert min(ours) <= 4 * n * 1.25, f"peak {min(ours) / (4 * n):.2f} gradient buffers"
    assert min(ours) < min(theirs)
