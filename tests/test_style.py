"""Gram matrices and the style loss against fastgenloss.reference (bmm + mse, float64 oracle,
flash-attn 2x rule): odd and large shapes, every dtype, targets as features or precomputed
Grams (broadcast), float16 Grams that would overflow, gradients, opcheck, torch.compile."""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R
from helpers import check_against_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(2, 1, 1, 1), (2, 3, 5, 7), (1, 65, 513), (3, 64, 16, 16), (2, 3, 1, 513),
          (2, 33, 9, 9)]


def _factor(dtype):
    # float64: plain PyTorch *is* the float64 oracle, so the 2x rule leaves only the slack; a
    # different (fused) summation order differs by a few ulps of the Grams, whose difference D
    # can be much smaller than they are: allow 1e3 ulps of the result's magnitude there
    return 1e3 if dtype == torch.float64 else 16.0


def feats(shape, device, requires_grad=True, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(device).requires_grad_(requires_grad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gram_matches_reference(device, dtype, shape):
    x = feats(shape, device)
    check_against_reference(lambda f: fgl.gram_matrix(f), lambda f: R.gram_matrix(f), [x], dtype,
                            factor=_factor(dtype))


@pytest.mark.parametrize("normalize", [True, False])
def test_gram_unnormalized_and_layouts(device, normalize):
    x = torch.randn(2, 8, 6, 5, device=device)
    want = R.gram_matrix(x, normalize=normalize)
    for v in (x, x.to(memory_format=torch.channels_last), x[..., ::1].transpose(2, 3)):
        v = v.contiguous() if v is not x and v.shape != x.shape else v
        torch.testing.assert_close(fgl.gram_matrix(x.to(memory_format=torch.channels_last),
                                                   normalize=normalize), want)
    xs = torch.randn(2, 8, 6, 10, device=device)[..., ::2]  # non-contiguous
    torch.testing.assert_close(fgl.gram_matrix(xs, normalize=normalize),
                               R.gram_matrix(xs, normalize=normalize))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["features", "gram", "gram1", "gram2d"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_style_loss_matches_reference(device, dtype, shape, target, reduction):
    x = feats(shape, device)
    n, c = shape[:2]
    if target == "features":
        t = feats(shape, device)
    else:
        y = torch.randn(shape, dtype=torch.float64, device=device)
        g = R.gram_matrix(y)
        t = {"gram": g, "gram1": g[:1], "gram2d": g[0]}[target].clone().requires_grad_(True)
    is_gram = target != "features"
    check_against_reference(
        lambda a, b: fgl.style_loss(a, b, reduction=reduction, target_is_gram=is_gram),
        lambda a, b: R.style_loss(a, b, reduction=reduction, target_is_gram=is_gram),
        [x, t], dtype, factor=_factor(dtype))


def test_float16_gram_does_not_overflow(device):
    # unscaled sums of 4096 products of ~300^2 are ~4e8: far past float16's 65504
    x = (torch.randn(2, 4, 64, 64, device=device) * 300).half()
    g = fgl.gram_matrix(x)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.float(), R.gram_matrix(x.double()).float(), rtol=2e-3, atol=1)
    y = (torch.randn(2, 4, 64, 64, device=device) * 300).half()
    loss = fgl.style_loss(x.requires_grad_(), y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    want = R.style_loss(x.detach().double(), y.double())
    torch.testing.assert_close(loss.double(), want, rtol=5e-3, atol=0)


def test_large_hw(device):
    x = feats((1, 16, 256, 256), device, requires_grad=False).float()
    torch.testing.assert_close(fgl.gram_matrix(x), R.gram_matrix(x.double()).float(),
                               rtol=1e-4, atol=1e-6)


def test_gradcheck(device):
    x = feats((2, 3, 4, 5), device)
    y = feats((2, 3, 4, 5), device)
    g = R.gram_matrix(feats((2, 3, 4, 5), device, requires_grad=False)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fgl.gram_matrix(a), (x,))
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda a, b: fgl.style_loss(a, b, reduction=red), (x, y))
        assert torch.autograd.gradcheck(
            lambda a, b: fgl.style_loss(a, b, reduction=red, target_is_gram=True), (x, g))
        assert torch.autograd.gradcheck(
            lambda a, b: fgl.style_loss(a, b, reduction=red, target_is_gram=True), (x, g[:1]))


def test_target_kind_inference_and_errors():
    x = torch.randn(2, 4, 4)  # L == C: a [2, 4, 4] target could be either
    with pytest.raises(ValueError, match=r"could be features or a Gram .* target_is_gram"):
        fgl.style_loss(x, torch.randn(2, 4, 4))
    torch.testing.assert_close(fgl.style_loss(x, torch.randn(2, 4, 4), target_is_gram=False).shape,
                               torch.Size([]))
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"neither features like input_features \[2, 4, 3, 3\].*"
                                         r"nor a Gram \[2, 4, 4\], \[1, 4, 4\] or \[4, 4\]"):
        fgl.style_loss(x, torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match=r"features \[N, C, H, W\].*got \[4, 9\] float32"):
        fgl.gram_matrix(torch.randn(4, 9))
    with pytest.raises(TypeError, match=r"features must be float32, float64, float16 or bfloat16"):
        fgl.gram_matrix(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        fgl.style_loss(x, torch.randn(4, 4), reduction="avg")
    with pytest.raises(ValueError, match=r"target Gram \[3, 3\] float32 on cpu must be"):
        fgl.style_loss(x, torch.randn(3, 3), target_is_gram=True)


def _op_samples(device):
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    y = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    g = torch.randn(1, 3, 3, device=device, requires_grad=True)
    yield "gram", (x, 0.01)
    for red in (0, 1, 2):
        yield "style_fwd", (x, y, False, 0.01, red)
        yield "style_fwd", (x, g, True, 0.01, red)


@pytest.mark.parametrize("i", range(7))
def test_opcheck(device, i):
    name, args = list(_op_samples(device))[i]
    torch.library.opcheck(getattr(torch.ops.fastgenloss, name).default, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    style = R.gram_matrix(torch.randn(1, 8, 16, 16, device=device))

    def loss_of(x):
        f = conv(x)
        return fgl.style_loss(f, style) + fgl.gram_matrix(f).square().mean()

    eager = loss_of(x)
    eager.backward()
    ge = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    got = torch.compile(loss_of, fullgraph=True)(x)
    got.backward()
    torch.testing.assert_close(got, eager)
    for p, g in zip(conv.parameters(), ge):
        torch.testing.assert_close(p.grad, g)


# Channel counts at which the CPU computes the Gram by strips of its upper triangle
# (csrc/style_ops.cpp: 64 rows a strip up to C = 512, 128 above), with a last strip of 1, 2 or
# 6 rows: the mirrored lower triangle, the strip edges and the diagonal blocks.
STRIP_SHAPES = [(2, 128, 3, 4), (2, 130, 7, 5), (1, 513, 3, 3), (1, 1030, 6)]


@pytest.mark.parametrize("shape", STRIP_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_gram_strips_match_reference(device, dtype, shape):
    x = feats(shape, device)
    check_against_reference(lambda f: fgl.gram_matrix(f), lambda f: R.gram_matrix(f), [x], dtype,
                            factor=_factor(dtype))
    g = fgl.gram_matrix(x.detach().to(dtype))
    # every entry, mirrored ones included, is the dot product of its two rows
    f = x.detach().flatten(2)
    i, j = shape[1] - 1, 0  # the last row against the first: below the diagonal, mirrored
    want = (f[:, i] * f[:, j]).sum(-1) / f[0].numel()
    torch.testing.assert_close(g[:, i, j].double(), want, rtol=1e-2 if dtype == torch.bfloat16
                               else 1e-5, atol=1e-4 if dtype == torch.bfloat16 else 1e-7)


@pytest.mark.parametrize("target", ["features", "gram"])
@pytest.mark.parametrize("shape", STRIP_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_style_loss_strips_match_reference(device, dtype, shape, target):
    x = feats(shape, device)
    t = feats(shape, device) if target == "features" else \
        R.gram_matrix(torch.randn(shape, dtype=torch.float64, device=device)).requires_grad_(True)
    is_gram = target == "gram"
    check_against_reference(
        lambda a, b: fgl.style_loss(a, b, target_is_gram=is_gram),
        lambda a, b: R.style_loss(a, b, target_is_gram=is_gram), [x, t], dtype,
        factor=_factor(dtype))
