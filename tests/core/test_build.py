"""build_info() and the import-time check of the torch version the package was built with."""

from __future__ import annotations

import pytest
import torch

import fastgenloss


def test_build_info_reports_the_build():
    info = fastgenloss.build_info()
    assert info["version"] == fastgenloss.__version__
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"] and all(a.isdigit() for a in info["cuda_archs"])
        assert "native" not in info["cuda_archs"]
    else:
        assert info["cuda_archs"] == []
    assert "parallel_backend" in info and "openmp" in info


def test_ops_registered_for_the_built_backends():
    ops = torch.ops.fastgenloss
    assert hasattr(ops, "pixel_fwd") and hasattr(ops, "pixel_bwd")
    for name in ("pixel_fwd", "pixel_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgenloss::{name}", "CPU")
        assert (torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgenloss::{name}", "CUDA")
                == fastgenloss.build_info()["cuda"])


def test_torch_version_mismatch_is_a_readable_import_error(monkeypatch):
    from fastgenloss import _build_config
    monkeypatch.setattr(_build_config, "TORCH_VERSION", "1.0.0+fake")
    with pytest.raises(ImportError, match=r"fastgenloss was built against torch 1.0.0\+fake but "
                                          r"torch .* is installed; .* rebuild it"):
        fastgenloss._check_torch_matches_build()


def test_cuda_kernels_run_when_a_gpu_is_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    assert fastgenloss.build_info()["cuda"], "a GPU is present but the CUDA kernels were not built"
    x = torch.randn(1000, device="cuda")
    assert fastgenloss.l1_loss(x, torch.zeros_like(x)).device.type == "cuda"
