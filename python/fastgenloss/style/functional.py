"""Style and perceptual losses: Gram matrices, the style loss, the perceptual (feature) loss over
a user's network, and the contextual loss."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .._core import FLOAT_DTYPES, call_op, check_positive, desc, reduction_code
from ..pixel.functional import charbonnier_loss, l1_loss, mse_loss, smooth_l1_loss
from ._ops import ContextualFwdFunction, GramFunction, StyleFwdFunction

__all__ = ["contextual_loss", "gram_matrix", "normalize_images", "perceptual_loss", "style_loss"]


def _check_features(fn: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {desc(t)}")
    if t.dim() < 3:
        raise ValueError(
            f"{fn}: {name} must be features [N, C, H, W] (or [N, C, L], [N, C, D, H, W]), got "
            f"{desc(t)}")


def _gram_scale(features: Tensor, normalize: bool) -> float:
    if not normalize:
        return 1.0
    m = 1
    for s in features.shape[1:]:
        m *= int(s)
    return 1.0 / m if m > 0 else 1.0


def gram_matrix(features: Tensor, *, normalize: bool = True) -> Tensor:
    """G = F F^T / (C*H*W) per sample: [N, C, H, W] (or [N, C, L], [N, C, D, H, W]) -> [N, C, C],
    in the features' dtype. ``normalize=False`` leaves out the 1/(C*H*W). The scale is applied
    inside the matrix product (float accumulation), so a float16 Gram whose unscaled sums would
    overflow stays finite. channels_last features are read in place."""
    _check_features("gram_matrix", "features", features)
    return call_op(torch.ops.fastgenloss.gram.default, GramFunction,
                   (features, _gram_scale(features, normalize)),
                   features.requires_grad and torch.is_grad_enabled())


def style_loss(input_features: Tensor, target_features_or_gram: Tensor, *,
               reduction: str = "mean", target_is_gram: bool | None = None,
               normalize: bool = True) -> Tensor:
    """MSE between the Gram matrices of ``input_features`` and of the target:
    ``mse_loss(gram_matrix(input), gram_matrix(target), reduction=reduction)``.

    The target is features of the input's shape, or a precomputed Gram (the usual case: the
    style image's Grams are computed once) of shape [N, C, C], [1, C, C] or [C, C] (broadcast
    over the batch). Which one it is follows from its shape; ``target_is_gram`` says it
    explicitly, and must when the two readings are both possible ([N, C, C] features with
    L = C). The loss is float32 for float16/bfloat16 features (float64 for float64): squared
    Gram differences overflow float16 long before the Grams do. fwd+bwd is two matrix products (bmm + mse under autograd runs three): the target
    Gram is subtracted inside the first, and the backward uses that D = G_x - G_y is symmetric.
    """
    fn = "style_loss"
    _check_features(fn, "input_features", input_features)
    tgt = target_features_or_gram
    if not isinstance(tgt, Tensor):
        raise TypeError(f"{fn}: target_features_or_gram must be a torch.Tensor, got "
                        f"{type(tgt).__name__}")
    if not tgt.is_floating_point():
        raise TypeError(f"{fn}: target_features_or_gram must be floating, got {desc(tgt)}")
    if tgt.device != input_features.device:
        raise ValueError(f"{fn}: target_features_or_gram {desc(tgt)} and input_features "
                         f"{desc(input_features)} must be on the same device")
    n, c = input_features.shape[0], input_features.shape[1]
    gram_shape = tgt.dim() == 2 and tuple(tgt.shape) == (c, c) or (
        tgt.dim() == 3 and tuple(tgt.shape[1:]) == (c, c) and tgt.shape[0] in (1, n))
    feat_shape = tgt.shape == input_features.shape
    if target_is_gram is None:
        if gram_shape and feat_shape:
            raise ValueError(
                f"{fn}: target {desc(tgt)} could be features or a Gram for input_features "
                f"{desc(input_features)}; say which with target_is_gram=True/False")
        if not (gram_shape or feat_shape):
            raise ValueError(
                f"{fn}: target_features_or_gram {desc(tgt)} is neither features like "
                f"input_features {desc(input_features)} nor a Gram [{n}, {c}, {c}], "
                f"[1, {c}, {c}] or [{c}, {c}]")
        target_is_gram = gram_shape
    elif target_is_gram and not gram_shape:
        raise ValueError(f"{fn}: target Gram {desc(tgt)} must be [{n}, {c}, {c}], "
                         f"[1, {c}, {c}] or [{c}, {c}]")
    elif not target_is_gram and not feat_shape:
        raise ValueError(f"{fn}: target features {desc(tgt)} must have input_features' shape "
                         f"{list(input_features.shape)}")
    if not target_is_gram and tgt.dtype is not input_features.dtype:
        # Mixed features promote as torch (bfloat16 with float32: both float32), rather than
        # rounding the target to the input's precision.
        dtype = torch.promote_types(input_features.dtype, tgt.dtype)
        input_features, tgt = input_features.to(dtype), tgt.to(dtype)
    red = reduction_code(fn, reduction)
    args = (input_features, tgt, bool(target_is_gram), _gram_scale(input_features, normalize), red)
    loss, _ = call_op(torch.ops.fastgenloss.style_fwd.default, StyleFwdFunction, args,
                      (input_features.requires_grad or tgt.requires_grad)
                      and torch.is_grad_enabled())
    return loss


# ---- perceptual (feature) losses ------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CRITERIA = {"l1": l1_loss, "mse": mse_loss, "smooth_l1": smooth_l1_loss,
             "charbonnier": charbonnier_loss}


def _criterion(fn: str, criterion):
    if callable(criterion):
        return criterion
    if criterion not in _CRITERIA:
        raise ValueError(f"{fn}: criterion must be one of {', '.join(map(repr, _CRITERIA))} or a "
                         f"callable (input_features, target_features) -> loss, got {criterion!r}")
    return _CRITERIA[criterion]


def _check_images(fn: str, input, target) -> None:
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{fn}: {name} must be a floating tensor, got {desc(t)}")
    if input.shape != target.shape:
        raise ValueError(f"{fn}: input {desc(input)} and target {desc(target)} must have the "
                         f"same shape")
    if input.device != target.device:
        raise ValueError(f"{fn}: input {desc(input)} and target {desc(target)} must be on the "
                         f"same device")


def normalize_images(x: Tensor, *, input_range=(0.0, 1.0), mean=_IMAGENET_MEAN,
                     std=_IMAGENET_STD) -> Tensor:
    """(x mapped from ``input_range`` to [0, 1] - mean) / std per channel (ImageNet's by
    default), as one multiply-add: what torchvision's pretrained networks expect."""
    lo, hi = float(input_range[0]), float(input_range[1])
    if not hi > lo:
        raise ValueError(f"normalize_images: input_range must be (low, high) with high > low, got "
                         f"{input_range!r}")
    c = x.shape[1] if x.dim() >= 2 else 0
    if c != len(mean) or c != len(std):
        raise ValueError(f"normalize_images: x {desc(x)} has {c} channels, mean/std "
                         f"{len(mean)}/{len(std)}")
    shape = (1, c) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / ((hi - lo) * s)
    shift = -lo / ((hi - lo) * s) - m / s
    return torch.addcmul(shift.to(x.device, x.dtype).view(shape), x,
                         scale.to(x.device, x.dtype).view(shape))


