"""The segmentation terms as PyTorch ops, for the calls no kernel covers: smp's focal variants
(``normalized``, ``reduced_threshold``) and element-wise outputs (``reduction="none"``), smp's
soft cross-entropy modules with ``weight`` / ``pos_weight`` or ``reduction="none"``, and the
pieces the PyTorch-ops statistics share (``power``, ``probability_logits``).

fastgenloss.reference holds its own copy of each formula: the tests compare the two, so these
must never call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core import acc_dtype


def power(base: Tensor, gamma: float) -> Tensor:
    """base ** gamma for a base >= 0 up to rounding (a loss, 1 - p_t), with the limit's value
    and gradient at 0: 0 ** gamma = 0 and d/dbase = 0 there (a negative rounding residue counts
    as 0), where torch's pow has the derivative inf for gamma < 1 (and inf times a zero
    derivative is NaN). gamma = 1 is the base, gamma = 0 is 1; NaN stays NaN."""
    if gamma == 1.0:
        return base
    if gamma == 0.0:
        return base ** 0.0
    zero = base <= 0
    safe = torch.where(zero, torch.ones_like(base), base)
    return torch.where(zero, torch.zeros_like(base), safe ** gamma)


def probability_logits(p: Tensor, mode: str, eps: float, dtype: torch.dtype) -> Tensor:
    """Logits of probabilities (from_logits=False), as smp maps them back: log(q) (multiclass)
    or log(q / (1 - q)) with q = clamp(p, eps, 1 - eps), in float64 (in float32 the bound
    1 - 1e-7 would itself round), returned in ``dtype``."""
    q = p.to(torch.float64).clamp(eps, 1 - eps)
    logits = torch.log(q) if mode == "multiclass" else torch.log(q / (1 - q))
    return logits.to(dtype)


def focal_loss(input: Tensor, target: Tensor, *, mode: str, alpha: float | None, gamma: float,
               ignore_index: int | None, from_logits: bool, eps: float, class_weights,
               reduction: str, normalized: bool, reduced_threshold: float | None) -> Tensor:
    """smp's FocalLoss with its variants, element by element (see segmentation.focal_loss)."""
    acc = acc_dtype(input.dtype)
    x = input.to(acc) if from_logits else probability_logits(input, mode, eps, acc)
    n, c, m = x.shape[0], x.shape[1], x.shape[2:].numel()
    if mode == "multiclass":  # one-vs-rest targets of the labels
        labels = target.reshape(n, m).long()
        keep = (labels != ignore_index) if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
        classes = torch.arange(c, device=x.device).view(1, c, 1)
        t = (labels.unsqueeze(1) == classes).to(acc)
        keep = keep.unsqueeze(1).expand(n, c, -1)
    else:
        t = target.reshape(n, c, m)
        keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        t = t.to(acc) * keep
    x = x.reshape(n, c, m)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = -torch.expm1(-bce)  # 1 - exp(-bce) without its rounding to 0 near 0
    if reduced_threshold is None:
        factor = power(one_minus_pt, gamma)
    else:  # the reduced focal loss: no down-weighting while p_t < threshold
        factor = torch.where(1.0 - one_minus_pt < reduced_threshold, torch.ones_like(one_minus_pt),
                             power(one_minus_pt / reduced_threshold, gamma))
    loss = factor * bce
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    loss = loss * keep
    if normalized:  # divided by the sum of the focal factors (per class; binary: overall)
        dims = (0, 1, 2) if mode == "binary" else (0, 2)
        loss = loss / (factor * keep).sum(dims, keepdim=True).clamp_min(1e-6)
    if reduction == "none":
        return loss.reshape(input.shape)
    kept = keep.sum((0, 2)).to(loss.dtype)
    if mode == "binary":
        total = loss.sum()
        return total / kept.sum().clamp_min(1) if reduction == "mean" else total
    per_class = loss.sum((0, 2))
    if reduction == "mean":
        per_class = per_class / kept.clamp_min(1)
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=per_class.dtype, device=per_class.device)
        return (per_class * w).sum() / w.sum()
    return per_class.mean()


def smoothed_nll(logp: Tensor, target: Tensor, label_smoothing: float,
                 ignore_index: int | None) -> Tensor:
    """Per position [N, 1, *spatial], from log-probabilities [N, C, *spatial] and labels:
    (1 - s) nll + s / C sum_k(-log p_k), 0 where the label is ignore_index (smp's
    label_smoothed_nll_loss)."""
    labels = target.long().unsqueeze(1)
    if ignore_index is not None:
        ignored = labels == ignore_index
        labels = labels.masked_fill(ignored, 0)
    nll = -logp.gather(1, labels)
    if label_smoothing:
        uniform = logp.sum(1, keepdim=True)
        nll = (1.0 - label_smoothing) * nll - label_smoothing / logp.shape[1] * uniform
    return nll.masked_fill(ignored, 0.0) if ignore_index is not None else nll


def soft_bce_with_logits(input: Tensor, target: Tensor, label_smoothing: float,
                         ignore_index: int | None, weight: Tensor | None,
                         pos_weight: Tensor | None, reduction: str) -> Tensor:
    """smp's SoftBCEWithLogitsLoss: the BCE with logits (torch's weight and pos_weight) against
    (1 - t) s + t (1 - s), times 0 where the target is ignore_index; the mean is over every
    element."""
    t = target.to(input.dtype)
    soft = (1 - t) * label_smoothing + t * (1 - label_smoothing) if label_smoothing else t
    loss = F.binary_cross_entropy_with_logits(input, soft, weight, pos_weight=pos_weight,
                                              reduction="none")
    if ignore_index is not None:
        loss = loss * (target != ignore_index).to(loss.dtype)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss
