"""Label smoothing of the cross-entropy term (segmentation_loss's ``label_smoothing``, smp's
``smooth_factor``) and the smp-style SoftCrossEntropyLoss / SoftBCEWithLogitsLoss modules:
against fastgenloss.reference in float64 (values and gradients, every mode, ignore_index,
per_image, 2D / 3D, the kernel and the PyTorch-ops statistics), against torch's
cross_entropy(label_smoothing=...) and smp's modules, low precision against float64,
gradcheck / opcheck / torch.compile, and the argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import fastgenloss as fgl
from fastgenloss.segmentation import _stats as S
from fastgenloss import reference as R

C = 5
IGNORE = 255
MODES = ["binary", "multiclass", "multilabel"]


def make(mode, spatial, *, n=2, c=C, ignore=False, seed=0, device="cpu", soft=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1 if mode == "binary" else c, *spatial), generator=g, dtype=torch.float64) * 3
    if mode == "multiclass":
        t = torch.randint(0, c, (n, *spatial), generator=g)
        if ignore:
            t[torch.rand(t.shape, generator=g) < 0.25] = IGNORE
    else:
        t = torch.rand(x.shape, generator=g, dtype=torch.float64)
        if not soft:
            t = (t < 0.4).to(torch.float64)
        if ignore:
            t[torch.rand(t.shape, generator=g) < 0.25] = -1.0
    return x.to(device).requires_grad_(True), t.to(device)


def _grads_close(got, want, x, rtol=1e-8, atol=1e-12):
    (gx,) = torch.autograd.grad(got, x)
    (rx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(gx, rx, rtol=rtol, atol=atol)


TERMS = [dict(dice=0.0, iou=0.0, bce=1.0), dict(dice=1.0, iou=1.0, bce=0.8),
         dict(dice=1.0, iou=0.0, bce=0.5, focal=1.0, focal_alpha=0.25)]


@pytest.mark.parametrize("ls", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("terms", TERMS, ids=["ce", "dice+iou+0.8ce", "dice+ce+focal"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("spatial", [(7, 9), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_float64(device, mode, spatial, ignore, per_image, terms, ls):
    x, t = make(mode, spatial, ignore=ignore, device=device, seed=3)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    kw = dict(terms, ignore_index=ig, per_image=per_image)
    got = fgl.segmentation_loss(x, t, mode, label_smoothing=ls, **kw)
    want = R.segmentation_loss(x, t, mode=mode, label_smoothing=ls, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    _grads_close(got, want, x)
    # the smoothing changes the loss (the test is not passing on the unsmoothed term)
    plain = R.segmentation_loss(x, t, mode=mode, **kw)
    assert (want - plain).abs() > 1e-6


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mode", MODES)
def test_kernel_and_pytorch_ops_statistics_agree(device, mode, reduction, monkeypatch):
    """The CPU kernel's smoothed cross-entropy column against the PyTorch-ops statistics (the
    path CUDA takes with smoothing), channels_last and every label dtype included."""
    x, t = make(mode, (6, 10), ignore=True, device=device, seed=5)
    ig = IGNORE if mode == "multiclass" else -1
    xs = [x]
    if mode == "multiclass":
        xs.append(x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True))
    labels = [t] + ([t.to(torch.int32), t.to(torch.uint8)] if mode == "multiclass" else [])
    for xi in xs:
        for ti in labels:
            f = lambda: fgl.segmentation_loss(xi, ti, mode, dice=1.0, iou=0.0, bce=0.7,  # noqa: E731
                                              ignore_index=ig, label_smoothing=0.2,
                                              reduction=reduction)
            got = f()
            with monkeypatch.context() as m, fgl.config.override(seg_cuda_kernel=False):
                m.setattr(fgl.segmentation.functional, "seg_stats", _torch_only_stats)
                want = f()
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            _grads_close(got, want, xi)


def _torch_only_stats(input, target, *, mode, from_logits=True, ignore_index=None, eps=1e-7,
                      focal_gamma=None, focal_alpha=None, label_smoothing=0.0, fn="seg_stats",
                      batch_only=False):
    x, t, code, labels = S._check(fn, input, target, mode)
    return S._torch_stats(x, t, code, labels, from_logits, ignore_index, eps, focal_gamma,
                          focal_alpha, label_smoothing)


def test_multiclass_matches_torch_cross_entropy(device):
    """Without ignored positions the mean is torch's; with them, the sum is (torch's mean
    divides by the kept positions, smp's by all of them)."""
    x, t = make("multiclass", (9, 11), device=device, seed=7)
    for ls in (0.0, 0.1, 0.7):
        got = fgl.segmentation_loss(x, t, "multiclass", dice=0.0, iou=0.0, ce=1.0,
                                    label_smoothing=ls)
        want = TF.cross_entropy(x, t, label_smoothing=ls)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        _grads_close(got, want, x)
    x, t = make("multiclass", (9, 11), ignore=True, device=device, seed=8)
    got = fgl.segmentation_loss(x, t, "multiclass", dice=0.0, iou=0.0, ce=1.0, label_smoothing=0.3,
                                ignore_index=IGNORE, reduction="sum")
    want = TF.cross_entropy(x, t, label_smoothing=0.3, ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    _grads_close(got, want, x)


def test_soft_targets_and_probabilities(device):
    """Soft multilabel masks (the kernel), soft multiclass targets and probabilities as input
    (the PyTorch-ops statistics) with smoothing, against the reference / torch."""
    x, t = make("multilabel", (6, 7), device=device, soft=True, seed=9)
    got = fgl.segmentation_loss(x, t, "multilabel", dice=1.0, iou=0.0, bce=1.0, label_smoothing=0.2)
    want = R.segmentation_loss(x, t, mode="multilabel", dice=1.0, iou=0.0, bce=1.0,
                               label_smoothing=0.2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    _grads_close(got, want, x)
    # soft multiclass targets: torch's cross_entropy with probability targets
    x, _ = make("multiclass", (6, 7), device=device, seed=10)
    soft = torch.rand(x.shape, dtype=x.dtype, device=device).softmax(1)
    got = fgl.segmentation_loss(x, soft, "multiclass", dice=0.0, iou=0.0, ce=1.0, label_smoothing=0.25)
    want = TF.cross_entropy(x, soft, label_smoothing=0.25)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    _grads_close(got, want, x)
    # probabilities: -(1 - s) log clamp(p_y) - s mean_k log clamp(p_k)
    for mode in MODES:
        x, t = make(mode, (5, 6), device=device, seed=11, ignore=True)
        ig = IGNORE if mode == "multiclass" else -1
        p = (x.softmax(1) if mode == "multiclass" else x.sigmoid()).detach().requires_grad_(True)
        kw = dict(dice=1.0, iou=0.0, bce=1.0, from_logits=False, ignore_index=ig)
        got = fgl.segmentation_loss(p, t, mode, label_smoothing=0.1, **kw)
        want = R.segmentation_loss(p, t, mode=mode, label_smoothing=0.1, **kw)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        _grads_close(got, want, p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_against_float64(device, mode, dtype):
    """Float accumulation: the error against float64 within twice plain PyTorch's (the
    reference run in that dtype) plus a small slack."""
    x, t = make(mode, (17, 33), n=3, ignore=True, device=device, seed=12)
    ig = IGNORE if mode == "multiclass" else -1
    kw = dict(dice=1.0, iou=1.0, bce=0.8, ignore_index=ig, label_smoothing=0.1)
    exact = R.segmentation_loss(x, t, mode=mode, **kw)
    (gexact,) = torch.autograd.grad(exact, x)
    xl = x.detach().to(dtype).requires_grad_(True)
    tl = t if mode == "multiclass" else t.to(dtype)
    ours = fgl.segmentation_loss(xl, tl, mode, **kw)
    plain = R.segmentation_loss(xl, tl, mode=mode, **kw)
    (gours,) = torch.autograd.grad(ours, xl)
    (gplain,) = torch.autograd.grad(plain, xl)
    slack = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    assert abs(ours.double() - exact) <= 2 * abs(plain.double() - exact) + slack * abs(exact)
    gerr = (gours.double() - gexact).abs().max()
    gplain_err = (gplain.double() - gexact).abs().max()
    assert gerr <= 2 * gplain_err + slack * gexact.abs().max()


def test_gradcheck_opcheck_compile(device):
    for mode in MODES:
        x, t = make(mode, (3, 4), device=device, ignore=True, seed=13)
        ig = IGNORE if mode == "multiclass" else -1
        assert torch.autograd.gradcheck(
            lambda a: fgl.segmentation_loss(a, t, mode, ignore_index=ig, dice=1.0, iou=0.0,
                                            bce=1.0, label_smoothing=0.3), (x,))
    if device == "cpu":  # the CUDA kernel takes label_smoothing = 0 only (see ops.cpp)
        x, t = make("multiclass", (4, 6), device=device)
        torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default,
                              (x.detach().reshape(2, C, -1).float(), t.reshape(2, -1), 1, True, 3,
                               -1.0, -1.0, 0.2))
        xm, tm = make("multilabel", (4, 6), device=device)
        torch.library.opcheck(torch.ops.fastgenloss.seg_stats.default,
                              (xm.detach().reshape(2, C, -1), tm.reshape(2, C, -1), 2, False, 0,
                               2.0, 0.25, 0.1))
    x, t = make("multiclass", (8, 8), device=device, ignore=True)
    f = lambda a, b: fgl.segmentation_loss(a, b, "multiclass", ignore_index=IGNORE,  # noqa: E731
                                           label_smoothing=0.1)
    got = torch.compile(f, fullgraph=True)(x, t)
    want = f(x, t)
    torch.testing.assert_close(got, want)
    _grads_close(got, want, x)


def test_zero_smoothing_is_the_unsmoothed_loss(device):
    for mode in MODES:
        x, t = make(mode, (6, 6), device=device, ignore=True, seed=14)
        ig = IGNORE if mode == "multiclass" else -1
        a = fgl.segmentation_loss(x, t, mode, ignore_index=ig, label_smoothing=0.0)
        b = fgl.segmentation_loss(x, t, mode, ignore_index=ig)
        assert torch.equal(a, b)
        # without a cross-entropy term the smoothing changes nothing
        c = fgl.segmentation_loss(x, t, mode, ignore_index=ig, bce=0.0, label_smoothing=0.4)
        d = fgl.segmentation_loss(x, t, mode, ignore_index=ig, bce=0.0)
        assert torch.equal(c, d)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_label_smoothing_raises(bad):
    x, t = make("multiclass", (4, 4))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        fgl.segmentation_loss(x, t, "multiclass", label_smoothing=bad)
    with pytest.raises(ValueError, match="SoftCrossEntropyLoss: smooth_factor must be in"):
        fgl.nn.SoftCrossEntropyLoss(smooth_factor=bad)(x, t)
    with pytest.raises(ValueError, match="SoftBCEWithLogitsLoss: smooth_factor must be in"):
        fgl.nn.SoftBCEWithLogitsLoss(smooth_factor=bad, reduction="none")(x, x.detach())


def test_label_smoothing_type_and_direct_op_errors():
    x, t = make("multiclass", (4, 4))
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        fgl.segmentation_loss(x, t, "multiclass", label_smoothing="0.1x")
    with pytest.raises(TypeError, match="label_smoothing must be a Python float"):
        fgl.segmentation_loss(x, t, "multiclass", label_smoothing=torch.tensor(0.1))
    with pytest.raises(RuntimeError, match="label_smoothing must be in"):
        torch.ops.fastgenloss.seg_stats(x.detach().reshape(2, C, -1), t.reshape(2, -1), 1, False,
                                        0, -1.0, -1.0, 2.0)


# ---- the smp-style modules ----------------------------------------------------------------

def test_soft_cross_entropy_module_matches_reference(device):
    x, t = make("multiclass", (6, 7), device=device, ignore=True, seed=15)
    for red in ("mean", "sum", "none"):
        for sf in (None, 0.1):
            ours = fgl.nn.SoftCrossEntropyLoss(reduction=red, smooth_factor=sf, ignore_index=IGNORE)
            got = ours(x, t)
            want = R.soft_cross_entropy_none(x, t, sf or 0.0, IGNORE)
            want = want.mean() if red == "mean" else (want.sum() if red == "sum" else want)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            _grads_close(got.sum(), want.sum(), x)
    # classification logits [N, C] with labels [N]; the class axis elsewhere (dim=-1)
    g = torch.Generator().manual_seed(16)
    logits = torch.randn(8, C, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    lab = torch.randint(0, C, (8,), generator=g).to(device)
    got = fgl.nn.SoftCrossEntropyLoss(smooth_factor=0.2)(logits, lab)
    torch.testing.assert_close(got, TF.cross_entropy(logits, lab, label_smoothing=0.2))
    got = fgl.nn.SoftCrossEntropyLoss(smooth_factor=0.2, dim=-1)(x.movedim(1, -1), t.clamp_max(C - 1))
    want = TF.cross_entropy(x, t.clamp_max(C - 1), label_smoothing=0.2)
    torch.testing.assert_close(got, want)


def test_soft_bce_module_matches_reference(device):
    x, t = make("multilabel", (6, 7), device=device, ignore=True, seed=17)
    for red in ("mean", "sum", "none"):
        for sf in (None, 0.1):
            ours = fgl.nn.SoftBCEWithLogitsLoss(reduction=red, smooth_factor=sf, ignore_index=-1)
            got = ours(x, t)
            want = R.soft_bce_with_logits(x, t, sf or 0.0, -1, reduction=red)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            _grads_close(got.sum(), want.sum(), x)
    # any shape (the BCE sum does not depend on the grouping); pos_weight takes PyTorch ops
    y = torch.randn(10, dtype=torch.float64, device=device, requires_grad=True)
    m = (torch.rand(10, device=device) < 0.5).double()
    torch.testing.assert_close(fgl.nn.SoftBCEWithLogitsLoss(smooth_factor=0.05)(y, m),
                               TF.binary_cross_entropy_with_logits(y, m * 0.9 + 0.05))
    pw = torch.full((C, 1, 1), 2.0, dtype=torch.float64, device=device)
    got = fgl.nn.SoftBCEWithLogitsLoss(pos_weight=pw, ignore_index=None)(x, t.clamp_min(0))
    want = TF.binary_cross_entropy_with_logits(x, t.clamp_min(0), pos_weight=pw)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="y_true must have y_pred's shape"):
        fgl.nn.SoftBCEWithLogitsLoss()(x, t[:, :1])


def test_modules_match_smp():
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    x, t = make("multiclass", (6, 7), ignore=True, seed=18)
    for red in ("mean", "sum", "none"):
        for sf in (0.0, 0.15):
            for ig in (IGNORE, None):
                tt = t if ig is not None else t.clamp_max(C - 1)
                ours = fgl.nn.SoftCrossEntropyLoss(reduction=red, smooth_factor=sf, ignore_index=ig)
                theirs = smp_losses.SoftCrossEntropyLoss(reduction=red, smooth_factor=sf, ignore_index=ig)
                got, want = ours(x, tt), theirs(x, tt)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
                _grads_close(got.sum(), want.sum(), x)
    xb, tb = make("multilabel", (6, 7), ignore=True, seed=19)
    for red in ("mean", "sum", "none"):
        for sf in (None, 0.15):
            ours = fgl.nn.SoftBCEWithLogitsLoss(reduction=red, smooth_factor=sf, ignore_index=-1)
            theirs = smp_losses.SoftBCEWithLogitsLoss(reduction=red, smooth_factor=sf, ignore_index=-1)
            got, want = ours(xb, tb), theirs(xb, tb)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
            _grads_close(got.sum(), want.sum(), xb)
    # the sum with smp's smoothed cross-entropy
    dice, iou = smp_losses.DiceLoss("multiclass"), smp_losses.JaccardLoss("multiclass")
    ce = smp_losses.SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=IGNORE)
    got = fgl.segmentation_loss(x, t, "multiclass", ignore_index=IGNORE, label_smoothing=0.1)
    dice.ignore_index = iou.ignore_index = IGNORE
    want = dice(x, t) + iou(x, t) + 0.8 * ce(x, t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    _grads_close(got, want, x)


def test_modules_reject_a_bad_reduction():
    x, t = make("multiclass", (4, 4))
    with pytest.raises(ValueError, match="SoftCrossEntropyLoss: reduction must be"):
        fgl.nn.SoftCrossEntropyLoss(reduction="avg")(x, t)
    with pytest.raises(ValueError, match="SoftBCEWithLogitsLoss: reduction must be"):
        fgl.nn.SoftBCEWithLogitsLoss(reduction="avg")(x, x.detach())
