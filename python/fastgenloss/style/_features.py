"""Capturing the activations of named layers of a user's network, for the perceptual losses.

Two ways of running the network, chosen once per (network, layers):

- Sequential (an ``nn.Sequential``, or a model whose ``.features`` is one, as torchvision's VGG
  and AlexNet): its children are run one by one and the run stops after the last layer asked
  for, so a loss on relu3_1 never runs VGG's conv4/conv5 blocks. Layers can be named by child
  name ("8"), by index (8, negative counts from the end) or by VGG-style name ("relu3_1"), which
  are given to the children in order: conv{b}_{i}, bn{b}_{i}, relu{b}_{i} for the i-th
  convolution of block b, pool{b} for the pooling that ends block b.
- Hooks (any other module): forward hooks on the modules named (``named_modules`` names, or
  an index into ``named_children``), and the forward stops, by an exception the hook raises,
  once the last of them has run.

An in-place activation after a captured layer (torchvision's ``ReLU(inplace=True)``) would
overwrite the captured tensor: the sequential runner feeds such a module a copy; under hooks,
captured outputs are copied when the network holds any in-place module.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

from torch import Tensor, nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.GroupNorm,
         nn.LayerNorm)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ACT = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.PReLU, nn.Tanh, nn.Sigmoid)


def vgg_names(children: Sequence[nn.Module]) -> list[str | None]:
    """VGG-style names of a sequence of layers (None for layers that get none)."""
    names: list[str | None] = []
    block, conv = 1, 0
    for m in children:
        if isinstance(m, _CONV):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(m, _NORM):
            names.append(f"bn{block}_{conv}")
        elif isinstance(m, _ACT):
            names.append(f"relu{block}_{conv}" if isinstance(m, nn.ReLU)
                         else f"{type(m).__name__.lower()}{block}_{conv}")
        elif isinstance(m, _POOL):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            names.append(None)
    return names


def _sequential_of(net: nn.Module) -> nn.Sequential | None:
    if isinstance(net, nn.Sequential):
        return net
    feats = getattr(net, "features", None)
    return feats if isinstance(feats, nn.Sequential) else None


class FeatureCapture:
    """Runs ``net`` and returns the outputs of ``layers`` (names or indices), in that order."""

    def __init__(self, net: nn.Module, layers: Iterable[str | int], *, fn: str):
        if not isinstance(net, nn.Module):
            raise TypeError(f"{fn}: feature_extractor must be a torch.nn.Module, got "
                            f"{type(net).__name__}")
        layers = list(layers) if not isinstance(layers, (str, int)) else [layers]
        if not layers:
            raise ValueError(f"{fn}: layers must name at least one layer")
        self.net = net
        self.layers = layers
        seq = _sequential_of(net)
        self.seq = seq
        if seq is not None:
            self.children = list(seq.children())
            self.positions = [self._position(seq, l, fn) for l in layers]
            self.stop = max(self.positions)
            self.targets = None
        else:
            self.children = None
            modules = dict(net.named_modules())
            named_children = list(net.named_children())
            self.targets = []
            for l in layers:
                if isinstance(l, bool) or not isinstance(l, (str, int)):
                    raise TypeError(f"{fn}: a layer is a name (str) or an index (int), got {l!r}")
                if isinstance(l, int):
                    if not -len(named_children) <= l < len(named_children):
                        raise ValueError(
                            f"{fn}: layer index {l} is out of range: {type(net).__name__} has "
                            f"{len(named_children)} children")
                    self.targets.append(named_children[l][0])
                elif l in modules and l != "":
                    self.targets.append(l)
                else:
                    raise ValueError(
                        f"{fn}: {type(net).__name__} has no layer named {l!r}; its modules are "
                        f"{_preview([n for n in modules if n])}")
            self.modules = modules
            self.copy_outputs = any(getattr(m, "inplace", False) for m in net.modules())

    @staticmethod
    def _position(seq: nn.Sequential, layer, fn: str) -> int:
        children = list(seq.named_children())
        n = len(children)
        if isinstance(layer, bool) or not isinstance(layer, (str, int)):
            raise TypeError(f"{fn}: a layer is a name (str) or an index (int), got {layer!r}")
        if isinstance(layer, int):
            if not -n <= layer < n:
                raise ValueError(f"{fn}: layer index {layer} is out of range: the network has "
                                 f"{n} layers")
            return layer % n
        for i, (name, _) in enumerate(children):
            if name == layer:
                return i
        vgg = vgg_names([m for _, m in children])
        if layer in vgg:
            return vgg.index(layer)
        known = [v for v in vgg if v is not None]
        raise ValueError(f"{fn}: no layer named {layer!r}; the network's layers are 0..{n - 1}"
                         f" or, by VGG-style name, {_preview(known)}")

    def layer_names(self) -> list[str]:
        """A display name per captured layer (the VGG-style name where there is one)."""
        if self.seq is None:
            return list(self.targets)
        vgg = vgg_names(self.children)
        return [vgg[p] or str(p) for p in self.positions]

    def __call__(self, x: Tensor) -> list[Tensor]:
        if self.seq is not None:
            return self._run_sequential(x)
        return self._run_hooks(x)

    def _run_sequential(self, x: Tensor) -> list[Tensor]:
        wanted = {}
        for k, p in enumerate(self.positions):
            wanted.setdefault(p, []).append(k)
        out: list[Tensor | None] = [None] * len(self.positions)
        h = x
        captured_last = False
        for i, m in enumerate(self.children[: self.stop + 1]):
            if captured_last and getattr(m, "inplace", False):
                h = h.clone()  # do not overwrite the captured activation
            h = m(h)
            captured_last = i in wanted
            for k in wanted.get(i, ()):
                out[k] = h
        return out

    def _run_hooks(self, x: Tensor) -> list[Tensor]:
        got: dict[str, Tensor] = {}
        remaining = set(self.targets)

        class _Done(Exception):
            pass

        def hook_for(name):
            def hook(_module, _inputs, output):
                if name in remaining:
                    got[name] = output.clone() if self.copy_outputs else output
                    remaining.discard(name)
                    if not remaining:
                        raise _Done
            return hook

        handles = [self.modules[name].register_forward_hook(hook_for(name))
                   for name in set(self.targets)]
        try:
            self.net(x)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [t for t in self.targets if t not in got]
        if missing:
            raise RuntimeError(f"the layers {missing} did not run in the forward of "
                               f"{type(self.net).__name__}")
        return [got[t] for t in self.targets]


def _preview(names: list, k: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return f"[{shown}{', ...' if len(names) > k else ''}]"


@contextlib.contextmanager
def frozen(module: nn.Module):
    """The module's parameters do not require grad inside (restored afterwards)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def per_layer(fn: str, name: str, value, layers: list, names: list[str], default):
    """A weight per layer from None (default), a number, a sequence or a dict keyed by layer."""
    n = len(layers)
    if value is None:
        return [default] * n
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    if isinstance(value, dict):
        unknown = [k for k in value if k not in layers and k not in names]
        if unknown:
            raise ValueError(f"{fn}: {name} names layers {unknown} that are not in layers "
                             f"{layers}")
        return [float(value.get(l, value.get(nm, 0.0))) for l, nm in zip(layers, names)]
    if isinstance(value, Tensor):
        value = value.tolist()
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{fn}: {name} must have one weight per layer ({n}), got {len(value)}")
    return [float(v) for v in value]
