"""Diffusion training losses: noise, v and x0 prediction, flow matching, EDM, min-SNR and the other
timestep weightings, and the forward noising they need, each one fused op. docs/diffusion.md"""

from __future__ import annotations

from . import _ops  # noqa: F401  (registers the fake kernels and autograd formulas of its ops)
from . import functional, nn
from .functional import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403

__all__ = [*functional.__all__, *nn.__all__]
