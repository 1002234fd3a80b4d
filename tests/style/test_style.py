"""Gram matrices and the style loss against fastgenloss.reference (bmm + mse, float64 oracle,
flash-attn 2x rule): odd and large shapes, every dtype, targets as features or precomputed
Grams (broadcast), float16 Grams that would overflow, gradients, opcheck, torch.compile."""

from __future__ import annotations

import math
import random
import struct
from fractions import Fraction

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R
from helpers import check_against_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(2, 1, 1, 1), (2, 3, 5, 7), (1, 65, 513), (3, 64, 16, 16), (2, 3, 1, 513),
          (2, 33, 9, 9)]


@pytest.fixture(autouse=True)
def _gram_kernel_on(request):
    """On CUDA the tests run the hand-written Gram kernel (experimental: off by default; the
    cuBLAS path it replaces is compared with it in the test_cuda_gram_kernel_* tests)."""
    if "device" in request.fixturenames and request.getfixturevalue("device") == "cuda":
        with fgl.config.override(gram_cuda_kernel=True):
            yield
    else:
        yield


def _factor(dtype):
    # float64: plain PyTorch *is* the float64 oracle, so the 2x rule leaves only the slack; a
    # different (fused) summation order differs by a few ulps of the Grams, whose difference D
    # can be much smaller than they are: allow 1e3 ulps of the result's magnitude there
    return 1e3 if dtype == torch.float64 else 16.0


