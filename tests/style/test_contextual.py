"""contextual_loss: value and gradients against reference.contextual_loss (the common PyTorch
port) in float64, gradcheck, different x / y positions, half precision, layouts, opcheck,
torch.compile, peak memory, errors."""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as R


def feats(shape, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)


@pytest.mark.parametrize("xs,ys", [
    ((2, 4, 5, 5), (2, 4, 5, 5)),
    ((2, 4, 5, 5), (2, 4, 3, 4)),   # positions differ
    ((1, 3, 7), (1, 3, 9)),         # [N, C, L]
    ((3, 1, 4, 4), (3, 1, 4, 4)),   # one channel
    ((1, 16, 2, 3, 3), (1, 16, 2, 3, 3)),  # [N, C, D, H, W]
])
@pytest.mark.parametrize("band_width", [0.1, 0.5, 1.0])
def test_matches_reference_value_and_gradients(device, xs, ys, band_width):
    x = feats(xs, device, seed=1).requires_grad_(True)
    y = feats(ys, device, seed=2).requires_grad_(True)
    got = fgl.contextual_loss(x, y, band_width=band_width)
    want = R.contextual_loss(x, y, band_width=band_width)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    gx, gy = torch.autograd.grad(got, (x, y))
    rx, ry = torch.autograd.grad(want, (x, y))
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(gy, ry, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 1000])
def test_blocks_of_rows_give_the_same_loss_and_gradients(device, monkeypatch, chunk_rows):
    """The similarities are walked in blocks of x positions; any block size (1 row, sizes that
    do not divide P, one block for all) gives the reference's value and gradients."""
    monkeypatch.setattr(fgl.style.functional, "_CONTEXTUAL_CHUNK_ROWS", chunk_rows)
    x = feats((2, 5, 4, 5), device, seed=23).requires_grad_(True)
    y = feats((2, 5, 3, 3), device, seed=24).requires_grad_(True)
    got = fgl.contextual_loss(x, y, band_width=0.4)
    want = R.contextual_loss(x, y, band_width=0.4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    gx, gy = torch.autograd.grad(got, (x, y))
    rx, ry = torch.autograd.grad(want, (x, y))
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(gy, ry, rtol=1e-8, atol=1e-11)


def test_gradcheck(device):
    x = feats((2, 3, 3, 3), device, seed=3).requires_grad_(True)
    y = feats((2, 3, 2, 3), device, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fgl.contextual_loss(a, b, band_width=0.3),
                                    (x, y), eps=1e-6, atol=1e-6)


def test_only_x_requires_grad(device):
    x = feats((2, 4, 4, 4), device, seed=5).requires_grad_(True)
    y = feats((2, 4, 4, 4), device, seed=6)
    fgl.contextual_loss(x, y).backward()
    want_x = x.detach().clone().requires_grad_(True)
    R.contextual_loss(want_x, y).backward()
    torch.testing.assert_close(x.grad, want_x.grad, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2),
                                       (torch.float16, 1e-2)])
def test_half_and_float32_against_float64(device, dtype, tol):
    x64, y64 = feats((2, 8, 6, 6), device, seed=7), feats((2, 8, 6, 6), device, seed=8)
    x = x64.to(dtype).requires_grad_(True)
    y = y64.to(dtype)
    got = fgl.contextual_loss(x, y)
    assert got.dtype == torch.float32
    xr = x.detach().double().requires_grad_(True)
    want = R.contextual_loss(xr, y.double())
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    got.backward()
    want.backward()
    assert x.grad.dtype == dtype
    scale = xr.grad.abs().max()
    assert ((x.grad.double() - xr.grad).abs().max() / scale) < 5 * tol


