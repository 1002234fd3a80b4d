"""perceptual_loss / nn.PerceptualLoss / nn.StyleLoss: layer capture (index, child name, VGG
name, hooks), weights, criteria, style targets, frozen/eval behaviour, state_dict, early stop,
in-place activations, channels_last, errors; against reference.perceptual_loss (piq's logic)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastgenloss as fgl
from fastgenloss import reference as R
from fastgenloss.style._features import vgg_names


def vgg_like(seed: int = 0, dtype=torch.float64, inplace: bool = True, bn: bool = False):
    """A small randomly initialized VGG-shaped feature stack (torchvision's layout)."""
    torch.manual_seed(seed)
    layers = []
    c_in = 3
    for block, (c, convs) in enumerate([(8, 2), (16, 2), (24, 2)]):
        for _ in range(convs):
            layers.append(nn.Conv2d(c_in, c, 3, padding=1))
            if bn:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU(inplace=inplace))
            c_in = c
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers).to(dtype)


def ref_features(net: nn.Sequential, idx: list[int]):
    """Features at child indices, computed on an out-of-place copy of the network."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False

    def run(x):
        out, h = {}, x
        for i, m in enumerate(net):
            h = m(h)
            out[i] = h
        return [out[i] for i in idx]
    return run


def images(n=2, hw=16, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, hw, hw, generator=g, dtype=torch.float64).to(device, dtype)
    y = torch.rand(n, 3, hw, hw, generator=g, dtype=torch.float64).to(device, dtype)
    return x, y


def test_vgg_names_follow_torchvision_layout():
    names = vgg_names(list(vgg_like()))
    assert names[:6] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1"]
    assert names[-1] == "pool3"
    bn_names = vgg_names(list(vgg_like(bn=True)))
    assert bn_names[:4] == ["conv1_1", "bn1_1", "relu1_1", "conv1_2"]


@pytest.mark.parametrize("layers,idx", [
    (["relu1_2", "relu2_1", "conv3_1"], [3, 6, 10]),
    ([3, 6, 10], [3, 6, 10]),
    (["3", "6", "10"], [3, 6, 10]),
    ([-1, 1], [14, 1]),
])
@pytest.mark.parametrize("criterion", ["l1", "mse"])
def test_matches_reference_by_index_name_and_vgg_name(device, layers, idx, criterion):
    net = vgg_like().to(device)
    x, y = images(device=device)
    x.requires_grad_(True)
    w = [1.0, 0.5][: len(idx)] + [0.25] * (len(idx) - 2)
    got = fgl.perceptual_loss(x, y, net, layers, layer_weights=w, criterion=criterion)
    want = R.perceptual_loss(x, y, ref_features(net, idx), layer_weights=w, criterion=criterion)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (gx,) = torch.autograd.grad(got, x)
    (rx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-12)


def test_style_weights_and_style_target(device):
    net = vgg_like().to(device)
    x, y = images(device=device)
    s, _ = images(n=1, device=device, seed=7)
    idx = [1, 6, 11]
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    cw, sw = [1.0, 0.0, 0.5], [10.0, 100.0, 0.0]
    feats = ref_features(net, idx)
    ref_grams = [R.gram_matrix(f) for f in feats(s)]
    want = R.perceptual_loss(x, y, feats, layer_weights=cw, style_weights=sw,
                             style_grams=ref_grams)
    got = fgl.perceptual_loss(x, y, net, layers, layer_weights=cw, style_weights=sw,
                              style_target=s)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    mod = fgl.nn.PerceptualLoss(net, layers, layer_weights=cw, style_weights=sw)
    torch.testing.assert_close(mod(x, y, style_target=s), want, rtol=1e-10, atol=1e-12)
    grams = mod.style_grams(s)
    assert grams[2] is None and grams[0].shape == (1, 8, 8)
    torch.testing.assert_close(mod(x, y, style_target=grams), want, rtol=1e-10, atol=1e-12)
    mod.set_style(s)
    assert "style_gram_0" not in mod.state_dict()
    torch.testing.assert_close(mod(x, y), want, rtol=1e-10, atol=1e-12)
    mod.set_style(None)
    no_style = R.perceptual_loss(x, y, feats, layer_weights=cw, style_weights=sw)  # Grams of y
    torch.testing.assert_close(mod(x, y), no_style, rtol=1e-10, atol=1e-12)


def test_weights_as_dict_number_and_callable_criterion():
    net = vgg_like()
    x, y = images()
    feats = ref_features(net, [3, 8])
    want = R.perceptual_loss(x, y, feats, layer_weights=[2.0, 0.0], criterion="mse")
    got = fgl.perceptual_loss(x, y, net, ["relu1_2", "relu2_2"],
                              layer_weights={"relu1_2": 2.0}, criterion="mse")
    torch.testing.assert_close(got, want)
    want2 = R.perceptual_loss(x, y, feats, layer_weights=[3.0, 3.0])
    torch.testing.assert_close(fgl.perceptual_loss(x, y, net, [3, 8], layer_weights=3), want2)
    calls = []

    def crit(a, b):
        calls.append(a.shape)
        return (a - b).abs().mean()
    got3 = fgl.perceptual_loss(x, y, net, [3, 8], criterion=crit)
    torch.testing.assert_close(got3, R.perceptual_loss(x, y, feats, layer_weights=[1.0, 1.0]))
    assert len(calls) == 2


def test_runs_only_up_to_the_last_layer():
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("ran past the last captured layer")
    net = nn.Sequential(*list(vgg_like())[:5], Boom())
    x, y = images()
    fgl.perceptual_loss(x, y, net, ["relu1_2"])


def test_inplace_relu_does_not_overwrite_a_captured_conv():
    net = vgg_like(inplace=True)
    x, y = images()
    x.requires_grad_(True)
    got = fgl.perceptual_loss(x, y, net, ["conv1_2", "conv2_1"])
    want = R.perceptual_loss(x, y, ref_features(net, [2, 5]), layer_weights=[1.0, 1.0])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got.backward()  # no "modified by an inplace operation"
    assert x.grad is not None


class Tower(nn.Module):
    """Not a Sequential: captured through forward hooks."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.head_runs = 0

    def forward(self, x):
        h = self.body(self.stem(x))
        self.head_runs += 1
        return self.head(h.mean((2, 3)))