def feats(shape, device, requires_grad=True, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(device).requires_grad_(requires_grad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gram_matches_reference(device, dtype, shape):
    x = feats(shape, device)
    check_against_reference(lambda f: fgl.gram_matrix(f), lambda f: R.gram_matrix(f), [x], dtype,
                            factor=_factor(dtype))


@pytest.mark.parametrize("normalize", [True, False])
def test_gram_unnormalized_and_layouts(device, normalize):
    x = torch.randn(2, 8, 6, 5, device=device)
    want = R.gram_matrix(x, normalize=normalize)
    for v in (x, x.to(memory_format=torch.channels_last), x[..., ::1].transpose(2, 3)):
        v = v.contiguous() if v is not x and v.shape != x.shape else v
        torch.testing.assert_close(fgl.gram_matrix(x.to(memory_format=torch.channels_last),
                                                   normalize=normalize), want)
    xs = torch.randn(2, 8, 6, 10, device=device)[..., ::2]  # non-contiguous
    torch.testing.assert_close(fgl.gram_matrix(xs, normalize=normalize),
                               R.gram_matrix(xs, normalize=normalize))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["features", "gram", "gram1", "gram2d"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_style_loss_matches_reference(device, dtype, shape, target, reduction):
    x = feats(shape, device)
    n, c = shape[:2]
    if target == "features":
        t = feats(shape, device)
    else:
        y = torch.randn(shape, dtype=torch.float64, device=device)
        g = R.gram_matrix(y)
        t = {"gram": g, "gram1": g[:1], "gram2d": g[0]}[target].clone().requires_grad_(True)
    is_gram = target != "features"
    check_against_reference(
        lambda a, b: fgl.style_loss(a, b, reduction=reduction, target_is_gram=is_gram),
        lambda a, b: R.style_loss(a, b, reduction=reduction, target_is_gram=is_gram),
        [x, t], dtype, factor=_factor(dtype))


def test_float16_gram_does_not_overflow(device):
    # unscaled sums of 4096 products of ~300^2 are ~4e8: far past float16's 65504
    x = (torch.randn(2, 4, 64, 64, device=device) * 300).half()
    g = fgl.gram_matrix(x)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.float(), R.gram_matrix(x.double()).float(), rtol=2e-3, atol=1)
    y = (torch.randn(2, 4, 64, 64, device=device) * 300).half()
    loss = fgl.style_loss(x.requires_grad_(), y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    want = R.style_loss(x.detach().double(), y.double())
    torch.testing.assert_close(loss.double(), want, rtol=5e-3, atol=0)


@pytest.mark.parametrize("target_is_gram", [False, True])
def test_float16_unnormalized_style_loss_is_finite(device, target_is_gram):
    """normalize=False in float16: the Grams themselves (sums of 1024 post-ReLU products, up
    to ~9e4 here) pass 65504, the float32 loss does not. The Gram products, the target
    features' Gram (once rounded back to float16 on the CPU: inf) and the backward's dL/dD run
    in float32; loss and gradients against float64."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(2, 8, 32, 32, generator=g, dtype=torch.float64) * 16).relu().to(device)
    y = (torch.randn(2, 8, 32, 32, generator=g, dtype=torch.float64) * 16).relu().to(device)
    assert R.gram_matrix(y, normalize=False).abs().max() > 65504
    t = R.gram_matrix(y, normalize=False).float() if target_is_gram else y.half()
    xh = x.half().requires_grad_(True)
    loss = fgl.style_loss(xh, t, normalize=False, target_is_gram=target_is_gram)
    (gx,) = torch.autograd.grad(loss, xh)
    xr = xh.detach().double().requires_grad_(True)
    want = R.style_loss(xr, t.double(), normalize=False, target_is_gram=target_is_gram)
    (wx,) = torch.autograd.grad(want, xr)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(gx).all()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
    torch.testing.assert_close(gx.double(), wx, rtol=2e-3, atol=2e-3 * wx.abs().max().item())


def test_large_hw(device):
    x = feats((1, 16, 256, 256), device, requires_grad=False).float()
    torch.testing.assert_close(fgl.gram_matrix(x), R.gram_matrix(x.double()).float(),
                               rtol=1e-4, atol=1e-6)


def test_gradcheck(device):
    x = feats((2, 3, 4, 5), device)
    y = feats((2, 3, 4, 5), device)
    g = R.gram_matrix(feats((2, 3, 4, 5), device, requires_grad=False)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fgl.gram_matrix(a), (x,))
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda a, b: fgl.style_loss(a, b, reduction=red), (x, y))
        assert torch.autograd.gradcheck(
            lambda a, b: fgl.style_loss(a, b, reduction=red, target_is_gram=True), (x, g))
        assert torch.autograd.gradcheck(
            lambda a, b: fgl.style_loss(a, b, reduction=red, target_is_gram=True), (x, g[:1]))


def test_target_kind_inference_and_errors():
    x = torch.randn(2, 4, 4)  # L == C: a [2, 4, 4] target could be either
    with pytest.raises(ValueError, match=r"could be features or a Gram .* target_is_gram"):
        fgl.style_loss(x, torch.randn(2, 4, 4))
    torch.testing.assert_close(fgl.style_loss(x, torch.randn(2, 4, 4), target_is_gram=False).shape,
                               torch.Size([]))
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"neither features like input_features \[2, 4, 3, 3\].*"
                                         r"nor a Gram \[2, 4, 4\], \[1, 4, 4\] or \[4, 4\]"):
        fgl.style_loss(x, torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match=r"features \[N, C, H, W\].*got \[4, 9\] float32"):
        fgl.gram_matrix(torch.randn(4, 9))
    with pytest.raises(TypeError, match=r"features must be float32, float64, float16 or bfloat16"):
        fgl.gram_matrix(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        fgl.style_loss(x, torch.randn(4, 4), reduction="avg")
    with pytest.raises(ValueError, match=r"target Gram \[3, 3\] float32 on cpu must be"):
        fgl.style_loss(x, torch.randn(3, 3), target_is_gram=True)


def _op_samples(device):
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    y = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    g = torch.randn(1, 3, 3, device=device, requires_grad=True)
    yield "gram", (x, 0.01)
    for red in (0, 1, 2):
        yield "style_fwd", (x, y, False, 0.01, red)
        yield "style_fwd", (x, g, True, 0.01, red)


@pytest.mark.parametrize("i", range(7))
def test_opcheck(device, i):
    name, args = list(_op_samples(device))[i]
    torch.library.opcheck(getattr(torch.ops.fastgenloss, name).default, args)


def test_compile_fullgraph(device):
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    style = R.gram_matrix(torch.randn(1, 8, 16, 16, device=device))

    def loss_of(x):
        f = conv(x)
        return fgl.style_loss(f, style) + fgl.gram_matrix(f).square().mean()

    eager = loss_of(x)
    eager.backward()
    ge = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    got = torch.compile(loss_of, fullgraph=True)(x)
    got.backward()
    torch.testing.assert_close(got, eager)
    for p, g in zip(conv.parameters(), ge):
        torch.testing.assert_close(p.grad, g)


# Channel counts at which the CPU computes the Gram by strips of its upper triangle
# (csrc/style/ops.cpp: 64 rows a strip up to C = 512, 128 above), with a last strip of 1, 2 or
# 6 rows: the mirrored lower triangle, the strip edges and the diagonal blocks.
STRIP_SHAPES = [(2, 128, 3, 4), (2, 130, 7, 5), (1, 513, 3, 3), (1, 1030, 6)]


@pytest.mark.parametrize("shape", STRIP_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_gram_strips_match_reference(device, dtype, shape):
    x = feats(shape, device)
    check_against_reference(lambda f: fgl.gram_matrix(f), lambda f: R.gram_matrix(f), [x], dtype,
                            factor=_factor(dtype))
    g = fgl.gram_matrix(x.detach().to(dtype))
    # every entry, mirrored ones included, is the dot product of its two rows
    f = x.detach().flatten(2)
    i, j = shape[1] - 1, 0  # the last row against the first: below the diagonal, mirrored
    want = (f[:, i] * f[:, j]).sum(-1) / f[0].numel()
    torch.testing.assert_close(g[:, i, j].double(), want, rtol=1e-2 if dtype == torch.bfloat16
                               else 1e-5, atol=1e-4 if dtype == torch.bfloat16 else 1e-7)


@pytest.mark.parametrize("target", ["features", "gram"])
@pytest.mark.parametrize("shape", STRIP_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_style_loss_strips_match_reference(device, dtype, shape, target):
    x = feats(shape, device)
    t = feats(shape, device) if target == "features" else \
        R.gram_matrix(torch.randn(shape, dtype=torch.float64, device=device)).requires_grad_(True)
    is_gram = target == "gram"
    check_against_reference(
        lambda a, b: fgl.style_loss(a, b, target_is_gram=is_gram),
        lambda a, b: R.style_loss(a, b, target_is_gram=is_gram), [x, t], dtype,
        factor=_factor(dtype))


# ---- the hand-written CUDA Gram kernel against cuBLAS and float64 -------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _kernel(on):
    """Switch the CUDA Gram kernel on or off inside a with-block."""
    return fgl.config.override(gram_cuda_kernel=on)


def _tol(dtype):
    # against float64: bfloat16 / float16 operands carry their own rounding (8 / 11 bits); the
    # float32 split into three TF32 parts is float32-accurate; one TF32 product has TF32's 11 bits
    return {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 2e-5}[dtype]


# tile edges (64), splits over L (L large against few tiles), L not a multiple of 8 (scalar
# loads), one channel
KERNEL_SHAPES = [(2, 1, 1), (2, 3, 7), (1, 64, 1000), (3, 65, 513), (2, 130, 33),
                 (1, 513, 40), (8, 64, 65536), (2, 4, 100003), (1, 200, 4096)]


def test_gram_kernel_switch_is_exposed():
    assert isinstance(fgl.config.get("gram_cuda_kernel"), bool)
    with _kernel(True):
        assert fgl.config.get("gram_cuda_kernel")
    with _kernel(False):
        assert not fgl.config.get("gram_cuda_kernel")
    # the CPU never takes it: same values with the switch on
    x = torch.randn(2, 5, 7)
    with _kernel(True):
        a = fgl.gram_matrix(x)
    with _kernel(False):
        b = fgl.gram_matrix(x)
    assert torch.equal(a, b)


@cuda_only
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_gram_kernel_matches_float64(dtype, shape):
    x64 = torch.randn(shape, dtype=torch.float64, device="cuda")
    x = x64.to(dtype)
    want = R.gram_matrix(x.double())  # the operands as given, product in float64
    with _kernel(True):
        got = fgl.gram_matrix(x)
        again = fgl.gram_matrix(x)
    with _kernel(False):
        cublas = fgl.gram_matrix(x)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, again), "not deterministic"
    assert torch.equal(got, got.transpose(1, 2)), "not exactly symmetric"
    scale = want.abs().amax().item()
    err = (got.double() - want).abs().amax().item() / scale
    err_cublas = (cublas.double() - want).abs().amax().item() / scale
    assert err <= max(_tol(dtype), 4 * err_cublas), (err, err_cublas)


@cuda_only
def test_cuda_gram_kernel_tf32_follows_torch_setting():
    x = torch.randn(2, 96, 3000, device="cuda")
    want = R.gram_matrix(x.double())
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        with _kernel(True):
            torch.backends.cuda.matmul.allow_tf32 = False
            exact = fgl.gram_matrix(x)
            torch.backends.cuda.matmul.allow_tf32 = True
            fast = fgl.gram_matrix(x)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    scale = want.abs().amax().item()
    e_exact = (exact.double() - want).abs().amax().item() / scale
    e_fast = (fast.double() - want).abs().amax().item() / scale
    assert e_exact < 1e-5, e_exact        # three TF32 parts: float32 accuracy
    assert e_fast < 5e-3, e_fast          # one TF32 product
    assert e_fast > 3 * e_exact           # and it did round to TF32


@cuda_only
def test_cuda_gram_kernel_unaligned_and_strided_inputs():
    base = torch.randn(2 * 70 * 520 + 1, device="cuda")
    x = base[1:].view(2, 70, 520)  # contiguous, data pointer 4 bytes off 16-byte alignment
    want = R.gram_matrix(x.double())
    cl = torch.randn(2, 70, 20, 26, device="cuda").to(memory_format=torch.channels_last)
    with _kernel(True):
        torch.testing.assert_close(fgl.gram_matrix(x).double(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fgl.gram_matrix(cl).double(), R.gram_matrix(cl.double()),
                                   rtol=1e-5, atol=1e-6)


@cuda_only
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["features", "gram", "gram1"])
@pytest.mark.parametrize("shape", [(2, 3, 7), (3, 65, 513), (8, 64, 65536), (2, 130, 33)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_style_kernel_matches_float64(dtype, shape, target, reduction):
    x = torch.randn(shape, device="cuda").to(dtype)
    y = torch.randn(shape, device="cuda").to(dtype)
    if target == "features":
        t, t64 = y, y.double()
    else:
        g = R.gram_matrix(y.double()).float()
        t = g if target == "gram" else g[:1]
        t64 = t.double()
    is_gram = target != "features"
    want = R.style_loss(x.double(), t64, reduction=reduction, target_is_gram=is_gram)
    with _kernel(True):
        got = fgl.style_loss(x, t, reduction=reduction, target_is_gram=is_gram)
        again = fgl.style_loss(x, t, reduction=reduction, target_is_gram=is_gram)
    with _kernel(False):
        cublas = fgl.style_loss(x, t, reduction=reduction, target_is_gram=is_gram)
    assert got.dtype == cublas.dtype and got.shape == cublas.shape
    assert torch.equal(got, again), "not deterministic"
    # D is a difference of Grams: its error scales with the Grams, not with D
    gscale = R.gram_matrix(x.double()).abs().amax().item()
    if reduction == "none":
        err = ((got.double().sqrt() - want.sqrt()).abs().amax().item()) / gscale
    else:
        err = abs(got.item() - want.item()) / max(want.item(), 1e-30)
    assert err <= 4 * _tol(dtype), err


@cuda_only
def test_cuda_style_kernel_gradients_and_compile():
    x = torch.randn(2, 65, 24, 24, device="cuda", requires_grad=True)
    y = torch.randn(2, 65, 24, 24, device="cuda")
    with _kernel(True):
        loss = fgl.style_loss(x, y)
        (gx,) = torch.autograd.grad(loss, x)
        got = torch.compile(lambda a, b: fgl.style_loss(a, b), fullgraph=True)(x, y)
    x64 = x.detach().double().requires_grad_()
    want = R.style_loss(x64, y.double())
    (g64,) = torch.autograd.grad(want, x64)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=0)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)
    torch.testing.assert_close(gx.double(), g64, rtol=1e-3, atol=1e-3 * g64.abs().max().item())


# ---- the CUDA kernel's plan, checked on the CPU ---------------------------------------------------
# The tile and split arithmetic is gram_plan.h's, shared by the kernel's host plan and device
# code; fastgenloss._C exposes it. The emulation below runs the kernel's scheme with it (upper
# tiles only, K-ranges, negated ranges over F_y, a diagonal tile's lower quarter never written,
# ranges added in order, mirrored) and must give the Gram / style difference.

T = 64


def test_gram_tile_index_inverts_coords():
    for nt in range(1, 40):
        seen = []
        for t in range(nt * (nt + 1) // 2):
            i, j = fgl._C._testing.gram_tile_coords(t, nt)
            assert 0 <= i <= j < nt
            assert fgl._C._testing.gram_tile_index(i, j, nt) == t
            seen.append((i, j))
        assert len(set(seen)) == nt * (nt + 1) // 2


@pytest.mark.parametrize("elem_bytes", [2, 4])
def test_gram_splits_cover_l_exactly(elem_bytes):
    step = 64 // elem_bytes
    for n in (1, 2, 8, 300):
        for c in (1, 3, 64, 65, 512, 2048):
            for l in (1, 7, step, step + 1, 1000, 4096, 65536, 100003, 1 << 22):
                for ops in (1, 2):
                    splits, per = fgl._C._testing.gram_plan(elem_bytes, n, c, l, ops, 528)
                    assert splits >= 1 and per % step == 0 and per > 0
                    assert (splits - 1) * per < l <= splits * per  # all non-empty, cover [0, L)
                    assert splits <= 4096
                    nt = -(-c // T)
                    have = n * nt * (nt + 1) // 2 * ops
                    if have >= 528:
                        assert splits == 1
                    if splits > 1:
                        assert per >= 4 * step


def _f32_bits(v):
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _f32(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def _tf32_rna(v):
    # round to TF32, nearest with ties away from zero, by exact rational arithmetic on the
    # float32's significand (no bit tricks: an independent statement of cvt.rna.tf32.f32)
    b = _f32_bits(v)
    if (b >> 23) & 0xFF == 0xFF:
        return v
    sign = -1 if b >> 31 else 1
    e = (b >> 23) & 0xFF
    frac = b & 0x7FFFFF
    sig = (frac | 0x800000) if e else frac  # integer significand, unit 2^(e - 150) (or 2^-149)
    unit = Fraction(2) ** ((e if e else 1) - 150)
    q, r = divmod(sig, 1 << 13)  # keep 1 + 10 bits of a normal's 24: drop 13
    if r >= 1 << 12:
        q += 1
    out = q * (1 << 13) * unit
    if out >= 2**128:  # rounded past the largest float32
        return sign * math.inf
    return float(sign * out)


def _tf32_values():
    rng = random.Random(7)
    vals = [0.0, -0.0, 1.0, -1.0, 3.0, 1.0 + 2**-23, 1.0 + 2**-11, 1.0 + 3 * 2**-12, 2**-149,
            -2**-140, 2**-126, 1e-40, 3.4e38, -1.7e38, 65504.0, 1 / 3]
    while len(vals) < 3000:
        b = rng.getrandbits(32)
        if (b >> 23) & 0xFF != 0xFF:  # any finite float32, subnormals included
            vals.append(_f32(b))
    for _ in range(3000):
        vals.append(_f32(_f32_bits(rng.gauss(0, 1))))
    # ties: exactly half a TF32 unit above a TF32 value
    for _ in range(200):
        b = (rng.getrandbits(31) & 0x7E7FE000) | 0x1000
        vals.append(_f32(b))
    return [_f32(_f32_bits(v)) for v in vals]  # as float32 values


def test_tf32_round_is_cvt_rna():
    for v in _tf32_values():
        got = fgl._C._testing.tf32_round(v)
        assert got == _tf32_rna(v), (v, got)
        assert _f32_bits(got) & 0x1FFF == 0, v
    assert fgl._C._testing.tf32_round(math.inf) == math.inf
    assert math.isnan(fgl._C._testing.tf32_round(math.nan))


def test_tf32_split3_is_exact_and_its_six_products_carry_float32_accuracy():
    vals = _tf32_values()
    for v in vals:
        hi, mid, lo = fgl._C._testing.tf32_split3(v)
        if math.isinf(hi):  # v within half a TF32 unit of the largest float32: rounds past it
            assert abs(v) >= _f32(0x7F7FF000) and (mid, lo) == (0.0, 0.0), v
            continue
        for part in (hi, mid, lo):
            assert _f32_bits(part) & 0x1FFF == 0, (v, part)  # each a TF32 value
        total = Fraction(hi) + Fraction(mid) + Fraction(lo)
        if abs(v) >= 2.0**-113:
            assert total == Fraction(v), v
        else:  # TF32's subnormals are multiples of 2^-136
            assert abs(total - Fraction(v)) <= Fraction(2) ** -137, v
        assert hi == _tf32_rna(v)
    # the kernel's six products against the exact product: within 2^-30 of |a b| (float32's
    # own rounding is 2^-24); the old TF32 pair (three products) was off by up to ~2^-21
    rng = random.Random(3)
    worst6 = worst3 = 0.0
    for _ in range(4000):
        a = _f32(_f32_bits(rng.gauss(0, 1) * 2.0 ** rng.randint(-20, 20)))
        b = _f32(_f32_bits(rng.gauss(0, 1) * 2.0 ** rng.randint(-20, 20)))
        ah, am, al = (Fraction(p) for p in fgl._C._testing.tf32_split3(a))
        bh, bm, bl = (Fraction(p) for p in fgl._C._testing.tf32_split3(b))
        exact = Fraction(a) * Fraction(b)
        if exact == 0:
            continue
        six = al * bh + ah * bl + am * bm + am * bh + ah * bm + ah * bh
        worst6 = max(worst6, float(abs(six - exact) / abs(exact)))
        a_s = Fraction(_tf32_rna(float(Fraction(a) - ah)))
        b_s = Fraction(_tf32_rna(float(Fraction(b) - bh)))
        three = a_s * bh + ah * b_s + ah * bh
        worst3 = max(worst3, float(abs(three - exact) / abs(exact)))
    assert worst6 <= 2.0**-30, worst6
    assert worst3 > 2.0**-24, worst3  # the test can tell the two schemes apart
    # non-finite values: hi carries them, mid and lo are zero (no inf - inf = NaN)
    assert fgl._C._testing.tf32_split3(math.inf) == (math.inf, 0.0, 0.0)
    assert fgl._C._testing.tf32_split3(-math.inf) == (-math.inf, 0.0, 0.0)


def _emulate(x, y, scale, target, elem_bytes=4, blocks_wanted=528):
    n, c, l = x.shape
    nt = -(-c // T)
    tiles = nt * (nt + 1) // 2
    ops = 2 if y is not None else 1
    splits, per = fgl._C._testing.gram_plan(elem_bytes, n, c, l, ops, blocks_wanted)
    scratch = torch.full((splits * ops, n, tiles, T, T), float("nan"), dtype=torch.float64)

    def rows(f, i):
        out = torch.zeros(n, T, f.shape[2], dtype=torch.float64)
        part = f[:, i * T:(i + 1) * T]
        out[:, :part.shape[1]] = part
        return out

    for r in range(splits * ops):
        second = r >= splits
        f = y if second else x
        k0 = (r - splits if second else r) * per
        fk = f[:, :, k0:min(k0 + per, l)]
        for t in range(tiles):
            ti, tj = fgl._C._testing.gram_tile_coords(t, nt)
            p = rows(fk, ti) @ rows(fk, tj).transpose(1, 2)
            if ti == tj:
                p[:, 32:, :32] = float("nan")  # that warp writes nothing
            scratch[r, :, t] = -p if second else p
    out = torch.empty(n, c, c, dtype=torch.float64)
    for a in range(nt):
        for b in range(nt):
            p_, q_ = min(a, b), max(a, b)
            t = fgl._C._testing.gram_tile_index(p_, q_, nt)
            tile = torch.zeros(n, T, T, dtype=torch.float64)
            rr = torch.arange(T)[:, None]
            cc = torch.arange(T)[None, :]
            keep = (rr <= cc) if p_ == q_ else torch.ones(T, T, dtype=torch.bool)
            for r in range(splits * ops):
                tile = tile + torch.where(keep, scratch[r, :, t], torch.zeros(()))
            i = a * T + rr
            j = b * T + cc
            g = torch.where(i <= j, tile[:, (i - p_ * T).clamp(0, T - 1), (j - q_ * T).clamp(0, T - 1)],
                            tile[:, (j - p_ * T).clamp(0, T - 1), (i - q_ * T).clamp(0, T - 1)])
            g = g * scale
            ok = (i < c) & (j < c)
            ii, jj = i.expand(T, T)[ok], j.expand(T, T)[ok]
            out[:, ii, jj] = g[:, ok]
    if target is not None:
        out = out - target
    return out


@pytest.mark.parametrize("c,l", [(1, 1), (3, 7), (64, 40), (65, 200), (130, 33), (200, 520)])
def test_kernel_scheme_emulated_gives_the_gram(c, l):
    torch.manual_seed(1)
    n = 2
    x = torch.randn(n, c, l, dtype=torch.float64)
    y = torch.randn(n, c, l, dtype=torch.float64)
    s = 1.0 / (c * l)
    want = s * (x @ x.transpose(1, 2))
    for blocks in (1, 528, 10**6):  # one range, some, as many as the plan allows
        got = _emulate(x, None, s, None, blocks_wanted=blocks)
        torch.testing.assert_close(got, want)
        assert torch.equal(got, got.transpose(1, 2))
        tgt = torch.randn(1, c, c, dtype=torch.float64)
        got = _emulate(x, y, s, tgt, blocks_wanted=blocks)
        torch.testing.assert_close(got, want - s * (y @ y.transpose(1, 2)) - tgt)
