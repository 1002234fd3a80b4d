"""The ops as torch.library sees them: opcheck (schema, fake kernel, autograd registration,
dispatch), torch.compile(fullgraph=True) with no graph break, and double backward's error."""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import reference as ref


def _fwd_samples(device):
    """Argument tuples for pixel_fwd: every reduction, weighted or not, several layouts."""
    samples = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for reduction in range(5):
            for weighted in (False, True):
                if reduction in (3, 4) and not weighted:
                    continue
                for layout in ("contiguous", "channels_last"):
                    x = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
                    y = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
                    w = torch.rand(2, 3, 4, 5, device=device, dtype=dtype) if weighted else None
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    x.requires_grad_(dtype != torch.bfloat16)
                    y.requires_grad_(reduction != 0)
                    if w is not None:
                        w.requires_grad_(reduction == 2)
                    write_grad = reduction != 0 and x.requires_grad
                    samples.append((x, y, w, 1.0, 0.5, 0.25, 0.3, 0.2, 1e-2, 0.7, 0.4,
                                    reduction, write_grad))
    return samples


def test_opcheck_pixel_fwd(device):
    for args in _fwd_samples(device):
        if args[-1]:
            # write_grad=True donates the `grad` output to backward, which scales it in place
            # in eager mode (that is how fwd+bwd peaks at one gradient); opcheck's AOT test
            # compares that output after backward, so it runs only on the samples without a
            # donated buffer. The compile tests below cover this path end to end.
            torch.library.opcheck(torch.ops.fastgenloss.pixel_fwd.default, args,
                                  test_utils=("test_schema", "test_autograd_registration",
                                              "test_faketensor"))
            args = args[:-1] + (False,)
        torch.library.opcheck(torch.ops.fastgenloss.pixel_fwd.default, args)


def test_opcheck_pixel_bwd(device):
    for reduction in range(5):
        x = torch.randn(3, 7, device=device)
        y = torch.randn(3, 7, device=device)
        w = torch.rand(3, 7, device=device)
        loss, _, wsum = torch.ops.fastgenloss.pixel_fwd(
            x, y, w, 1.0, 1.0, 0.0, 0.0, 0.0, 1e-3, 1.0, 1.0, reduction, False)
        go = torch.rand_like(loss)
        args = (go, x, y, w, loss, wsum, 1.0, 1.0, 0.0, 0.0, 0.0, 1e-3, 1.0, 1.0, reduction,
                True, True)
        torch.library.opcheck(torch.ops.fastgenloss.pixel_bwd.default, args)


