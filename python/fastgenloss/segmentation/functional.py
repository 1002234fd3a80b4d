"""Segmentation losses (Dice, Jaccard/IoU, Tversky, BCE/CE, focal and their weighted sums) with
segmentation_models_pytorch's arguments and results.

One pass of the ``seg_stats`` kernel reduces logits and labels to per-(sample, class)
statistics, P = sum p, T = sum t, A = sum |p - t| over the elements not ignored, and the
cross-entropy summed per (sample, class); every loss term is then a small function of those
[N, C] tensors (smp's soft Tversky score: TP = (P + T - A) / 2, FP = P - TP, FN = T - TP), so
"IoU + Dice + 0.8 BCE" reads the logits once forward and once backward, and neither the
softmax nor a one-hot of the labels is ever materialized.

Conventions (smp's, where MONAI differs):
- ``mode="multiclass"``: softmax over channels, integer labels [N, *spatial]; ``binary``: one
  channel, sigmoid; ``multilabel``: sigmoid per channel, target of the input's shape.
- Statistics are batch-wide per class (smp); ``per_image=True`` keeps them per sample and
  averages the per-(sample, class) losses (MONAI's default is per sample).
- A class with no target pixels contributes a zero loss (smp), and counts in the mean.
- The cross-entropy term is smp's SoftCrossEntropyLoss / SoftBCEWithLogitsLoss: its mean divides
  by every element, ignored ones included (torch's cross_entropy divides by the kept ones).
- ``ignore_index`` elements take no part in any statistic and get a zero gradient.

Where no kernel applies (probabilities as input, soft multiclass targets; the switch
``seg_cuda_kernel`` of fastgenloss.config off) the same statistics are computed with PyTorch ops,
and the second stage is shared.

The second stage (statistics -> loss) is one op, seg_combine (csrc/segmentation/combine.h), on
the CPU, and on CUDA with the experimental switch ``seg_cuda_combine``; elsewhere
(process_group, reduction="none", class weights that require a gradient) it is PyTorch ops
(_stats.py).

The focal term (smp's FocalLoss: sigmoid per channel, one-vs-rest in multiclass mode) is two
more statistics of the same pass, F = the focal loss summed and K = the number of kept
elements per (sample, class). Where smp's mean is over nothing (every element ignored) it is 0
here, not NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._core import call_op, desc
from . import _torch
from ._ops import LOVASZ_HINGE, LOVASZ_SOFTMAX, SegCombineFunction
from ._stats import (_aggregate, _check, _check_common, _check_smoothing, _check_weight_sums,
                     _class_index, _combine_enabled, _focal_from_stats, _from_stats,
                     _global_sums, _weighted_sums, seg_stats)
from ._torch import power

__all__ = ["dice_loss", "focal_loss", "iou_loss", "jaccard_loss", "lovasz_loss", "mcc_loss",
           "segmentation_loss", "tversky_loss"]


def segmentation_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *,
                      dice: float = 1.0, iou: float = 1.0, bce: float = 0.8, focal: float = 0.0,
                      tversky: float = 0.0, ce: float | None = None, jaccard: float | None = None,
                      tversky_alpha: float = 0.5, tversky_beta: float = 0.5,
                      tversky_gamma: float = 1.0, focal_alpha: float | None = None,
                      focal_gamma: float = 2.0, classes=None, log_loss: bool = False,
                      from_logits: bool = True, smooth: float = 0.0, eps: float = 1e-7,
                      ignore_index: int | None = None, class_weights=None,
                      per_image: bool = False, reduction: str = "mean", process_group=None,
                      label_smoothing: float = 0.0, mcc: float = 0.0, lovasz: float = 0.0,
                      _fn: str = "segmentation_loss") -> Tensor:
    """dice * DiceLoss + iou * JaccardLoss + bce * (BCE, or CE in multiclass mode)
    + focal * FocalLoss + tversky * TverskyLoss, each term as smp computes it, from one pass of
    the statistics kernel; + mcc * MCCLoss (binary) + lovasz * LovaszLoss, each in a pass of its
    own (mcc_loss, lovasz_loss). ``ce`` is an alias of ``bce``, ``jaccard`` of ``iou``.
    ``reduction="none"`` (one overlap term only) returns its per-class losses.

    ``label_smoothing`` (of the BCE / CE term only; smp's ``smooth_factor``): multiclass, the
    cross-entropy against (1 - ls) onehot + ls / C, as smp's SoftCrossEntropyLoss, torch's
    cross_entropy and MONAI's DiceCELoss; binary / multilabel, the BCE against
    t (1 - ls) + (1 - t) ls, as smp's SoftBCEWithLogitsLoss (MONAI's BCE takes
    t (1 - ls) + ls / 2: its ls is twice this one). Dice, IoU, Tversky and focal keep the
    targets as given.

    ``process_group`` (a torch.distributed group, or True for the default group): the batch-wide
    statistics (per-class sums, the cross-entropy sum and element count, per_image's sums of
    per-sample losses) are summed over the ranks, in one all-reduce, before the ratios, so every
    rank gets the loss of the whole distributed batch; backward sums the gradients over the
    ranks as well, so that DDP's gradient averaging gives the single-process gradient of that
    loss. Every rank must call it (a collective)."""
    if ce is not None:
        bce = ce
    if jaccard is not None:
        iou = jaccard
    if mcc or lovasz:
        # smp's MCCLoss (binary) and LovaszLoss as further terms: each its own pass
        if reduction != "mean" or process_group is not None:
            raise ValueError(f"{_fn}: mcc and lovasz terms take reduction='mean' and no "
                             "process_group")
        if mcc and ignore_index is not None:
            raise ValueError(f"{_fn}: the mcc term has no ignore_index (as smp's MCCLoss)")
        extra = None
        if mcc:
            extra = mcc * mcc_loss(input, target, mode, from_logits=from_logits)
        if lovasz:
            term = lovasz * lovasz_loss(input, target, mode, per_image=per_image,
                                        ignore_index=ignore_index, from_logits=from_logits)
            extra = term if extra is None else extra + term
        if not (dice or iou or bce or focal or tversky):
            return extra
        return extra + segmentation_loss(
            input, target, mode, dice=dice, iou=iou, bce=bce, focal=focal, tversky=tversky,
            tversky_alpha=tversky_alpha, tversky_beta=tversky_beta, tversky_gamma=tversky_gamma,
            focal_alpha=focal_alpha, focal_gamma=focal_gamma, classes=classes,
            log_loss=log_loss, from_logits=from_logits, smooth=smooth, eps=eps,
            ignore_index=ignore_index, class_weights=class_weights, per_image=per_image,
            label_smoothing=label_smoothing, _fn=_fn)
    _check_common(_fn, mode, reduction, classes, class_weights, smooth, eps)
    overlap = [(w, a, b, g) for w, a, b, g in ((dice, 0.5, 0.5, 1.0), (iou, 1.0, 1.0, 1.0),
               (tversky, tversky_alpha, tversky_beta, tversky_gamma)) if w]
    if reduction == "none" and (len(overlap) != 1 or bce or focal):
        raise ValueError(f"{_fn}: reduction='none' returns per-class losses of one overlap term")
    if class_weights is not None and input.dim() > 1:
        _check_weight_sums(_fn, class_weights, classes, input.shape[1], bool(overlap), bool(focal),
                           reduction)
    label_smoothing = _check_smoothing(_fn, label_smoothing)
    stats, xent = seg_stats(input, target, mode=mode, from_logits=from_logits,
                            batch_only=not per_image,
                            ignore_index=ignore_index, eps=eps,
                            focal_gamma=focal_gamma if focal else None,
                            focal_alpha=focal_alpha if focal else None,
                            label_smoothing=label_smoothing if bce else 0.0, fn=_fn)
    # the cross-entropy mean's divisor: every element (multiclass: every position)
    count = input.numel() // input.shape[1] if mode == "multiclass" else input.numel()
    if (process_group is None and reduction != "none" and (overlap or bce or focal)
            and not (isinstance(class_weights, Tensor) and class_weights.requires_grad)
            and _combine_enabled(stats)):
        # the whole second stage in one op (the same terms as below)
        cw = None
        if class_weights is not None:
            cw = torch.as_tensor(class_weights, dtype=stats.dtype, device=stats.device).reshape(-1)
            if cw.numel() != stats.shape[1]:
                raise ValueError(f"{_fn}: class_weights must have one weight per class "
                                 f"({stats.shape[1]}), got {cw.numel()}")

        def combine(st, xe, w, terms, b, f):
            args = (st, xe, [float(v) for term in terms for v in term], float(b), float(count),
                    float(f), mode == "binary", bool(per_image), reduction == "sum",
                    bool(log_loss), float(smooth), float(eps), w)
            return call_op(torch.ops.fastgenloss.seg_combine.default, SegCombineFunction, args,
                           (st.requires_grad or xe.requires_grad) and torch.is_grad_enabled())

        if classes is None or not overlap:
            return combine(stats, xent, cw, overlap, bce, focal)
        # classes: the overlap terms over the selected classes' statistics and weights
        # (index_select, as _select picks their losses: repeats count twice), BCE and focal
        # over every class
        idx = _class_index(classes, stats.shape[1], stats.device, _fn)
        loss = combine(stats.index_select(1, idx), xent.index_select(1, idx),
                       None if cw is None else cw.index_select(0, idx), overlap, 0.0, 0.0)
        return loss + combine(stats, xent, cw, [], bce, focal) if (bce or focal) else loss
    # batch-wide sums (over ranks too, with a process group) and per-image partial sums
    batch_stats = stats.sum(0, keepdim=True)
    per_image_losses = []
    if per_image:
        for w, a, b, g in overlap:
            loss = _from_stats(stats, alpha=a, beta=b, smooth=smooth, eps=eps,
                               log_loss=log_loss, per_image=True)
            per_image_losses.append(loss)
    parts = [batch_stats]
    if bce:
        parts += [xent.sum(), xent.new_tensor(float(count))]
    if process_group is not None and per_image and reduction != "none":
        for loss in per_image_losses:  # (weighted) sums over the local samples and their weights
            num, den = _weighted_sums(loss, classes, class_weights, _fn)
            parts += [num, den]
    if process_group is not None:
        parts = _global_sums(parts, process_group)
    batch_stats = parts[0]
    total = None

    def add(term):
        nonlocal total
        total = term if total is None else total + term

    for idx, (w, a, b, g) in enumerate(overlap):
        if not per_image:
            loss = _from_stats(batch_stats, alpha=a, beta=b, smooth=smooth, eps=eps,
                               log_loss=log_loss, per_image=False)
            loss = _aggregate(loss, classes, class_weights, reduction, _fn)
        elif process_group is not None and reduction != "none":
            num, den = parts[(3 if bce else 1) + 2 * idx: (3 if bce else 1) + 2 * idx + 2]
            loss = num / den if reduction == "mean" else num
        else:
            loss = _aggregate(per_image_losses[idx], classes, class_weights, reduction, _fn)
        if reduction == "none":
            return loss
        add(w * power(loss, g))
    if bce:
        x, count = parts[1], parts[2]
        add(bce * (x / count.clamp_min(1) if reduction == "mean" else x))
    if focal:
        add(focal * _focal_from_stats(batch_stats, mode, class_weights, reduction))
    if total is None:
        return stats.new_zeros(())
    return total


def _only(term: str, **fixed):
    zero = dict(dice=0.0, iou=0.0, bce=0.0, focal=0.0, tversky=0.0)
    zero.update(fixed)
    return zero


def dice_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *, classes=None,
              log_loss: bool = False, from_logits: bool = True, smooth: float = 0.0,
              ignore_index: int | None = None, eps: float = 1e-7, class_weights=None,
              per_image: bool = False, reduction: str = "mean", process_group=None) -> Tensor:
    """smp's DiceLoss: 1 - 2TP / (2TP + FP + FN) per class (``log_loss``: -log of the score),
    zero for classes absent from the target, the class mean (``class_weights``: weighted)."""
    return segmentation_loss(input, target, mode, **_only("dice", dice=1.0), classes=classes,
                             log_loss=log_loss, from_logits=from_logits, smooth=smooth, eps=eps,
                             ignore_index=ignore_index, class_weights=class_weights,
                             per_image=per_image, reduction=reduction,
                             process_group=process_group, _fn="dice_loss")


def jaccard_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *, classes=None,
                 log_loss: bool = False, from_logits: bool = True, smooth: float = 0.0,
                 ignore_index: int | None = None, eps: float = 1e-7, class_weights=None,
                 per_image: bool = False, reduction: str = "mean", process_group=None) -> Tensor:
    """smp's JaccardLoss (IoU loss): 1 - TP / (TP + FP + FN) per class, as dice_loss."""
    return segmentation_loss(input, target, mode, **_only("iou", iou=1.0), classes=classes,
                             log_loss=log_loss, from_logits=from_logits, smooth=smooth, eps=eps,
                             ignore_index=ignore_index, class_weights=class_weights,
                             per_image=per_image, reduction=reduction,
                             process_group=process_group, _fn="jaccard_loss")