def _perceptual(fn, capture, input, target, content_w, style_w, crit, style_target, normalize,
                input_range, reduction="mean"):
    if normalize:
        input = normalize_images(input, input_range=input_range)
        target = normalize_images(target, input_range=input_range)
    need_target = any(w != 0 for w in content_w) or (
        style_target is None and any(w != 0 for w in style_w))
    xs = capture(input)
    ys = None
    if need_target:
        with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
            ys = capture(target)
    grams = None
    if any(w != 0 for w in style_w):
        if style_target is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
                grams = [gram_matrix(y) if w != 0 else None for y, w in zip(ys, style_w)]
        else:
            grams = style_target
            if len(grams) != len(xs):
                raise ValueError(f"{fn}: style_target holds {len(grams)} Grams for {len(xs)} layers")
    total = None
    for k, fx in enumerate(xs):
        terms = []
        if content_w[k] != 0:
            terms.append(content_w[k] * crit(fx, ys[k]))
        if style_w[k] != 0:
            g = grams[k]
            if g is None:
                raise ValueError(f"{fn}: style_target has no Gram for layer {k}")
            terms.append(style_w[k] * style_loss(fx, g, target_is_gram=True))
        for t in terms:
            total = t if total is None else total + t
    if total is None:
        raise ValueError(f"{fn}: every layer weight and style weight is 0: there is no loss")
    return total


def _style_target(fn: str, capture, style_target, style_w, normalize, input_range):
    """Grams per layer from a style image, or a given list of Grams (None where unused)."""
    if style_target is None:
        return None
    if isinstance(style_target, Tensor):
        if normalize:
            style_target = normalize_images(style_target, input_range=input_range)
        with torch.no_grad():
            feats = capture(style_target)
            return [gram_matrix(f) if w != 0 else None for f, w in zip(feats, style_w)]
    return list(style_target)


