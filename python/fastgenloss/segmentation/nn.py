"""The segmentation losses as modules, with segmentation_models_pytorch's constructor arguments."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _torch
from . import functional
from ._stats import _check_smoothing

__all__ = ["DiceLoss", "FocalLoss", "JaccardLoss", "LovaszLoss", "MCCLoss", "SegmentationLoss",
           "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss", "TverskyLoss"]


class _SegLoss(torch.nn.Module):
    _fn = None
    _extra: tuple = ()

    def __init__(self, mode: str, classes=None, log_loss: bool = False, from_logits: bool = True,
                 smooth: float = 0.0, ignore_index: int | None = None, eps: float = 1e-7,
                 class_weights=None, *, per_image: bool = False, process_group=None, **extra):
        super().__init__()
        self.mode, self.classes, self.log_loss, self.from_logits = mode, classes, log_loss, from_logits
        self.smooth, self.ignore_index, self.eps = smooth, ignore_index, eps
        self.class_weights, self.per_image = class_weights, per_image
        self.process_group = process_group
        self.extra = extra

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return type(self)._fn(y_pred, y_true, self.mode, classes=self.classes,
                              log_loss=self.log_loss, from_logits=self.from_logits,
                              smooth=self.smooth, ignore_index=self.ignore_index, eps=self.eps,
                              class_weights=self.class_weights, per_image=self.per_image,
                              process_group=self.process_group, **self.extra)


class DiceLoss(_SegLoss):
    """segmentation_models_pytorch.losses.DiceLoss, same arguments (plus ``per_image`` and
    ``process_group``: statistics summed over the ranks, see fastgenloss.segmentation_loss)."""
    _fn = staticmethod(functional.dice_loss)


class JaccardLoss(_SegLoss):
    """segmentation_models_pytorch.losses.JaccardLoss, same arguments (plus ``per_image``)."""
    _fn = staticmethod(functional.jaccard_loss)


class TverskyLoss(_SegLoss):
    """segmentation_models_pytorch.losses.TverskyLoss, same arguments (plus ``per_image``)."""
    _fn = staticmethod(functional.tversky_loss)

    def __init__(self, mode: str, classes=None, log_loss: bool = False, from_logits: bool = True,
                 smooth: float = 0.0, ignore_index: int | None = None, eps: float = 1e-7,
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0, class_weights=None,
                 *, per_image: bool = False, process_group=None):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps,
                         class_weights, per_image=per_image, process_group=process_group,
                         alpha=alpha, beta=beta, gamma=gamma)


class LovaszLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.LovaszLoss, same arguments: the Lovász-softmax
    (multiclass) or the Lovász hinge (binary, multilabel). See fastgenloss.lovasz_loss."""

    def __init__(self, mode: str, per_image: bool = False, ignore_index: int | None = None,
                 from_logits: bool = True):
        super().__init__()
        self.mode, self.per_image = mode, per_image
        self.ignore_index, self.from_logits = ignore_index, from_logits

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return functional.lovasz_loss(y_pred, y_true, self.mode, per_image=self.per_image,
                                      ignore_index=self.ignore_index,
                                      from_logits=self.from_logits)

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, per_image={self.per_image}, "
                f"ignore_index={self.ignore_index}, from_logits={self.from_logits}")


class MCCLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.MCCLoss, same argument: 1 - MCC of the batch, on
    probabilities (binary); ``from_logits=True`` (an extension) takes logits instead. See
    fastgenloss.mcc_loss."""

    def __init__(self, eps: float = 1e-5, *, from_logits: bool = False):
        super().__init__()
        self.eps, self.from_logits = eps, from_logits

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return functional.mcc_loss(y_pred, y_true, eps=self.eps, from_logits=self.from_logits)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, from_logits={self.from_logits}"


class FocalLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.FocalLoss, same arguments: the sigmoid focal term per
    element (one-vs-rest per class in multiclass mode), fused into the statistics kernel."""

    def __init__(self, mode: str, alpha: float | None = None, gamma: float | None = 2.0,
                 ignore_index: int | None = None, from_logits: bool = True, eps: float = 1e-7,
                 reduction: str | None = "mean", normalized: bool = False,
                 reduced_threshold: float | None = None, class_weights=None, *,
                 process_group=None):
        super().__init__()
        if class_weights is not None and mode == "binary":
            raise ValueError("FocalLoss: class_weights are not supported with mode='binary' (as in smp)")
        self.mode, self.alpha, self.gamma = mode, alpha, 2.0 if gamma is None else gamma
        self.ignore_index, self.from_logits, self.eps = ignore_index, from_logits, eps
        self.reduction = reduction or "none"
        self.normalized, self.reduced_threshold = normalized, reduced_threshold
        self.class_weights, self.process_group = class_weights, process_group

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return functional.focal_loss(y_pred, y_true, self.mode, alpha=self.alpha, gamma=self.gamma,
                                     ignore_index=self.ignore_index, from_logits=self.from_logits,
                                     eps=self.eps, reduction=self.reduction,
                                     normalized=self.normalized,
                                     reduced_threshold=self.reduced_threshold,
                                     class_weights=self.class_weights,
                                     process_group=self.process_group)


