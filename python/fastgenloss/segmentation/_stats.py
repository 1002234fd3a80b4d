"""The segmentation losses' first and second stages: argument checks, the per-(sample, class)
statistics (the seg_stats kernel, or PyTorch ops where no kernel applies), the second stage
from statistics to the loss (the seg_combine op, or PyTorch ops), and the all-reduce of the
statistics for ``process_group``. functional.py composes them into the public losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import config
from .._core import acc_dtype, call_op, desc, host_readable
from ._ops import SEG_BINARY, SEG_MULTICLASS, SEG_MULTILABEL, SegStatsFunction
from ._torch import power, probability_logits

MODES = {"binary": SEG_BINARY, "multiclass": SEG_MULTICLASS, "multilabel": SEG_MULTILABEL}
_INT_LABELS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check(fn: str, input: Tensor, target: Tensor, mode: str):
    """-> (input as [N, C, M], target as [N, M] labels or [N, C, M], mode code, labels?).

    smp's shape rules: logits [N, C, *spatial] with any number of spatial dims (none: a
    classifier batch [N, C]); binary logits [N, *] (smp's view(N, 1, -1): everything after the
    batch dim is one class); the target viewed as [N, -1] (labels) or [N, C, -1] (masks), so any
    shape with the batch dim and the right element count is accepted, as smp accepts it."""
    if mode not in MODES:
        raise ValueError(f"{fn}: mode must be one of {sorted(MODES)}, got {mode!r}")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{fn}: input and target must be tensors")
    if not input.is_floating_point():
        raise TypeError(f"{fn}: input must be floating-point logits, got {desc(input)}")
    if target.device != input.device:
        raise ValueError(f"{fn}: target is on {target.device} but input is on {input.device}")
    if mode == "binary":
        if input.dim() < 1:
            raise ValueError(f"{fn}: mode='binary' takes logits [N, *], got {desc(input)}")
        n, c = input.shape[0], 1
    else:
        if input.dim() < 2:
            raise ValueError(f"{fn}: mode={mode!r} takes logits [N, C, *spatial], got "
                             f"{desc(input)}")
        n, c = input.shape[0], input.shape[1]
    if mode == "multiclass" and c < 2:
        raise ValueError(f"{fn}: mode='multiclass' needs C >= 2 classes, got {desc(input)} "
                         "(use mode='binary' for one channel)")
    m = input.numel() // (n * c) if n * c else math.prod(input.shape[2:] if mode != "binary"
                                                       else input.shape[1:])
    if target.dim() < 1 or target.shape[0] != n:
        raise ValueError(f"{fn}: target {desc(target)} must have input's batch dim {n} "
                         f"(input {desc(input)})")
    if mode == "multiclass" and target.dtype in _INT_LABELS:
        if target.numel() != n * m:
            raise ValueError(f"{fn}: multiclass labels must hold one label per position, "
                             f"[N, *spatial] = {[n, *input.shape[2:]]}, got target "
                             f"{desc(target)} for input {desc(input)}")
        return _class_rows(input, n, c, m), target.reshape(n, m), MODES[mode], True
    x = input.reshape(n, c, m)
    if target.dtype == torch.bool or target.dtype in _INT_LABELS and mode != "multiclass":
        target = target.to(input.dtype)
    if not target.is_floating_point():
        raise TypeError(f"{fn}: target must be integer labels or a float mask, got {desc(target)}")
    if target.numel() != n * c * m:
        expected = "[N, *]" if mode == "binary" else "the input's shape"
        raise ValueError(f"{fn}: target must have {expected} {list(input.shape)} (or be integer "
                         f"labels in multiclass mode), got {desc(target)}")
    return x, target.reshape(n, c, m), MODES[mode], False


def cuda_kernel_enabled() -> bool:
    """Whether CUDA statistics go through the seg_stats kernel (config: seg_cuda_kernel)."""
    return config.get("seg_cuda_kernel")


def _combine_enabled(stats: Tensor) -> bool:
    """Whether the second stage runs as the seg_combine op: always on the CPU; on CUDA with the
    experimental switch seg_cuda_combine."""
    dev = stats.device.type
    return dev == "cpu" or (dev == "cuda" and config.get("seg_cuda_combine"))


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
    acc = acc_dtype(x.dtype)
    xf = x.to(acc)
    n, c, _ = xf.shape
    if from_logits:
        logits = xf
        p = xf.log_softmax(1).exp() if mode == SEG_MULTICLASS else F.logsigmoid(xf).exp()
    else:
        p = xf
        logits = probability_logits(x, "multiclass" if mode == SEG_MULTICLASS else "binary",
                                         eps, acc)
    if labels:
        keep = (t != ignore_index) if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
        if not host_readable(t):
            # a traced graph (or a CUDA graph being captured) cannot branch on the labels: the
            # op checks them (and raises) as the graph runs, except under capture (see
            # seg_labels); an ignore_index no integer equals ignores nothing, as in eager mode
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
        fl = power(-torch.expm1(-logpt), focal_gamma) * logpt
        if focal_alpha is not None:
            fl = fl * (focal_alpha * tt + (1 - focal_alpha) * (1 - tt))
        cols += [(fl * keepf).sum(2), keepf.sum(2)]
    return torch.stack(cols, dim=-1), xent


def _positions_as_one_sample(x: Tensor, t: Tensor, labels: bool):
    """[N, C, 1] logits (a classifier batch, binary logits [N]) as one sample of N positions,
    [1, C, N], for batch-wide statistics: the kernels vectorize over positions, not samples.
    Multiclass logits stay in place (the class-minor layout the kernel reads as channels_last);
    binary / multilabel ones are contiguous as they are for C = 1, else transposed once."""
    x = x.permute(2, 1, 0)
    t = t.reshape(1, -1) if labels else t.permute(2, 1, 0)
    return x, t


def seg_stats(input: Tensor, target: Tensor, *, mode: str, from_logits: bool = True,
              ignore_index: int | None = None, eps: float = 1e-7, focal_gamma=None,
              focal_alpha=None, label_smoothing: float = 0.0, fn: str = "seg_stats",
              batch_only: bool = False):
    """(stats [N, C, 3] = (sum p, sum t, sum |p - t|), xent [N, C]) per sample and class; with
    focal_gamma given, stats [N, C, 5]: + (sum of the focal term, number of kept elements).
    label_smoothing: xent against the smoothed targets (see segmentation_loss). ``batch_only``:
    the caller sums over the samples, so the first dim may come back as 1 (a classifier batch
    [N, C] runs as one sample of N positions)."""
    x, t, code, labels = _check(fn, input, target, mode)
    if batch_only and x.shape[2] == 1 and x.shape[0] > 1:
        x, t = _positions_as_one_sample(x, t, labels)
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
    if labels and x.device.type == "cuda" and host_readable(t):
        # Labels checked here in eager mode (the kernel checks them too, and raises from C++
        # under torch.compile): with one GPU toolchain an error raised from the CUDA op's C++
        # crashed the process (docs/performance.md, open GPU work); the cost is one pass over
        # the labels, next to the kernel's own synchronization.
        try:
            _check_labels(t, x.shape[1], ignore_index)
        except ValueError as e:
            raise ValueError(f"{fn}: {e} (target {desc(target)})") from None
    try:
        return call_op(torch.ops.fastgenloss.seg_stats.default, SegStatsFunction,
                       (x, t, code, has_ignore, ig, fg, fa, label_smoothing),
                       x.requires_grad and torch.is_grad_enabled())
    except RuntimeError as e:
        msg = str(e).split("\n")[0]
        if "labels must be" in msg:
            raise ValueError(f"{fn}: {msg.split(': ', 1)[-1]} (target {desc(target)})") from None
        raise


def _check_smoothing(fn: str, label_smoothing, name: str = "label_smoothing") -> float:
    """label_smoothing as a float in [0, 1] (torch's cross_entropy's range), else an error
    naming the argument (``name``: smp's modules call it smooth_factor)."""
    if isinstance(label_smoothing, Tensor):
        raise TypeError(f"{fn}: {name} must be a Python float in [0, 1], got a tensor "
                        f"{desc(label_smoothing)}")
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
