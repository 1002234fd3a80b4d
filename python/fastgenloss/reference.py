"""Every fastgenloss loss in plain PyTorch: the oracle of the tests and the baseline of the
benchmarks. Written the way a user would write it (torch's fused ATen losses where torch has
them), not as a strawman; call it on float64 inputs for a high-precision reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["add_noise", "bce_loss", "charbonnier_loss", "dice_loss", "diffusion_loss", "edm_loss",
           "edm_noise", "flow_matching_loss", "flow_noise", "focal_loss", "gram_matrix",
           "huber_loss", "jaccard_loss", "l1_loss", "mse_loss", "pixel_loss", "seg_stats",
           "segmentation_loss", "smooth_l1_loss", "snr", "soft_bce_with_logits",
           "soft_cross_entropy_none", "style_loss", "tversky_loss", "velocity"]


def _reduce(loss: Tensor, reduction: str, weight: Tensor | None, by_weight: bool,
            nan_if_no_weight: bool = True) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if weight is not None and by_weight:
        wsum = weight.expand_as(loss).sum()
        total = loss.sum()
        if nan_if_no_weight:
            return total / wsum
        return torch.where(wsum == 0, torch.zeros_like(total), total / wsum)
    return loss.mean()


def _weighted(loss: Tensor, weight: Tensor | None) -> Tensor:
    return loss if weight is None else loss * weight.to(loss.dtype)


def l1_loss(input, target, reduction="mean", weight=None):
    """torch's l1_loss; with a weight, mean = sum(w|d|)/sum(w), as torch."""
    if weight is None:
        return F.l1_loss(input, target, reduction=reduction)
    w = weight.to(input.dtype)
    return _reduce(_weighted((input - target).abs(), w), reduction, w, by_weight=True)


def mse_loss(input, target, reduction="mean", weight=None):
    """torch's mse_loss; with a weight, mean = sum(w d^2)/sum(w), as torch."""
    if weight is None:
        return F.mse_loss(input, target, reduction=reduction)
    w = weight.to(input.dtype)
    return _reduce(_weighted((input - target) ** 2, w), reduction, w, by_weight=True)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """torch's huber_loss; with a weight, mean = sum(w l)/numel, as torch."""
    if weight is None:
        return F.huber_loss(input, target, reduction=reduction, delta=delta)
    loss = F.huber_loss(input, target, reduction="none", delta=delta)
    return _reduce(_weighted(loss, weight), reduction, None, by_weight=False)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0, weight=None):
    """torch's smooth_l1_loss; a weight (our extension) reduces like huber's."""
    if weight is None:
        return F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)
    loss = F.smooth_l1_loss(input, target, reduction="none", beta=beta)
    return _reduce(_weighted(loss, weight), reduction, None, by_weight=False)


def charbonnier_loss(input, target, eps=1e-3, weight=None, reduction="mean", masked_mean=False):
    loss = torch.sqrt((input - target) ** 2 + eps * eps)
    return _reduce(_weighted(loss, weight), reduction, weight, by_weight=masked_mean,
                   nan_if_no_weight=False)


def pixel_loss(input, target, *, l1=1.0, mse=0.0, charbonnier=0.0, huber=0.0, smooth_l1=0.0,
               eps=1e-3, delta=1.0, beta=1.0, weight=None, reduction="mean", masked_mean=False):
    """The weighted sum of the separate losses. Unweighted, each term keeps its own fused
    torch kernel and reduction (what a user writes: ``F.l1_loss(x, y) + F.mse_loss(x, y)``)."""
    if weight is None:
        total = None
        for coef, term in (
            (l1, lambda: F.l1_loss(input, target, reduction=reduction)),
            (mse, lambda: F.mse_loss(input, target, reduction=reduction)),
            (charbonnier, lambda: charbonnier_loss(input, target, eps, reduction=reduction)),
            (huber, lambda: F.huber_loss(input, target, reduction=reduction, delta=delta)),
            (smooth_l1, lambda: F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)),
        ):
            if coef:
                t = coef * term()
                total = t if total is None else total + t
        return total
    loss = None
    for coef, term in (
        (l1, lambda: (input - target).abs()),
        (mse, lambda: (input - target) ** 2),
        (charbonnier, lambda: torch.sqrt((input - target) ** 2 + eps * eps)),
        (huber, lambda: F.huber_loss(input, target, reduction="none", delta=delta)),
        (smooth_l1, lambda: F.smooth_l1_loss(input, target, reduction="none", beta=beta)),
    ):
        if coef:
            t = coef * term()
            loss = t if loss is None else loss + t
    w = weight.to(input.dtype)
    return _reduce(loss * w, reduction, w, by_weight=masked_mean, nan_if_no_weight=False)


