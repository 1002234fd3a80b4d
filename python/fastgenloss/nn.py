"""Loss modules. Where torch has the module, ours subclasses it, so isinstance checks,
constructor arguments, repr and state_dict behave as before; only forward changes (it also
accepts an optional ``weight``)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F

__all__ = ["CharbonnierLoss", "ContextualLoss", "DiceLoss", "DiffusionLoss", "EDMLoss",
           "FlowMatchingLoss", "FocalLoss", "HuberLoss", "JaccardLoss", "L1Loss", "MSELoss",
           "PerceptualLoss", "PixelLoss", "SegmentationLoss", "SmoothL1Loss",
           "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss", "StyleLoss", "TverskyLoss"]


class L1Loss(torch.nn.L1Loss):
    """:class:`torch.nn.L1Loss` computed by :func:`fastgenloss.l1_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction, weight=weight)


class MSELoss(torch.nn.MSELoss):
    """:class:`torch.nn.MSELoss` computed by :func:`fastgenloss.mse_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction, weight=weight)


class HuberLoss(torch.nn.HuberLoss):
    """:class:`torch.nn.HuberLoss` computed by :func:`fastgenloss.huber_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta,
                            weight=weight)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    """:class:`torch.nn.SmoothL1Loss` computed by :func:`fastgenloss.smooth_l1_loss`."""

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta,
                                weight=weight)


class CharbonnierLoss(torch.nn.Module):
    """sqrt((input - target)^2 + eps^2); see :func:`fastgenloss.charbonnier_loss`."""

    def __init__(self, eps: float = 1e-3, reduction: str = "mean", masked_mean: bool = False):
        super().__init__()
        self.eps = eps
        self.reduction = reduction
        self.masked_mean = masked_mean

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.charbonnier_loss(input, target, eps=self.eps, weight=weight,
                                  reduction=self.reduction, masked_mean=self.masked_mean)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, masked_mean={self.masked_mean}"


class PixelLoss(torch.nn.Module):
    """A weighted sum of pixel losses in one fused pass; see :func:`fastgenloss.pixel_loss`.

    Example: ``PixelLoss(l1=1.0, mse=0.5)`` or, for inpainting,
    ``PixelLoss(l1=1.0, masked_mean=True)(out, img, weight=hole_mask)``.
    """

    def __init__(self, *, l1: float = 1.0, mse: float = 0.0, charbonnier: float = 0.0,
                 huber: float = 0.0, smooth_l1: float = 0.0, eps: float = 1e-3,
                 delta: float = 1.0, beta: float = 1.0, reduction: str = "mean",
                 masked_mean: bool = False):
        super().__init__()
        self.coeffs = dict(l1=l1, mse=mse, charbonnier=charbonnier, huber=huber,
                           smooth_l1=smooth_l1)
        self.eps, self.delta, self.beta = eps, delta, beta
        self.reduction = reduction
        self.masked_mean = masked_mean

    def forward(self, input: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.pixel_loss(input, target, eps=self.eps, delta=self.delta, beta=self.beta,
                            weight=weight, reduction=self.reduction,
                            masked_mean=self.masked_mean, **self.coeffs)

    def extra_repr(self) -> str:
        terms = ", ".join(f"{k}={v}" for k, v in self.coeffs.items() if v)
        return f"{terms}, reduction={self.reduction!r}, masked_mean={self.masked_mean}"


class DiffusionLoss(torch.nn.Module):
    """:func:`fastgenloss.diffusion_loss` as a module. ``alphas_cumprod`` (optional) is kept as
    a non-persistent buffer, so ``.to(device)`` moves it with the model and ``forward`` then
    takes only the step's tensors; without it, pass ``alphas_cumprod`` to ``forward``."""

    def __init__(self, alphas_cumprod: Tensor | None = None, *,
                 prediction_type: str = "epsilon", weighting: str | None = None,
                 snr_gamma: float = 5.0, loss_type: str = "l2", huber_c: float = 0.1,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod",
                             None if alphas_cumprod is None else alphas_cumprod.detach().clone(),
                             persistent=False)
        self.prediction_type, self.weighting, self.snr_gamma = prediction_type, weighting, snr_gamma
        self.loss_type, self.huber_c, self.reduction = loss_type, huber_c, reduction

    def forward(self, model_output: Tensor, sample: Tensor, noise: Tensor, timesteps: Tensor,
                alphas_cumprod: Tensor | None = None, weighting: Tensor | None = None) -> Tensor:
        table = self.alphas_cumprod if alphas_cumprod is None else alphas_cumprod
        if table is None:
            raise ValueError("DiffusionLoss: no alphas_cumprod (give it to the constructor or "
                             "to forward)")
        return F.diffusion_loss(model_output, sample, noise, timesteps, table,
                                prediction_type=self.prediction_type,
                                weighting=self.weighting if weighting is None else weighting,
                                snr_gamma=self.snr_gamma, loss_type=self.loss_type,
                                huber_c=self.huber_c, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"prediction_type={self.prediction_type!r}, weighting={self.weighting!r}, "
                f"snr_gamma={self.snr_gamma}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")


