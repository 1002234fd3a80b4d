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
from . import config  # noqa: E402  (the runtime switches, read from the environment once)
from . import functional, nn  # noqa: E402  (each family registers its ops' Python half)
from .functional import *  # noqa: E402,F401,F403  (every loss at the top level)


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


__all__ = [*functional.__all__, "build_info", "config", "functional", "nn", "reference"]


def __getattr__(name: str):
    # fastgenloss.reference (the plain-PyTorch oracle) loads on first use: the losses never
    # import it.
    if name == "reference":
        import importlib

        return importlib.import_module("fastgenloss.reference")
    raise AttributeError(f"module 'fastgenloss' has no attribute {name!r}")
