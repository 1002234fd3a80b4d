"""Every loss in every PyTorch training mode, as torch's own: mixed dtypes and autocast (the
result dtype torch returns, each operand's gradient in its own dtype), torch.func transforms,
the eager and compiled paths giving the same bits, retain_graph and higher derivatives through
the C++ autograd kernels, and a clear error for what is not supported (forward-mode AD)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vjp, vmap

import fastgenloss as fgl
from fastgenloss import reference as ref

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
DROP_INS = ["l1_loss", "mse_loss", "huber_loss", "smooth_l1_loss"]
TIMESTEPS = 1000


def _tol(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype in (BF16, F16) else dict(rtol=1e-5, atol=1e-6)


# ---- mixed dtypes: torch's type promotion ----------------------------------------------------

@pytest.mark.parametrize("name", DROP_INS)
@pytest.mark.parametrize("pair", [(BF16, F32), (F32, BF16), (F16, F32), (F32, F64), (F16, BF16)],
                         ids=lambda p: f"{str(p[0])[6:]}-{str(p[1])[6:]}")
def test_mixed_dtypes_promote_as_torch(name, pair):
    """torch promotes the pair (bfloat16 with float32 gives float32) and returns each gradient
    in its operand's dtype. (torch's own huber_loss returns the input's dtype for a mixed pair
    and then fails in backward; ours promotes as the other three do.)"""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8).to(pair[0]).requires_grad_()
    y = torch.randn(4, 3, 8, 8).to(pair[1]).requires_grad_()
    promoted = torch.promote_types(*pair)
    ours = getattr(fgl, name)(x, y)
    theirs = getattr(F, name)(x.to(promoted), y.to(promoted))
    if name != "huber_loss":
        assert getattr(F, name)(x, y).dtype == promoted
    assert ours.dtype == theirs.dtype == promoted
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    gx, gy = torch.autograd.grad(ours, (x, y))
    tx, ty = torch.autograd.grad(theirs, (x, y))
    assert (gx.dtype, gy.dtype) == (tx.dtype, ty.dtype) == pair
    torch.testing.assert_close(gx, tx, **_tol(pair[0]))
    torch.testing.assert_close(gy, ty, **_tol(pair[1]))


@pytest.mark.parametrize("wdtype", [F32, torch.bool], ids=str)
def test_weight_takes_part_in_promotion(wdtype):
    x = torch.randn(2, 3, 4, 4, dtype=BF16, requires_grad=True)
    y = torch.randn(2, 3, 4, 4, dtype=BF16)
    w = torch.rand(2, 1, 4, 4) > 0.3 if wdtype == torch.bool else torch.rand(2, 1, 4, 4)
    ours = fgl.mse_loss(x, y, weight=w)
    theirs = F.mse_loss(x, y, weight=w.expand_as(x))
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, **_tol(BF16))
    ours.backward()
    assert x.grad.dtype == BF16


# ---- autocast --------------------------------------------------------------------------------

def _float32(fn):
    """A reference loss in float32 arithmetic: outside autocast (which would run its matmuls in
    half precision), on float32 copies of the operands."""
    def run(*args, **kwargs):
        with torch.autocast(args[0].device.type, enabled=False):
            return fn(*(a.float() if a.is_floating_point() else a for a in args), **kwargs)
    return run


def _family_cases(device="cpu"):
    """(name, fastgenloss call, oracle call): the oracle is torch's own loss where one exists
    (its autocast policy applies), else the reference computed as the loss's documented
    float32 arithmetic."""
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 3, (2, 8, 8), generator=g).to(device)
    t = torch.randint(0, TIMESTEPS, (2,), generator=g).to(device)
    ac = torch.linspace(0.9999, 0.01, TIMESTEPS).to(device)
    yield ("mse_loss", lambda x, y: fgl.mse_loss(x, y), lambda x, y: F.mse_loss(x, y))
    yield ("huber_loss", lambda x, y: fgl.huber_loss(x, y), lambda x, y: F.huber_loss(x, y))
    yield ("pixel_loss none", lambda x, y: fgl.l1_loss(x, y, reduction="none"),
           lambda x, y: F.l1_loss(x, y, reduction="none"))
    yield ("diffusion_loss", lambda x, y: fgl.diffusion_loss(x, y, y * 0.5, t, ac),
           lambda x, y: _float32(ref.diffusion_loss)(x, y, y * 0.5, t, ac))
    yield ("dice_loss", lambda x, y: fgl.dice_loss(x, lab, mode="multiclass"),
           lambda x, y: _float32(ref.dice_loss)(x, lab, mode="multiclass"))
    yield ("style_loss", lambda x, y: fgl.style_loss(x, y),
           lambda x, y: _float32(ref.style_loss)(x, y))


@pytest.mark.parametrize("case", list(_family_cases()), ids=lambda c: c[0])
@pytest.mark.parametrize("target_dtype", [BF16, F32], ids=str)
def test_cpu_autocast_every_family(case, target_dtype):
    """Under CPU autocast (bfloat16), a bfloat16 model output against a bfloat16 or float32
    target: the loss is float32 (autocast's policy for losses), its value that of the float32
    loss of the same bfloat16 values, and each gradient in its operand's dtype."""
    _, ours_fn, oracle_fn = case
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=BF16, requires_grad=True)
    y = torch.randn(2, 3, 8, 8, dtype=target_dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=BF16):
        ours = ours_fn(x, y)
        theirs = oracle_fn(x, y)
    assert ours.dtype == theirs.dtype == F32
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    gx, gy = torch.autograd.grad(ours.sum(), (x, y), allow_unused=True)
    tx, ty = torch.autograd.grad(theirs.sum(), (x, y), allow_unused=True)
    assert gx.dtype == BF16
    torch.testing.assert_close(gx, tx, **_tol(BF16))
    if ty is not None:
        assert gy.dtype == target_dtype
        torch.testing.assert_close(gy, ty, **_tol(target_dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(_family_cases()), ids=lambda c: c[0])
@pytest.mark.parametrize("amp_dtype", [F16, BF16], ids=str)
def test_cuda_autocast_training_step(case, amp_dtype):
    """A CUDA AMP step: a conv's half-precision output against a float32 target under
    autocast, float16 with torch.amp.GradScaler; the loss is float32 and the weight gradient
    matches the oracle's."""
    name = case[0]
    _, ours_fn, oracle_fn = next(c for c in _family_cases("cuda") if c[0] == name)
    torch.manual_seed(8)
    x = torch.randn(2, 3, 8, 8, device="cuda")
    y = torch.randn(2, 3, 8, 8, device="cuda")
    grads = []
    for fn in (ours_fn, oracle_fn):
        torch.manual_seed(9)
        model = torch.nn.Conv2d(3, 3, 1).cuda()
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == F16)
        with torch.autocast("cuda", dtype=amp_dtype):
            out = model(x)
            assert out.dtype == amp_dtype
            loss = fn(out, y)
        assert loss.dtype == F32
        scaler.scale(loss.sum()).backward()
        grads.append(model.weight.grad / scaler.get_scale())
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-3)