class FlowMatchingLoss(torch.nn.Module):
    """:func:`fastgenloss.flow_matching_loss` as a module."""

    def __init__(self, *, weighting: str | None = None, loss_type: str = "l2",
                 huber_c: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.weighting, self.loss_type, self.huber_c = weighting, loss_type, huber_c
        self.reduction = reduction

    def forward(self, model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor,
                weighting: Tensor | None = None) -> Tensor:
        return F.flow_matching_loss(model_output, sample, noise, sigmas,
                                    weighting=self.weighting if weighting is None else weighting,
                                    loss_type=self.loss_type, huber_c=self.huber_c,
                                    reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"weighting={self.weighting!r}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")


class EDMLoss(torch.nn.Module):
    """:func:`fastgenloss.edm_loss` as a module."""

    def __init__(self, *, sigma_data: float = 0.5, prediction_type: str = "epsilon",
                 weighting: str | None = None, loss_type: str = "l2", huber_c: float = 0.1,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.sigma_data, self.prediction_type, self.weighting = sigma_data, prediction_type, weighting
        self.loss_type, self.huber_c, self.reduction = loss_type, huber_c, reduction

    def forward(self, model_output: Tensor, sample: Tensor, noise: Tensor, sigmas: Tensor,
                weighting: Tensor | None = None) -> Tensor:
        return F.edm_loss(model_output, sample, noise, sigmas, sigma_data=self.sigma_data,
                          prediction_type=self.prediction_type,
                          weighting=self.weighting if weighting is None else weighting,
                          loss_type=self.loss_type, huber_c=self.huber_c,
                          reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"sigma_data={self.sigma_data}, prediction_type={self.prediction_type!r}, "
                f"weighting={self.weighting!r}, loss_type={self.loss_type!r}, "
                f"reduction={self.reduction!r}")


class StyleLoss(torch.nn.Module):
    """:func:`fastgenloss.style_loss` as a module; ``target_gram`` (optional) is kept as a
    buffer, so ``forward(input_features)`` compares against it."""

    def __init__(self, target_gram: Tensor | None = None, *, reduction: str = "mean",
                 normalize: bool = True) -> None:
        super().__init__()
        self.reduction, self.normalize = reduction, normalize
        self.register_buffer("target_gram", None if target_gram is None else target_gram.detach())

    def forward(self, input_features: Tensor, target: Tensor | None = None) -> Tensor:
        if target is None:
            if self.target_gram is None:
                raise ValueError("StyleLoss: no target: pass one or construct with target_gram")
            return F.style_loss(input_features, self.target_gram, reduction=self.reduction,
                                target_is_gram=True, normalize=self.normalize)
        return F.style_loss(input_features, target, reduction=self.reduction,
                            normalize=self.normalize)


class PerceptualLoss(torch.nn.Module):
    """:func:`fastgenloss.perceptual_loss` as a module around a feature network.

    The network is a submodule (its weights are in this module's state_dict) kept frozen and in
    eval mode (``.train()`` leaves it in eval) unless ``trainable_extractor=True``. The layers
    are resolved once, here. ``style_grams(image)`` computes a style image's Grams once, for
    ``forward(input, target, style_target=grams)`` (style transfer: content from ``target``,
    style from another image); ``set_style(image)`` keeps them as buffers for every call.

        vgg = torchvision.models.vgg19(weights="IMAGENET1K_V1").features
        loss_fn = fastgenloss.nn.PerceptualLoss(vgg, ["relu1_2", "relu2_2", "relu3_4"],
                                                 normalize_input=True)
        loss = loss_fn(sr_images, hr_images)
    """

    def __init__(self, feature_extractor: torch.nn.Module, layers, *, layer_weights=None,
                 criterion="l1", style_weights=None, normalize_input: bool = False,
                 input_range=(0.0, 1.0), trainable_extractor: bool = False) -> None:
        super().__init__()
        from ._features import FeatureCapture, per_layer

        fn = "PerceptualLoss"
        self.feature_extractor = feature_extractor
        self._capture = FeatureCapture(feature_extractor, layers, fn=fn)
        self.layers = list(self._capture.layers)
        self.layer_names = self._capture.layer_names()
        self.layer_weights = per_layer(fn, "layer_weights", layer_weights, self.layers,
                                       self.layer_names, 1.0)
        self.style_weights = per_layer(fn, "style_weights", style_weights, self.layers,
                                       self.layer_names, 0.0)
        self.criterion = criterion
        self._crit = F._criterion(fn, criterion)
        self.normalize_input = bool(normalize_input)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.trainable_extractor = bool(trainable_extractor)
        self._style_buffers: list[str | None] = []
        if not self.trainable_extractor:
            feature_extractor.requires_grad_(False)
            feature_extractor.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable_extractor:
            self.feature_extractor.eval()
        return self

    def style_grams(self, style_image: Tensor) -> list:
        """The Gram matrix of each layer with a style weight (None for the others), computed
        without grad from a style image [1 or N, C, H, W]."""
        return F._style_target("PerceptualLoss.style_grams", self._capture, style_image,
                               self.style_weights, self.normalize_input, self.input_range)

    def set_style(self, style_image: Tensor | None) -> None:
        """Keep a style image's Grams as buffers for every later call (they follow ``.to()``;
        not in the state_dict, which holds the network); None forgets them."""
        for name in self._style_buffers:
            if name is not None:
                delattr(self, name)
        self._style_buffers = []
        if style_image is None:
            return
        for k, g in enumerate(self.style_grams(style_image)):
            name = None if g is None else f"style_gram_{k}"
            if name is not None:
                self.register_buffer(name, g, persistent=False)
            self._style_buffers.append(name)

    def forward(self, input: Tensor, target: Tensor, style_target=None) -> Tensor:
        fn = "PerceptualLoss"
        F._check_images(fn, input, target)
        if isinstance(style_target, Tensor):
            style_target = self.style_grams(style_target)
        elif style_target is None and self._style_buffers:
            style_target = [None if n is None else getattr(self, n) for n in self._style_buffers]
        return F._perceptual(fn, self._capture, input, target, self.layer_weights,
                             self.style_weights, self._crit, style_target, self.normalize_input,
                             self.input_range)

    def extra_repr(self) -> str:
        return (f"layers={self.layer_names}, layer_weights={self.layer_weights}, "
                f"style_weights={self.style_weights}, criterion={self.criterion!r}, "
                f"normalize_input={self.normalize_input}")


class ContextualLoss(torch.nn.Module):
    """:func:`fastgenloss.contextual_loss` as a module."""

    def __init__(self, band_width: float = 0.5) -> None:
        super().__init__()
        self.band_width = band_width

    def forward(self, x_features: Tensor, y_features: Tensor) -> Tensor:
        return F.contextual_loss(x_features, y_features, band_width=self.band_width)

    def extra_repr(self) -> str:
        return f"band_width={self.band_width}"


# ---- segmentation: smp's constructor arguments -----------------------------------------------

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
    _fn = staticmethod(F.dice_loss)


class JaccardLoss(_SegLoss):
    """segmentation_models_pytorch.losses.JaccardLoss, same arguments (plus ``per_image``)."""
    _fn = staticmethod(F.jaccard_loss)


class TverskyLoss(_SegLoss):
    """segmentation_models_pytorch.losses.TverskyLoss, same arguments (plus ``per_image``)."""
    _fn = staticmethod(F.tversky_loss)

    def __init__(self, mode: str, classes=None, log_loss: bool = False, from_logits: bool = True,
                 smooth: float = 0.0, ignore_index: int | None = None, eps: float = 1e-7,
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0, class_weights=None,
                 *, per_image: bool = False, process_group=None):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps,
                         class_weights, per_image=per_image, process_group=process_group,
                         alpha=alpha, beta=beta, gamma=gamma)


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
        return F.focal_loss(y_pred, y_true, self.mode, alpha=self.alpha, gamma=self.gamma,
                            ignore_index=self.ignore_index, from_logits=self.from_logits,
                            eps=self.eps, reduction=self.reduction, normalized=self.normalized,
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
        return F.segmentation_loss(y_pred, y_true, self.mode, **self.kwargs)


def _soft_args(fn: str, smooth_factor, reduction: str) -> float:
    """smp's soft modules' arguments checked: the smoothing as a float in [0, 1]."""
    from ._segmentation import _check_smoothing
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return 0.0 if smooth_factor is None else _check_smoothing(fn, smooth_factor, "smooth_factor")


def _fused_xent(fn: str, x: Tensor, t: Tensor, mode: str, ignore_index, smoothing: float,
                reduction: str) -> Tensor:
    """The cross-entropy term alone, from the statistics kernel's one pass."""
    return F.segmentation_loss(x, t, mode, dice=0.0, iou=0.0, bce=1.0, ignore_index=ignore_index,
                               label_smoothing=smoothing, reduction=reduction, _fn=fn)


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
            from . import reference as R
            return R.soft_cross_entropy_none(x, y_true, eps_s, self.ignore_index)
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
            from . import reference as R
            return R.soft_bce_with_logits(y_pred, y_true, eps_s, self.ignore_index, self.weight,
                                          self.pos_weight, self.reduction)
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
