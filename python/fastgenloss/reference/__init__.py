"""Every fastgenloss loss in plain PyTorch: the oracle of the tests and the baseline of the
benchmarks. Written the way a user would write it (torch's fused ATen losses where torch has
them), not as a strawman; call it on float64 inputs for a high-precision reference."""

from __future__ import annotations

from .diffusion import *  # noqa: F401,F403
from .diffusion import __all__ as _diffusion
from .pixel import *  # noqa: F401,F403
from .pixel import __all__ as _pixel
from .segmentation import *  # noqa: F401,F403
from .segmentation import __all__ as _segmentation
from .style import *  # noqa: F401,F403
from .style import __all__ as _style

__all__ = sorted([*_pixel, *_diffusion, *_style, *_segmentation])
