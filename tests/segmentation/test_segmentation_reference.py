"""fastgenloss.reference's segmentation losses (the oracle of the fused kernels)
against segmentation_models_pytorch itself: Dice, Jaccard, Tversky, Focal, SoftBCE and
SoftCrossEntropy, in every mode, with ignore_index, classes, class_weights, log_loss, smooth,
probabilities as input, 2D and 3D, float64; values and gradients. Skips without smp."""

from __future__ import annotations

import pytest
import torch

from fastgenloss import reference as R

try:  # smp imports timm and torchvision: any failure there means "not available", not an error
    import segmentation_models_pytorch.losses as smp_losses
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"segmentation_models_pytorch is not available ({type(exc).__name__}: {exc})",
                allow_module_level=True)

C = 4
IGNORE = 255


def make(mode, spatial, *, ignore=False, seed=0, absent_class=False):
    g = torch.Generator().manual_seed(seed)
    n = 2
    x = (torch.randn((n, 1 if mode == "binary" else C, *spatial), generator=g,
                     dtype=torch.float64) * 2).requires_grad_(True)
    if mode == "multiclass":
        t = torch.randint(0, C - 1 if absent_class else C, (n, *spatial), generator=g)
        if ignore:
            t[torch.rand(t.shape, generator=g) < 0.2] = IGNORE
    else:
        t = (torch.rand(x.shape, generator=g) < 0.4).to(torch.float64)
        if absent_class:
            t[:, -1] = 0
        if ignore:
            t[torch.rand(t.shape, generator=g) < 0.2] = -1.0
    return x, t


def compare(ours, theirs, x):
    got, want = ours(), theirs()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (gx,) = torch.autograd.grad(got, x)
    (rx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-12)


MODES = ["binary", "multiclass", "multilabel"]
SPATIAL = [(5, 7), (3, 4, 5)]


@pytest.mark.parametrize("spatial", SPATIAL, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("kind,kw", [
    ("dice", {}), ("dice", {"log_loss": True, "smooth": 1.0}), ("jaccard", {}),
    ("jaccard", {"smooth": 0.5}), ("tversky", {"alpha": 0.3, "beta": 0.7, "gamma": 1.5}),
    ("dice", {"classes": [0, 2]}), ("dice", {"class_weights": [1.0, 2.0, 0.5, 1.5]}),
    ("jaccard", {"classes": [1, 3], "class_weights": [1.0, 2.0, 0.5, 1.5]}),
])
def test_overlap_losses_match_smp(spatial, mode, ignore, kind, kw):
    if mode == "binary" and ("classes" in kw or "class_weights" in kw):
        pytest.skip("smp supports classes / class_weights only in multiclass / multilabel mode")
    x, t = make(mode, spatial, ignore=ignore, absent_class=True)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    cls = {"dice": smp_losses.DiceLoss, "jaccard": smp_losses.JaccardLoss,
           "tversky": smp_losses.TverskyLoss}[kind]
    fn = {"dice": R.dice_loss, "jaccard": R.jaccard_loss, "tversky": R.tversky_loss}[kind]
    theirs = cls(mode, ignore_index=ig, **kw)
    compare(lambda: fn(x, t, mode=mode, ignore_index=ig, **kw), lambda: theirs(x, t), x)


@pytest.mark.parametrize("mode", MODES)
def test_probabilities_as_input(mode):
    x, t = make(mode, (6, 5), seed=3)
    probs = (x.softmax(1) if mode == "multiclass" else x.sigmoid()).detach().requires_grad_(True)
    theirs = smp_losses.DiceLoss(mode, from_logits=False)
    compare(lambda: R.dice_loss(probs, t, mode=mode, from_logits=False),
            lambda: theirs(probs, t), probs)


@pytest.mark.parametrize("spatial", SPATIAL, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("kw", [{}, {"alpha": 0.25, "gamma": 1.0}, {"reduction": "sum"},
                                {"class_weights": [1.0, 2.0, 0.5, 1.5]}])
def test_focal_matches_smp(spatial, mode, ignore, kw):
    if mode == "binary" and "class_weights" in kw:
        pytest.skip("smp supports class_weights only in multiclass / multilabel mode")
    if mode == "multilabel" and ignore:
        pytest.skip("smp 0.6's FocalLoss raises IndexError here (it indexes each class's [N, H, W] "
                    "slice with the [N, C, H, W] mask); ours leaves each ignored element out")
    x, t = make(mode, spatial, ignore=ignore, seed=5)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    theirs = smp_losses.FocalLoss(mode, ignore_index=ig, **kw)
    compare(lambda: R.focal_loss(x, t, mode=mode, ignore_index=ig, **kw), lambda: theirs(x, t), x)


@pytest.mark.parametrize("spatial", SPATIAL, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_and_ce_match_smp(spatial, mode, ignore, reduction):
    x, t = make(mode, spatial, ignore=ignore, seed=7)
    ig = (IGNORE if mode == "multiclass" else -1) if ignore else None
    if mode == "multiclass":
        theirs = smp_losses.SoftCrossEntropyLoss(reduction=reduction, smooth_factor=0.0,
                                                 ignore_index=ig if ig is not None else -100)
    else:
        theirs = smp_losses.SoftBCEWithLogitsLoss(reduction=reduction, ignore_index=ig)
    compare(lambda: R.bce_loss(x, t, mode=mode, ignore_index=ig, reduction=reduction),
            lambda: theirs(x, t), x)


@pytest.mark.parametrize("mode", MODES)
def test_the_sum_matches_smp(mode):
    """IoU + Dice + 0.8 BCE (CE in multiclass mode), the issue's running example."""
    x, t = make(mode, (8, 9), seed=11)
    dice, iou = smp_losses.DiceLoss(mode), smp_losses.JaccardLoss(mode)
    bce = (smp_losses.SoftCrossEntropyLoss(smooth_factor=0.0) if mode == "multiclass"
           else smp_losses.SoftBCEWithLogitsLoss())
    compare(lambda: R.segmentation_loss(x, t, mode=mode),
            lambda: dice(x, t) + iou(x, t) + 0.8 * bce(x, t), x)


def test_per_image_is_the_mean_of_single_image_losses():
    x, t = make("multiclass", (6, 6), seed=13)
    got = R.dice_loss(x, t, mode="multiclass", per_image=True)
    # classes absent from an image contribute 0 to the mean, as in the batch-wide loss
    want = torch.stack([R.dice_loss(x[i:i + 1], t[i:i + 1], mode="multiclass")
                        for i in range(x.shape[0])]).mean()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kw", [{"normalized": True}, {"reduced_threshold": 0.5, "gamma": 1.5},
                                {"alpha": 0.25, "gamma": 0.5}], ids=str)
def test_fused_focal_module_is_drop_in_for_smp(mode, kw):
    """fastgenloss.nn.FocalLoss (the fused kernel; normalized / reduced as PyTorch ops) against
    smp's FocalLoss built with the same arguments."""
    import fastgenloss as fgl

    x, t = make(mode, (7, 6), ignore=mode != "multilabel", seed=17)
    ig = (IGNORE if mode == "multiclass" else -1) if mode != "multilabel" else None
    compare(lambda: fgl.nn.FocalLoss(mode, ignore_index=ig, **kw)(x, t),
            lambda: smp_losses.FocalLoss(mode, ignore_index=ig, **kw)(x, t), x)
