"""The style family's losses as modules."""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional

__all__ = ["ContextualLoss", "PerceptualLoss", "StyleLoss"]


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
            return functional.style_loss(input_features, self.target_gram, reduction=self.reduction,
                                         target_is_gram=True, normalize=self.normalize)
        return functional.style_loss(input_features, target, reduction=self.reduction,
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
        self._crit = functional._criterion(fn, criterion)
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
        return functional._style_target("PerceptualLoss.style_grams", self._capture, style_image,
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
        functional._check_images(fn, input, target)
        if isinstance(style_target, Tensor):
            style_target = self.style_grams(style_target)
        elif style_target is None and self._style_buffers:
            style_target = [None if n is None else getattr(self, n) for n in self._style_buffers]
        return functional._perceptual(fn, self._capture, input, target, self.layer_weights,
                                      self.style_weights, self._crit, style_target,
                                      self.normalize_input, self.input_range)

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
        return functional.contextual_loss(x_features, y_features, band_width=self.band_width)

    def extra_repr(self) -> str:
        return f"band_width={self.band_width}"


# ---- segmentation: smp's constructor arguments -----------------------------------------------