class SegmentationLoss(torch.nn.Module):
    """Any weighted sum of Dice, IoU, Tversky, BCE/CE and focal terms, one kernel pass:
    ``SegmentationLoss("multiclass", dice=1, iou=1, bce=0.8)``. Keyword arguments as
    fastgenloss.segmentation_loss."""

    def __init__(self, mode: str = "multiclass", **kwargs):
        super().__init__()
        self.mode = mode
        self.kwargs = kwargs

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return functional.segmentation_loss(y_pred, y_true, self.mode, **self.kwargs)


def _soft_args(fn: str, smooth_factor, reduction: str) -> float:
    """smp's soft modules' arguments checked: the smoothing as a float in [0, 1]."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return 0.0 if smooth_factor is None else _check_smoothing(fn, smooth_factor, "smooth_factor")


def _fused_xent(fn: str, x: Tensor, t: Tensor, mode: str, ignore_index, smoothing: float,
                reduction: str) -> Tensor:
    """The cross-entropy term alone, from the statistics kernel's one pass."""
    return functional.segmentation_loss(x, t, mode, dice=0.0, iou=0.0, bce=1.0,
                                        ignore_index=ignore_index, label_smoothing=smoothing,
                                        reduction=reduction, _fn=fn)


class SoftCrossEntropyLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.SoftCrossEntropyLoss, same arguments: softmax
    cross-entropy over ``dim`` with label smoothing (``smooth_factor``: the target
    (1 - s) onehot + s / C), ignored positions zero and counted in the mean (smp's convention;
    torch's cross_entropy divides by the kept ones). ``mean`` / ``sum``: fused (the statistics
    kernel's cross-entropy column, no log_softmax materialized); ``none``: smp's per-position
    loss, with PyTorch ops."""

    def __init__(self, reduction: str = "mean", smooth_factor: float | None = None,
                 ignore_index: int | None = -100, dim: int = 1):
        super().__init__()
        self.reduction, self.smooth_factor = reduction, smooth_factor
        self.ignore_index, self.dim = ignore_index, dim

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        fn = "SoftCrossEntropyLoss"
        eps_s = _soft_args(fn, self.smooth_factor, self.reduction)
        x = y_pred.movedim(self.dim, 1) if self.dim not in (1, 1 - y_pred.dim()) else y_pred
        if self.reduction == "none":
            # smp's per-position loss: [N, 1, *spatial] with an ignore_index (smp keeps the
            # class axis there), else [N, *spatial]
            loss = _torch.smoothed_nll(x.log_softmax(1), y_true, eps_s, self.ignore_index)
            return loss if self.ignore_index is not None else loss.squeeze(1)
        t = y_true
        if x.dim() == 2:  # classification logits [N, C], labels [N]: one position each
            x, t = x.unsqueeze(-1), t.unsqueeze(-1)
        return _fused_xent(fn, x, t, "multiclass", self.ignore_index, eps_s, self.reduction)

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, smooth_factor={self.smooth_factor}, "
                f"ignore_index={self.ignore_index}, dim={self.dim}")


class SoftBCEWithLogitsLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.SoftBCEWithLogitsLoss, same arguments: BCE with
    logits against the smoothed target (1 - t) s + t (1 - s) (``smooth_factor`` s), elements
    equal to ``ignore_index`` zero and counted in the mean (smp's convention). ``mean`` /
    ``sum`` without ``weight`` / ``pos_weight``: fused (the statistics kernel's BCE column);
    ``none``, ``weight`` or ``pos_weight``: smp's formula with PyTorch ops."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean", smooth_factor: float | None = None,
                 pos_weight: Tensor | None = None):
        super().__init__()
        self.ignore_index, self.reduction, self.smooth_factor = ignore_index, reduction, smooth_factor
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        fn = "SoftBCEWithLogitsLoss"
        eps_s = _soft_args(fn, self.smooth_factor, self.reduction)
        if self.reduction == "none" or self.weight is not None or self.pos_weight is not None:
            return _torch.soft_bce_with_logits(y_pred, y_true, eps_s, self.ignore_index,
                                               self.weight, self.pos_weight, self.reduction)
        if not isinstance(y_pred, Tensor) or not isinstance(y_true, Tensor):
            raise TypeError(f"{fn}: y_pred and y_true must be tensors")
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{fn}: y_true must have y_pred's shape {list(y_pred.shape)}, got "
                             f"{list(y_true.shape)}")
        # the BCE sum does not depend on how the elements are grouped: one row of all of them
        x, t = y_pred.reshape(1, 1, -1), y_true.reshape(1, 1, -1)
        return _fused_xent(fn, x, t, "binary", self.ignore_index, eps_s, self.reduction)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"smooth_factor={self.smooth_factor}")