def test_hooks_capture_named_modules_and_stop_early():
    net = Tower().double()
    x, y = images()
    x.requires_grad_(True)

    def feats(img):
        a = net.stem[0](img)
        b = net.body(torch.relu(a))
        return [a, b]
    got = fgl.perceptual_loss(x, y, net, ["stem.0", "body"], layer_weights=[1.0, 2.0])
    assert net.head_runs == 0  # stopped once body had run
    want = R.perceptual_loss(x, y, feats, layer_weights=[1.0, 2.0])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got.backward()
    by_index = fgl.perceptual_loss(x, y, net, [0, 1], layer_weights=[1.0, 2.0])  # children
    want_children = R.perceptual_loss(
        x, y, lambda img: [torch.relu(net.stem[0](img)), net.body(torch.relu(net.stem[0](img)))],
        layer_weights=[1.0, 2.0])
    torch.testing.assert_close(by_index, want_children, rtol=1e-10, atol=1e-12)


def test_extractor_gets_no_gradient_and_keeps_its_flags():
    net = vgg_like()
    x, y = images()
    x.requires_grad_(True)
    fgl.perceptual_loss(x, y, net, ["relu2_1"]).backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the functional restores them
    fgl.perceptual_loss(x, y, net, ["relu2_1"], trainable_extractor=True).backward()
    ran = [net[0], net[2], net[5]]  # the convolutions up to relu2_1; the rest never ran
    assert all(p.grad is not None for m in ran for p in m.parameters())
    assert all(p.grad is None for p in net[7].parameters())


def test_module_keeps_extractor_frozen_and_in_eval():
    net = vgg_like(bn=True)
    mod = fgl.nn.PerceptualLoss(net, ["relu1_2", "relu2_2"])
    assert not any(p.requires_grad for p in net.parameters())
    mod.train()
    assert not net.training and mod.training
    x, y = images()
    x.requires_grad_(True)
    a = mod(x, y)
    b = mod(x, y)
    assert torch.equal(a, b)  # eval-mode batch norm: no running-stat updates
    a.backward()
    assert x.grad is not None
    trainable = fgl.nn.PerceptualLoss(vgg_like(bn=True), [3], trainable_extractor=True).train()
    assert trainable.feature_extractor.training


