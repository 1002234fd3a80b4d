"""Large fresh CPU outputs are advised for huge pages (csrc/core/host_memory.h).

The advice is a flag on the output's own mapping: /proc/self/smaps shows it as "hg" in the
mapping's VmFlags. These tests find the mapping that holds each large output our kernels write
and check the flag, that it is absent with the switch off, and that the values are the same
either way."""
import os
import sys

import pytest
import torch

import fastgenloss
from fastgenloss import _C

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/smaps"),
                       reason="huge-page advice is Linux-only"),
    pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
                       reason="kernel built without transparent huge pages"),
    # torch then advises every large CPU tensor itself: the switch-off checks would not hold
    pytest.mark.skipif(os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0"),
                       reason="THP_MEM_ALLOC_ENABLE is set"),
]

MIN_BYTES = _C._testing.huge_page_min_bytes()


def _vm_flags(t: torch.Tensor) -> set:
    """The VmFlags of the mapping that holds the middle of t's storage (the advice covers the
    2 MiB-aligned interior, which the kernel then keeps as a mapping of its own)."""
    ptr = t.untyped_storage().data_ptr() + t.untyped_storage().nbytes() // 2
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= ptr < hi
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {ptr:#x}")


@pytest.fixture
def huge_pages():
    # the test sets the switch as it goes; override restores its value afterwards
    with fastgenloss.config.override(cpu_huge_pages=fastgenloss.config.get("cpu_huge_pages")):
        yield


def _seg_bwd():
    n, c, m = 4, 19, 128 * 1024  # 38 MiB of float32 logits
    x = torch.randn(n, c, m)
    lab = torch.randint(0, c, (n, m))
    ops = torch.ops.fastgenloss
    st, xe = ops.seg_stats(x, lab, 1, False, -100, -1.0, 0.25)
    return ops.seg_stats_bwd(torch.randn_like(st), torch.randn_like(xe), x, lab, 1, False, -100,
                             -1.0, 0.25)


def _pixel_grad():
    x = torch.randn(9 * 1024 * 1024, requires_grad=True)  # 36 MiB
    y = torch.randn(9 * 1024 * 1024)
    fastgenloss.pixel_loss(x, y, l1=1.0, mse=0.5).backward()
    return x.grad


def _pixel_none():
    x = torch.randn(3, 3 * 1024 * 1024)
    return fastgenloss.mse_loss(x, torch.randn_like(x), reduction="none")


def _gram_bwd():
    f = torch.randn(2, 64, 256, 260, requires_grad=True)  # 32.5 MiB
    fastgenloss.gram_matrix(f).square().sum().backward()
    return f.grad


def _diffusion_grad():
    n = 8
    out = torch.randn(n, 4, 512, 640, requires_grad=True)  # 40 MiB
    sample, noise = torch.randn(n, 4, 512, 640), torch.randn(n, 4, 512, 640)
    ab = torch.linspace(0.999, 0.01, 1000)
    t = torch.randint(0, 1000, (n,))
    fastgenloss.diffusion_loss(out, sample, noise, t, ab, prediction_type="v_prediction").backward()
    return out.grad


OUTPUTS = {"seg_bwd": _seg_bwd, "pixel_grad": _pixel_grad, "pixel_none": _pixel_none,
           "gram_bwd": _gram_bwd, "diffusion_grad": _diffusion_grad}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_large_outputs_advised(name, huge_pages):
    make = OUTPUTS[name]
    fastgenloss.config.set(cpu_huge_pages=True)
    torch.manual_seed(0)
    on = make()
    assert on.untyped_storage().nbytes() >= MIN_BYTES
    assert "hg" in _vm_flags(on), f"{name}: output not advised for huge pages"
    fastgenloss.config.set(cpu_huge_pages=False)
    torch.manual_seed(0)
    off = make()
    assert "hg" not in _vm_flags(off), f"{name}: advised with the switch off"
    torch.testing.assert_close(on, off, rtol=0, atol=0)


def test_small_outputs_not_advised(huge_pages):
    # below the threshold an allocation may come from glibc's shared heap: never advised
    fastgenloss.config.set(cpu_huge_pages=True)
    x = torch.randn(MIN_BYTES // 4 - 1024)
    g = fastgenloss.mse_loss(x, torch.randn_like(x), reduction="none")
    assert g.untyped_storage().nbytes() < MIN_BYTES
    assert "hg" not in _vm_flags(g)
