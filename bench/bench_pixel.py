"""Pixel losses: fastgenloss vs the plain-PyTorch reference (torch's own fused losses where torch
has them, so also the peer library) eager and under torch.compile; fwd, bwd and fwd+bwd times,
peak memory of fwd+bwd in extra_info.

    pytest bench/bench_pixel.py --benchmark-json out.json     # then: python bench/report.py out.json
"""

from __future__ import annotations

import pytest
import torch

from fastgenloss.pixel._cases import CASES
from fastgenloss._measure import allow_many_compiles, peak_memory_bytes

from conftest import SIZE_NAMES, bench_device, bench_dtypes, bench_impls, bench_sizes

DEVICE = bench_device()
allow_many_compiles()
_compiled: dict = {}


def _impl_fn(case, impl):
    if impl == "fastgenloss":
        return case.ours
    if impl == "reference":
        return case.ref
    key = case.name
    if key not in _compiled:
        _compiled[key] = torch.compile(case.ref, dynamic=False)
    return _compiled[key]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def min_bytes(passes: str, numel: int, weight_numel: int, elem_size: int) -> int:
    """The fewest bytes each pass must move under autograd's contract (grad_output is unknown
    during the forward): fwd reads input, target (and weight) once; bwd reads them again and
    writes the input gradient, or reads and writes a gradient the forward wrote. Either way
    fwd+bwd moves at least (5 n + w) elements; fwd alone (2 n + w); bwd alone (2 n)."""
    n, w = numel, weight_numel
    per_pass = {"fwd": 2 * n + w, "bwd": 2 * n, "fwd+bwd": 5 * n + w}
    return per_pass[passes] * elem_size


@pytest.mark.parametrize("dtype", bench_dtypes(), ids=lambda d: str(d).removeprefix("torch."))
def test_copy_bandwidth(benchmark, dtype):
    """The device's copy rate, the ceiling the loss kernels are judged against: a large
    device-to-device copy, counting bytes read plus bytes written."""
    numel = max(bench_sizes())
    src = torch.randn(numel, device=DEVICE).to(dtype)
    dst = torch.empty_like(src)
    benchmark.group = f"copy {str(dtype)[6:]} {DEVICE}"
    benchmark.extra_info.update(case="copy", passes="copy", impl="copy", numel=numel,
                                dtype=str(dtype)[6:], device=DEVICE,
                                bytes=2 * numel * src.element_size())

    def run():
        dst.copy_(src)
        _sync()
    benchmark(run)


@pytest.mark.parametrize("dtype", bench_dtypes(), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("numel", bench_sizes(), ids=lambda n: SIZE_NAMES.get(n, str(n)))
@pytest.mark.parametrize("impl", bench_impls())
@pytest.mark.parametrize("passes", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("case_name", list(CASES))
def test_pixel(benchmark, case_name, passes, impl, numel, dtype):
    case = CASES[case_name]
    fn = _impl_fn(case, impl)
    x, y, w = case.make_inputs(numel, dtype, DEVICE, requires_grad=passes != "fwd")
    benchmark.group = f"{case_name} {passes} {SIZE_NAMES.get(numel, numel)} {str(dtype)[6:]} {DEVICE}"
    benchmark.extra_info.update(case=case_name, passes=passes, impl=impl, numel=numel,
                                dtype=str(dtype)[6:], device=DEVICE,
                                device_name=(torch.cuda.get_device_name() if DEVICE == "cuda"
                                             else "cpu"),
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                bytes=min_bytes(passes, numel, 0 if w is None else w.numel(),
                                                x.element_size()))

    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(x, y, w)
            _sync()
        benchmark(run)
        return

    def fwd_bwd():
        fn(x, y, w).backward()
        x.grad = None
        _sync()

    fwd_bwd()  # compile and warm up outside the measurement
    if passes == "fwd+bwd":
        peak = peak_memory_bytes(fwd_bwd, DEVICE)
        benchmark.extra_info["peak_mem_bytes"] = peak
        benchmark(fwd_bwd)
        return

    # bwd: the forward runs in setup, untimed
    def setup():
        x.grad = None
        loss = fn(x, y, w)
        _sync()
        return (loss,), {}

    def bwd(loss):
        loss.backward()
        _sync()

    benchmark.pedantic(bwd, setup=setup, rounds=20 if numel <= (1 << 24) else 5,
                       warmup_rounds=1)
