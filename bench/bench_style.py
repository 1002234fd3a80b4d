"""Gram matrix, style loss and contextual loss: fastgenloss vs the plain-PyTorch reference
(bmm, divide, mse in float; the contextual loss's common port), eager and under torch.compile; fwd, bwd, fwd+bwd and peak memory, on the feature maps a
VGG-19 style loss reads (relu1_1 .. relu4_1 of a 256x256 image: 64x256x256, 128x128x128,
256x64x64, 512x32x32), the target Gram precomputed as style-transfer and perceptual-loss
training loops do.

    pytest bench/bench_style.py --benchmark-json out.json   # then: python bench/report.py out.json

FGL_BENCH_STYLE: comma-separated feature shapes CxHxW (default the four above), batch
FGL_BENCH_STYLE_N (default 2 on the CPU, 8 on a GPU); FGL_BENCH_CX: contextual-loss feature
shapes NxCxHxW (default 2x256x32x32,1x128x64x64).
"""

from __future__ import annotations

import os

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R
from fastgenloss._cases import parse_shape
from fastgenloss._measure import allow_many_compiles, peak_memory_bytes

from conftest import bench_device, bench_dtypes, bench_impls

DEVICE = bench_device()
allow_many_compiles()
LAYERS = [parse_shape(s) for s in os.environ.get(
    "FGL_BENCH_STYLE", "64x256x256,128x128x128,256x64x64,512x32x32").split(",") if s.strip()]
BATCH = int(os.environ.get("FGL_BENCH_STYLE_N", "8" if DEVICE == "cuda" else "2"))

_FNS = {
    "gram": (lambda x, g: fgl.gram_matrix(x), lambda x, g: R.gram_matrix(x)),
    "style": (fgl.style_loss, R.style_loss),
}
_compiled: dict = {}


def _impl_fn(case: str, impl: str):
    ours, ref = _FNS[case]
    if impl == "fastgenloss":
        return ours
    if impl == "reference":
        return ref
    if case not in _compiled:
        _compiled[case] = torch.compile(ref, dynamic=False)
    return _compiled[case]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def flops(case: str, passes: str, n: int, c: int, hw: int) -> int:
    """Multiply-adds x 2 of the GEMMs a pass needs: the Gram (n c^2 hw, half of it with
    symmetry unexploited counted in full) forward, one c x c by c x hw product backward."""
    one = 2 * n * c * c * hw
    return {"fwd": one, "bwd": one, "fwd+bwd": 2 * one}[passes]


def _shape_id(shape):
    return "x".join(str(s) for s in shape)


@pytest.mark.parametrize("dtype", bench_dtypes(), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("layer", LAYERS, ids=_shape_id)
@pytest.mark.parametrize("impl", bench_impls())
@pytest.mark.parametrize("passes", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(_FNS))
def test_style(benchmark, case, passes, impl, layer, dtype):
    fn = _impl_fn(case, impl)
    c, h, w = layer
    g = torch.Generator(device="cpu").manual_seed(c + h)
    x = torch.randn((BATCH, c, h, w), generator=g).to(device=DEVICE, dtype=dtype)
    target = R.gram_matrix(torch.randn((1, c, h, w), generator=g).to(device=DEVICE, dtype=dtype))
    x.requires_grad_(passes != "fwd")
    shape = f"{BATCH}x{_shape_id(layer)}"
    benchmark.group = f"{case} {passes} {shape} {str(dtype)[6:]} {DEVICE}"
    benchmark.extra_info.update(case=case, passes=passes, impl=impl, numel=x.numel(),
                                shape=shape, dtype=str(dtype)[6:], device=DEVICE,
                                device_name=(torch.cuda.get_device_name() if DEVICE == "cuda"
                                             else "cpu"),
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                flops=flops(case, passes, BATCH, c, h * w))

    def out():
        y = fn(x, target)
        return y if y.dim() == 0 else y.sum()

    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(x, target)
            _sync()
        run()
        benchmark(run)
        return

    def fwd_bwd():
        out().backward()
        x.grad = None
        _sync()

    fwd_bwd()  # compile and warm up outside the measurement
    if passes == "fwd+bwd":
        benchmark.extra_info["peak_mem_bytes"] = peak_memory_bytes(fwd_bwd, DEVICE)
        benchmark(fwd_bwd)
        return

    def setup():
        x.grad = None
        loss = out()
        _sync()
        return (loss,), {}

    def bwd(loss):
        loss.backward()
        _sync()

    benchmark.pedantic(bwd, setup=setup, rounds=20, warmup_rounds=1)


# ---- contextual loss ------------------------------------------------------------------------

CX_SHAPES = [parse_shape(s) for s in os.environ.get(
    "FGL_BENCH_CX", "2x256x32x32,1x128x64x64").split(",") if s.strip()]
_CX = {"fastgenloss": fgl.contextual_loss, "reference": R.contextual_loss}


@pytest.mark.parametrize("dtype", bench_dtypes(), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", CX_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("impl", bench_impls())
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
def test_contextual(benchmark, passes, impl, shape, dtype):
    """Contextual loss on the feature maps it is used on (relu3/relu4 of 128-256 px crops):
    P = Q = H W positions, so the [N, P, Q] similarity matrices dominate time and memory."""
    if impl == "compile":
        key = "contextual"
        if key not in _compiled:
            _compiled[key] = torch.compile(R.contextual_loss, dynamic=False)
        fn = _compiled[key]
    else:
        fn = _CX[impl]
    g = torch.Generator(device="cpu").manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)
    y = torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)
    x.requires_grad_(passes != "fwd")
    n, c = shape[:2]
    p = 1
    for s in shape[2:]:
        p *= s
    benchmark.group = f"contextual {passes} {_shape_id(shape)} {str(dtype)[6:]} {DEVICE}"
    benchmark.extra_info.update(case="contextual", passes=passes, impl=impl, numel=x.numel(),
                                shape=_shape_id(shape), dtype=str(dtype)[6:], device=DEVICE,
                                device_name=(torch.cuda.get_device_name() if DEVICE == "cuda"
                                             else "cpu"),
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                flops=2 * n * c * p * p * (1 if passes == "fwd" else 4))
    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(x, y)
            _sync()
        run()
        benchmark(run)
        return

    def fwd_bwd():
        fn(x, y).backward()
        x.grad = None
        _sync()

    fwd_bwd()
    benchmark.extra_info["peak_mem_bytes"] = peak_memory_bytes(fwd_bwd, DEVICE)
    benchmark(fwd_bwd)