def test_autocast_on_another_device_type_changes_nothing():
    x, y = torch.randn(64, dtype=BF16), torch.randn(64, dtype=BF16)
    with torch.autocast("cuda", dtype=F16, enabled=torch.cuda.is_available()):
        assert fgl.mse_loss(x, y).dtype == F.mse_loss(x, y).dtype == BF16


# ---- torch.func --------------------------------------------------------------------------

def _func_cases():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(3, 8, 8, generator=g)
    s, e = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    ac = torch.linspace(0.9999, 0.01, TIMESTEPS)
    lab = torch.randint(0, 3, (8, 8), generator=g)
    feats = torch.randn(8, 6, 6, generator=g)
    # One loss per family, written per sample (vmap adds the batch dim).
    yield "mse_loss", lambda a: fgl.mse_loss(a, y), (3, 8, 8)
    yield "charbonnier_loss", lambda a: fgl.charbonnier_loss(a, y, eps=0.1), (3, 8, 8)
    yield ("diffusion_loss",
           lambda a: fgl.diffusion_loss(a[None], s[None], e[None], torch.tensor([7]), ac),
           (4, 8, 8))
    yield ("dice_loss", lambda a: fgl.dice_loss(a[None], lab[None], mode="multiclass"),
           (3, 8, 8))
    yield "style_loss", lambda a: fgl.style_loss(a[None], feats[None]), (8, 6, 6)


