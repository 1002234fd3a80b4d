"""GPU time and launches per training step, apart from the host's: for each loss (fastgenloss,
eager reference, torch.compile of it), one fwd+bwd step, profiled with torch.profiler (the sum
of the step's kernel and copy durations on the device, and how many there are), and the wall
time per step when steps run back to back without synchronizing (the CPU queues work ahead, as
in a training loop). At latent sizes a step's wall time is mostly the host's per-op overhead;
the device time is what the kernels cost and what a CUDA graph or a larger model hides the host
behind.

    python tools/gpu/device_times.py [--out table.md] [--iters 20]

Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import fastgenloss as fgl
from fastgenloss import reference as R
from fastgenloss._cases import parse_shape
from fastgenloss.diffusion._cases import CASES as DIFFUSION_CASES
from fastgenloss.pixel._cases import CASES
from fastgenloss._measure import allow_many_compiles

PIXEL = [("mse", 1 << 24), ("l1+mse", 1 << 24), ("masked l1+charb", 1 << 24),
         ("mse", 1 << 26), ("l1+mse", 1 << 26), ("masked l1+charb", 1 << 26)]
LATENTS = ["64x4x64x64", "16x16x128x128", "4x16x16x128x128"]
STYLE = ["8x64x256x256", "8x128x128x128", "8x256x64x64", "8x512x32x32"]


def device_profile(step, device_type, iters: int) -> tuple[float, float]:
    """(device microseconds, device events) per step."""
    activity = ProfilerActivity.CUDA if device_type == "cuda" else ProfilerActivity.CPU
    kind = DeviceType.CUDA if device_type == "cuda" else DeviceType.CPU
    step()
    _sync(device_type)
    with profile(activities=[activity]) as prof:
        for _ in range(iters):
            step()
        _sync(device_type)
    events = [e for e in prof.events() if e.device_type == kind]
    busy = sum(e.time_range.elapsed_us() for e in events)
    return busy / iters, len(events) / iters


def wall_us(step, device_type, iters: int) -> float:
    step()
    _sync(device_type)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device_type)
        best = min(best, (time.perf_counter() - t0) / iters * 1e6)
    return best


def _sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def rows(device: str, dtypes, families, impl_names):
    compiled = {}

    def impls(name, ours, ref):
        if name not in compiled and "compile" in impl_names:
            compiled[name] = torch.compile(ref, dynamic=False)
        every = {"fastgenloss": ours, "reference": ref, "compile": compiled.get(name)}
        return {k: every[k] for k in impl_names}

    for dtype in dtypes:
        for name, numel in PIXEL if "pixel" in families else []:
            case = CASES[name]
            x, y, w = case.make_inputs(numel, dtype, device)
            fns = impls(name, case.ours, case.ref)
            yield name, str(numel), dtype, {
                k: _step(lambda fn=fn: fn(x, y, w), x) for k, fn in fns.items()}
        for name, case in DIFFUSION_CASES.items() if "diffusion" in families else []:
            for shape in LATENTS:
                f, x0, ctx = case.make_inputs(0, dtype, device, shape=parse_shape(shape))
                fns = impls(name, case.ours, case.ref)
                yield name, shape, dtype, {
                    k: _step(lambda fn=fn: fn(f, x0, ctx), f) for k, fn in fns.items()}
        for shape in STYLE if "style" in families else []:
            n, c, h, w_ = parse_shape(shape)
            g = torch.Generator(device="cpu").manual_seed(c)
            x = torch.randn((n, c, h, w_), generator=g).to(device, dtype).requires_grad_()
            tg = R.gram_matrix(torch.randn((1, c, h, w_), generator=g).to(device, dtype))
            fns = impls("style", fgl.style_loss, R.style_loss)
            yield "style", shape, dtype, {
                k: _step(lambda fn=fn: fn(x, tg), x) for k, fn in fns.items()}


def _step(loss_fn, leaf):
    def step():
        loss_fn().backward()
        leaf.grad = None
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", default="pixel,diffusion,style", help="loss families")
    ap.add_argument("--impls", default="fastgenloss,reference,compile")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_times.py needs a CUDA device", file=sys.stderr)
        return 2
    allow_many_compiles()
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    lines = [f"Device: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
             f"fwd+bwd per step, {args.iters} steps; device us = kernel and copy time on the "
             f"device (torch.profiler), launches = device events per step, wall us = per step "
             f"back to back (best of 3 runs).", "",
             "| loss | size | dtype | device us ours / ref / compile | launches ours / ref / "
             "compile | wall us ours / ref / compile | device: vs ref, vs compile |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    impl_names = [i for i in ("fastgenloss", "reference", "compile") if i in args.impls.split(",")]
    for loss, size, dtype, steps in rows(args.device, dtypes, args.cases.split(","), impl_names):
        dev, wall = {}, {}
        for impl, step in steps.items():
            dev[impl] = device_profile(step, args.device, args.iters)
            wall[impl] = wall_us(step, args.device, args.iters)
        na = (float("nan"), float("nan"))
        o, r, c = (dev.get(k, na) for k in ("fastgenloss", "reference", "compile"))
        wo, wr, wc = (wall.get(k, float("nan")) for k in ("fastgenloss", "reference", "compile"))
        line = (f"| {loss} | {size} | {str(dtype)[6:]} | {o[0]:.1f} / {r[0]:.1f} / {c[0]:.1f} | "
                f"{o[1]:.0f} / {r[1]:.0f} / {c[1]:.0f} | {wo:.0f} / {wr:.0f} / {wc:.0f} | "
                f"{r[0] / o[0]:.2f}x, {c[0] / o[0]:.2f}x |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
