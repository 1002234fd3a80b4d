"""CUDA-graph capture needs ops that never read a device value on the host (no .item(), no
bool() of a tensor, no copy to the CPU) in forward or backward. Without a GPU this runs every
public loss, forward and backward, on the meta device, where any such read raises: the Python
checks (host_readable) and the C++ autograd kernels take the same branches for meta as for a
CUDA stream under capture. (The CUDA kernels' own readback, seg_stats' label flag, is skipped
under capture in csrc/segmentation/cuda.cpp; the GPU run of tools/gpu/ captures for real.)"""

from __future__ import annotations

import pytest
import torch

import fastgenloss as fgl
from fastgenloss import nn as fnn

META = "meta"


def _cases(device=META):
    def _img(*shape):
        return torch.randn(*shape, device=device)
    x, y = _img(2, 3, 8, 8), _img(2, 3, 8, 8)
    mask = torch.ones(2, 1, 8, 8, device=device, dtype=torch.bool)
    t = torch.randint(0, 100, (2,), device=device)
    ac = torch.rand(100, device=device) * 0.98 + 0.01
    sig = torch.rand(2, device=device) + 0.1
    lab = torch.randint(0, 3, (2, 8, 8), device=device)
    multi = torch.randint(0, 2, (2, 3, 8, 8), device=device).float()
    yield "mse_loss", lambda a: fgl.mse_loss(a, y)
    yield "l1_loss weighted mean", lambda a: fgl.l1_loss(a, y, weight=_img(2, 3, 8, 8).abs())
    yield "huber_loss", lambda a: fgl.huber_loss(a, y, delta=0.5)
    yield "smooth_l1_loss none", lambda a: fgl.smooth_l1_loss(a, y, reduction="none").sum()
    yield "charbonnier masked mean", lambda a: fgl.charbonnier_loss(a, y, weight=mask,
                                                                     masked_mean=True)
    yield "pixel_loss", lambda a: fgl.pixel_loss(a, y, l1=1.0, mse=0.5, charbonnier=0.1)
    yield "diffusion_loss min_snr", lambda a: fgl.diffusion_loss(a, y, x, t, ac,
                                                                 weighting="min_snr")
    yield "diffusion_loss v", lambda a: fgl.diffusion_loss(a, y, x, t, ac,
                                                           prediction_type="v_prediction")
    yield "flow_matching_loss", lambda a: fgl.flow_matching_loss(a, y, x, sig)
    yield "edm_loss", lambda a: fgl.edm_loss(a, y, x, sig)
    yield "add_noise", lambda a: fgl.add_noise(a, y, t, ac).sum()
    yield "dice multiclass", lambda a: fgl.dice_loss(a, lab, mode="multiclass")
    yield "dice ignore_index", lambda a: fgl.dice_loss(a, lab, mode="multiclass",
                                                       ignore_index=2)
    yield "jaccard multilabel", lambda a: fgl.jaccard_loss(a, multi, mode="multilabel")
    yield "tversky binary", lambda a: fgl.tversky_loss(a[:, :1], multi[:, :1], mode="binary")
    yield "focal multiclass", lambda a: fgl.focal_loss(a, lab, mode="multiclass")
    yield "segmentation_loss", lambda a: fgl.segmentation_loss(a, lab, mode="multiclass",
                                                               focal=1.0, per_image=True)
    yield "gram_matrix", lambda a: fgl.gram_matrix(a).sum()
    yield "style_loss", lambda a: fgl.style_loss(a, y)
    yield "contextual_loss", lambda a: fgl.contextual_loss(a, y)
    yield "nn.DiceLoss", lambda a: fnn.DiceLoss("multiclass")(a, lab)
    yield "mcc_loss", lambda a: fgl.mcc_loss(a[:, :1], multi[:, :1], from_logits=True)
    yield "lovasz multiclass", lambda a: fgl.lovasz_loss(a, lab, "multiclass")
    yield "lovasz binary", lambda a: fgl.lovasz_loss(a[:, :1], multi[:, :1], "binary")


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_no_host_read_of_device_values(case):
    _, fn = case
    a = torch.randn(2, 3, 8, 8, device=META).requires_grad_()
    loss = fn(a)
    assert loss.device.type == META
    loss.backward()
    assert a.grad is not None and a.grad.shape == a.shape


def test_host_readable():
    from fastgenloss._core import host_readable
    assert host_readable(torch.zeros(1))
    assert not host_readable(torch.zeros(1, device=META))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_cuda_graph_capture(name):
    """Forward and backward captured in a CUDA graph, replayed on new values: the same loss and
    gradient as an eager call on those values."""
    fn = next(c[1] for c in _cases("cuda") if c[0] == name)
    a = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside capture (torch's recipe)
        for _ in range(3):
            a.grad = None
            fn(a).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    a.grad = None
    with torch.cuda.graph(graph):
        loss = fn(a)
        loss.backward()
    with torch.no_grad():
        a.copy_(torch.randn_like(a))
    graph.replay()
    torch.cuda.synchronize()
    b = a.detach().clone().requires_grad_()
    expected = fn(b)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(a.grad, b.grad)