# ---- diffusion ------------------------------------------------------------------------------
# Written as diffusers' training scripts write it (DDPMScheduler.add_noise / get_velocity,
# training_utils.compute_snr, the min-SNR weights of train_text_to_image.py, the SD3 script's
# flow-matching loss, EDMEulerScheduler's preconditioning): gather, broadcast, materialize the
# target, elementwise loss, per-sample mean, weight, mean. Differences from the scripts, where
# they are wrong: min(SNR, gamma) / SNR is written to be 1 (its limit) at SNR = 0 instead of
# 0/0; float64 data stays float64 (the scripts' .float() would round it).


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _alpha_bar(timesteps: Tensor, alphas_cumprod: Tensor, like: Tensor) -> Tensor:
    return alphas_cumprod.to(like.device)[timesteps.to(like.device)]


def add_noise(sample: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    ab = _alpha_bar(timesteps, alphas_cumprod, sample).to(sample.dtype)
    return _bcast(ab ** 0.5, sample) * sample + _bcast((1 - ab) ** 0.5, sample) * noise


def velocity(sample: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    ab = _alpha_bar(timesteps, alphas_cumprod, sample).to(sample.dtype)
    return _bcast(ab ** 0.5, sample) * noise - _bcast((1 - ab) ** 0.5, sample) * sample


def flow_noise(sample: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    s = _bcast(sigmas.to(sample.device, sample.dtype), sample)
    return (1.0 - s) * sample + s * noise


def edm_noise(sample: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    return sample + noise * _bcast(sigmas.to(sample.device, sample.dtype), sample)


def snr(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    ab = alphas_cumprod.to(timesteps.device)[timesteps]
    return ((ab ** 0.5) / ((1.0 - ab) ** 0.5)) ** 2


def _rho(r: Tensor, loss_type: str, huber_c: float) -> Tensor:
    if loss_type == "l2":
        return r * r
    if loss_type == "l1":
        return r.abs()
    if loss_type == "huber":
        return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=huber_c)
    return 2 * huber_c * (torch.sqrt(r * r + huber_c ** 2) - huber_c)


def _finish(pred: Tensor, target: Tensor, weight, loss_type: str, huber_c: float,
            reduction: str) -> Tensor:
    acc = _acc(pred)
    loss = _rho(pred.to(acc) - target.to(acc), loss_type, huber_c)
    loss = loss.mean(dim=list(range(1, loss.dim()))) if loss.dim() > 1 else loss
    if weight is not None:
        loss = loss * weight.to(acc)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def snr_weights(snr_t: Tensor, prediction_type: str, weighting: str, snr_gamma: float) -> Tensor:
    """The per-sample weights of ``fastgenloss.diffusion_loss``'s SNR-based weightings."""
    gamma = torch.full_like(snr_t, snr_gamma)
    clipped = torch.stack([snr_t, gamma], dim=1).min(dim=1)[0]
    # min(SNR, gamma) / SNR, with its limit 1 at SNR = 0
    over_snr = torch.where(snr_t <= snr_gamma, torch.ones_like(snr_t), gamma / snr_t)
    if weighting == "min_snr":
        if prediction_type == "epsilon":
            return over_snr
        if prediction_type == "v_prediction":
            return clipped / (snr_t + 1)
        return clipped
    if weighting == "min_snr_floored":
        return over_snr + 1 if prediction_type == "v_prediction" else over_snr
    if weighting == "snr":
        return snr_t
    if weighting == "inverse_snr":
        return 1.0 / snr_t.clamp(min=1e-6)
    raise ValueError(weighting)


def diffusion_loss(model_output: Tensor, sample: Tensor, noise: Tensor, timesteps: Tensor,
                   alphas_cumprod: Tensor, *, prediction_type: str = "epsilon", weighting=None,
                   snr_gamma: float = 5.0, loss_type: str = "l2", huber_c: float = 0.1,
                   reduction: str = "mean") -> Tensor:
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = velocity(sample, noise, timesteps, alphas_cumprod)
    else:
        target = sample
    if isinstance(weighting, Tensor):
        w = weighting.reshape(-1)
    elif weighting is None:
        w = None
    else:
        snr_t = snr(timesteps.to(model_output.device),
                    alphas_cumprod.to(model_output.device, _acc(model_output)))
        w = snr_weights(snr_t, prediction_type, weighting, snr_gamma)
    return _finish(model_output, target, w, loss_type, huber_c, reduction)


def sd3_weighting(sigmas: Tensor, weighting) -> Tensor | None:
    """diffusers' training_utils.compute_loss_weighting_for_sd3, per sample."""
    if weighting == "sigma_sqrt":
        return sigmas ** -2.0
    if weighting == "cosmap":
        return 2 / (torch.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return None


def flow_matching_loss(model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor, *,
                       weighting=None, loss_type: str = "l2", huber_c: float = 0.1,
                       reduction: str = "mean") -> Tensor:
    s = sigmas.reshape(-1).to(model_output.device, _acc(model_output))
    target = noise - sample
    w = weighting.reshape(-1) if isinstance(weighting, Tensor) else sd3_weighting(s, weighting)
    return _finish(model_output, target, w, loss_type, huber_c, reduction)


def edm_loss(model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor, *,
             sigma_data: float = 0.5, prediction_type: str = "epsilon", weighting=None,
             loss_type: str = "l2", huber_c: float = 0.1, reduction: str = "mean") -> Tensor:
    acc = _acc(model_output)
    s = sigmas.reshape(-1).to(model_output.device, acc)
    noisy = edm_noise(sample.to(acc), noise.to(acc), s)
    sb = _bcast(s, model_output)
    c_skip = sigma_data ** 2 / (sb ** 2 + sigma_data ** 2)
    c_out = sb * sigma_data / (sb ** 2 + sigma_data ** 2) ** 0.5
    if prediction_type == "v_prediction":
        c_out = -c_out
    denoised = c_skip * noisy + c_out * model_output.to(acc)
    if isinstance(weighting, Tensor):
        w = weighting.reshape(-1)
    elif weighting == "edm":
        w = (s ** 2 + sigma_data ** 2) / (s * sigma_data) ** 2
    elif weighting == "sigma_sqrt":
        w = s ** -2.0
    else:
        w = None
    return _finish(denoised, sample, w, loss_type, huber_c, reduction)


# ---- style ------------------------------------------------------------------------------------
# As style-transfer code writes it (and piq's StyleLoss): a batched matmul per layer, divided by
# C*H*W, then the MSE between the Grams.


def gram_matrix(features: Tensor, *, normalize: bool = True) -> Tensor:
    n, c = features.shape[:2]
    f = features.reshape(n, c, -1)
    g = torch.bmm(f, f.transpose(1, 2))
    return g / (c * f.shape[2]) if normalize and c * f.shape[2] > 0 else g


def style_loss(input_features: Tensor, target_features_or_gram: Tensor, *,
               reduction: str = "mean", target_is_gram: bool | None = None,
               normalize: bool = True) -> Tensor:
    gx = gram_matrix(input_features, normalize=normalize)
    t = target_features_or_gram
    if target_is_gram is None:
        target_is_gram = t.shape != input_features.shape
    gy = t if target_is_gram else gram_matrix(t, normalize=normalize)
    # the MSE in float for half Grams (its value can exceed float16's range)
    acc = torch.float64 if gx.dtype == torch.float64 else torch.float32
    return F.mse_loss(gx.to(acc), gy.expand_as(gx).to(acc), reduction=reduction)


def perceptual_loss(input: Tensor, target: Tensor, features, *, layer_weights, style_weights=None,
                    criterion: str = "l1", style_grams=None) -> Tensor:
    """The perceptual loss as piq's ContentLoss and StyleLoss compute it: ``features(x)`` gives
    the list of layer activations; per layer the weighted distance of the features (l1 or mse,
    mean) plus the weighted mse of their Gram matrices (from ``style_grams`` when given)."""
    crit = {"l1": F.l1_loss, "mse": F.mse_loss}[criterion] if isinstance(criterion, str) \
        else criterion
    xs, ys = features(input), features(target)
    style_weights = style_weights or [0.0] * len(xs)
    total = input.new_zeros((), dtype=torch.float64 if input.dtype == torch.float64
                            else torch.float32)
    for k, (fx, fy) in enumerate(zip(xs, ys)):
        if layer_weights[k]:
            total = total + layer_weights[k] * crit(fx, fy)
        if style_weights[k]:
            g = style_grams[k] if style_grams is not None else gram_matrix(fy)
            total = total + style_weights[k] * style_loss(fx, g, target_is_gram=True)
    return total


def contextual_loss(x_features: Tensor, y_features: Tensor, *, band_width: float = 0.5) -> Tensor:
    """The contextual loss (Mechrez et al. 2018) as its common PyTorch port writes it."""
    n, c = x_features.shape[:2]
    y_mu = y_features.mean(dim=[0] + list(range(2, y_features.dim())), keepdim=True)
    x = F.normalize(x_features - y_mu, p=2, dim=1).reshape(n, c, -1)
    y = F.normalize(y_features - y_mu, p=2, dim=1).reshape(n, c, -1)
    dist = 1 - torch.bmm(x.transpose(1, 2), y)
    dist_min, _ = torch.min(dist, dim=2, keepdim=True)
    dist_tilde = dist / (dist_min + 1e-5)
    w = torch.exp((1 - dist_tilde) / band_width)
    cx = w / torch.sum(w, dim=2, keepdim=True)
    cx = torch.max(cx, dim=1)[0].mean(dim=1)
    return torch.mean(-torch.log(cx + 1e-5))


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