def test_channels_last_and_noncontiguous(device):
    x = feats((2, 4, 5, 5), device, seed=9)
    y = feats((2, 4, 5, 5), device, seed=10)
    want = fgl.contextual_loss(x, y)
    got = fgl.contextual_loss(x.to(memory_format=torch.channels_last),
                              y.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    xt = feats((2, 5, 5, 4), device, seed=9).permute(0, 3, 1, 2)  # non-contiguous view
    torch.testing.assert_close(fgl.contextual_loss(xt, y), R.contextual_loss(xt, y),
                               rtol=1e-10, atol=1e-12)


def test_identical_features_give_the_floor(device):
    x = feats((2, 6, 4, 4), device, seed=11)
    got = fgl.contextual_loss(x, x.clone())
    torch.testing.assert_close(got, R.contextual_loss(x, x.clone()), rtol=1e-10, atol=1e-12)
    assert got < fgl.contextual_loss(x, feats((2, 6, 4, 4), device, seed=12))


def test_module():
    x, y = feats((1, 3, 4, 4), seed=13), feats((1, 3, 4, 4), seed=14)
    torch.testing.assert_close(fgl.nn.ContextualLoss(band_width=0.2)(x, y),
                               R.contextual_loss(x, y, band_width=0.2))


def test_empty_batch_is_nan(device):
    x = feats((0, 3, 4, 4), device)
    assert torch.isnan(fgl.contextual_loss(x, x))


def test_opcheck(device):
    x = feats((2, 3, 4, 4), device, seed=15, dtype=torch.float32).requires_grad_(True)
    y = feats((2, 3, 3, 4), device, seed=16, dtype=torch.float32).requires_grad_(True)
    torch.library.opcheck(torch.ops.fastgenloss.contextual_fwd.default, (x, y, 0.5, 0))
    torch.library.opcheck(torch.ops.fastgenloss.contextual_fwd.default, (x, y, 0.5, 5))
    _, cmax, istar = torch.ops.fastgenloss.contextual_fwd(x.detach(), y.detach(), 0.5, 0)
    g = torch.tensor(1.0, device=device)
    torch.library.opcheck(torch.ops.fastgenloss.contextual_bwd.default,
                          (g, x.detach(), y.detach(), cmax, istar, 0.5, 0, True, True))


def test_compile_fullgraph(device):
    x = feats((2, 4, 4, 4), device, seed=17, dtype=torch.float32).requires_grad_(True)
    y = feats((2, 4, 4, 4), device, seed=18, dtype=torch.float32)
    fn = torch.compile(lambda a, b: fgl.contextual_loss(a, b, band_width=0.5), fullgraph=True)
    got = fn(x, y)
    (gx,) = torch.autograd.grad(got, x)
    want = fgl.contextual_loss(x, y)
    (wx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gx, wx)


def test_second_derivative_is_a_clear_error():
    x = feats((1, 3, 3, 3), seed=19).requires_grad_(True)
    y = feats((1, 3, 3, 3), seed=20)
    (g,) = torch.autograd.grad(fgl.contextual_loss(x, y), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives of the contextual loss"):
        g.sum().backward()


def test_peak_memory_holds_no_pairwise_matrix(device):
    from fastgenloss._measure import peak_memory_bytes
    x = feats((1, 32, 48, 48), device, seed=21, dtype=torch.float32).requires_grad_(True)
    y = feats((1, 32, 48, 48), device, seed=22, dtype=torch.float32)
    pair = 4 * (48 * 48) ** 2  # one [N, P, Q] float32 matrix: 21 MB

    def run(fn):
        def go():
            fn(x, y).backward()
            x.grad = None
        return go
    ours = [peak_memory_bytes(run(fgl.contextual_loss), device) for _ in range(2)]
    theirs = [peak_memory_bytes(run(R.contextual_loss), device) for _ in range(2)]
    if None in ours or None in theirs:
        pytest.skip("peak memory is not measurable on this platform")
    # blocks of ~1M similarities (4 MB): a few of them at once, never one whole [N, P, Q] matrix
    assert min(ours) <= 1.0 * pair, f"{min(ours) / pair:.2f} pairwise matrices at once"
    assert min(ours) < 0.25 * min(theirs), (min(ours) / pair, min(theirs) / pair)


@pytest.mark.parametrize("x,y,kw,exc,match", [
    ((2, 3, 4, 4), (2, 4, 4, 4), {}, ValueError, "same batch size and channels"),
    ((2, 3, 4, 4), (1, 3, 4, 4), {}, ValueError, "same batch size and channels"),
    ((2, 3, 4, 4), (2, 3, 16), {}, ValueError, "same batch size and channels"),
    ((2, 3), (2, 3), {}, ValueError, r"x_features must be features \[N, C, H, W\]"),
    ((2, 3, 4), (2, 3, 4), {"band_width": 0.0}, ValueError, "band_width must be > 0"),
    ((2, 3, 4), (2, 3, 4), {"band_width": -1.0}, ValueError, "band_width must be > 0"),
    ((2, 3, 4), (2, 3, 4), {"band_width": float("inf")}, ValueError, "band_width must be finite"),
    ((2, 0, 4), (2, 0, 4), {}, ValueError, "at least one channel and one position"),
])
def test_errors_name_the_argument(x, y, kw, exc, match):
    with pytest.raises(exc, match=match):
        fgl.contextual_loss(feats(x), feats(y, seed=1), **kw)


def test_integer_features_are_rejected():
    with pytest.raises(TypeError, match="x_features must be float32"):
        fgl.contextual_loss(torch.ones(1, 2, 3, dtype=torch.long), feats((1, 2, 3)))


@pytest.mark.parametrize("dup", ["y", "x", "both"])
def test_ties_route_gradients_as_the_reference(device, dup):
    """Exact ties: duplicated y positions tie the max over j of each similarity row (the min of
    d, routed to its first index), duplicated x positions tie the max over i of cx (its first
    index). The CPU's fused row loops and the reference's torch.min / torch.max pick the same
    first index, so the gradients agree."""
    x = feats((2, 6, 13), device, seed=31)
    y = feats((2, 6, 11), device, seed=32)
    if dup in ("y", "both"):
        y = torch.cat([y, y[..., :7]], dim=-1)
    if dup in ("x", "both"):
        x = torch.cat([x[..., 3:9], x], dim=-1)
    x.requires_grad_(True)
    y.requires_grad_(True)
    got = fgl.contextual_loss(x, y, band_width=0.2)
    want = R.contextual_loss(x, y, band_width=0.2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-4)])
