"""The per-call cost: one loss of each family against the PyTorch ops it replaces, fwd+bwd and a
no-grad forward, on small tensors (4K, 64K elements, and the shapes each family's users call
with) where the host time decides, and at 1M where the kernels do; plus a tiny training step
(a 2-layer MLP with a loss of each family).

    pytest bench/bench_overhead.py --benchmark-json out.json   # pytest-benchmark, per case
    python bench/bench_overhead.py [--rounds 41] [--device cpu]  # interleaved ratio table (markdown)

The table runs ours and theirs alternately, round after round (the machine is shared and
noisy), and reports the median of each; ratio = theirs / ours (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import fastgenloss as fgl
from fastgenloss import reference as ref

sys.path.insert(0, os.path.dirname(__file__))
from conftest import bench_device  # noqa: E402

DEVICE = bench_device()
TIMESTEPS = 1000
SIZES = {"4K": 4096, "64K": 65536, "1M": 1 << 20}


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _pixel(name, theirs):
    def make(numel, device, requires_grad):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(numel // 256, 256, generator=g).to(device).requires_grad_(requires_grad)
        y = torch.randn(numel // 256, 256, generator=g).to(device)
        return (x, y), (x,)
    return make, (lambda x, y: getattr(fgl, name)(x, y)), theirs


def _diffusion(numel, device, requires_grad):
    """[N, 4, 8, 8] latents (a small diffusion batch), epsilon prediction with min-SNR."""
    g = torch.Generator().manual_seed(1)
    n = max(1, numel // 256)
    f = torch.randn(n, 4, 8, 8, generator=g).to(device).requires_grad_(requires_grad)
    s, e = (torch.randn(n, 4, 8, 8, generator=g).to(device) for _ in range(2))
    t = torch.randint(0, TIMESTEPS, (n,), generator=g).to(device)
    ac = torch.linspace(0.9999, 0.01, TIMESTEPS).to(device)
    return (f, s, e, t, ac), (f,)


def _segmentation(numel, device, requires_grad):
    """Segmentation logits [N, 4, 16, 16] (a classifier batch [N, C] waits for issue 20)."""
    g = torch.Generator().manual_seed(2)
    shape = (numel // 1024, 4, 16, 16)
    x = torch.randn(*shape, generator=g).to(device).requires_grad_(requires_grad)
    lab = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    return (x, lab), (x,)


def _style(numel, device, requires_grad):
    """Features [N, 64, 8, 8] against a style image's features."""
    g = torch.Generator().manual_seed(3)
    n = max(1, numel // 4096)
    x = torch.randn(n, 64, 8, 8, generator=g).to(device).requires_grad_(requires_grad)
    y = torch.randn(n, 64, 8, 8, generator=g).to(device)
    return (x, y), (x,)


# name: (make_inputs, ours, theirs: the PyTorch ops it replaces)
CASES = {
    "mse_loss": _pixel("mse_loss", F.mse_loss),
    "l1_loss": _pixel("l1_loss", F.l1_loss),
    "huber_loss": _pixel("huber_loss", F.huber_loss),
    "smooth_l1_loss": _pixel("smooth_l1_loss", F.smooth_l1_loss),
    "charbonnier_loss": _pixel("charbonnier_loss", ref.charbonnier_loss),
    "diffusion_loss min_snr": (
        _diffusion,
        lambda f, s, e, t, ac: fgl.diffusion_loss(f, s, e, t, ac, weighting="min_snr"),
        lambda f, s, e, t, ac: ref.diffusion_loss(f, s, e, t, ac, weighting="min_snr")),
    "dice + CE": (
        _segmentation,
        lambda x, lab: fgl.segmentation_loss(x, lab, mode="multiclass", dice=1.0, iou=0.0,
                                              bce=1.0),
        lambda x, lab: ref.segmentation_loss(x, lab, mode="multiclass", dice=1.0, iou=0.0,
                                             bce=1.0)),
    "style_loss": (_style, lambda x, y: fgl.style_loss(x, y), lambda x, y: ref.style_loss(x, y)),
}


def _runner(fn, args, leaves, passes, device):
    if passes == "no_grad":
        def run():
            with torch.no_grad():
                fn(*args)
            _sync(device)
    else:
        def run():
            fn(*args).backward()
            for leaf in leaves:
                leaf.grad = None
            _sync(device)
    return run


# ---- pytest-benchmark ------------------------------------------------------------------------

@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ["fastgenloss", "torch"])
@pytest.mark.parametrize("passes", ["fwd+bwd", "no_grad"])
@pytest.mark.parametrize("case_name", list(CASES))
def test_overhead(benchmark, case_name, passes, impl, size):
    make, ours, theirs = CASES[case_name]
    args, leaves = make(SIZES[size], DEVICE, passes != "no_grad")
    run = _runner(ours if impl == "fastgenloss" else theirs, args, leaves, passes, DEVICE)
    benchmark.group = f"overhead {case_name} {passes} {size} {DEVICE}"
    benchmark.extra_info.update(case=case_name, passes=passes, impl=impl, size=size,
                                numel=SIZES[size], device=DEVICE,
                                threads=torch.get_num_threads(), torch=torch.__version__)
    run()
    benchmark(run)


