"""Randomized differential tests of the segmentation losses, with fixed seeds (the same cases
every run): each case draws a mode, sizes (2D / 3D, 1x1 to 70x3), a dtype, logits or
probabilities of a random scale (0.1 to 200: saturated sigmoids and softmaxes included), label
or mask targets (integer dtypes, soft masks), ignore_index (some or every element), a layout
(contiguous, channels_last, non-contiguous) and the loss arguments (classes, class_weights,
log_loss, smooth, eps, per_image, gamma < 1, focal variants).

- against smp's own modules (DiceLoss, JaccardLoss, TverskyLoss, FocalLoss) in float64 and
  float32, values and input gradients; where smp's result is NaN ours must be finite
  (smp: NaN gradients of pow at 0, focal's 1 - exp(-l) rounding to 0);
- segmentation_loss (any weighted sum of the terms) against fastgenloss.reference in float64,
  through both second stages (the seg_combine op and the PyTorch-ops stage), in every dtype.

This search found the gamma < 1 NaN gradients, the focal variants' float32 NaN, the multiclass
cross-entropy gradient from probabilities and the float32 eps bound (tests in
test_segmentation.py)."""

from __future__ import annotations

import random

import pytest
import torch

import fastgenloss as fgl
import fastgenloss.nn as fnn
from fastgenloss import reference as R

SPATIAL = [(1, 1), (3, 5), (7, 9), (2, 3, 4), (17, 13), (70, 3)]
F16_MAX = 65504.0


def _input(g: torch.Generator, mode: str, n: int, c: int, spatial,
           from_logits: bool, scale: float) -> torch.Tensor:
    x = torch.randn((n, c, *spatial), generator=g, dtype=torch.float64) * scale
    if not from_logits:
        x = x.softmax(1) if mode == "multiclass" else x.sigmoid()
    return x


def _target(rng: random.Random, g: torch.Generator, mode: str, shape, soft_ok: bool):
    """(target, ignore_index)"""
    n, c, spatial = shape[0], shape[1], shape[2:]
    ignore = None
    if mode == "multiclass":
        t = torch.randint(0, c if rng.random() < 0.7 else c - 1, (n, *spatial), generator=g)
        if rng.random() < 0.4:
            ignore = rng.choice([255, -100, 0, c - 1])
            t[torch.rand(t.shape, generator=g) < rng.choice([0.1, 0.5, 1.0])] = ignore
        if ignore is None or 0 <= ignore < 256:
            t = t.to(rng.choice([torch.int64, torch.int32, torch.uint8]))
        return t, ignore
    if soft_ok and rng.random() < 0.3:
        t = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        t = (torch.rand(shape, generator=g) < rng.random()).to(torch.float64)
    if rng.random() < 0.3:
        ignore = -1
        t[torch.rand(t.shape, generator=g) < 0.2] = -1.0
    return t, ignore


def _layout(rng: random.Random, x: torch.Tensor) -> torch.Tensor:
    kind = rng.choice(["contiguous", "contiguous", "channels_last", "strided"])
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4
                            else torch.channels_last_3d)
    if kind == "strided":  # same values, non-contiguous strides
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (gx,) = torch.autograd.grad(loss.sum(), x)
    return gx


def _smp_case(seed: int):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    mode = rng.choice(["binary", "multiclass", "multilabel"])
    kind = rng.choice(["DiceLoss", "JaccardLoss", "TverskyLoss", "FocalLoss"])
    n, c = rng.choice([1, 2, 3]), 1 if mode == "binary" else rng.choice([2, 3, 5])
    from_logits = kind == "FocalLoss" or rng.random() < 0.8
    x = _input(g, mode, n, c, rng.choice(SPATIAL), from_logits,
               rng.choice([0.1, 2.0, 10.0, 40.0]))
    t, ignore = _target(rng, g, mode, x.shape, soft_ok=kind != "FocalLoss")
    kw = {}
    if kind == "FocalLoss":
        kw.update(alpha=rng.choice([None, 0.25, 0.5]), gamma=rng.choice([2.0, 0.0, 1.0, 0.5, 3.0]),
                  reduction=rng.choice(["mean", "sum"]), normalized=rng.random() < 0.15,
                  reduced_threshold=rng.choice([None, None, None, 0.5]))
    else:
        kw.update(log_loss=rng.random() < 0.25, smooth=rng.choice([0.0, 0.0, 1.0, 0.5]),
                  eps=rng.choice([1e-7, 1e-7, 1e-3]), from_logits=from_logits)
        if mode != "binary" and rng.random() < 0.3:
            kw["classes"] = rng.sample(range(c), rng.randint(1, c))
        if kind == "TverskyLoss":
            kw.update(alpha=rng.choice([0.3, 0.5, 0.7]), beta=rng.choice([0.7, 0.5, 0.2]),
                      gamma=rng.choice([1.0, 1.5, 0.75]))
    if mode != "binary" and rng.random() < 0.3:
        kw["class_weights"] = [rng.choice([0.5, 1.0, 2.0]) for _ in range(c)]
    dtype = rng.choice([torch.float64, torch.float32])
    return mode, kind, x, t, ignore, kw, dtype, _layout(rng, x.to(dtype))


