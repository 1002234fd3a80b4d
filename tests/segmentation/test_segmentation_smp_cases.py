"""The module-level cases of segmentation_models_pytorch's own loss tests (tests/test_losses.py),
written as our tests against fastgenloss.nn: the same inputs, shapes and expected values (ideal
and worst predictions, the 1 - 1/3 cases, the focal ordering), plus MCC's ideal and worst
cases. Needs no smp (the expected values are the tests' own); where smp is installed, its
modules give the same values."""

from __future__ import annotations

import pytest
import torch

from fastgenloss import nn as fnn

try:  # smp imports timm and torchvision: any failure there means "not available"
    import segmentation_models_pytorch.losses as smp_losses
except Exception:  # noqa: BLE001
    smp_losses = None

EPS = 1e-5


def t(values, *shape, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).view(*shape)


# (y_pred, y_true, expected): smp's binary cases; the "worst" ones compare a [1, 1, 3]
# prediction with a [1, 1, 1, 3] target (smp's view(N, C, -1) accepts it).
BINARY_CASES = [
    (t([1.0, 1.0, 1.0], 1, 1, 1, -1), t([1, 1, 1], 1, 1, 1, -1), 0.0),
    (t([1.0, 0.0, 1.0], 1, 1, 1, -1), t([1, 0, 1], 1, 1, 1, -1), 0.0),
    (t([0.0, 0.0, 0.0], 1, 1, 1, -1), t([0, 0, 0], 1, 1, 1, -1), 0.0),
    (t([1.0, 1.0, 1.0], 1, 1, -1), t([0, 0, 0], 1, 1, 1, -1), 0.0),
    (t([1.0, 0.0, 1.0], 1, 1, -1), t([0, 1, 0], 1, 1, 1, -1), 1.0),
    (t([0.0, 0.0, 0.0], 1, 1, -1), t([1, 1, 1], 1, 1, 1, -1), 1.0),
]


def _binary_modules():
    yield "dice", lambda lib: lib.DiceLoss("binary", from_logits=False)
    yield "tversky", lambda lib: lib.TverskyLoss("binary", from_logits=False, alpha=0.5, beta=0.5)
    yield "jaccard", lambda lib: lib.JaccardLoss("binary", from_logits=False)


@pytest.mark.parametrize("module", list(_binary_modules()), ids=lambda m: m[0])
@pytest.mark.parametrize("case", range(len(BINARY_CASES)))
def test_binary_overlap_losses(module, case):
    y_pred, y_true, expected = BINARY_CASES[case]
    loss = module[1](fnn)(y_pred, y_true)
    assert float(loss) == pytest.approx(expected, abs=EPS)
    if smp_losses is not None:
        assert float(loss) == pytest.approx(float(module[1](smp_losses)(y_pred, y_true)), abs=EPS)


def test_binary_jaccard_single_pixel():
    loss = fnn.JaccardLoss("binary", from_logits=False)(t([1.0], 1, 1, 1, 1), t([1], 1, 1, 1, 1))
    assert float(loss) == pytest.approx(0.0, abs=EPS)


MULTICLASS_PRED = [[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]]


@pytest.mark.parametrize("y_pred,y_true,expected", [
    (MULTICLASS_PRED, [[0, 0, 1, 1]], 0.0),
    (MULTICLASS_PRED, [[1, 1, 0, 0]], 1.0),
    ([[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]], [[1, 1, 0, 0]], 1.0 - 1.0 / 3.0),
])
def test_multiclass_jaccard(y_pred, y_true, expected):
    loss = fnn.JaccardLoss("multiclass", from_logits=False)(torch.tensor(y_pred),
                                                            torch.tensor(y_true))
    assert float(loss) == pytest.approx(expected, abs=EPS)


@pytest.mark.parametrize("y_pred,y_true,expected", [
    (MULTICLASS_PRED, MULTICLASS_PRED, 0.0),
    (MULTICLASS_PRED, [[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]], 1.0),
    ([[[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]], [[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]],
     1.0 - 1.0 / 3.0),
])
def test_multilabel_jaccard(y_pred, y_true, expected):
    loss = fnn.JaccardLoss("multilabel", from_logits=False)(torch.tensor(y_pred),
                                                            torch.tensor(y_true))
    assert float(loss) == pytest.approx(expected, abs=EPS)


def test_binary_focal_ordering_on_flat_logits():
    """A good prediction has the lower loss: logits [3] (no channel dim) against [3] targets."""
    target = torch.tensor([1, 0, 1])
    crit = fnn.FocalLoss("binary")
    good = crit(torch.tensor([10.0, -10.0, 10.0]), target)
    bad = crit(torch.tensor([-1.0, 2.0, 0.0]), target)
    assert good < bad


def test_multiclass_focal_ordering_on_a_classifier_batch():
    """Logits [N, C] (no spatial dims) against labels [N]."""
    target = torch.tensor([1, 0, 2])
    crit = fnn.FocalLoss("multiclass")
    good = crit(torch.tensor([[0.0, 10.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 10.0]]), target)
    bad = crit(torch.tensor([[0.0, -10.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]]), target)
    assert good < bad


def test_soft_cross_entropy_and_bce_with_ignored_labels():
    """smp's cases print the loss; here it is finite and, with smp installed, smp's."""
    logits = torch.tensor([[9.0, -9, -9, -9], [-9, 9, -9, -9], [-9, -9, 9, -9], [-9, -9, -9, 9]])
    labels = torch.tensor([0, 1, -100, 3])
    ce = fnn.SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=-100)(logits, labels)
    bce_logits = torch.tensor([-9.0, 9, 1, 9, -9])
    bce_labels = torch.tensor([0, 1, -100, 1, 0])
    bce = fnn.SoftBCEWithLogitsLoss(smooth_factor=0.1, ignore_index=-100)(bce_logits, bce_labels)
    assert torch.isfinite(ce) and torch.isfinite(bce)
    if smp_losses is not None:
        want_ce = smp_losses.SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=-100)(logits,
                                                                                       labels)
        want_bce = smp_losses.SoftBCEWithLogitsLoss(smooth_factor=0.1, ignore_index=-100)(
            bce_logits, bce_labels)
        torch.testing.assert_close(ce, want_ce)
        torch.testing.assert_close(bce, want_bce)


@pytest.mark.parametrize("y_pred,y_true,expected", [
    ([1.0, 0.0, 1.0, 0.0], [1, 0, 1, 0], 0.0),      # ideal: MCC = 1
    ([0.0, 1.0, 0.0, 1.0], [1, 0, 1, 0], 2.0),      # worst: MCC = -1
    ([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0], 1.0),      # one class predicted: MCC ~ 0
])
def test_mcc_cases(y_pred, y_true, expected):
    p, y = t(y_pred, 1, 1, 2, 2), t(y_true, 1, 1, 2, 2)
    loss = fnn.MCCLoss()(p, y)
    assert float(loss) == pytest.approx(expected, abs=1e-2)
    if smp_losses is not None:
        assert float(loss) == pytest.approx(float(smp_losses.MCCLoss()(p, y)), abs=1e-6)
