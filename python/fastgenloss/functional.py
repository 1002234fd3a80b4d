"""Every loss of fastgenloss as a function, gathered from the families' own lists
(fastgenloss/<family>/functional.py: pixel, diffusion, style, segmentation). The same names are
at the top level: ``fastgenloss.mse_loss is fastgenloss.functional.mse_loss``."""

from __future__ import annotations

from ._families import gather

_names = gather("functional")
globals().update(_names)
__all__ = sorted(_names)
