"""The style and perceptual losses in plain PyTorch, as style-transfer code and piq write them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["contextual_loss", "gram_matrix", "perceptual_loss", "style_loss"]


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
