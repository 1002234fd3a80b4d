"""The pixel losses against torch.nn.functional and fastgenloss.reference, on every dtype,
reduction, shape and layout the API accepts."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
import torch.nn.functional as F

import fastgenloss as fgl
from fastgenloss import reference as ref

from conftest import DTYPES
from helpers import check_against_reference, rand_pair

REDUCTIONS = ["mean", "sum", "none"]
SHAPES = [(), (1,), (7,), (3, 5, 7), (2, 3, 17, 19)]

# (name, ours, torch's) with the loss parameters bound.
TORCH_LOSSES = [
    ("l1", fgl.l1_loss, F.l1_loss),
    ("mse", fgl.mse_loss, F.mse_loss),
    ("huber_d0.5", functools.partial(fgl.huber_loss, delta=0.5),
     functools.partial(F.huber_loss, delta=0.5)),
    ("huber_d2", functools.partial(fgl.huber_loss, delta=2.0),
     functools.partial(F.huber_loss, delta=2.0)),
    ("smooth_l1_b1", fgl.smooth_l1_loss, F.smooth_l1_loss),
    ("smooth_l1_b0.3", functools.partial(fgl.smooth_l1_loss, beta=0.3),
     functools.partial(F.smooth_l1_loss, beta=0.3)),
    ("smooth_l1_b0", functools.partial(fgl.smooth_l1_loss, beta=0.0),
     functools.partial(F.smooth_l1_loss, beta=0.0)),
]


def _torch_takes_weight(fn) -> bool:
    base = fn.func if isinstance(fn, functools.partial) else fn
    return "weight" in inspect.signature(base).parameters


@pytest.mark.parametrize("name,ours,theirs", TORCH_LOSSES, ids=[t[0] for t in TORCH_LOSSES])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(name, ours, theirs, reduction, dtype, shape, device):
    x, y = rand_pair(shape, dtype, device)
    check_against_reference(
        lambda a, b: ours(a, b, reduction=reduction),
        lambda a, b: theirs(a, b, reduction=reduction), [x, y], dtype)


@pytest.mark.parametrize("name,ours,theirs", TORCH_LOSSES[:4], ids=[t[0] for t in TORCH_LOSSES[:4]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_odd_size(name, ours, theirs, dtype, device):
    x, y = rand_pair((2**20 + 1,), dtype, device)
    for reduction in ("mean", "sum"):
        check_against_reference(
            lambda a, b: ours(a, b, reduction=reduction),
            lambda a, b: theirs(a, b, reduction=reduction), [x, y], dtype)


@pytest.mark.parametrize("name,ours,theirs", TORCH_LOSSES[:3], ids=[t[0] for t in TORCH_LOSSES[:3]])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_same_shape_matches_torch(name, ours, theirs, reduction, dtype, device):
    if not _torch_takes_weight(theirs):
        pytest.skip("this torch has no weight argument for the loss")
    x, y = rand_pair((4, 3, 9, 11), dtype, device)
    w = torch.rand(4, 3, 9, 11, device=device).to(dtype).requires_grad_()
    check_against_reference(
        lambda a, b, c: ours(a, b, reduction=reduction, weight=c),
        lambda a, b, c: theirs(a, b, reduction=reduction, weight=c), [x, y, w], dtype)


WEIGHT_SHAPES = [(4, 3, 9, 11), (4, 1, 9, 11), (1, 3, 1, 1), (9, 11), (), (4, 3, 1, 11)]
REF_LOSSES = {
    "l1": (fgl.l1_loss, ref.l1_loss),
    "mse": (fgl.mse_loss, ref.mse_loss),
    "huber": (functools.partial(fgl.huber_loss, delta=0.7), functools.partial(ref.huber_loss, delta=0.7)),
    "smooth_l1": (functools.partial(fgl.smooth_l1_loss, beta=0.5),
                  functools.partial(ref.smooth_l1_loss, beta=0.5)),
    "charbonnier": (functools.partial(fgl.charbonnier_loss, eps=0.1),
                    functools.partial(ref.charbonnier_loss, eps=0.1)),
    "charbonnier_masked": (functools.partial(fgl.charbonnier_loss, eps=1e-3, masked_mean=True),
                           functools.partial(ref.charbonnier_loss, eps=1e-3, masked_mean=True)),
}


@pytest.mark.parametrize("name", list(REF_LOSSES))
@pytest.mark.parametrize("wshape", WEIGHT_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_broadcast_weight_matches_reference(name, wshape, reduction, dtype, device):
    ours, plain = REF_LOSSES[name]
    x, y = rand_pair((4, 3, 9, 11), dtype, device)
    w = (torch.rand(wshape, device=device) + 0.1).to(dtype).requires_grad_()
    # Under a weight-normalized mean, a broadcast weight's gradient sums `count` cancelling
    # terms (l_i - loss)/sum(w) (exactly 0 for a scalar weight): judge its rounding at the
    # size of that sum of terms, not at the size of the result.
    count = x.numel() // max(w.numel(), 1)
    lmax = float((x.detach().double() - y.detach().double()).abs().max()) ** 2 + 1.0
    wsum = float(w.detach().double().expand(x.shape).sum())
    floor = {2: lmax * count / wsum} if count > 1 else {}
    check_against_reference(
        lambda a, b, c: ours(a, b, reduction=reduction, weight=c),
        lambda a, b, c: plain(a, b, reduction=reduction, weight=c), [x, y, w], dtype,
        grad_floor=floor)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bool_mask_weight(dtype, device):
    x, y = rand_pair((2, 3, 8, 8), dtype, device)
    mask = torch.rand(2, 1, 8, 8, device=device) > 0.5
    check_against_reference(
        lambda a, b: fgl.pixel_loss(a, b, l1=1.0, mse=0.5, weight=mask, masked_mean=True),
        lambda a, b: ref.pixel_loss(a, b, l1=1.0, mse=0.5, weight=mask, masked_mean=True),
        [x, y], dtype)


COMBOS = [
    dict(l1=1.0, mse=1.0),
    dict(l1=0.0, mse=0.0, charbonnier=1.0, eps=1e-3),
    dict(l1=0.5, mse=0.25, charbonnier=2.0, huber=0.3, smooth_l1=0.7, eps=0.01, delta=0.8, beta=0.4),
    dict(l1=0.0, huber=1.0, delta=1.5),
    dict(l1=-0.5, mse=1.0),  # negative coefficients are allowed (a difference of losses)
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(k for k, v in c.items() if v and k not in ("eps", "delta", "beta")))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_pixel_loss_combinations(combo, reduction, dtype, weighted, device):
    x, y = rand_pair((3, 4, 13, 7), dtype, device)
    tensors = [x, y]
    if weighted:
        tensors.append((torch.rand(3, 1, 13, 7, device=device) + 0.1).to(dtype).requires_grad_())
    for masked in ([False, True] if weighted else [False]):
        check_against_reference(
            lambda a, b, *w: fgl.pixel_loss(a, b, reduction=reduction, weight=w[0] if w else None,
                                            masked_mean=masked, **combo),
            lambda a, b, *w: ref.pixel_loss(a, b, reduction=reduction, weight=w[0] if w else None,
                                            masked_mean=masked, **combo),
            tensors, dtype)


def test_pixel_loss_equals_sum_of_losses(device):
    x, y = rand_pair((5, 6, 7), torch.float64, device, requires_grad=False)
    fused = fgl.pixel_loss(x, y, l1=0.3, mse=1.7, huber=0.5, delta=0.9)
    separate = 0.3 * fgl.l1_loss(x, y) + 1.7 * fgl.mse_loss(x, y) + 0.5 * fgl.huber_loss(x, y, delta=0.9)
    torch.testing.assert_close(fused, separate, rtol=1e-12, atol=1e-12)


def test_masked_mean_all_zero_mask_gives_zero(device):
    x, y = rand_pair((2, 3, 4, 4), torch.float32, device)
    mask = torch.zeros(2, 1, 4, 4, device=device, requires_grad=True)
    loss = fgl.pixel_loss(x, y, l1=1.0, weight=mask, masked_mean=True)
    assert loss.item() == 0.0
    gx, gy, gm = torch.autograd.grad(loss, [x, y, mask])
    for g in (gx, gy, gm):
        assert torch.isfinite(g).all() and g.abs().max().item() == 0.0
    # torch's own weighted mse with all-zero weights is 0/0 = NaN; the drop-in keeps that.
    assert torch.isnan(fgl.mse_loss(x, y, weight=mask.detach().expand_as(x)))


def test_masked_mean_counts_broadcast_weights(device):
    x = torch.full((1, 3, 2, 2), 2.0, device=device)
    y = torch.zeros(1, 3, 2, 2, device=device)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], device=device)  # one pixel, 3 channels
    x[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0], device=device)
    loss = fgl.pixel_loss(x, y, l1=1.0, weight=mask, masked_mean=True)
    assert loss.item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3


LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced", "expanded", "mixed"]


def _layout(t: torch.Tensor, layout: str, which: int) -> torch.Tensor:
    t = t.detach()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        big = torch.randn(t.shape[0], t.shape[1] + 2, t.shape[2], t.shape[3] * 2,
                          dtype=t.dtype, device=t.device)
        v = big[:, 1:-1, :, ::2]
        v.copy_(t)
        return v
    if layout == "expanded":
        return t[:, :1].expand(t.shape) if which == 1 else t
    if layout == "mixed":
        return t.contiguous(memory_format=torch.channels_last) if which == 0 else t
    return t.contiguous()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_layouts(layout, reduction, dtype, device):
    x0, y0 = rand_pair((2, 5, 6, 7), dtype, device, requires_grad=False)
    w0 = torch.rand(2, 5, 6, 7, device=device).to(dtype)
    x, y, w = (_layout(t, layout, i) for i, t in enumerate((x0, y0, w0)))
    x.requires_grad_()
    y = y.clone() if y._base is not None and layout == "expanded" else y
    y.requires_grad_()
    w.requires_grad_()
    out = fgl.pixel_loss(x, y, l1=1.0, mse=0.5, weight=w, reduction=reduction)
    expect = ref.pixel_loss(x.detach().double(), y.detach().double(), l1=1.0, mse=0.5,
                            weight=w.detach().double(), reduction=reduction)
    torch.testing.assert_close(out.double(), expect, rtol=2e-2 if dtype == torch.float16 else 1e-5,
                               atol=1e-2 if dtype == torch.float16 else 1e-5)
    if reduction == "none":
        # Same layout rule as torch's elementwise ops: empty_like(input).
        assert out.stride() == torch.empty_like(x).stride()
    out.backward(torch.ones_like(out))
    for t in (x, y, w):
        assert t.grad is not None and t.grad.shape == t.shape and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), (0, 3, 4, 4)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,ours,theirs", TORCH_LOSSES[:3], ids=[t[0] for t in TORCH_LOSSES[:3]])
def test_empty_tensors_like_torch(shape, reduction, name, ours, theirs, device):
    x, y = rand_pair(shape, torch.float32, device)
    expect = theirs(x, y, reduction=reduction)
    got = ours(x, y, reduction=reduction)
    assert got.shape == expect.shape and got.dtype == expect.dtype
    torch.testing.assert_close(got, expect, equal_nan=True)
    if reduction != "none":
        gx, gy = torch.autograd.grad(got, [x, y])
        assert gx.shape == x.shape and gy.shape == y.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_does_not_overflow(dtype, device):
    # d^2 = 90000 exceeds float16's max (65504); accumulation in float keeps the mean finite.
    x = torch.full((4096,), 150.0, device=device, dtype=dtype)
    y = torch.full((4096,), -150.0, device=device, dtype=dtype)
    x[::2] = 10.0
    loss = fgl.mse_loss(x, y)
    expect = fgl.reference.mse_loss(x.double(), y.double())
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expect, rtol=1e-2, atol=0)
    # a sum that exceeds the dtype's range is inf, as the true value rounded to the dtype
    big = fgl.mse_loss(x, y, reduction="sum")
    assert big.dtype == dtype
    true = fgl.reference.mse_loss(x.double(), y.double(), reduction="sum")
    assert torch.isinf(big) == (true > torch.finfo(dtype).max)


def test_gradient_through_target_only(device):
    # cycle consistency: the target is itself a network output
    x, y = rand_pair((3, 8), torch.float64, device)
    x.requires_grad_(False)
    (gy,) = torch.autograd.grad(fgl.pixel_loss(x, y, l1=1.0, mse=1.0), [y])
    y2 = y.detach().requires_grad_()
    (ey,) = torch.autograd.grad(ref.pixel_loss(x, y2, l1=1.0, mse=1.0), [y2])
    torch.testing.assert_close(gy, ey)


def test_retain_graph_second_backward(device):
    x, y = rand_pair((4, 33), torch.float32, device)
    loss = fgl.pixel_loss(x, y, l1=1.0, mse=2.0)
    g1 = torch.autograd.grad(loss, [x, y], retain_graph=True)
    g2 = torch.autograd.grad(loss, [x, y])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


MEMORY_CASES = [
    ("mse", lambda x, y, w: fgl.mse_loss(x, y), lambda x, y, w: F.mse_loss(x, y)),
    ("l1_sum", lambda x, y, w: fgl.l1_loss(x, y, reduction="sum"),
     lambda x, y, w: F.l1_loss(x, y, reduction="sum")),
    ("l1+mse", lambda x, y, w: fgl.pixel_loss(x, y, l1=1.0, mse=1.0),
     lambda x, y, w: ref.pixel_loss(x, y, l1=1.0, mse=1.0)),
    ("weighted_mse", lambda x, y, w: fgl.mse_loss(x, y, weight=w),
     lambda x, y, w: ref.mse_loss(x, y, weight=w)),
    ("none", lambda x, y, w: fgl.huber_loss(x, y, reduction="none").mean(),
     lambda x, y, w: F.huber_loss(x, y, reduction="none").mean()),
]


@pytest.mark.parametrize("name,ours,theirs", MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
@pytest.mark.parametrize("target_grad", [False, True])
def test_peak_memory_at_most_torch(name, ours, theirs, target_grad, device):
    """fwd+bwd never holds more memory at once than plain PyTorch (the forward-written
    gradient is scaled in place and handed to autograd, not copied)."""
    from fastgenloss._measure import peak_memory_bytes
    n = 1 << 21
    x = torch.randn(n, device=device, requires_grad=True)
    y = torch.randn(n, device=device, requires_grad=target_grad)
    w = torch.rand(n, device=device)

    def step(fn):
        def run():
            fn(x, y, w).backward()
            x.grad = None
            y.grad = None
        return run

    # the steady-state peak of each (min of 5 readings; the CPU reading counts allocator records
    # and is exact, the resident-set fallback can read one freed buffer high on a fragmented heap)
    readings_ours = [peak_memory_bytes(step(ours), device) for _ in range(5)]
    readings_torch = [peak_memory_bytes(step(theirs), device) for _ in range(5)]
    if None in readings_ours or None in readings_torch:
        pytest.skip("peak memory is not measurable on this platform")
    got, expect = min(readings_ours), min(readings_torch)
    slack = n * 4 // 16  # allocator and page granularity, far below one buffer (n * 4 bytes)
    assert got <= expect + slack, f"peak {got / (4 * n):.2f}n bytes vs torch's {expect / (4 * n):.2f}n"


def test_no_grad_forward_writes_no_gradient(device):
    x, y = rand_pair((128,), torch.float32, device)
    with torch.no_grad():
        loss, grad, wsum = torch.ops.fastgenloss.pixel_fwd(
            x, y, None, 1.0, 0.0, 0.0, 0.0, 0.0, 1e-3, 1.0, 1.0, 1, False)
    assert grad.numel() == 0 and wsum.numel() == 0


def test_determinism_across_runs_and_threads():
    x, y = rand_pair((3, 1000, 1001), torch.float32, "cpu", requires_grad=False)
    w = torch.rand(3, 1, 1001)
    prev = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1, max(prev, 2)):
            torch.set_num_threads(threads)
            results.append(fgl.pixel_loss(x, y, l1=1.0, mse=0.5, charbonnier=0.1, weight=w))
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(results[0], r) for r in results[1:]), results


@pytest.mark.parametrize("name", ["l1", "mse", "huber", "smooth_l1", "charbonnier", "pixel"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(name, reduction, device):
    fns = {
        "l1": lambda a, b, w: fgl.l1_loss(a, b, reduction=reduction, weight=w),
        "mse": lambda a, b, w: fgl.mse_loss(a, b, reduction=reduction, weight=w),
        "huber": lambda a, b, w: fgl.huber_loss(a, b, reduction=reduction, delta=0.8, weight=w),
        "smooth_l1": lambda a, b, w: fgl.smooth_l1_loss(a, b, reduction=reduction, beta=0.6, weight=w),
        "charbonnier": lambda a, b, w: fgl.charbonnier_loss(a, b, eps=0.2, weight=w,
                                                            reduction=reduction, masked_mean=True),
        "pixel": lambda a, b, w: fgl.pixel_loss(a, b, l1=0.5, mse=1.0, charbonnier=0.3, huber=0.2,
                                                smooth_l1=0.4, eps=0.1, weight=w, reduction=reduction),
    }
    # keep differences away from the kinks (0, +-delta, +-beta), where finite differences lie
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device)
    y = x + (torch.rand_like(x) * 0.3 + 0.05) * torch.where(torch.rand_like(x) > 0.5, 1.0, -1.0)
    y[0] += 3.0
    w = torch.rand(3, 1, 5, dtype=torch.float64, device=device) + 0.2
    torch.autograd.gradcheck(fns[name], (x.requires_grad_(), y.requires_grad_(), w.requires_grad_()))
    torch.autograd.gradcheck(fns[name], (x, y, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_reduction_none_then_mean_or_sum(dtype, weighted, device):
    """Autograd hands reduction="none" an expanded scalar gradient under .mean()/.sum(); it is
    read in place, and must give torch's values."""
    x, y = rand_pair((3, 4, 5, 6), dtype, device)
    w = (torch.rand(3, 1, 5, 6, device=device).to(dtype) + 0.1).requires_grad_() if weighted else None
    for post in (lambda t: t.mean(), lambda t: 3.0 * t.sum()):
        check_against_reference(
            lambda a, b, *c: post(fgl.huber_loss(a, b, reduction="none", delta=0.7,
                                                 weight=c[0] if c else None)),
            lambda a, b, *c: post(ref.huber_loss(a, b, reduction="none", delta=0.7,
                                                 weight=c[0] if c else None)),
            [x, y] + ([w] if weighted else []), dtype)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("wshape", [(2, 1, 6, 7), (1, 5, 1, 1), (2, 5, 1, 7), (1, 1, 6, 1), (7,)],
                         ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("masked", [False, True])
def test_broadcast_weight_read_in_place_any_layout(layout, wshape, reduction, masked, device):
    """A broadcast weight is read through an index over the input's memory order (never
    copied); that index must be right for every layout of the input."""
    x0, y0 = rand_pair((2, 5, 6, 7), torch.float64, device, requires_grad=False)
    x, y = _layout(x0, layout, 0).requires_grad_(), _layout(y0, layout, 1).requires_grad_()
    w = (torch.rand(wshape, dtype=torch.float64, device=device) + 0.1).requires_grad_()
    out = fgl.pixel_loss(x, y, l1=1.0, mse=0.5, charbonnier=0.2, weight=w, reduction=reduction,
                         masked_mean=masked)
    xr, yr, wr = (t.detach().clone().requires_grad_() for t in (x0, y0, w))
    expect = ref.pixel_loss(xr, yr, l1=1.0, mse=0.5, charbonnier=0.2, weight=wr,
                            reduction=reduction, masked_mean=masked)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
    go = torch.rand_like(expect)
    got = torch.autograd.grad(out, [x, y, w], go)
    want = torch.autograd.grad(expect, [xr, yr, wr], go)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_broadcast_mask_is_not_copied(device):
    """fwd+bwd with a [N, 1, H, W] mask holds one input-sized gradient, not a copy of the mask
    expanded to the input's size besides it."""
    from fastgenloss._measure import peak_memory_bytes
    x = torch.randn(4, 3, 256, 256, device=device, requires_grad=True)
    y = torch.randn(4, 3, 256, 256, device=device)
    mask = (torch.rand(4, 1, 256, 256, device=device) > 0.5).float()

    def step():
        fgl.pixel_loss(x, y, l1=1.0, weight=mask, masked_mean=True).backward()
        x.grad = None

    readings = [peak_memory_bytes(step, device) for _ in range(3)]  # steady state: min of 3
    peak = None if None in readings else min(readings)
    if peak is None:
        pytest.skip("peak memory is not measurable on this platform")
    one_grad = x.numel() * 4
    assert peak <= one_grad * 1.25, f"peak {peak / one_grad:.2f} gradients"