def perceptual_loss(input: Tensor, target: Tensor, feature_extractor, layers, *,
                    layer_weights=None, criterion="l1", style_weights=None, style_target=None,
                    normalize_input: bool = False, input_range=(0.0, 1.0),
                    trainable_extractor: bool = False) -> Tensor:
    r"""Perceptual (feature) loss through a user's network:
    ``sum_l layer_weights[l] * criterion(phi_l(input), phi_l(target))
    + sum_l style_weights[l] * style_loss(phi_l(input), gram_matrix(phi_l(style)))``.

    ``feature_extractor`` is any ``nn.Module`` (the package downloads nothing: pass e.g.
    ``torchvision.models.vgg19(weights=...).features``). ``layers`` names the activations
    phi_l: for an ``nn.Sequential`` (or a model with a ``.features`` Sequential, as
    torchvision's VGG) by index, child name or VGG-style name (``"relu1_2"``, ``"conv3_1"``,
    ``"pool4"``: conv/bn/relu{block}_{i}, pool{block}), and the network runs only up to the last
    of them; for any other module by ``named_modules`` name (captured by forward hooks; the
    forward stops once they have all run) or index into its children.

    ``layer_weights`` / ``style_weights``: None (content 1 per layer / no style), a number for
    every layer, one per layer, or a dict keyed by layer (missing layers 0). ``criterion``:
    ``"l1"``, ``"mse"``, ``"smooth_l1"``, ``"charbonnier"`` (the fused pixel kernels) or a
    callable. Style Grams come from ``target`` unless ``style_target`` is a style image (Grams
    computed without grad) or a list of Grams per layer (see ``PerceptualLoss.style_grams``).
    ``normalize_input``: map ``input_range`` to [0, 1] and apply ImageNet's mean/std first.
    Gradients reach ``input`` (and ``target`` if it requires grad), never the network's
    parameters unless ``trainable_extractor=True``; its train/eval mode is left as it is (the
    module :class:`fastgenloss.nn.PerceptualLoss` keeps it in eval mode).
    """
    from ._features import FeatureCapture, frozen, per_layer

    fn = "perceptual_loss"
    _check_images(fn, input, target)
    capture = FeatureCapture(feature_extractor, layers, fn=fn)
    names = capture.layer_names()
    content_w = per_layer(fn, "layer_weights", layer_weights, capture.layers, names, 1.0)
    style_w = per_layer(fn, "style_weights", style_weights, capture.layers, names, 0.0)
    crit = _criterion(fn, criterion)
    ctx = contextlib.nullcontext() if trainable_extractor else frozen(feature_extractor)
    with ctx:
        grams = _style_target(fn, capture, style_target, style_w, normalize_input, input_range)
        return _perceptual(fn, capture, input, target, content_w, style_w, crit, grams,
                           normalize_input, input_range)


_CONTEXTUAL_CHUNK_ROWS = 0  # x positions per block of similarities (0: ~1M per block); for tests


def contextual_loss(x_features: Tensor, y_features: Tensor, *, band_width: float = 0.5) -> Tensor:
    r"""The contextual loss of Mechrez et al. (ECCV 2018) between two sets of features
    [N, C, H, W] (or [N, C, L]; the positions of x and y may differ): y's channel mean is
    subtracted from both, each position's feature vector is L2-normalized, d_ij = 1 - cosine
    similarity, d~_ij = d_ij / (min_k d_ik + 1e-5), w = exp((1 - d~) / band_width),
    CX_ij = w_ij / sum_k w_ik, and the loss is mean_n -log(mean_j max_i CX_ij + 1e-5): the
    common PyTorch port's definition, value and gradient.

    No [N, P, Q] matrix is ever held (autograd through the port keeps five from forward to
    backward): both passes walk the similarities in blocks of x positions (~1M similarities a
    block), backward recomputing each block with one matrix product, so memory grows with
    P + Q, not P Q. The loss is float32 for float16/bfloat16 features, which are computed in
    float32."""
    fn = "contextual_loss"
    _check_features(fn, "x_features", x_features)
    _check_features(fn, "y_features", y_features)
    if y_features.dim() != x_features.dim() or y_features.shape[:2] != x_features.shape[:2]:
        raise ValueError(f"{fn}: x_features {desc(x_features)} and y_features "
                         f"{desc(y_features)} must have the same batch size and channels "
                         f"(their positions may differ)")
    if x_features.device != y_features.device:
        raise ValueError(f"{fn}: x_features {desc(x_features)} and y_features "
                         f"{desc(y_features)} must be on the same device")
    check_positive(fn, "band_width", band_width, allow_zero=False)
    if band_width == float("inf"):
        raise ValueError(f"{fn}: band_width must be finite, got {band_width}")
    if x_features.shape[0] > 0 and (x_features.numel() == 0 or y_features.numel() == 0):
        raise ValueError(f"{fn}: x_features {desc(x_features)} and y_features "
                         f"{desc(y_features)} need at least one channel and one position")
    loss, _, _ = call_op(torch.ops.fastgenloss.contextual_fwd.default, ContextualFwdFunction,
                         (x_features, y_features, float(band_width), _CONTEXTUAL_CHUNK_ROWS),
                         (x_features.requires_grad or y_features.requires_grad)
                         and torch.is_grad_enabled())
    return loss