iou_loss = jaccard_loss


def tversky_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *,
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0, classes=None,
                 log_loss: bool = False, from_logits: bool = True, smooth: float = 0.0,
                 ignore_index: int | None = None, eps: float = 1e-7, class_weights=None,
                 per_image: bool = False, reduction: str = "mean", process_group=None) -> Tensor:
    """smp's TverskyLoss: 1 - TP / (TP + alpha FP + beta FN) per class, the class mean raised to
    gamma (focal Tversky)."""
    return segmentation_loss(input, target, mode, **_only("tversky", tversky=1.0),
                             tversky_alpha=alpha, tversky_beta=beta, tversky_gamma=gamma,
                             classes=classes, log_loss=log_loss, from_logits=from_logits,
                             smooth=smooth, eps=eps, ignore_index=ignore_index,
                             class_weights=class_weights, per_image=per_image,
                             reduction=reduction, process_group=process_group,
                             _fn="tversky_loss")


def focal_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *,
               alpha: float | None = None, gamma: float = 2.0, ignore_index: int | None = None,
               from_logits: bool = True, eps: float = 1e-7, reduction: str = "mean",
               normalized: bool = False, reduced_threshold: float | None = None,
               class_weights=None, process_group=None) -> Tensor:
    """smp's FocalLoss: the sigmoid focal term (1 - p_t)^gamma BCE of every element, one-vs-rest
    per class in multiclass mode, weighted alpha / 1 - alpha for positives / negatives when
    ``alpha`` is given; binary: the mean over kept elements; multiclass / multilabel: each
    class's mean (``reduction="sum"``: its sum), then the class mean (or ``class_weights``'). From
    the statistics kernel's one pass; ``normalized`` / ``reduced_threshold`` (smp's variants) and
    ``reduction="none"`` (the element-wise loss, zero where ignored) run as PyTorch ops."""
    fn = "focal_loss"
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if mode == "binary" and class_weights is not None:
        raise ValueError(f"{fn}: class_weights are not supported with mode='binary' (as in smp)")
    if normalized or reduced_threshold is not None or reduction == "none":
        if process_group is not None:
            raise ValueError(f"{fn}: process_group is supported for the fused focal loss only "
                             "(not with normalized, reduced_threshold or reduction='none')")
        _check(fn, input, target, mode)
        if not gamma >= 0 or (alpha is not None and not 0 <= alpha <= 1):
            raise ValueError(f"{fn}: gamma must be >= 0 and alpha in [0, 1] or None, got "
                             f"{gamma} and {alpha}")
        if reduction != "none":  # (these variants divide by the weights' sum in both reductions)
            _check_weight_sums(fn, class_weights, None, input.shape[1], False, True, "mean")
        return _torch.focal_loss(input, target, mode=mode, alpha=alpha, gamma=gamma,
                                 ignore_index=ignore_index, from_logits=from_logits, eps=eps,
                                 class_weights=class_weights, reduction=reduction,
                                 normalized=normalized, reduced_threshold=reduced_threshold)
    return segmentation_loss(input, target, mode, **_only("focal", focal=1.0), focal_alpha=alpha,
                             focal_gamma=gamma, from_logits=from_logits, eps=eps,
                             ignore_index=ignore_index, class_weights=class_weights,
                             reduction=reduction, process_group=process_group, _fn=fn)


