"""The segmentation losses in plain PyTorch, by segmentation_models_pytorch's conventions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SEG_MODES", "bce_loss", "dice_loss", "focal_loss", "jaccard_loss", "lovasz_loss", "mcc_loss", "power", "probability_logits", "seg_stats", "segmentation_loss", "soft_bce_with_logits", "soft_cross_entropy_none", "tversky_loss"]


# ---- segmentation (issue 5): smp's conventions, in plain PyTorch -----------------------------
# Probabilities, labels and masks are laid out as [N, C, M] (M = the spatial positions, 2D or
# 3D). Per class c (and per sample with per_image=True) three statistics make every overlap
# loss: P = sum p, T = sum t and A = sum |p - t|, over the positions that are not ignored; then
# TP = (P + T - A) / 2, FP = P - TP, FN = T - TP (segmentation_models_pytorch's soft Tversky
# score: with hard labels TP = sum p t). Dice is Tversky(0.5, 0.5), Jaccard Tversky(1, 1).

SEG_MODES = ("binary", "multiclass", "multilabel")


def _seg_prepare(input: Tensor, target: Tensor, mode: str, from_logits: bool,
                 ignore_index: int | None):
    """-> (p, t, valid): probabilities, targets as float and the not-ignored mask, [N, C, M]
    (valid broadcast over C in binary/multiclass mode), computed in float (float64 stays)."""
    if mode not in SEG_MODES:
        raise ValueError(f"mode must be one of {SEG_MODES}, got {mode!r}")
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(acc)
    n, c = x.shape[0], x.shape[1]
    if from_logits:
        p = x.log_softmax(dim=1).exp() if mode == "multiclass" else F.logsigmoid(x).exp()
    else:
        p = x
    m = x.shape[2:].numel()
    p = p.reshape(n, c, m)
    if mode == "multiclass":
        labels = target.reshape(n, m).long()
        valid = (labels != ignore_index) if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
        t = F.one_hot(labels * valid, c).permute(0, 2, 1).to(acc) * valid.unsqueeze(1)
        valid = valid.unsqueeze(1)
    else:
        t = target.reshape(n, c, m)
        valid = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        t = t.to(acc) * valid
    return p, t, valid


def power(base: Tensor, gamma: float) -> Tensor:
    """base ** gamma for a base that is >= 0 up to rounding (a loss, 1 - p_t), with the value
    and the gradient of its limit at 0: 0 ** gamma = 0 and d/dbase = 0 there (a negative
    rounding residue counts as 0). torch's pow gives the derivative gamma * 0 ** (gamma - 1) =
    inf at 0 for gamma < 1, and inf times the zero derivative of a masked or constant base
    makes the whole gradient NaN (smp's TverskyLoss(gamma < 1) with an absent class or every
    pixel ignored; its FocalLoss(gamma < 1) where p_t rounds to 1). gamma = 1 is the base
    itself, gamma = 0 is 1; NaN stays NaN."""
    if gamma == 1.0:
        return base
    if gamma == 0.0:
        return base ** 0.0
    zero = base <= 0
    return torch.where(zero, torch.zeros_like(base), torch.where(zero, torch.ones_like(base), base) ** gamma)


def probability_logits(p: Tensor, mode: str, eps: float, dtype: torch.dtype) -> Tensor:
    """The logits of the cross-entropy terms for probabilities p (from_logits=False): log(q)
    (multiclass) or log(q / (1 - q)) with q = clamp(p, eps, 1 - eps), computed in float64 and
    returned in ``dtype``. In float32 the bound 1 - 1e-7 itself rounds to 1 - 1.19e-7, which
    moves the binary logit of a saturated probability from 16.12 to 15.94 (1% of that element's
    BCE); in float64 eps is honoured as given."""
    q = p.to(torch.float64).clamp(eps, 1 - eps)
    return (torch.log(q) if mode == "multiclass" else torch.log(q / (1 - q))).to(dtype)


def _seg_logits(input: Tensor, mode: str, from_logits: bool, eps: float) -> Tensor:
    """Logits in float for the cross-entropy terms (probabilities mapped back as smp does)."""
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    return input.to(acc) if from_logits else probability_logits(input, mode, eps, acc)


def seg_stats(input: Tensor, target: Tensor, *, mode: str, from_logits: bool = True,
              ignore_index: int | None = None, per_image: bool = False):
    """(P, T, A) per class [C] (or per sample and class [N, C] with per_image)."""
    p, t, valid = _seg_prepare(input, target, mode, from_logits, ignore_index)
    p = p * valid
    dims = (2,) if per_image else (0, 2)
    return p.sum(dims), t.sum(dims), (p - t).abs().sum(dims)


def _aggregate(loss: Tensor, classes, class_weights, reduction: str) -> Tensor:
    """Per-class (or [N, C]) losses -> smp's class mean, or class_weights' weighted mean."""
    if classes is not None:  # smp's loss[classes]: repeats count again, negatives from the end
        idx = torch.as_tensor(classes, dtype=torch.long, device=loss.device).reshape(-1)
        idx = idx % loss.shape[-1]
        loss = loss.index_select(-1, idx)
    if reduction == "none":
        return loss
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=loss.dtype, device=loss.device)
        if classes is not None:
            w = w.index_select(0, idx)
        w = w.expand_as(loss)
        return (loss * w).sum() / w.sum() if reduction == "mean" else (loss * w).sum()
    return loss.mean() if reduction == "mean" else loss.sum()


def tversky_loss(input: Tensor, target: Tensor, *, mode: str, alpha: float = 0.5,
                 beta: float = 0.5, gamma: float = 1.0, classes=None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: int | None = None,
                 eps: float = 1e-7, class_weights=None, per_image: bool = False,
                 reduction: str = "mean") -> Tensor:
    """smp's TverskyLoss (and, at alpha = beta = 0.5 / 1, DiceLoss / JaccardLoss): 1 - score
    (or -log(score) with log_loss) per class, zero for classes with no target pixels, the
    class mean (class_weights: weighted mean) raised to gamma. per_image (an extension): the
    statistics and the loss per (sample, class), then the mean over both."""
    P, T, A = seg_stats(input, target, mode=mode, from_logits=from_logits,
                        ignore_index=ignore_index, per_image=per_image)
    tp = (P + T - A) / 2
    fp, fn = P - tp, T - tp
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    loss = loss * (T > 0).to(loss.dtype)
    out = _aggregate(loss, classes, class_weights, reduction)
    return power(out, gamma) if reduction != "none" else out


def dice_loss(input: Tensor, target: Tensor, *, mode: str, **kw) -> Tensor:
    """smp's DiceLoss (same arguments; per_image and reduction are extensions)."""
    return tversky_loss(input, target, mode=mode, alpha=0.5, beta=0.5, gamma=1.0, **kw)


