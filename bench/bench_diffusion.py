"""Diffusion losses: fastgenloss vs the diffusers-style reference (the ops diffusers'
train_text_to_image.py / SD3 script run: gather, broadcast, target materialized, mse, per-sample
mean, SNR weights, mean), eager and under torch.compile; fwd, bwd, fwd+bwd, peak memory.

    pytest bench/bench_diffusion.py --benchmark-json out.json   # then: python bench/report.py out.json

FGL_BENCH_LATENTS: comma-separated latent shapes (default 64x4x64x64,16x16x128x128).
"""

from __future__ import annotations

import os

import pytest
import torch

from fastgenloss._cases import parse_shape
from fastgenloss.diffusion._cases import CASES as DIFFUSION_CASES
from fastgenloss._measure import allow_many_compiles, peak_memory_bytes

from conftest import bench_device, bench_dtypes, bench_impls

DEVICE = bench_device()
allow_many_compiles()
_compiled: dict = {}
LATENTS = [parse_shape(s) for s in
           os.environ.get("FGL_BENCH_LATENTS", "64x4x64x64,16x16x128x128").split(",") if s.strip()]
_READS = {"diffusion v+minsnr": 3, "diffusion eps": 2, "flow cosmap": 3}


def _impl_fn(case, impl):
    if impl == "fastgenloss":
        return case.ours
    if impl == "reference":
        return case.ref
    if case.name not in _compiled:
        _compiled[case.name] = torch.compile(case.ref, dynamic=False)
    return _compiled[case.name]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def min_bytes(case_name: str, passes: str, numel: int, elem_size: int) -> int:
    """Fewest bytes under autograd's contract: the forward reads each input the loss depends on
    once (r of them) and, to avoid a second read, writes the unscaled model_output gradient;
    backward reads and writes it once to scale it by grad_output. fwd: r n, bwd: 2 n,
    fwd+bwd: (r + 3) n."""
    r = _READS[case_name]
    return {"fwd": r, "bwd": 2, "fwd+bwd": r + 3}[passes] * numel * elem_size


def _shape_id(shape):
    return "x".join(str(s) for s in shape)


@pytest.mark.parametrize("dtype", bench_dtypes(), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", LATENTS, ids=_shape_id)
@pytest.mark.parametrize("impl", bench_impls())
@pytest.mark.parametrize("passes", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("case_name", list(DIFFUSION_CASES))
def test_diffusion(benchmark, case_name, passes, impl, shape, dtype):
    case = DIFFUSION_CASES[case_name]
    fn = _impl_fn(case, impl)
    numel = 1
    for s in shape:
        numel *= s
    f, x0, ctx = case.make_inputs(numel, dtype, DEVICE, requires_grad=passes != "fwd",
                                  shape=shape)
    benchmark.group = f"{case_name} {passes} {_shape_id(shape)} {str(dtype)[6:]} {DEVICE}"
    benchmark.extra_info.update(case=case_name, passes=passes, impl=impl, numel=numel,
                                shape=_shape_id(shape), dtype=str(dtype)[6:], device=DEVICE,
                                device_name=(torch.cuda.get_device_name() if DEVICE == "cuda"
                                             else "cpu"),
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                bytes=min_bytes(case_name, passes, numel, f.element_size()))
    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(f, x0, ctx)
            _sync()
        run()
        benchmark(run)
        return

    def fwd_bwd():
        fn(f, x0, ctx).backward()
        f.grad = None
        _sync()

    fwd_bwd()  # compile and warm up outside the measurement
    if passes == "fwd+bwd":
        benchmark.extra_info["peak_mem_bytes"] = peak_memory_bytes(fwd_bwd, DEVICE)
        benchmark(fwd_bwd)
        return

    def setup():
        f.grad = None
        loss = fn(f, x0, ctx)
        _sync()
        return (loss,), {}

    def bwd(loss):
        loss.backward()
        _sync()

    benchmark.pedantic(bwd, setup=setup, rounds=30, warmup_rounds=1)