def mcc_loss(input: Tensor, target: Tensor, mode: str = "binary", *, eps: float = 1e-5,
             from_logits: bool = False) -> Tensor:
    """segmentation_models_pytorch.losses.MCCLoss: 1 - the Matthews correlation coefficient of
    the whole batch, binary mode (as smp's, which supports no other),

        MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN)),

    each count summed over every element plus ``eps``. ``input`` holds probabilities, as smp's
    takes them (``from_logits=True`` applies the sigmoid first, in the kernel); ``target`` the
    0/1 mask, any shape with the input's element count (smp's view(N, 1, -1)). The counts come
    from the statistics pass every segmentation loss uses (P = sum p, T = sum t, A = sum |p - t|:
    TP = (P + T - A) / 2, FP = P - TP, FN = T - TP, TN = count - P - T + TP), exact for 0/1
    targets; soft targets are not an MCC."""
    fn = "mcc_loss"
    if mode != "binary":
        raise ValueError(f"{fn}: mode must be 'binary' (as smp's MCCLoss), got {mode!r}")
    if not eps >= 0:
        raise ValueError(f"{fn}: eps must be >= 0, got {eps}")
    if from_logits:  # the statistics kernel (which checks the arguments): P, T and A in one pass
        stats, _ = seg_stats(input, target, mode=mode, from_logits=True, fn=fn, batch_only=True)
        p, t_sum, a = stats.sum((0, 1)).unbind()
        tp = (p + t_sum - a) * 0.5
    else:  # probabilities: one pass for sum p, sum t and TP = sum p t (soft targets too)
        x, t, _, _ = _check(fn, input, target, mode)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or t.requires_grad)
        p, t_sum, tp = call_op(torch.ops.fastgenloss.mcc_stats.default, None,
                               (x, t.to(x.dtype)), needs_grad).unbind()
    fp, fn_ = p - tp, t_sum - tp
    tn = (input.numel() - p - t_sum + tp) + eps
    tp, fp, fn_ = tp + eps, fp + eps, fn_ + eps
    mcc = (tp * tn - fp * fn_) / torch.sqrt((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_))
    return 1.0 - mcc