def test_compile_fullgraph_training_step(device):
    """A small reconstruction step — conv, masked fused loss, backward, optimizer — compiled
    with fullgraph=True (a graph break raises) and matching eager."""
    torch._dynamo.reset()

    def make():
        torch.manual_seed(1)
        return torch.nn.Conv2d(3, 3, 3, padding=1).to(device)

    x = torch.randn(2, 3, 16, 16, device=device)
    target = torch.randn(2, 3, 16, 16, device=device)
    mask = (torch.rand(2, 1, 16, 16, device=device) > 0.3).float()

    def step(model, opt):
        out = model(x)
        loss = fgl.pixel_loss(out, target, l1=1.0, mse=0.5, charbonnier=0.1, weight=mask,
                              masked_mean=True) + 0.1 * fgl.mse_loss(out, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    eager_model = make()
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.1)
    comp_model = make()
    comp_opt = torch.optim.SGD(comp_model.parameters(), lr=0.1)

    def compiled_loss(model):
        out = model(x)
        return fgl.pixel_loss(out, target, l1=1.0, mse=0.5, charbonnier=0.1, weight=mask,
                              masked_mean=True) + 0.1 * fgl.mse_loss(out, target)

    fwd = torch.compile(compiled_loss, fullgraph=True)
    for _ in range(3):
        e = step(eager_model, eager_opt)
        c = fwd(comp_model)
        c.backward()
        comp_opt.step()
        comp_opt.zero_grad()
        torch.testing.assert_close(c.detach(), e, rtol=1e-5, atol=1e-6)
    for p, q in zip(eager_model.parameters(), comp_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_compile_every_loss_no_graph_break(device):
    torch._dynamo.reset()
    x = torch.randn(4, 5, 6, device=device, requires_grad=True)
    y = torch.randn(4, 5, 6, device=device)
    w = torch.rand(4, 1, 6, device=device)

    def all_losses(a, b, c):
        return (fgl.l1_loss(a, b) + fgl.mse_loss(a, b, weight=c.expand_as(a))
                + fgl.huber_loss(a, b, delta=0.5) + fgl.smooth_l1_loss(a, b, beta=0.3)
                + fgl.charbonnier_loss(a, b, weight=c, masked_mean=True)
                + fgl.pixel_loss(a, b, l1=0.2, mse=0.3, reduction="none").mean())

    compiled = torch.compile(all_losses, fullgraph=True, dynamic=True)
    got = compiled(x, y, w)
    (g_got,) = torch.autograd.grad(got, [x])
    expect = all_losses(x, y, w)
    (g_expect,) = torch.autograd.grad(expect, [x])
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(g_got, g_expect)
    explanation = torch._dynamo.explain(all_losses)(x, y, w)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,masked", [(False, False), (True, False), (True, True)],
                         ids=["unweighted", "weighted", "masked_mean"])
def test_gradgradcheck_float64(reduction, weighted, masked, device):
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    # differences away from the kinks, where finite differences of a gradient lie
    y = x + (torch.rand_like(x) * 0.3 + 0.05) * torch.where(torch.rand_like(x) > 0.5, 1.0, -1.0)
    y[0] += 2.5
    w = (torch.rand(2, 1, 4, dtype=torch.float64, device=device) + 0.3) if weighted else None

    def fn(a, b, *c):
        return fgl.pixel_loss(a, b, l1=0.3, mse=1.0, charbonnier=0.5, huber=0.4, smooth_l1=0.2,
                              eps=0.2, delta=0.8, beta=0.6, weight=c[0] if c else None,
                              reduction=reduction, masked_mean=masked)

    args = [x.requires_grad_(), y.requires_grad_()] + ([w.requires_grad_()] if weighted else [])
    torch.autograd.gradgradcheck(fn, args)


def test_gradgradcheck_weight_mean_float64(device):
    # l1/mse with a weight: sum(w l)/sum(w), torch's convention
    x = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    y = (x.detach() + 0.5).requires_grad_()
    w = (torch.rand(3, 4, dtype=torch.float64, device=device) + 0.2).requires_grad_()
    torch.autograd.gradgradcheck(lambda a, b, c: fgl.mse_loss(a, b, weight=c), [x, y, w])


def test_torch_losses_double_backward_match(device):
    import torch.nn.functional as F
    x = torch.randn(10, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randn(10, dtype=torch.float64, device=device)
    for ours, theirs in ((fgl.mse_loss, F.mse_loss), (fgl.huber_loss, F.huber_loss)):
        (g1,) = torch.autograd.grad(ours(x, y), [x], create_graph=True)
        (h1,) = torch.autograd.grad((g1 * g1).sum(), [x])
        (g2,) = torch.autograd.grad(theirs(x, y), [x], create_graph=True)
        (h2,) = torch.autograd.grad((g2 * g2).sum(), [x])
        torch.testing.assert_close(h1, h2)


def test_reference_and_ops_agree_under_no_grad(device):
    x = torch.randn(100, device=device, dtype=torch.float64)
    y = torch.randn(100, device=device, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fgl.pixel_loss(x, y, l1=0.5, charbonnier=2.0),
                                   ref.pixel_loss(x, y, l1=0.5, charbonnier=2.0))
