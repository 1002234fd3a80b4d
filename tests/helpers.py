"""Comparison helpers: our result against a float64 reference, judged by plain PyTorch's error
in the same dtype (flash-attention's rule: ours at most 2x torch's error, plus a small slack
scaled to the dtype's epsilon and the magnitude of the reference)."""

from __future__ import annotations

import torch


def rand_pair(shape, dtype, device, requires_grad=True, scale=2.0):
    """Random input/target, never zeros: N(0, scale^2) with a spread of magnitudes."""
    x = (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    y = (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad), y.requires_grad_(requires_grad)


def _slack(ref: torch.Tensor, dtype: torch.dtype, factor: float = 8.0, floor: float = 0.0) -> float:
    mag = ref.abs().max().item() if ref.numel() else 0.0
    if mag != mag or mag == float("inf"):
        mag = 0.0
    mag = max(mag, floor)
    return factor * torch.finfo(dtype).eps * max(mag, torch.finfo(dtype).tiny * 1e3)


def assert_error_within(ours, plain, ref64, dtype, what="output", factor=8.0, floor=0.0):
    """|ours - ref64| <= 2 |plain - ref64| + slack, elementwise max; NaN must match exactly."""
    ours64, plain64 = ours.detach().double().cpu(), plain.detach().double().cpu()
    ref64 = ref64.detach().double().cpu()
    assert ours64.shape == ref64.shape, f"{what}: shape {ours64.shape} vs {ref64.shape}"
    nan_ref = torch.isnan(ref64)
    assert torch.equal(torch.isnan(ours64), nan_ref), f"{what}: NaN pattern differs from reference"
    if ref64.numel() == 0:
        return
    finite = ~nan_ref
    inf_ref = torch.isinf(ref64) & finite
    assert torch.equal(ours64[inf_ref], ref64[inf_ref]), f"{what}: infinities differ"
    keep = finite & ~inf_ref
    err_ours = (ours64[keep] - ref64[keep]).abs().max().item() if keep.any() else 0.0
    err_plain = (plain64[keep] - ref64[keep]).abs().max().item() if keep.any() else 0.0
    bound = 2 * err_plain + _slack(ref64[keep], dtype, factor, floor)
    assert err_ours <= bound, (
        f"{what} ({dtype}): error {err_ours:.3e} vs float64 reference exceeds 2x plain "
        f"PyTorch's {err_plain:.3e} + slack (bound {bound:.3e})")


def grads_of(out, inputs, grad_output):
    """Gradients of <out, grad_output> for the inputs that require grad (None elsewhere)."""
    need = [t for t in inputs if t is not None and t.requires_grad]
    gs = torch.autograd.grad(out, need, grad_output, allow_unused=True)
    it = iter(gs)
    return [next(it) if (t is not None and t.requires_grad) else None for t in inputs]


def check_against_reference(ours_fn, plain_fn, tensors, dtype, factor=8.0, grad_floor=None):
    """Run ours and plain PyTorch in `dtype` and plain PyTorch in float64 on the same values;
    check outputs and all gradients with a random (non-unit) grad_output.

    grad_floor: {argument index: magnitude} below which that gradient's slack stops shrinking,
    for gradients that are sums of cancelling terms (their own size says nothing of rounding)."""
    grad_floor = grad_floor or {}
    def clone(ts, dt):
        return [None if t is None else t.detach().to(dt).requires_grad_(t.requires_grad)
                for t in ts]

    t_ours, t_plain, t_ref = clone(tensors, dtype), clone(tensors, dtype), clone(tensors, torch.float64)
    out = ours_fn(*t_ours)
    plain = plain_fn(*t_plain)
    ref = plain_fn(*t_ref)
    assert out.dtype == plain.dtype, f"dtype {out.dtype} vs torch's {plain.dtype}"
    assert out.shape == plain.shape, f"shape {out.shape} vs torch's {plain.shape}"
    assert_error_within(out, plain, ref, dtype, "output", factor)
    if not any(t is not None and t.requires_grad for t in tensors):
        return out
    go64 = torch.rand(ref.shape, dtype=torch.float64, device=ref.device) + 0.5
    g_ours = grads_of(out, t_ours, go64.to(out.dtype))
    g_plain = grads_of(plain, t_plain, go64.to(plain.dtype))
    g_ref = grads_of(ref, t_ref, go64)
    for i, (a, b, r) in enumerate(zip(g_ours, g_plain, g_ref)):
        if r is None:
            continue
        assert a is not None, f"no gradient for argument {i}"
        assert a.dtype == t_ours[i].dtype and a.shape == t_ours[i].shape
        assert_error_within(a, b, r, dtype, f"grad of argument {i}", factor,
                            grad_floor.get(i, 0.0))
    return out
