"""fastgenloss: fused C++/CUDA loss kernels for training generative vision models.

Drop-in replacements for torch's losses (same argument names, reductions and results), built as
torch.library custom ops so that autograd and ``torch.compile(fullgraph=True)`` see them whole.
"""

from __future__ import annotations

import torch

__version__ = "0.1.0"


def _check_torch_matches_build() -> None:
    try:
        from . import _build_config
    except ImportError as e:  # pragma: no cover - only without a build
        raise ImportError(
            "fastgenloss: the compiled part is missing; install with "
            "`pip install --no-build-isolation .` (see README.md)"
        ) from e
    if _build_config.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"fastgenloss was built against torch {_build_config.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; its C++ ABI differs, so rebuild it: "
            "`pip install --no-build-isolation --force-reinstall --no-deps .`"
        )


_check_torch_matches_build()

from . import _C  # noqa: E402  (loads the library: registers torch.ops.fastgenloss.*)
from . import _ops  # noqa: E402,F401  (fake kernels and autograd formulas)
from . import nn, reference  # noqa: E402,F401
from .functional import (  # noqa: E402
    add_noise,
    dice_loss,
    focal_loss,
    iou_loss,
    jaccard_loss,
    segmentation_loss,
    tversky_loss,
    charbonnier_loss,
    contextual_loss,
    diffusion_loss,
    edm_loss,
    edm_noise,
    flow_matching_loss,
    flow_noise,
    gram_matrix,
    huber_loss,
    l1_loss,
    mse_loss,
    normalize_images,
    perceptual_loss,
    pixel_loss,
    smooth_l1_loss,
    snr,
    style_loss,
    velocity,
)


def build_info() -> dict:
    """How this copy of fastgenloss was built: version, torch, CUDA, architectures, threading."""
    from . import _build_config as cfg

    info = dict(_C._native_build_info())
    info.update(
        torch_cuda_version=cfg.TORCH_CUDA_VERSION or None,
        cuda_compiler_version=cfg.CUDA_COMPILER_VERSION or None,
        cxx_compiler=cfg.CXX_COMPILER,
        cuda_archs=[a for a in cfg.CUDA_ARCHS.split(",") if a],
        openmp=torch.backends.openmp.is_available(),
        cuda_runtime_available=torch.cuda.is_available(),
    )
    return info


__all__ = [
    "add_noise",
    "dice_loss",
    "focal_loss",
    "iou_loss",
    "jaccard_loss",
    "segmentation_loss",
    "tversky_loss",
    "build_info",
    "charbonnier_loss",
    "diffusion_loss",
    "edm_loss",
    "edm_noise",
    "flow_matching_loss",
    "flow_noise",
    "gram_matrix",
    "huber_loss",
    "l1_loss",
    "mse_loss",
    "nn",
    "pixel_loss",
    "reference",
    "smooth_l1_loss",
    "snr",
    "style_loss",
    "velocity",
]