def test_many_positions_against_the_reference(device, dtype, tol):
    """P, Q in the hundreds (the vectorized lanes, their remainders and several blocks of rows)
    in float32 and float64, against the float64 reference."""
    x = feats((2, 32, 300), device, seed=41)
    y = feats((2, 32, 263), device, seed=42)
    xd, yd = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    want = R.contextual_loss(xd, yd, band_width=0.5)
    rx, ry = torch.autograd.grad(want, (xd, yd))
    xt, yt = x.to(dtype).requires_grad_(True), y.to(dtype).requires_grad_(True)
    got = fgl.contextual_loss(xt, yt, band_width=0.5)
    gx, gy = torch.autograd.grad(got, (xt, yt))
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=0)
    for a, b in ((gx, rx), (gy, ry)):
        scale = b.abs().max()
        assert (a.double() - b).abs().max() <= tol * scale, (a.double() - b).abs().max() / scale


def test_nan_features_give_nan(device):
    x = feats((1, 4, 10), device, seed=51)
    y = feats((1, 4, 12), device, seed=52)
    x[0, 1, 3] = float("nan")
    assert torch.isnan(fgl.contextual_loss(x, y))
    assert torch.isnan(R.contextual_loss(x, y))


@pytest.mark.parametrize("near", [0.0, 1e-4])
@pytest.mark.parametrize("band_width", [0.01, 0.002])
def test_small_band_width_float32_is_finite(device, band_width, near):
    """band_width < 1/88 with y (nearly) a copy of x, so min_j d ~ 0 and the port's largest
    exponent (1 - d~) / h ~ 1 / h: its exp((1 - d~) / h) overflows float32 (inf / inf = NaN,
    found by a fuzz against float64). Ours takes each row's largest exponent off first (cx = w / z
    cancels it): finite, and equal to float64 within float32's conditioning here (d = 1 - S with
    S ~ 1 carries 6e-8 against the 1e-5 of d / (min d + 1e-5))."""
    x = feats((2, 3, 4, 5), device, seed=3)
    y = x * (1 + near * feats((2, 3, 4, 5), device, seed=4))
    x32 = x.float().requires_grad_(True)
    y32 = y.float().requires_grad_(True)
    port = R.contextual_loss(x32, y32, band_width=band_width)
    got = fgl.contextual_loss(x32, y32, band_width=band_width)
    gx, gy = torch.autograd.grad(got, (x32, y32))
    xr, yr = x.requires_grad_(True), y.requires_grad_(True)
    want = R.contextual_loss(xr, yr, band_width=band_width)
    rx, ry = torch.autograd.grad(want, (xr, yr))
    assert torch.isfinite(want) and not torch.isfinite(port)  # the port's float32 overflow
    assert torch.isfinite(got) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    for g, r in ((gx, rx), (gy, ry)):  # at the floor (copies) both are rounding noise
        torch.testing.assert_close(g.double(), r, rtol=2e-2, atol=1e-6)
