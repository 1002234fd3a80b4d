"""smp's MCCLoss, and smp's shape rules, against segmentation_models_pytorch itself: logits with 0, 1, 2 and 3
spatial dims (a classifier batch [N, C], sequences [N, C, L], images, volumes), binary logits
[N] and [N, *] without a channel dim, and targets smp accepts by its view(N, C, -1) (a
prediction [1, 1, 3] against a target [1, 1, 1, 3]); values and gradients of fastgenloss.nn's
modules. Mismatched element counts keep a clear error. Skips without smp."""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl

try:  # smp imports timm and torchvision: any failure there means "not available", not an error
    import segmentation_models_pytorch.losses as smp_losses
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"segmentation_models_pytorch is not available ({type(exc).__name__}: {exc})",
                allow_module_level=True)

C = 4
SPATIAL = [(), (7,), (5, 6), (3, 4, 5)]


def _make(mode, spatial, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 3
    x = (torch.randn((n, 1 if mode == "binary" else C, *spatial), generator=g) * 2).to(dtype)
    if mode == "multiclass":
        t = torch.randint(0, C, (n, *spatial), generator=g)
    else:
        t = (torch.rand(x.shape, generator=g) < 0.4).to(dtype)
    return x.requires_grad_(), t


def _compare(ours, theirs, x, t, dtype):
    xa = x.detach().clone().requires_grad_()
    got, want = ours(xa, t), theirs(x, t)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want.to(got.dtype), **tol)
    (ga,) = torch.autograd.grad(got, xa)
    (gb,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(ga, gb, **tol)


MODULES = [
    ("DiceLoss", {}), ("JaccardLoss", {}), ("TverskyLoss", {"alpha": 0.3, "beta": 0.7}),
    ("FocalLoss", {}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spatial", SPATIAL, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("name,kw", MODULES, ids=[m[0] for m in MODULES])
def test_any_number_of_spatial_dims(name, kw, mode, spatial, dtype):
    x, t = _make(mode, spatial, dtype)
    ours = getattr(fgl.nn, name)(mode, **kw)
    theirs = getattr(smp_losses, name)(mode, **kw)
    _compare(ours, theirs, x, t, dtype)


@pytest.mark.parametrize("name,kw", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("shape", [(16, 5, 5), (16, 9)], ids=str)
def test_binary_logits_without_a_channel_dim(name, kw, shape):
    """smp's binary mode views logits as [N, 1, -1]: [N, H, W] and [N, L] are one class."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    t = (torch.rand(shape, generator=g) < 0.5).to(torch.float64)
    _compare(getattr(fgl.nn, name)("binary", **kw), getattr(smp_losses, name)("binary", **kw),
             x, t, torch.float64)


def test_binary_focal_on_flat_logits():
    """smp's FocalLoss('binary') flattens: logits [N] against targets [N]."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, generator=g, dtype=torch.float64).requires_grad_()
    t = (torch.rand(64, generator=g) < 0.5).to(torch.float64)
    _compare(fgl.nn.FocalLoss("binary"), smp_losses.FocalLoss("binary"), x, t, torch.float64)


@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss"])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_target_viewed_like_the_prediction(name, mode):
    """smp compares y_pred.view(N, C, -1) with y_true.view(N, C, -1): a prediction [1, 1, 3]
    against a target [1, 1, 1, 3] is accepted (smp's own tests rely on it)."""
    x = torch.tensor([[[1.0, -2.0, 3.0]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[[1.0, 0.0, 1.0]]]], dtype=torch.float64)
    _compare(getattr(fgl.nn, name)(mode, from_logits=False),
             getattr(smp_losses, name)(mode, from_logits=False), x.sigmoid().detach()
             .requires_grad_(), t, torch.float64)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32,
                                         torch.int64], ids=str)
def test_labels_of_any_integer_dtype(label_dtype):
    x, t = _make("multiclass", (5, 6), torch.float64)
    ours = fgl.nn.DiceLoss("multiclass")(x, t.to(label_dtype))
    torch.testing.assert_close(ours, smp_losses.DiceLoss("multiclass")(x, t))


@pytest.mark.parametrize("mode,x_shape,t_shape,match", [
    ("binary", (2, 1, 3), (2, 1, 4), r"target must have \[N, \*\]"),
    ("multilabel", (2, 3, 4), (2, 3, 5), "target must have the input's shape"),
    ("multiclass", (2, 3, 4), (2, 5), "one label per position"),
    ("multiclass", (2, 3, 4), (3, 4), "batch dim 2"),
    ("multiclass", (5,), (5,), r"\[N, C, \*spatial\]"),
])
def test_mismatched_counts_are_errors(mode, x_shape, t_shape, match):
    x = torch.randn(x_shape)
    t = (torch.randint(0, 2, t_shape) if mode == "multiclass" else torch.ones(t_shape))
    with pytest.raises(ValueError, match=match):
        fgl.dice_loss(x, t, mode=mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spatial", SPATIAL, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_mcc_loss_matches_smp(spatial, dtype, eps):
    """On probabilities, as smp's MCCLoss takes them; any shape smp's view(N, 1, -1) accepts."""
    g = torch.Generator().manual_seed(3)
    p = torch.rand((4, 1, *spatial), generator=g).to(dtype).requires_grad_()
    t = (torch.rand((4, *spatial), generator=g) < 0.3).to(dtype)
    _compare(fgl.nn.MCCLoss(eps), smp_losses.MCCLoss(eps), p, t, dtype)


def test_mcc_loss_from_logits():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 1, 9, 9, generator=g, dtype=torch.float64).requires_grad_()
    t = (torch.rand(2, 1, 9, 9, generator=g) < 0.5).to(torch.float64)
    _compare(fgl.nn.MCCLoss(from_logits=True), lambda a, b: smp_losses.MCCLoss()(a.sigmoid(), b),
             z, t, torch.float64)


def test_mcc_loss_errors():
    with pytest.raises(ValueError, match="mcc_loss: mode must be 'binary'"):
        fgl.mcc_loss(torch.rand(2, 3, 4), torch.randint(0, 3, (2, 4)), mode="multiclass")
    with pytest.raises(ValueError, match=r"mcc_loss: target must have \[N, \*\]"):
        fgl.mcc_loss(torch.rand(2, 1, 4), torch.ones(2, 1, 5))


@pytest.mark.parametrize("case", ["mcc", "dice classifier batch", "binary flat"])
def test_new_shapes_compile_without_graph_breaks(case):
    g = torch.Generator().manual_seed(5)
    if case == "mcc":
        x = torch.rand(2, 1, 8, 8, generator=g)
        t = (torch.rand(2, 1, 8, 8, generator=g) < 0.5).float()
        fn = fgl.mcc_loss
    elif case == "dice classifier batch":
        x, t = torch.randn(32, 5, generator=g), torch.randint(0, 5, (32,), generator=g)
        fn = lambda a, b: fgl.dice_loss(a, b, mode="multiclass")  # noqa: E731
    else:
        x, t = torch.randn(32, generator=g), (torch.rand(32, generator=g) < 0.5).float()
        fn = lambda a, b: fgl.focal_loss(a, b, mode="binary")  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = compiled(xa, t), fn(xb, t)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, xa)[0], torch.autograd.grad(want, xb)[0])


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
def test_classifier_batch_per_image_and_batch_wide(mode, per_image):
    """[N, C] logits run as one sample of N positions for batch-wide statistics (the kernels
    vectorize over positions) and per sample with per_image: both as the reference."""
    from fastgenloss import reference as R
    x, t = _make(mode, (), torch.float64, seed=6)
    _compare(lambda a, b: fgl.dice_loss(a, b, mode=mode, per_image=per_image),
             lambda a, b: R.dice_loss(a, b, mode=mode, per_image=per_image), x, t,
             torch.float64)
