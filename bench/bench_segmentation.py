"""Segmentation losses: "Dice + IoU + 0.8 CE" (multiclass, from logits, integer labels) as
fastgenloss.segmentation_loss, segmentation_models_pytorch's DiceLoss + JaccardLoss +
0.8 SoftCrossEntropyLoss, MONAI's DiceLoss + DiceLoss(jaccard=True) (batch-wide, softmax,
one-hot labels) + 0.8 torch cross-entropy, the plain-PyTorch reference eager and under
torch.compile; fwd, bwd, fwd+bwd and peak memory.

    pytest bench/bench_segmentation.py --benchmark-json out.json   # then: python bench/report.py out.json

A second case, "binary dice+0.8bce+focal" (mask generators: one channel, sigmoid, float mask),
runs on the same shapes with C = 1: fastgenloss vs smp's DiceLoss + 0.8 SoftBCEWithLogitsLoss +
FocalLoss, the reference eager and compiled (MONAI's focal loss has other conventions: no row).

A third case, "smoothed" (opt-in: FGL_BENCH_SEG_CASES=smoothed), is the multiclass sum with
label smoothing 0.1 on the CE term: smp's SoftCrossEntropyLoss(smooth_factor=0.1), MONAI's
Dices + torch's cross_entropy(label_smoothing=0.1).

FGL_BENCH_SEG: comma-separated logits shapes NxCxHxW or NxCxDxHxW (default 8x19x256x256 and
2x4x64x64x64 on the CPU; 16x19x512x512 and 2x4x128x128x128 on a GPU). FGL_BENCH_SEG_CASES:
"multiclass,binary" (default). smp / MONAI rows are left out where the package is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R
from fastgenloss._measure import allow_many_compiles, peak_memory_bytes

from conftest import bench_device, bench_dtypes, bench_impls

DEVICE = bench_device()
allow_many_compiles()
_DEFAULT = "16x19x512x512,2x4x128x128x128" if DEVICE == "cuda" else "8x19x256x256,2x4x64x64x64"
SHAPES = [tuple(int(v) for v in s.strip().split("x"))
          for s in os.environ.get("FGL_BENCH_SEG", _DEFAULT).split(",") if s.strip()]
CASES = [c.strip() for c in os.environ.get("FGL_BENCH_SEG_CASES", "multiclass,binary").split(",")
         if c.strip()]
_BINARY = dict(dice=1.0, iou=0.0, bce=0.8, focal=1.0)


_LS = 0.1  # the "smoothed" case's label smoothing


def _smp(case):
    try:
        import segmentation_models_pytorch.losses as L
    except Exception:  # noqa: BLE001  (absent, or its imports fail)
        return None
    if case == "binary":
        dice, bce, focal = L.DiceLoss("binary"), L.SoftBCEWithLogitsLoss(), L.FocalLoss("binary")
        return lambda x, t: dice(x, t) + 0.8 * bce(x, t) + focal(x, t)
    dice, iou = L.DiceLoss("multiclass"), L.JaccardLoss("multiclass")
    ce = L.SoftCrossEntropyLoss(smooth_factor=_LS if case == "smoothed" else 0.0)
    return lambda x, t: dice(x, t) + iou(x, t) + 0.8 * ce(x, t)


def _monai(case):
    if case == "binary":
        return None
    try:
        from monai.losses import DiceLoss
    except Exception:  # noqa: BLE001
        return None
    dice = DiceLoss(softmax=True, to_onehot_y=True, batch=True)
    iou = DiceLoss(softmax=True, to_onehot_y=True, batch=True, jaccard=True)
    ls = _LS if case == "smoothed" else 0.0
    return lambda x, t: (dice(x, t.unsqueeze(1)) + iou(x, t.unsqueeze(1))
                         + 0.8 * torch.nn.functional.cross_entropy(x, t, label_smoothing=ls))


def _ours(x, t):
    return fgl.segmentation_loss(x, t, "multiclass", dice=1.0, iou=1.0, bce=0.8)


def _ref(x, t):
    return R.segmentation_loss(x, t, mode="multiclass", dice=1.0, iou=1.0, bce=0.8)


def _ours_smoothed(x, t):
    return fgl.segmentation_loss(x, t, "multiclass", dice=1.0, iou=1.0, bce=0.8,
                                 label_smoothing=_LS)


def _ref_smoothed(x, t):
    return R.segmentation_loss(x, t, mode="multiclass", dice=1.0, iou=1.0, bce=0.8,
                               label_smoothing=_LS)


def _ours_binary(x, t):
    return fgl.segmentation_loss(x, t, "binary", **_BINARY)


def _ref_binary(x, t):
    return R.segmentation_loss(x, t, mode="binary", **_BINARY)


_compiled: dict = {}
IMPLS = bench_impls() + ["smp", "monai"]


_OURS = {"multiclass": _ours, "binary": _ours_binary, "smoothed": _ours_smoothed}
_REFS = {"multiclass": _ref, "binary": _ref_binary, "smoothed": _ref_smoothed}


def _impl_fn(impl: str, case: str):
    if impl == "fastgenloss":
        return _OURS[case]
    if impl == "reference":
        return _REFS[case]
    if impl == "compile":
        if case not in _compiled:
            _compiled[case] = torch.compile(_REFS[case], dynamic=False)
        return _compiled[case]
    fn = {"smp": _smp, "monai": _monai}[impl](case)
    if fn is None:
        pytest.skip(f"{impl}: not installed, or no comparable loss for this case")
    return fn


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _shape_id(shape):
    return "x".join(str(s) for s in shape)


@pytest.mark.parametrize("dtype", bench_dtypes(), ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES)
def test_segmentation(benchmark, case, passes, impl, shape, dtype):
    if impl == "monai" and dtype != torch.float32:
        pytest.skip("MONAI's one-hot Dice is compared in float32 only")
    fn = _impl_fn(impl, case)
    g = torch.Generator(device="cpu").manual_seed(sum(shape))
    if case == "binary":
        shape = (shape[0], 1, *shape[2:])
        x = torch.randn(shape, generator=g).mul_(2).to(device=DEVICE, dtype=dtype)
        t = (torch.rand(shape, generator=g) < 0.3).to(device=DEVICE, dtype=dtype)
    else:
        x = torch.randn(shape, generator=g).mul_(2).to(device=DEVICE, dtype=dtype)
        t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(DEVICE)
    x.requires_grad_(passes != "fwd")
    name = _shape_id(shape)
    label = {"binary": "binary dice+0.8bce+focal", "multiclass": "dice+iou+0.8ce",
             "smoothed": "dice+iou+0.8ce ls=0.1"}[case]
    benchmark.group = f"segmentation {label} {passes} {name} {str(dtype)[6:]} {DEVICE}"
    # bytes a pass must move at least: the logits once (+ the gradient backward), the labels
    nbytes = x.numel() * x.element_size() + t.numel() * t.element_size()
    benchmark.extra_info.update(case=label, passes=passes, impl=impl,
                                numel=x.numel(), shape=name, dtype=str(dtype)[6:],
                                device=DEVICE,
                                device_name=(torch.cuda.get_device_name() if DEVICE == "cuda"
                                             else "cpu"),
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                bytes={"fwd": nbytes, "bwd": nbytes + x.numel() * x.element_size(),
                                           "fwd+bwd": 2 * nbytes + x.numel() * x.element_size()}[passes])

    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(x, t)
            _sync()
        run()
        benchmark(run)
        return

    def fwd_bwd():
        fn(x, t).backward()
        x.grad = None
        _sync()

    fwd_bwd()  # compile and warm up outside the measurement
    if passes == "fwd+bwd":
        benchmark.extra_info["peak_mem_bytes"] = peak_memory_bytes(fwd_bwd, DEVICE)
        benchmark(fwd_bwd)
        return

    def setup():
        x.grad = None
        loss = fn(x, t)
        _sync()
        return (loss,), {}

    def bwd(loss):
        loss.backward()
        _sync()

    benchmark.pedantic(bwd, setup=setup, rounds=10, warmup_rounds=1)


# ---- MCC and Lovász: fwd+bwd, float32, against smp eager, smp under torch.compile and the
# reference. Shapes: the (Lovász-softmax 8x19x256x256; hinge and MCC 16x1x512x512), or
# FGL_BENCH_SEG's first shape (one channel for the binary ones).
_EXTRA = {"lovasz softmax": "8x19x256x256", "lovasz hinge": "16x1x512x512",
          "mcc": "16x1x512x512"}


def _extra_shape(case):
    env = os.environ.get("FGL_BENCH_SEG")
    shape = SHAPES[0] if env else tuple(int(v) for v in _EXTRA[case].split("x"))
    return shape if case == "lovasz softmax" else (shape[0], 1, *shape[2:])


def _extra_fn(case, impl):
    if impl in ("smp", "smp_compile"):
        try:
            import segmentation_models_pytorch.losses as L
        except Exception:  # noqa: BLE001
            pytest.skip("smp is not installed")
        fn = {"lovasz softmax": L.LovaszLoss("multiclass"), "lovasz hinge": L.LovaszLoss("binary"),
              "mcc": L.MCCLoss()}[case]
        if impl == "smp_compile":
            key = ("extra", case)
            if key not in _compiled:
                _compiled[key] = torch.compile(fn, dynamic=False)
            fn = _compiled[key]
        return fn
    if impl == "fastgenloss":
        return {"lovasz softmax": lambda x, t: fgl.lovasz_loss(x, t, "multiclass"),
                "lovasz hinge": lambda x, t: fgl.lovasz_loss(x, t, "binary"),
                "mcc": lambda x, t: fgl.mcc_loss(x, t)}[case]
    return {"lovasz softmax": lambda x, t: R.lovasz_loss(x, t, mode="multiclass"),
            "lovasz hinge": lambda x, t: R.lovasz_loss(x, t, mode="binary"),
            "mcc": lambda x, t: R.mcc_loss(x, t)}[case]


@pytest.mark.parametrize("impl", ["fastgenloss", "smp", "smp_compile", "reference"])
@pytest.mark.parametrize("case", list(_EXTRA))
def test_segmentation_mcc_lovasz(benchmark, case, impl):
    shape = _extra_shape(case)
    fn = _extra_fn(case, impl)
    g = torch.Generator(device="cpu").manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).mul_(2)
    if case == "lovasz softmax":
        t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(DEVICE)
    else:
        t = (torch.rand(shape, generator=g) < 0.3).float().to(DEVICE)
    if case == "mcc":  # smp's MCCLoss takes probabilities
        x = torch.rand(shape, generator=g)
    x = x.to(DEVICE).requires_grad_()
    benchmark.group = f"segmentation {case} fwd+bwd {_shape_id(shape)} float32 {DEVICE}"
    benchmark.extra_info.update(case=case, passes="fwd+bwd", impl=impl, numel=x.numel(),
                                shape=_shape_id(shape), dtype="float32", device=DEVICE,
                                threads=torch.get_num_threads(), torch=torch.__version__)

    def fwd_bwd():
        fn(x, t).backward()
        x.grad = None
        _sync()

    fwd_bwd()  # compile and warm up outside the measurement
    benchmark.extra_info["peak_mem_bytes"] = peak_memory_bytes(fwd_bwd, DEVICE)
    benchmark(fwd_bwd)
