"""Style and perceptual losses: Gram matrices, the style loss, the perceptual loss over a user's
network, the contextual loss. docs/style.md"""

from __future__ import annotations

from . import _ops  # noqa: F401  (registers the fake kernels and autograd formulas of its ops)
from . import functional, nn
from .functional import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403

__all__ = [*functional.__all__, *nn.__all__]