def jaccard_loss(input: Tensor, target: Tensor, *, mode: str, **kw) -> Tensor:
    """smp's JaccardLoss (IoU loss)."""
    return tversky_loss(input, target, mode=mode, alpha=1.0, beta=1.0, gamma=1.0, **kw)


def focal_loss(input: Tensor, target: Tensor, *, mode: str, alpha: float | None = None,
               gamma: float = 2.0, ignore_index: int | None = None, from_logits: bool = True,
               eps: float = 1e-7, class_weights=None, reduction: str = "mean",
               normalized: bool = False, reduced_threshold: float | None = None) -> Tensor:
    """smp's FocalLoss: the sigmoid focal term of every element (one-vs-rest per class in
    multiclass mode), ignored elements left out; binary: the mean over kept elements;
    multiclass / multilabel: the mean per class, then the class mean (or class_weights').
    ``normalized`` divides by the sum of the focal factors (per class), ``reduced_threshold``
    is the reduced focal loss, both as smp. Where every element is ignored the mean is 0 (smp:
    NaN, the mean of nothing). ``reduction="none"``: the element-wise loss, input's shape,
    zero at ignored elements."""
    x = _seg_logits(input, mode, from_logits, eps)
    n, c, m = x.shape[0], x.shape[1], x.shape[2:].numel()
    if mode == "multiclass":
        labels = target.reshape(n, m).long()
        keep = (labels != ignore_index) if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
        t = (labels.unsqueeze(1) == torch.arange(c, device=x.device).view(1, c, 1)).to(x.dtype)
        keep = keep.unsqueeze(1).expand(n, c, -1)
    else:
        t = target.reshape(n, c, m)
        keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        t = t.to(x.dtype) * keep
    x = x.reshape(n, c, m)
    logpt = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    # 1 - p_t as -expm1(-l): 1 - exp(-l) rounds to 0 (and its power's gradient to NaN for
    # gamma < 1) wherever l is below half an ulp of 1, as smp's does in float32
    u = -torch.expm1(-logpt)
    if reduced_threshold is None:
        factor = power(u, gamma)
    else:
        factor = torch.where(1.0 - u < reduced_threshold, torch.ones_like(u),
                             power(u / reduced_threshold, gamma))
    loss = factor * logpt
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    loss = loss * keep
    if normalized:
        dims = (0, 1, 2) if mode == "binary" else (0, 2)
        loss = loss / (factor * keep).sum(dims, keepdim=True).clamp_min(1e-6)
    if reduction == "none":
        return loss.reshape(input.shape)
    count = keep.sum((0, 2)).to(loss.dtype)
    if mode == "binary":
        total = loss.sum()
        return total / count.sum().clamp_min(1) if reduction == "mean" else total
    per_class = loss.sum((0, 2))
    if reduction == "mean":
        per_class = per_class / count.clamp_min(1)
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=per_class.dtype, device=per_class.device)
        return (per_class * w).sum() / w.sum()
    return per_class.mean()