@pytest.mark.parametrize("seed", range(96))
def test_fuzz_against_smp(seed):
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    mode, kind, x, t, ignore, kw, dtype, xd = _smp_case(seed)
    xr = xd.detach().to(torch.float64).requires_grad_(True)  # the same (rounded) values
    try:
        # smp's one_hot takes int64 labels only; ours reads every integer dtype as it is
        want = getattr(smp_losses, kind)(mode, ignore_index=ignore, **kw)(
            xr, t.long() if mode == "multiclass" else t)
    except Exception as exc:  # noqa: BLE001 - smp rejects this combination
        pytest.skip(f"smp raises {type(exc).__name__}: {exc}")
    want_g = _grad(want, xr)
    xo = xd.detach().requires_grad_(True)
    got = getattr(fnn, kind)(mode, ignore_index=ignore, **kw)(xo, t)
    got_g = _grad(got, xo)
    assert torch.isfinite(got).all() and torch.isfinite(got_g).all(), (kind, mode, kw)
    if not (torch.isfinite(want).all() and torch.isfinite(want_g).all()):
        return  # smp's NaN (the cases ours fixes); ours is finite, checked above
    if dtype == torch.float64:
        tol, gtol = dict(rtol=1e-9, atol=1e-11), dict(rtol=1e-8, atol=1e-11)
    else:
        tol = dict(rtol=2e-4, atol=2e-5)
        gtol = dict(rtol=2e-3, atol=max(2e-6, 1e-3 * want_g.abs().max().item()))
    torch.testing.assert_close(got.double(), want.double(), **tol)
    torch.testing.assert_close(got_g.double(), want_g.double(), **gtol)


def _fused_case(seed: int):
    rng = random.Random(10_000 + seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    mode = rng.choice(["binary", "multiclass", "multilabel"])
    n, c = rng.choice([1, 2, 3, 4]), 1 if mode == "binary" else rng.choice([2, 3, 5, 8])
    dtype = rng.choice([torch.float64, torch.float32, torch.float32, torch.float16, torch.bfloat16])
    from_logits = rng.random() < 0.8
    x = _input(g, mode, n, c, rng.choice(SPATIAL + [(33, 65)]), from_logits,
               rng.choice([0.1, 2.0, 10.0, 40.0, 200.0])).to(dtype)
    t, ignore = _target(rng, g, mode, x.shape, soft_ok=True)
    if mode != "multiclass":  # as smp (type_as), a float mask is read in the input's dtype
        t = t.to(rng.choice([torch.float64, torch.float32, dtype])
                 if dtype in (torch.float32, torch.float64) else dtype)
    kw = dict(dice=rng.choice([0, 1.0, 0.5]), iou=rng.choice([0, 1.0]), bce=rng.choice([0, 0.8]),
              focal=rng.choice([0, 0, 1.0]), tversky=rng.choice([0, 0, 0.7]),
              tversky_alpha=rng.choice([0.3, 0.5, 0.7]), tversky_beta=rng.choice([0.7, 0.5]),
              tversky_gamma=rng.choice([1.0, 0.75, 2.0]), focal_alpha=rng.choice([None, 0.25]),
              focal_gamma=rng.choice([2.0, 1.0, 0.5, 0.0, 3.0]), log_loss=rng.random() < 0.2,
              from_logits=from_logits, smooth=rng.choice([0.0, 1.0]),
              eps=rng.choice([1e-7, 1e-3]), ignore_index=ignore, per_image=rng.random() < 0.25)
    if mode != "binary":
        if rng.random() < 0.3:
            kw["classes"] = rng.sample(range(c), rng.randint(1, c))
        if rng.random() < 0.3:  # zeros too, but not every weight of the averaged classes
            w = [rng.choice([0.5, 1.0, 2.0, 0.0]) for _ in range(c)]
            w[kw.get("classes", [0])[0]] = 1.0
            kw["class_weights"] = w
    if mode != "multiclass" or not t.is_floating_point():  # (the reference: integer labels)
        # from a generator of its own, so that the cases drawn before it stay the same
        kw["label_smoothing"] = random.Random(20_000 + seed).choice([0.0, 0.0, 0.1, 0.4])
    return mode, x, t, kw, dtype, _layout(rng, x)


@pytest.mark.parametrize("seed", range(96))
def test_fuzz_fused_against_reference(seed, device, monkeypatch):
    """(On CUDA: the CUDA statistics kernel and, with combine on, the CUDA seg_combine kernel,
    against the float64 reference computed on the CPU.)"""
    mode, x, t, kw, dtype, xd = _fused_case(seed)
    xr = x.detach().to(torch.float64).requires_grad_(True)
    want = R.segmentation_loss(xr, t, mode=mode, **kw)
    want_g = _grad(want, xr)
    if dtype == torch.float16 and want_g.abs().max() > F16_MAX / 2:
        pytest.skip("the true gradient is beyond float16's range")
    assert torch.isfinite(want) and torch.isfinite(want_g).all()
    for combine in (True, False):
        monkeypatch.setattr(fgl.segmentation.functional, "_combine_enabled", lambda s, on=combine: on)
        xo = xd.detach().to(device).requires_grad_(True)
        got = fgl.segmentation_loss(xo, t.to(device), mode, **kw)
        got_g = _grad(got, xo)
        got, got_g = got.cpu(), got_g.cpu()
        stage = "seg_combine" if combine else "PyTorch-ops stage"
        assert torch.isfinite(got) and torch.isfinite(got_g).all(), stage
        scale = max(1e-6, want_g.abs().max().item())
        if dtype == torch.float64:
            tol, gtol = dict(rtol=1e-9, atol=1e-10), dict(rtol=1e-7, atol=1e-10 * scale)
        elif dtype == torch.float32:
            tol, gtol = dict(rtol=1e-4, atol=1e-5), dict(rtol=5e-3, atol=2e-3 * scale)
        else:
            tol, gtol = dict(rtol=2e-2, atol=2e-3), dict(rtol=1e-1, atol=4e-2 * scale)
        torch.testing.assert_close(got.double(), want.double(), **tol,
                                   msg=lambda m: f"{stage} loss: {m}")
        torch.testing.assert_close(got_g.double(), want_g.double(), **gtol,
                                   msg=lambda m: f"{stage} gradient: {m}")
