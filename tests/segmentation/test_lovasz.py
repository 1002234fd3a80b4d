"""The Lovász losses (fastgenloss.lovasz_loss, nn.LovaszLoss): against smp's LovaszLoss (float32,
2 spatial dims: where smp runs), against the reference elsewhere (float64, which smp's raises
on; 0, 1 and 3 spatial dims), the ATen path (CUDA's) against the CPU kernel, ties, gradcheck,
opcheck, torch.compile, torch.func and errors."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import fastgenloss as fgl
from fastgenloss import config
from fastgenloss import reference as R

try:  # smp imports timm and torchvision: any failure there means "not available"
    import segmentation_models_pytorch.losses as smp_losses
except Exception:  # noqa: BLE001
    smp_losses = None

C = 4
IGNORE = 255
MODES = ["binary", "multiclass", "multilabel"]


def make(mode, spatial, dtype=torch.float64, *, ignore=False, seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((n, 1 if mode == "binary" else C, *spatial), generator=g) * 2).to(dtype)
    if mode == "multiclass":
        t = torch.randint(0, C, (n, *spatial), generator=g)
    else:
        t = (torch.rand(x.shape, generator=g) < 0.4).to(dtype)
    if ignore:
        t[torch.rand(t.shape, generator=g) < 0.2] = IGNORE
    return x.requires_grad_(), t


def compare(ours, theirs, x, t, tol):
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    got, want = ours(xa, t), theirs(xb, t)
    torch.testing.assert_close(got, want.to(got.dtype), **tol)
    (ga,) = torch.autograd.grad(got, xa)
    (gb,) = torch.autograd.grad(want, xb)
    torch.testing.assert_close(ga, gb, **tol)


F32 = dict(rtol=2e-5, atol=2e-6)
F64 = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(smp_losses is None, reason="segmentation_models_pytorch is not available")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_matches_smp(mode, per_image, ignore):
    x, t = make(mode, (6, 7), torch.float32, ignore=ignore)
    kw = dict(per_image=per_image, ignore_index=IGNORE if ignore else None)
    compare(fgl.nn.LovaszLoss(mode, **kw), smp_losses.LovaszLoss(mode, **kw), x, t, F32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spatial", [(), (9,), (5, 6), (3, 4, 5)], ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_matches_reference_float64(mode, spatial, per_image, ignore):
    x, t = make(mode, spatial, ignore=ignore, seed=1)
    kw = dict(per_image=per_image, ignore_index=IGNORE if ignore else None)
    compare(lambda a, b: fgl.lovasz_loss(a, b, mode, **kw),
            lambda a, b: R.lovasz_loss(a, b, mode=mode, **kw), x, t, F64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_aten_path_matches_cpu_kernel(mode, per_image, dtype):
    """The path CUDA takes (ATen ops: a stable sort of every problem at once) against the
    radix-sort kernel, bit for bit in the order of the ties."""
    x, t = make(mode, (6, 5), dtype, ignore=True, seed=2)
    fn = lambda a, b: fgl.lovasz_loss(a, b, mode, per_image=per_image,  # noqa: E731
                                      ignore_index=IGNORE)
    with config.override(lovasz_cpu_kernel=False):
        xa = x.detach().clone().requires_grad_()
        want = fn(xa, t)
        (gw,) = torch.autograd.grad(want, xa)
    xb = x.detach().clone().requires_grad_()
    got = fn(xb, t)
    (gg,) = torch.autograd.grad(got, xb)
    tol = F64 if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(gg.float(), gw.float(), **tol)


@pytest.mark.parametrize("mode", MODES)
def test_ties_stable_sort(mode):
    """Logits on a coarse grid: most errors tie. The loss does not depend on how ties are
    ordered; the sort is stable (ties keep element order), so the gradient is the reference's
    with torch.sort(stable=True), and the same on every run."""
    x, t = make(mode, (8, 8), seed=3)
    if mode == "multiclass":  # three logit vectors repeated over the positions: exact ties
        palette = x.detach()[0, :, 0, :3]
        pick = torch.randint(0, 3, (x.shape[0], 8, 8), generator=torch.Generator().manual_seed(9))
        x = palette[:, pick].permute(1, 0, 2, 3).contiguous().requires_grad_()
    else:  # logits on a coarse grid: the errors 1 -+ z tie exactly
        x = (x.detach() * 2).round().div(2).requires_grad_()
    compare(lambda a, b: fgl.lovasz_loss(a, b, mode),
            lambda a, b: R.lovasz_loss(a, b, mode=mode), x, t, F64)
    perm = torch.randperm(x.shape[-1])  # reordering tied elements leaves the loss unchanged
    torch.testing.assert_close(fgl.lovasz_loss(x[..., perm], t[..., perm], mode),
                               fgl.lovasz_loss(x, t, mode), **F64)


def test_half_precision_input():
    x, t = make("multiclass", (6, 6), torch.bfloat16, seed=4)
    got = fgl.lovasz_loss(x, t, "multiclass")
    assert got.dtype == torch.float32
    want = R.lovasz_loss(x.detach().double(), t, mode="multiclass")
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-3)
    got.backward()
    assert x.grad.dtype == torch.bfloat16


def test_edge_cases():
    x, t = make("multiclass", (4, 4), seed=5)
    t_all_ignored = torch.full_like(t, IGNORE)
    loss = fgl.lovasz_loss(x, t_all_ignored, "multiclass", ignore_index=IGNORE)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.count_nonzero(g) == 0
    xb, tb = make("binary", (4, 4), seed=6)
    loss = fgl.lovasz_loss(xb, torch.full_like(tb, IGNORE), "binary", ignore_index=IGNORE)
    assert loss.item() == 0.0
    empty = torch.zeros(0, C, 4, requires_grad=True)
    assert fgl.lovasz_loss(empty, torch.zeros(0, 4, dtype=torch.long), "multiclass").item() == 0


def test_probabilities_as_input():
    x, t = make("multiclass", (5, 5), seed=7)
    p = x.detach().softmax(1).requires_grad_()
    torch.testing.assert_close(fgl.lovasz_loss(p, t, "multiclass", from_logits=False),
                               R.lovasz_loss(x.detach(), t, mode="multiclass"), **F64)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_opcheck_compile(mode):
    x, t = make(mode, (3, 4), seed=8, n=2)
    assert torch.autograd.gradcheck(lambda a: fgl.lovasz_loss(a, t, mode, per_image=True),
                                    (x,), eps=1e-7, atol=1e-6)
    kind = 1 if mode == "multiclass" else 0
    tt = t.reshape(2, -1) if mode == "multiclass" else t.reshape(2, x.shape[1], -1)
    opcheck(torch.ops.fastgenloss.lovasz_fwd.default,
            (x.detach().reshape(2, x.shape[1], -1).requires_grad_(), tt, kind, False, False, 0,
             True))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: fgl.lovasz_loss(a, b, mode), fullgraph=True)
    compare(compiled, lambda a, b: fgl.lovasz_loss(a, b, mode), x, t, F64)


def test_torch_func_and_second_derivative():
    x, t = make("multiclass", (4, 4), seed=9, n=1)
    f = lambda a: fgl.lovasz_loss(a, t, "multiclass")  # noqa: E731
    (want,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(torch.func.grad(f)(x.detach()), want)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives of the Lovász"):
        g.sum().backward()


@pytest.mark.parametrize("mode,x_shape,t,match", [
    ("multiclass", (2, 3, 4), torch.rand(2, 3, 4), "takes integer labels"),
    ("binary", (2, 1, 4), None, "the Lovász hinge .* takes logits"),
    ("multiclass", (2, 3, 4), torch.zeros(2, 5, dtype=torch.long), "one label per position"),
])
def test_errors(mode, x_shape, t, match):
    x = torch.randn(x_shape)
    kw = {"from_logits": False} if t is None else {}
    target = torch.ones(x_shape) if t is None else t
    with pytest.raises(ValueError, match=match):
        fgl.lovasz_loss(x, target, mode, **kw)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_segmentation_loss_takes_mcc_and_lovasz_terms(mode):
    x, t = make(mode, (6, 6), seed=10)
    kw = dict(dice=1.0, iou=0.0, bce=0.5, lovasz=0.7)
    want = (R.dice_loss(x, t, mode=mode) + 0.5 * R.bce_loss(x, t, mode=mode)
            + 0.7 * R.lovasz_loss(x, t, mode=mode))
    if mode == "binary":
        kw["mcc"] = 0.3
        want = want + 0.3 * R.mcc_loss(x.sigmoid(), t)
    got = fgl.segmentation_loss(x, t, mode, **kw)
    torch.testing.assert_close(got, want, **F64)
    module = fgl.nn.SegmentationLoss(mode, **kw)
    torch.testing.assert_close(module(x, t), want, **F64)
    with pytest.raises(ValueError, match="reduction='mean'"):
        fgl.segmentation_loss(x, t, mode, lovasz=1.0, reduction="sum")