def bce_loss(input: Tensor, target: Tensor, *, mode: str, ignore_index: int | None = None,
             from_logits: bool = True, eps: float = 1e-7, reduction: str = "mean",
             label_smoothing: float = 0.0) -> Tensor:
    """The cross-entropy term: in binary / multilabel mode smp's SoftBCEWithLogitsLoss, in
    multiclass mode smp's SoftCrossEntropyLoss (pixel-wise softmax cross-entropy). As smp, an
    ignored element counts as a zero in the mean (torch's cross_entropy divides by the number
    of kept elements instead). From probabilities (from_logits=False) the multiclass term is
    -log(clamp(p_label, eps, 1 - eps)), torch's nll_loss of log(p), as the binary term is the BCE
    of the clamped probability: the clamped probabilities are not renormalized (a log_softmax
    of log(p) would change the loss wherever the clamp moved a probability, and give every
    class a gradient of 1 / sum(p)).

    ``label_smoothing`` = eps_s as smp's ``smooth_factor``: multiclass, smp's
    SoftCrossEntropyLoss (and torch's cross_entropy), (1 - eps_s) nll + eps_s mean_k(-log p_k);
    binary / multilabel, smp's SoftBCEWithLogitsLoss, the BCE against (1 - t) eps_s + t (1 - eps_s)."""
    x = _seg_logits(input, mode, from_logits, eps)
    if mode == "multiclass":
        loss = _smoothed_nll(x.log_softmax(dim=1) if from_logits else x, target,
                             label_smoothing, ignore_index)
        return loss.mean() if reduction == "mean" else loss.sum()
    return soft_bce_with_logits(x, target.reshape(x.shape), label_smoothing, ignore_index,
                                reduction=reduction)


def _smoothed_nll(logp: Tensor, target: Tensor, label_smoothing: float,
                  ignore_index: int | None) -> Tensor:
    """[N, 1, *spatial] per position from log-probabilities [N, C, *spatial] and labels:
    (1 - s) nll + s / C sum_k(-log p_k), zero where the label is ignore_index (smp's
    label_smoothed_nll_loss)."""
    t = target.long().unsqueeze(1)
    if ignore_index is not None:
        pad = t == ignore_index
        t = t.masked_fill(pad, 0)
    nll = -logp.gather(1, t)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing / logp.shape[1] * logp.sum(1, keepdim=True)
    return nll.masked_fill(pad, 0.0) if ignore_index is not None else nll


def soft_cross_entropy_none(input: Tensor, target: Tensor, label_smoothing: float = 0.0,
                            ignore_index: int | None = -100) -> Tensor:
    """smp's SoftCrossEntropyLoss(reduction="none"): the per-position loss of _smoothed_nll,
    shaped as smp returns it, [N, 1, *spatial] with an ignore_index (smp keeps the class axis
    there), else [N, *spatial]."""
    loss = _smoothed_nll(input.log_softmax(1), target, label_smoothing, ignore_index)
    return loss if ignore_index is not None else loss.squeeze(1)