class MLP(torch.nn.Module):
    def __init__(self, width, out):
        super().__init__()
        self.a, self.b = torch.nn.Linear(width, width), torch.nn.Linear(width, out)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _train_step_parts(device):
    """A 2-layer MLP on a batch of 64, its output used by a loss of each family (pixel,
    diffusion, segmentation, style), one optimizer step: the step a small model or a many-term
    objective takes, where the host cost of each loss decides."""
    g = torch.Generator().manual_seed(4)
    model = MLP(256, 256).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 256, generator=g).to(device)
    y = torch.randn(64, 256, generator=g).to(device)
    s, e = torch.randn(64, 4, 8, 8, generator=g).to(device), torch.randn(64, 4, 8, 8).to(device)
    t = torch.randint(0, TIMESTEPS, (64,), generator=g).to(device)
    ac = torch.linspace(0.9999, 0.01, TIMESTEPS).to(device)
    lab = torch.randint(0, 4, (64, 8, 8), generator=g).to(device)
    feats = torch.randn(1, 64, 16, 16, generator=g).to(device)

    def step(lib):
        out = model(x)
        loss = (lib.mse_loss(out, y) if lib is fgl else F.mse_loss(out, y))
        loss = loss + lib.diffusion_loss(out.view(64, 4, 8, 8), s, e, t, ac,
                                         weighting="min_snr")
        loss = loss + lib.segmentation_loss(out.view(64, 4, 8, 8), lab, mode="multiclass",
                                            dice=1.0, iou=0.0, bce=1.0)
        loss = loss + lib.style_loss(out.view(1, 64, 16, 16), feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
    return step


@pytest.mark.parametrize("impl", ["fastgenloss", "torch"])
def test_train_step(benchmark, impl):
    step = _train_step_parts(DEVICE)
    lib = fgl if impl == "fastgenloss" else ref
    benchmark.group = f"overhead train step {DEVICE}"
    benchmark.extra_info.update(case="train step", impl=impl, device=DEVICE,
                                threads=torch.get_num_threads(), torch=torch.__version__)
    step(lib)
    benchmark(lambda: step(lib))


# ---- interleaved table -----------------------------------------------------------------------

def interleaved_us(fns, rounds, min_time=0.02):
    """Median microseconds per call of each fn, timed alternately round after round."""
    for fn in fns:
        for _ in range(3):
            fn()
    reps = []
    for fn in fns:  # calls per round: enough for min_time seconds
        t0 = time.perf_counter()
        fn()
        reps.append(max(1, int(min_time / max(time.perf_counter() - t0, 1e-7))))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(reps[i]):
                fn()
            times[i].append((time.perf_counter() - t0) / reps[i] * 1e6)
    return [statistics.median(t) for t in times]


def table(device, rounds, sizes):
    rows = ["| loss | size | fwd+bwd ours (us) | theirs (us) | ratio | no_grad ours (us) "
            "| theirs (us) | ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, (make, ours, theirs) in CASES.items():
        for size in sizes:
            cells = []
            for passes in ("fwd+bwd", "no_grad"):
                args, leaves = make(SIZES[size], device, passes != "no_grad")
                a, b = interleaved_us([_runner(ours, args, leaves, passes, device),
                                       _runner(theirs, args, leaves, passes, device)], rounds)
                cells += [f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x"]
            rows.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
    step = _train_step_parts(device)
    a, b = interleaved_us([lambda: step(fgl), lambda: step(ref)], rounds)
    rows.append(f"| train step (MLP + 4 losses) | 64x256 | {a:.1f} | {b:.1f} | {b / a:.2f}x "
                "| | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=DEVICE)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--sizes", default="4K,64K,1M")
    a = p.parse_args()
    print(f"device {a.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{a.rounds} interleaved rounds, medians; ratio = theirs / ours\n")
    print(table(a.device, a.rounds, a.sizes.split(",")))