def lovasz_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *,
                per_image: bool = False, ignore_index: int | None = None,
                from_logits: bool = True) -> Tensor:
    """segmentation_models_pytorch.losses.LovaszLoss: the Lovász-softmax (multiclass: softmax
    over channels, integer labels, the mean over the classes present in the labels, smp's
    classes="present") or the Lovász hinge (binary and multilabel: every element of the batch
    pooled, as smp's), over the batch or, with ``per_image``, averaged over images.
    ``ignore_index`` elements take no part.

    One op: the errors are sorted per class with a radix sort (stable: tied errors keep their
    element order, so the gradient is deterministic; the loss does not depend on the order of
    ties) and the Lovász extension's gradient comes out of the same walk; backward scales it.
    Memory beyond the gradient: 16 bytes per element of one class (24 for float64) per thread,
    plus a float [N, C, M] scratch for half-precision input. ``from_logits=False`` (multiclass)
    takes probabilities (smp ignores the argument and always applies the softmax); the hinge
    takes logits only."""
    fn = "lovasz_loss"
    if not from_logits and mode != "multiclass":
        raise ValueError(f"{fn}: the Lovász hinge (mode={mode!r}) takes logits; "
                         "from_logits=False is for mode='multiclass'")
    x, t, _, labels = _check(fn, input, target, mode)
    has_ignore = ignore_index is not None
    ig = int(ignore_index) if has_ignore else 0
    if has_ignore and float(ig) != float(ignore_index):
        raise ValueError(f"{fn}: ignore_index must be an integer, got {ignore_index!r}")
    if mode == "multiclass":
        if not labels:
            raise ValueError(f"{fn}: mode='multiclass' takes integer labels [N, *spatial], got "
                             f"{desc(target)}")
        if not from_logits:  # probabilities: their log gives the same softmax
            x = x.clamp_min(torch.finfo(x.dtype).tiny).log()
        kind, t = LOVASZ_SOFTMAX, t.long()
        x = x.contiguous()
    else:
        kind = LOVASZ_HINGE
        t = t.to(x.dtype)
    needs_grad = x.requires_grad and torch.is_grad_enabled()
    args = (x, t, kind, bool(per_image), has_ignore, ig, needs_grad)
    loss, _ = call_op(torch.ops.fastgenloss.lovasz_fwd.default, None, args, needs_grad)
    return loss
