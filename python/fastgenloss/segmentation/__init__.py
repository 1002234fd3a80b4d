"""Segmentation losses with segmentation_models_pytorch's arguments: Dice, Jaccard/IoU, Tversky,
focal, BCE/CE and their weighted sums from one statistics pass, DDP-wide statistics.
docs/segmentation.md"""

from __future__ import annotations

from . import _ops  # noqa: F401  (registers the fake kernels and autograd formulas of its ops)
from . import functional, nn
from .functional import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403

__all__ = [*functional.__all__, *nn.__all__]
