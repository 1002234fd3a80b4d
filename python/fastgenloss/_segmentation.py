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

Where no kernel applies (probabilities as input, soft multiclass targets;
FASTGENLOSS_SEG_CUDA_KERNEL=0 turns the CUDA kernel off) the same statistics are computed with
PyTorch ops, and the second stage is shared.

The second stage (statistics -> loss) is one op, seg_combine (csrc/include/fastgenloss/
seg_combine.h), on the CPU, and on CUDA once FASTGENLOSS_SEG_CUDA_COMBINE=1 opts in (its CUDA
kernel has not yet run on a GPU); elsewhere (process_group, reduction="none", class weights
that require a gradient) it is the PyTorch ops below.

The focal term (smp's FocalLoss: sigmoid per channel, one-vs-rest in multiclass mode) is two
more statistics of the same pass, F = the focal loss summed and K = the number of kept
elements per (sample, class). Where smp's mean is over nothing (every element ignored) it is 0
here, not NaN.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference as _ref
from ._ops import (SEG_BINARY, SEG_MULTICLASS, SEG_MULTILABEL, SegCombineFunction,
                   SegStatsFunction, call_op)

MODES = {"binary": SEG_BINARY, "multiclass": SEG_MULTICLASS, "multilabel": SEG_MULTILABEL}
_INT_LABELS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _desc(t: Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def _check(fn: str, input: Tensor, target: Tensor, mode: str):
    """-> (input as [N, C, M], target as [N, M] labels or [N, C, M], mode code, labels?)."""
    if mode not in MODES:
        raise ValueError(f"{fn}: mode must be one of {sorted(MODES)}, got {mode!r}")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{fn}: input and target must be tensors")
    if not input.is_floating_point():
        raise TypeError(f"{fn}: input must be floating-point logits, got {_desc(input)}")
    if input.dim() < 3:
        raise ValueError(f"{fn}: input must be [N, C, *spatial] (2D or 3D), got {_desc(input)}")
    if target.device != input.device:
        raise ValueError(f"{fn}: target is on {target.device} but input is on {input.device}")
    n, c = input.shape[0], input.shape[1]
    spatial = tuple(input.shape[2:])
    if mode == "binary" and c != 1:
        raise ValueError(f"{fn}: mode='binary' takes one channel [N, 1, *spatial], got "
                         f"{_desc(input)} (use 'multilabel' for several)")
    if mode == "multiclass" and c < 2:
        raise ValueError(f"{fn}: mode='multiclass' needs C >= 2 classes, got {_desc(input)} "
                         "(use mode='binary' for one channel)")
    m = math.prod(spatial)
    if mode == "multiclass" and target.dtype in _INT_LABELS:
        if tuple(target.shape) != (n, *spatial):
            raise ValueError(f"{fn}: multiclass labels must be [N, *spatial] = {[n, *spatial]}, "
                             f"got target {_desc(target)} for input {_desc(input)}")
        return _class_rows(input, n, c, m), target.reshape(n, m), MODES[mode], True
    x = input.reshape(n, c, m)
    if target.dtype == torch.bool or target.dtype in _INT_LABELS and mode != "multiclass":
        target = target.to(input.dtype)
    if not target.is_floating_point():
        raise TypeError(f"{fn}: target must be integer labels or a float mask, got {_desc(target)}")
    if mode == "binary" and tuple(target.shape) == (n, *spatial):
        target = target.unsqueeze(1)
    if target.shape != input.shape:
        raise ValueError(f"{fn}: target must have the input's shape {list(input.shape)} "
                         f"(or be integer labels in multiclass mode), got {_desc(target)}")
    return x, target.reshape(n, c, m), MODES[mode], False


# Whether CUDA tensors go through the hand-written seg_stats CUDA kernel (validated on an H100
# on 2026-11-23: the CUDA cases of the suite pass, 1.1-2.8x faster than the PyTorch-ops path):
# FASTGENLOSS_SEG_CUDA_KERNEL=0 at import, or fastgenloss._segmentation.CUDA_KERNEL = False,
# turns it off (CUDA tensors then take the PyTorch-ops path, the same statistics).
CUDA_KERNEL = os.environ.get("FASTGENLOSS_SEG_CUDA_KERNEL", "1") != "0"

# Whether the second stage runs as the seg_combine op on CUDA too. Its CUDA kernel builds and
# links but has not yet run on a GPU: opt-in (FASTGENLOSS_SEG_CUDA_COMBINE=1 at import, or
# fastgenloss._segmentation.CUDA_COMBINE = True) until a GPU session validates it. The CPU
# always takes it.
CUDA_COMBINE = os.environ.get("FASTGENLOSS_SEG_CUDA_COMBINE", "0") == "1"


def cuda_kernel_enabled() -> bool:
    return CUDA_KERNEL


def _combine_enabled(stats: Tensor) -> bool:
    dev = stats.device.type
    return dev == "cpu" or (dev == "cuda" and CUDA_COMBINE)


def _channels_last(x: Tensor) -> bool:
    fmt = torch.channels_last if x.dim() == 4 else (torch.channels_last_3d if x.dim() == 5 else None)
    return fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


def _class_rows(input: Tensor, n: int, c: int, m: int) -> Tensor:
    """input as [N, C, M]; channels_last logits as a view of their [N, M, C] memory (the
    multiclass kernel reads that layout in place: no copy of the logits)."""
    if _channels_last(input):
        return input.movedim(1, -1).reshape(n, m, c).transpose(1, 2)
    return input.reshape(n, c, m)


def _is_nhwc_view(x: Tensor) -> bool:
    n, c, m = x.shape
    return (not x.is_contiguous() and (x.stride(1) == 1 or c == 1) and (x.stride(2) == c or m == 1)
            and (x.stride(0) == c * m or n == 1))


def _check_labels(t: Tensor, c: int, ignore_index, keep: Tensor | None = None) -> None:
    """ValueError naming the first label outside [0, C) that is not ignore_index (a pass over
    the labels and a host synchronization)."""
    if keep is None:
        keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    bad_at = keep & ((t < 0) | (t >= c))
    if bool(bad_at.any()):
        bad = t[bad_at][0].item()
        raise ValueError(f"labels must be in [0, {c})" +
                         (f" or ignore_index ({ignore_index})" if ignore_index is not None else "")
                         + f", got {bad}")


def _torch_stats(x: Tensor, t: Tensor, mode: int, labels: bool, from_logits: bool,
                 ignore_index, eps: float, focal_gamma=None, focal_alpha=None,
                 label_smoothing: float = 0.0):
    """(stats [N, C, 3 or 5], xent [N, C]) with PyTorch ops: the path where no kernel applies."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    n, c, _ = xf.shape
    if from_logits:
        logits = xf
        p = xf.log_softmax(1).exp() if mode == SEG_MULTICLASS else F.logsigmoid(xf).exp()
    else:
        p = xf
        logits = _ref.probability_logits(x, "multiclass" if mode == SEG_MULTICLASS else "binary",
                                         eps, acc)
    if labels:
        keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        if torch.compiler.is_compiling():
            # a traced graph cannot branch on the labels: the op checks them (and raises) as
            # the graph runs; an ignore_index no integer equals ignores nothing, as in eager mode
            has_ignore = ignore_index is not None and float(int(ignore_index)) == float(ignore_index)
            lab = torch.ops.fastgenloss.seg_labels(t, c, has_ignore,
                                                   int(ignore_index) if has_ignore else 0)
        else:
            lab = (t.long() * keep)
            _check_labels(t, c, ignore_index, keep)
        tt = F.one_hot(lab, c).permute(0, 2, 1).to(acc) * keep.unsqueeze(1)
        keep = keep.unsqueeze(1)
        logp = logits.log_softmax(1) if from_logits else logits
        nll = -logp.gather(1, lab.unsqueeze(1))  # [N, 1, M]
        if label_smoothing:
            nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(1, keepdim=True)
        nll = nll * keep
        xent = torch.zeros(n, c, dtype=acc, device=x.device).scatter_add_(
            1, lab, nll.squeeze(1)) if nll.numel() else torch.zeros(n, c, dtype=acc, device=x.device)
    else:
        keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        tt = t.to(acc) * keep
        if mode == SEG_MULTICLASS:  # soft multiclass targets: cross-entropy against them
            ts = tt if not label_smoothing else (1 - label_smoothing) * tt + label_smoothing / c * keep.to(acc)
            xent = (-(logits.log_softmax(1) if from_logits else logits) * ts).sum(2)
        else:
            ts = tt if not label_smoothing else tt * (1 - 2 * label_smoothing) + label_smoothing
            xent = (F.binary_cross_entropy_with_logits(logits, ts, reduction="none") * keep).sum(2)
    pv = p * keep
    cols = [pv.sum(2), tt.sum(2), (pv - tt).abs().sum(2)]
    if focal_gamma is not None:
        keepf = keep.expand_as(logits).to(acc)
        logpt = F.binary_cross_entropy_with_logits(logits, tt, reduction="none")
        fl = _ref.power(-torch.expm1(-logpt), focal_gamma) * logpt
        if focal_alpha is not None:
            fl = fl * (focal_alpha * tt + (1 - focal_alpha) * (1 - tt))
        cols += [(fl * keepf).sum(2), keepf.sum(2)]
    return torch.stack(cols, dim=-1), xent


def seg_stats(input: Tensor, target: Tensor, *, mode: str, from_logits: bool = True,
              ignore_index: int | None = None, eps: float = 1e-7, focal_gamma=None,
              focal_alpha=None, label_smoothing: float = 0.0, fn: str = "seg_stats"):
    """(stats [N, C, 3] = (sum p, sum t, sum |p - t|), xent [N, C]) per sample and class; with
    focal_gamma given, stats [N, C, 5]: + (sum of the focal term, number of kept elements).
    label_smoothing: xent against the smoothed targets (see segmentation_loss)."""
    x, t, code, labels = _check(fn, input, target, mode)
    label_smoothing = _check_smoothing(fn, label_smoothing)
    if focal_gamma is not None:
        if not focal_gamma >= 0:
            raise ValueError(f"{fn}: focal gamma must be >= 0, got {focal_gamma}")
        if focal_alpha is not None and not 0 <= focal_alpha <= 1:
            raise ValueError(f"{fn}: focal alpha must be in [0, 1] or None, got {focal_alpha}")
    # (label smoothing is in the CPU kernel; the CUDA kernel has not run with it on a GPU yet)
    kernel = (from_logits and (x.device.type == "cpu" or
                               x.device.type == "cuda" and cuda_kernel_enabled()
                               and not label_smoothing)
              and (labels or code != SEG_MULTICLASS))
    if kernel:
        has_ignore = ignore_index is not None
        ig = int(ignore_index) if has_ignore else 0
        if not labels and has_ignore and float(ig) != float(ignore_index):
            kernel = False
    if not kernel:
        return _torch_stats(x, t, code, labels, from_logits, ignore_index, eps, focal_gamma,
                            focal_alpha, label_smoothing)
    if not (code == SEG_MULTICLASS and _is_nhwc_view(x)):
        x = x.contiguous()
    t = t.contiguous()
    fg = -1.0 if focal_gamma is None else float(focal_gamma)
    fa = -1.0 if focal_alpha is None else float(focal_alpha)
    if labels and x.device.type == "cuda" and not torch.compiler.is_compiling():
        # Labels checked here in eager mode (the kernel checks them too, and raises from C++
        # under torch.compile): on the H100 image of 2026-11-23 (g++ 13.3, torch 2.11) an error
        # raised from the CUDA op's C++ crashed the process (bench/results/NVIDIA-H100-80GB-
        # HBM3-2026-11-23-NOTES.md); the cost is one pass over the labels, next to the kernel's
        # own synchronization.
        try:
            _check_labels(t, x.shape[1], ignore_index)
        except ValueError as e:
            raise ValueError(f"{fn}: {e} (target {_desc(target)})") from None
    try:
        return call_op(torch.ops.fastgenloss.seg_stats.default, SegStatsFunction,
                       (x, t, code, has_ignore, ig, fg, fa, label_smoothing),
                       x.requires_grad and torch.is_grad_enabled())
    except RuntimeError as e:
        msg = str(e).split("\n")[0]
        if "labels must be" in msg:
            raise ValueError(f"{fn}: {msg.split(': ', 1)[-1]} (target {_desc(target)})") from None
        raise


def _check_smoothing(fn: str, label_smoothing, name: str = "label_smoothing") -> float:
    """label_smoothing as a float in [0, 1] (torch's cross_entropy's range), else an error
    naming the argument (``name``: smp's modules call it smooth_factor)."""
    if isinstance(label_smoothing, Tensor):
        raise TypeError(f"{fn}: {name} must be a Python float in [0, 1], got a tensor "
                        f"{_desc(label_smoothing)}")
    try:
        v = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a float in [0, 1], got "
                        f"{label_smoothing!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{fn}: {name} must be in [0, 1], got {label_smoothing!r}")
    return v


def _from_stats(stats: Tensor, *, alpha: float, beta: float, smooth: float, eps: float,
                log_loss: bool, per_image: bool) -> Tensor:
    """Per-class (or per-(sample, class)) Tversky losses, zero where the class is absent."""
    P, T, A = stats[..., :3].unbind(-1)
    if not per_image:
        P, T, A = P.sum(0), T.sum(0), A.sum(0)
    tp = (P + T - A) / 2
    fp, fn = P - tp, T - tp
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    return loss * (T > 0).to(loss.dtype)


def _class_index(classes, c: int, device, fn: str) -> Tensor:
    """``classes`` as int64 indices into the c channels (negative ones from the end)."""
    if isinstance(classes, Tensor):
        vals = [int(v) for v in classes.reshape(-1).tolist()]
    elif isinstance(classes, int):
        vals = [classes]
    else:
        vals = [int(v) for v in classes]
    if any(v < -c or v >= c for v in vals):
        raise ValueError(f"{fn}: classes must index the {c} channels, got {vals}")
    return torch.tensor([v % c for v in vals], dtype=torch.long, device=device)


def _select(loss: Tensor, classes, class_weights, fn: str):
    """(the losses of ``classes`` only, their class weights or None)."""
    c = loss.shape[-1]
    idx = None
    if classes is not None:
        idx = _class_index(classes, c, loss.device, fn)
        loss = loss.index_select(-1, idx)
    w = None
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=loss.dtype, device=loss.device).reshape(-1)
        if w.numel() != c:
            raise ValueError(f"{fn}: class_weights must have one weight per class ({c}), got "
                             f"{w.numel()}")
        if idx is not None:
            w = w.index_select(0, idx)
    return loss, w


def _weighted_sums(loss: Tensor, classes, class_weights, fn: str):
    """(sum of loss x weight, sum of weight) over the entries _aggregate averages."""
    loss, w = _select(loss, classes, class_weights, fn)
    if w is None:
        return loss.sum(), loss.new_tensor(float(loss.numel()))
    w = w.expand_as(loss)
    return (loss * w).sum(), w.sum()


def _aggregate(loss: Tensor, classes, class_weights, reduction: str, fn: str) -> Tensor:
    if reduction == "none":
        return _select(loss, classes, None, fn)[0]
    if class_weights is None:
        loss = _select(loss, classes, None, fn)[0]
        return loss.mean() if reduction == "mean" else loss.sum()
    total, wsum = _weighted_sums(loss, classes, class_weights, fn)
    return total / wsum if reduction == "mean" else total


def _focal_from_stats(stats: Tensor, mode: str, class_weights, reduction: str) -> Tensor:
    """smp's FocalLoss from the (F, K) statistics: binary, the mean over kept elements;
    otherwise each class's mean (``sum``: its sum), then the class mean or class_weights'."""
    Fs, K = stats[..., 3].sum(0), stats[..., 4].sum(0)
    if mode == "binary":
        total = Fs.sum()
        return total / K.sum().clamp_min(1) if reduction == "mean" else total
    per_class = Fs / K.clamp_min(1) if reduction == "mean" else Fs
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=per_class.dtype, device=per_class.device)
        return (per_class * w.reshape(-1)).sum() / w.sum()
    return per_class.mean()