def soft_bce_with_logits(input: Tensor, target: Tensor, label_smoothing: float = 0.0,
                         ignore_index: int | None = -100, weight: Tensor | None = None,
                         pos_weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """smp's SoftBCEWithLogitsLoss: the BCE with logits (torch's weight and pos_weight) against
    (1 - t) s + t (1 - s), times zero where the target is ignore_index; the mean is over every
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


def segmentation_loss(input: Tensor, target: Tensor, *, mode: str, dice: float = 1.0,
                      iou: float = 1.0, bce: float = 0.8, focal: float = 0.0,
                      tversky: float = 0.0, tversky_alpha: float = 0.5,
                      tversky_beta: float = 0.5, tversky_gamma: float = 1.0,
                      focal_alpha: float | None = None, focal_gamma: float = 2.0,
                      classes=None, log_loss: bool = False, from_logits: bool = True,
                      smooth: float = 0.0, eps: float = 1e-7, ignore_index: int | None = None,
                      class_weights=None, per_image: bool = False,
                      label_smoothing: float = 0.0) -> Tensor:
    """dice * DiceLoss + iou * JaccardLoss + bce * (BCE / CE) + focal * FocalLoss +
    tversky * TverskyLoss, each term as its function above (label_smoothing: of the BCE / CE
    term only)."""
    common = dict(classes=classes, log_loss=log_loss, from_logits=from_logits, smooth=smooth,
                  ignore_index=ignore_index, eps=eps, class_weights=class_weights,
                  per_image=per_image)
    total = input.new_zeros((), dtype=torch.float64 if input.dtype == torch.float64 else torch.float32)
    if dice:
        total = total + dice * dice_loss(input, target, mode=mode, **common)
    if iou:
        total = total + iou * jaccard_loss(input, target, mode=mode, **common)
    if tversky:
        total = total + tversky * tversky_loss(input, target, mode=mode, alpha=tversky_alpha,
                                               beta=tversky_beta, gamma=tversky_gamma, **common)
    if bce:
        total = total + bce * bce_loss(input, target, mode=mode, ignore_index=ignore_index,
                                       from_logits=from_logits, eps=eps,
                                       label_smoothing=label_smoothing)
    if focal:
        total = total + focal * focal_loss(input, target, mode=mode, alpha=focal_alpha,
                                           gamma=focal_gamma, ignore_index=ignore_index,
                                           from_logits=from_logits, eps=eps,
                                           class_weights=class_weights)
    return total


def mcc_loss(input: Tensor, target: Tensor, *, eps: float = 1e-5) -> Tensor:
    """smp's MCCLoss: 1 - MCC of the batch on probabilities, each count summed over every
    element plus eps."""
    p, t = input.reshape(-1), target.reshape(-1).to(input.dtype)
    tp, tn = (p * t).sum() + eps, ((1 - p) * (1 - t)).sum() + eps
    fp, fn = (p * (1 - t)).sum() + eps, ((1 - p) * t).sum() + eps
    return 1.0 - (tp * tn - fp * fn) / torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """The Lovász extension's gradient for foreground weights sorted by decreasing error."""
    total = fg_sorted.sum()
    jaccard = 1.0 - (total - fg_sorted.cumsum(0)) / (total + (1 - fg_sorted).cumsum(0))
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_flat(errors: Tensor, fg: Tensor, hinge: bool) -> Tensor:
    # stable: tied errors keep their element order (the loss does not depend on it)
    sorted_errors, perm = torch.sort(errors, descending=True, stable=True)
    value = F.relu(sorted_errors) if hinge else sorted_errors
    return torch.dot(value, _lovasz_grad(fg[perm]))


def lovasz_loss(input: Tensor, target: Tensor, *, mode: str, per_image: bool = False,
                ignore_index: int | None = None) -> Tensor:
    """smp's LovaszLoss (Berman et al. 2018), any number of spatial dims and any float dtype:
    the Lovász hinge over every element of the batch or of each image (binary, multilabel), the
    Lovász-softmax per class present in the labels (multiclass), averaged over images with
    per_image."""
    n = input.shape[0]
    groups = [(input[i:i + 1], target[i:i + 1]) for i in range(n)] if per_image \
        else [(input, target)]
    losses = []
    for x, t in groups:
        if mode == "multiclass":
            c = x.shape[1]
            p = x.softmax(1).movedim(1, -1).reshape(-1, c)
            lab = t.reshape(-1)
            if ignore_index is not None:
                p, lab = p[lab != ignore_index], lab[lab != ignore_index]
            terms = []
            for k in range(c):
                fg = (lab == k).to(p.dtype)
                if fg.sum() > 0:
                    terms.append(_lovasz_flat((fg - p[:, k]).abs(), fg, hinge=False))
            losses.append(torch.stack(terms).mean() if terms else x.sum() * 0.0)
        else:
            z, lab = x.reshape(-1), t.reshape(-1).to(x.dtype)
            if ignore_index is not None:
                z, lab = z[lab != ignore_index], lab[lab != ignore_index]
            if lab.numel() == 0:
                losses.append(x.sum() * 0.0)
                continue
            losses.append(_lovasz_flat(1.0 - z * (2.0 * lab - 1.0), lab, hinge=True))
    return torch.stack(losses).mean()