@pytest.mark.parametrize("case", list(_func_cases()), ids=lambda c: c[0])
def test_torch_func_transforms(case):
    _, f, shape = case
    torch.manual_seed(4)
    xs = torch.randn(3, *shape)
    expected = []
    for x in xs:
        xa = x.clone().requires_grad_()
        expected.append(torch.autograd.grad(f(xa), xa)[0])
    expected = torch.stack(expected)
    torch.testing.assert_close(grad(f)(xs[0]), expected[0], rtol=1e-5, atol=1e-7)
    out, pullback = vjp(f, xs[0])
    torch.testing.assert_close(out, f(xs[0]))
    torch.testing.assert_close(pullback(torch.ones_like(out))[0], expected[0],
                               rtol=1e-5, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's batched fallback warns it loops
        per_sample = vmap(grad(f))(xs)
        values = vmap(f)(xs)
    torch.testing.assert_close(per_sample, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(values, torch.stack([f(x) for x in xs]))


def test_forward_mode_ad_is_a_clear_error():
    x, y = torch.randn(8), torch.randn(8)
    with pytest.raises(RuntimeError, match="pixel_fwd: forward-mode AD"):
        torch.func.jvp(lambda a: fgl.mse_loss(a, y), (x,), (torch.ones(8),))


# ---- the C++ autograd path -------------------------------------------------------------------

def _diffusion_inputs():
    torch.manual_seed(5)
    f = torch.randn(4, 4, 8, 8, requires_grad=True)
    s, e = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.randint(0, TIMESTEPS, (4,))
    return f, s, e, t, torch.linspace(0.9999, 0.01, TIMESTEPS)


@pytest.mark.parametrize("family", ["pixel", "diffusion"])
def test_eager_and_compiled_give_the_same_bits(family):
    if family == "pixel":
        x, y = torch.randn(4, 3, 16, 16, requires_grad=True), torch.randn(4, 3, 16, 16)
        fn, args = (lambda a, b: fgl.charbonnier_loss(a, b) * 3.0), (x, y)
    else:
        f, s, e, t, ac = _diffusion_inputs()
        fn = lambda a, s, e, t, ac: fgl.diffusion_loss(a, s, e, t, ac) * 3.0  # noqa: E731
        args = (f, s, e, t, ac)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    eager_loss = fn(*args)
    (eager_grad,) = torch.autograd.grad(eager_loss, args[0])
    compiled_loss = compiled(*args)
    (compiled_grad,) = torch.autograd.grad(compiled_loss, args[0])
    assert torch.equal(eager_loss, compiled_loss)
    assert torch.equal(eager_grad, compiled_grad)


def test_retain_graph_backward_twice():
    f, s, e, t, ac = _diffusion_inputs()
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    for loss, leaf in ((fgl.mse_loss(x, torch.zeros_like(x)), x),
                       (fgl.diffusion_loss(f, s, e, t, ac), f)):
        (first,) = torch.autograd.grad(loss * 2.0, leaf, retain_graph=True)
        (second,) = torch.autograd.grad(loss * 2.0, leaf)
        assert torch.equal(first, second)


def test_pixel_higher_derivatives_match_torch():
    """Second and third derivatives of the pixel losses (their backward's derivative is the
    same formula written as ATen ops) against torch's own."""
    torch.manual_seed(6)
    y = torch.randn(32, dtype=F64)
    for ours_fn, theirs_fn in ((lambda a: fgl.mse_loss(a, y), lambda a: F.mse_loss(a, y)),
                               (lambda a: fgl.huber_loss(a, y, delta=0.5),
                                lambda a: F.huber_loss(a, y, delta=0.5)),
                               (lambda a: fgl.charbonnier_loss(a, y, eps=0.3),
                                lambda a: ref.charbonnier_loss(a, y, eps=0.3))):
        results = []
        for fn in (ours_fn, theirs_fn):
            x = torch.randn(32, dtype=F64, generator=torch.Generator().manual_seed(7))
            x.requires_grad_()
            (g1,) = torch.autograd.grad(fn(x), x, create_graph=True)
            (g2,) = torch.autograd.grad((g1 * g1).sum(), x, create_graph=True)
            (g3,) = torch.autograd.grad(g2.sum(), x)
            results.append((g1, g2, g3))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)


def test_second_derivative_of_first_order_losses_raises():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    lab = torch.randint(0, 3, (2, 8, 8))
    (g,) = torch.autograd.grad(fgl.dice_loss(x, lab, mode="multiclass"), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives of the segmentation"):
        g.sum().backward()
