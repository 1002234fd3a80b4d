"""Modules: drop-in for torch's (isinstance, constructor arguments, state_dict, repr)."""

from __future__ import annotations

import pytest
import torch

import fastgenloss
import fastgenloss.nn as fnn


@pytest.mark.parametrize("ours,theirs,kwargs", [
    (fnn.L1Loss, torch.nn.L1Loss, {"reduction": "sum"}),
    (fnn.MSELoss, torch.nn.MSELoss, {"reduction": "none"}),
    (fnn.HuberLoss, torch.nn.HuberLoss, {"delta": 0.5}),
    (fnn.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.25}),
])
def test_drop_in_modules(ours, theirs, kwargs, device):
    a, b = ours(**kwargs), theirs(**kwargs)
    assert isinstance(a, theirs)
    assert a.state_dict() == b.state_dict() == {}
    assert a.load_state_dict(b.state_dict()) is not None
    assert repr(a) == repr(b)
    x = torch.randn(3, 4, 5, device=device, requires_grad=True)
    y = torch.randn(3, 4, 5, device=device)
    torch.testing.assert_close(a(x, y), b(x, y))
    ga = torch.autograd.grad(a(x, y).sum(), x)[0]
    gb = torch.autograd.grad(b(x, y).sum(), x)[0]
    torch.testing.assert_close(ga, gb)


def test_modules_take_weight(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    y = torch.randn(2, 3, 4, 4, device=device)
    mask = (torch.rand(2, 1, 4, 4, device=device) > 0.5).float()
    torch.testing.assert_close(fnn.L1Loss()(x, y, weight=mask),
                               fastgenloss.l1_loss(x, y, weight=mask))
    torch.testing.assert_close(
        fnn.PixelLoss(l1=1.0, mse=0.5, masked_mean=True)(x, y, weight=mask),
        fastgenloss.pixel_loss(x, y, l1=1.0, mse=0.5, weight=mask, masked_mean=True))
    torch.testing.assert_close(fnn.CharbonnierLoss(eps=0.1)(x, y),
                               fastgenloss.charbonnier_loss(x, y, eps=0.1))


def test_module_reprs():
    assert repr(fnn.PixelLoss(l1=1.0, mse=0.5)) == (
        "PixelLoss(l1=1.0, mse=0.5, reduction='mean', masked_mean=False)")
    assert repr(fnn.CharbonnierLoss()) == "CharbonnierLoss(eps=0.001, reduction='mean', masked_mean=False)"


def test_module_in_compiled_model():
    torch._dynamo.reset()
    crit = fnn.PixelLoss(l1=1.0, charbonnier=0.5)
    x = torch.randn(2, 8, requires_grad=True)
    y = torch.randn(2, 8)
    got = torch.compile(crit, fullgraph=True)(x, y)
    torch.testing.assert_close(got, crit(x, y))