def _check_common(fn: str, mode: str, reduction: str, classes, class_weights, smooth, eps):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if mode == "binary" and (classes is not None or class_weights is not None):
        raise ValueError(f"{fn}: classes / class_weights are not supported with mode='binary' "
                         "(as in smp)")
    if smooth < 0 or eps < 0:
        raise ValueError(f"{fn}: smooth and eps must be >= 0, got {smooth} and {eps}")


def _check_weight_sums(fn: str, class_weights, classes, c: int, overlap: bool, focal: bool,
                       reduction: str) -> None:
    """class_weights that would make a weighted class mean 0 / 0 (NaN): the selected classes'
    weights summing to 0 (the overlap terms' mean), or all of them (the focal term's), or a
    non-finite weight. Checked where the weights are on the host (a list, or a CPU tensor);
    CUDA weights are not read back (no synchronization)."""
    if class_weights is None or (isinstance(class_weights, Tensor) and class_weights.device.type != "cpu"):
        return
    w = (class_weights.detach().reshape(-1).tolist() if isinstance(class_weights, Tensor)
         else [float(v) for v in class_weights])
    if len(w) != c:
        raise ValueError(f"{fn}: class_weights must have one weight per class ({c}), got {len(w)}")
    if not all(math.isfinite(v) for v in w):
        raise ValueError(f"{fn}: class_weights must be finite, got {w}")
    if reduction != "mean":
        return
    if overlap:
        idx = range(c) if classes is None else _class_index(classes, c, "cpu", fn).tolist()
        if sum(w[i] for i in idx) == 0:
            raise ValueError(f"{fn}: the class_weights of the classes averaged ({list(idx)}) sum "
                             f"to 0, so their weighted mean is 0 / 0; got class_weights {w}")
    if focal and sum(w) == 0:
        raise ValueError(f"{fn}: class_weights sum to 0, so the focal term's weighted class mean "
                         f"is 0 / 0; got {w}")


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of ``group``; backward sums the gradients over the ranks too, so each
    rank's local statistics receive d(sum of every rank's loss)/d(stats) = world_size x the
    single-process gradient, which DDP's gradient averaging divides back: a DDP step equals the
    single-process step on the whole batch (as torch.distributed.nn.all_reduce)."""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed as dist

        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def _global_sums(parts: list[Tensor], group) -> list[Tensor]:
    """The parts, each summed over the ranks of ``group`` (one all-reduce of their float64
    concatenation, differentiable); unchanged without a group."""
    if group is None:
        return parts
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("process_group was given but torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    flat = torch.cat([p.reshape(-1).to(torch.float64) for p in parts])
    flat = _AllReduceSum.apply(flat, None if group is True else group)
    out, k = [], 0
    for p in parts:
        out.append(flat[k:k + p.numel()].reshape(p.shape).to(p.dtype))
        k += p.numel()
    return out


def segmentation_loss(input: Tensor, target: Tensor, mode: str = "multiclass", *,
                      dice: float = 1.0, iou: float = 1.0, bce: float = 0.8, focal: float = 0.0,
                      tversky: float = 0.0, ce: float | None = None, jaccard: float | None = None,
                      tversky_alpha: float = 0.5, tversky_beta: float = 0.5,
                      tversky_gamma: float = 1.0, focal_alpha: float | None = None,
                      focal_gamma: float = 2.0, classes=None, log_loss: bool = False,
                      from_logits: bool = True, smooth: float = 0.0, eps: float = 1e-7,
                      ignore_index: int | None = None, class_weights=None,
                      per_image: bool = False, reduction: str = "mean", process_group=None,
                      label_smoothing: float = 0.0, _fn: str = "segmentation_loss") -> Tensor:
    """dice * DiceLoss + iou * JaccardLoss + bce * (BCE, or CE in multiclass mode)
    + focal * FocalLoss + tversky * TverskyLoss, each term as smp computes it, from one pass of
    the statistics kernel. ``ce`` is an alias of ``bce``, ``jaccard`` of ``iou``.
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
        add(w * _ref.power(loss, g))
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
        return _ref.focal_loss(input, target, mode=mode, alpha=alpha, gamma=gamma,
                               ignore_index=ignore_index, from_logits=from_logits, eps=eps,
                               class_weights=class_weights, reduction=reduction,
                               normalized=normalized, reduced_threshold=reduced_threshold)
    return segmentation_loss(input, target, mode, **_only("focal", focal=1.0), focal_alpha=alpha,
                             focal_gamma=gamma, from_logits=from_logits, eps=eps,
                             ignore_index=ignore_index, class_weights=class_weights,
                             reduction=reduction, process_group=process_group, _fn=fn)
