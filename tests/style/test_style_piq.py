"""perceptual_loss against piq itself (a test extra; skipped when piq is absent): piq's
ContentLoss and StyleLoss on the same randomly initialized VGG-like network.

piq's conventions, converted here: its content distance per layer is averaged over H, W and summed
over channels (C_l times our mean), and its Gram matrices are not normalized (our style loss with
normalize=True divides each Gram by C H W), so the weights differ by those factors. piq keeps
ImageNet's mean/std as float32 values (0.485 rounded to float32), hence a relative tolerance of
1e-6 on float64 data rather than ~1e-12."""

from __future__ import annotations

import copy

import pytest
import torch

import fastgenloss as fgl

piq = pytest.importorskip("piq")

from test_perceptual import images, vgg_like  # noqa: E402

LAYERS = ["1", "3", "6", "8"]  # relu1_1, relu1_2, relu2_1, relu2_2 of the VGG-like stack


def _shapes(net, layers, hw=16):
    """The feature shapes at the layers, for a hw x hw image."""
    x = torch.zeros(1, 3, hw, hw, dtype=torch.float64)
    out = {}
    for name, m in net.named_children():
        x = m(x)
        out[name] = x.shape
    return [out[name] for name in layers]


@pytest.mark.parametrize("distance,criterion", [("mse", "mse"), ("mae", "l1")])
def test_content_loss_matches_piq(distance, criterion):
    net = vgg_like(inplace=False)
    x, y = images(hw=16)
    x.requires_grad_(True)
    weights = [1.0, 0.5, 0.25, 2.0]
    theirs_fn = piq.ContentLoss(copy.deepcopy(net), layers=LAYERS, weights=weights,
                                distance=distance)
    theirs = theirs_fn(x, y)
    chans = [s[1] for s in _shapes(net, LAYERS)]
    ours = fgl.perceptual_loss(x, y, net, LAYERS, layer_weights=[w * c for w, c in
                                                                 zip(weights, chans)],
                               criterion=criterion, normalize_input=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)
    (gx,) = torch.autograd.grad(ours, x)
    (tx,) = torch.autograd.grad(theirs, x)
    assert (gx - tx).abs().max() <= 1e-6 * tx.abs().max()  # relative to the largest entry


def test_style_loss_matches_piq():
    net = vgg_like(inplace=False)
    x, y = images(hw=16)
    x.requires_grad_(True)
    weights = [1.0, 1e-2, 1.0, 1e-1]
    theirs = piq.StyleLoss(copy.deepcopy(net), layers=LAYERS, weights=weights, distance="mse")(x, y)
    norm = [float(s[1] * s[2] * s[3]) for s in _shapes(net, LAYERS)]  # C H W per layer
    # content weights 0: style terms only
    ours = fgl.perceptual_loss(x, y, net, LAYERS, layer_weights=[0.0] * 4,
                               style_weights=[w * n * n for w, n in zip(weights, norm)],
                               normalize_input=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)
    (gx,) = torch.autograd.grad(ours, x)
    (tx,) = torch.autograd.grad(theirs, x)
    assert (gx - tx).abs().max() <= 1e-6 * tx.abs().max()  # relative to the largest entry