def test_state_dict_round_trip():
    mod = fgl.nn.PerceptualLoss(vgg_like(seed=0), ["relu1_2", "relu3_1"], layer_weights=[1, 2])
    other = fgl.nn.PerceptualLoss(vgg_like(seed=5), ["relu1_2", "relu3_1"], layer_weights=[1, 2])
    x, y = images()
    assert not torch.equal(mod(x, y), other(x, y))
    other.load_state_dict(mod.state_dict())
    assert torch.equal(mod(x, y), other(x, y))
    assert any(k.startswith("feature_extractor.") for k in mod.state_dict())


def test_channels_last_and_float32(device):
    net = vgg_like(dtype=torch.float32).to(device)
    x, y = images(dtype=torch.float32, device=device)
    want = fgl.perceptual_loss(x, y, net, ["relu1_2", "relu2_2"], style_weights=[1e2, 1e3])
    net_cl = net.to(memory_format=torch.channels_last)
    got = fgl.perceptual_loss(x.to(memory_format=torch.channels_last),
                              y.to(memory_format=torch.channels_last), net_cl,
                              ["relu1_2", "relu2_2"], style_weights=[1e2, 1e3])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_normalize_input_is_imagenet_normalization():
    net = vgg_like()
    x, y = images()
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    want = fgl.perceptual_loss((x - mean) / std, (y - mean) / std, net, [3])
    got = fgl.perceptual_loss(x, y, net, [3], normalize_input=True)
    torch.testing.assert_close(got, want)
    got_pm1 = fgl.perceptual_loss(x * 2 - 1, y * 2 - 1, net, [3], normalize_input=True,
                                  input_range=(-1, 1))
    torch.testing.assert_close(got_pm1, want)
    torch.testing.assert_close(fgl.normalize_images(x), (x - mean) / std)


def test_compiles_without_graph_breaks():
    net = vgg_like(dtype=torch.float32)
    mod = fgl.nn.PerceptualLoss(net, ["relu1_2", "relu2_1"], style_weights=[0.0, 10.0])
    x, y = images(dtype=torch.float32)
    want = mod(x, y)
    compiled = torch.compile(mod, fullgraph=True)
    torch.testing.assert_close(compiled(x, y), want, rtol=1e-5, atol=1e-6)


def test_style_loss_module():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    t = torch.randn(1, 4, 5, 5, generator=g, dtype=torch.float64)
    mod = fgl.nn.StyleLoss(R.gram_matrix(t))
    torch.testing.assert_close(mod(f), R.style_loss(f, R.gram_matrix(t), target_is_gram=True))
    assert "target_gram" in mod.state_dict()
    torch.testing.assert_close(fgl.nn.StyleLoss()(f, f.flip(0)), R.style_loss(f, f.flip(0)))
    with pytest.raises(ValueError, match="no target"):
        fgl.nn.StyleLoss()(f)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layers=["relu9_9"]), r"no layer named 'relu9_9'.*'conv1_1'"),
    (dict(layers=[99]), "layer index 99 is out of range"),
    (dict(layers=[]), "at least one layer"),
    (dict(layers=[1.5]), "a layer is a name"),
    (dict(layers=[3, 8], layer_weights=[1.0]), "one weight per layer"),
    (dict(layers=[3], layer_weights={"relu4_1": 1.0}), "not in layers"),
    (dict(layers=[3], layer_weights=0), "there is no loss"),
    (dict(layers=[3], criterion="l3"), "criterion must be one of"),
])
def test_errors_name_the_argument(kwargs, match):
    net = vgg_like()
    x, y = images()
    exc = TypeError if kwargs.get("layers") == [1.5] else ValueError
    with pytest.raises(exc, match=match):
        fgl.perceptual_loss(x, y, net, **kwargs)


def test_input_errors():
    net = vgg_like()
    x, y = images()
    with pytest.raises(ValueError, match="same shape"):
        fgl.perceptual_loss(x, y[:1], net, [3])
    with pytest.raises(TypeError, match="feature_extractor must be a torch.nn.Module"):
        fgl.perceptual_loss(x, y, lambda t: t, [3])
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        fgl.perceptual_loss(x, y, Tower().double(), ["nope"])
    with pytest.raises(TypeError, match="target must be a floating tensor"):
        fgl.perceptual_loss(x, y.long(), net, [3])
