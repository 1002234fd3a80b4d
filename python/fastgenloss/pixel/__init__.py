"""Pixel losses: drop-in L1, MSE, Huber and smooth L1, Charbonnier, and any weighted sum of them
(with element weights or masks) in one fused pass. docs/pixel.md"""

from __future__ import annotations

from . import _ops  # noqa: F401  (registers the fake kernels and autograd formulas of its ops)
from . import functional, nn
from .functional import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403

__all__ = [*functional.__all__, *nn.__all__]
