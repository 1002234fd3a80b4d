"""python -m fastgenloss: check every loss against the float64 reference on the best device
available and print a side-by-side table of errors and fwd+bwd times (fastgenloss, the eager
PyTorch reference, torch.compile of the reference) with speedups and peak memory.

    python -m fastgenloss                       # defaults for the device found
    python -m fastgenloss --device cpu --dtype float32,bfloat16 --sizes 64K,1M --plot speed.png
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch

import fastgenloss
from fastgenloss._cases import SIZE_NAMES, all_cases, parse_size
from fastgenloss._measure import allow_many_compiles, peak_memory_bytes, time_ms

def default_sizes(device: str) -> list[int]:
    if device == "cuda":
        return [1 << 20, 8 * 3 * 512 * 512, 1 << 26]
    return [65536, 1 << 20, 8 * 3 * 512 * 512]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    den = ref.abs().max().item()
    return (a - ref).abs().max().item() / (den if den > 0 else 1.0)


def check(case, numel, dtype, device):
    """Max relative error of loss and input gradient against float64, ours and eager torch's."""
    x, y, w = case.make_inputs(numel, dtype, device)
    x64 = x.detach().double().requires_grad_()
    ref64 = case.ref(x64, y.double(), None if w is None else w.double())
    (g64,) = torch.autograd.grad(ref64, [x64])
    out = {}
    for name, fn in (("ours", case.ours), ("torch", case.ref)):
        val = fn(x, y, w)
        (g,) = torch.autograd.grad(val, [x])
        out[name] = (rel_err(val, ref64), rel_err(g, g64))
    return out


def run(args) -> int:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("fastgenloss: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    info = fastgenloss.build_info()
    if device == "cuda" and not info["cuda"]:
        print("fastgenloss: this build has no CUDA kernels (see build_info())", file=sys.stderr)
        return 2
    dtypes = [getattr(torch, d.strip()) for d in args.dtype.split(",")] if args.dtype else (
        [torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32])
    sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else default_sizes(device)
    known = all_cases()
    cases = [known[c.strip()] for c in args.losses.split(",")] if args.losses else list(known.values())
    dev_name = torch.cuda.get_device_name() if device == "cuda" else (
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"fastgenloss {fastgenloss.__version__} | torch {torch.__version__} | {dev_name} | "
          f"{datetime.date.today()}")
    print("err: max |x - ref| / max |ref| against float64, for the loss / the input gradient; "
          "times: median fwd+bwd ms; peak: MB held at once in fwd+bwd\n")
    head = (f"{'loss':<20} {'elements':>12} {'dtype':>8} | {'err ours':>17} {'err torch':>17} | "
            f"{'ours':>8} {'eager':>8} {'compile':>8} | {'vs eager':>8} {'vs comp':>8} | "
            f"{'peak ours/eager MB':>18}")
    print(head)
    print("-" * len(head))
    allow_many_compiles()
    results = []
    failures = 0
    for case in cases:
        compiled = None if args.no_compile else torch.compile(case.ref, dynamic=False)
        for dtype in dtypes:
            for numel in sizes:
                errs = check(case, min(numel, 1 << 22), dtype, device)
                x, y, w = case.make_inputs(numel, dtype, device)

                def step(fn):
                    def go():
                        fn(x, y, w).backward()
                        x.grad = None
                    return go

                t = {"ours": time_ms(step(case.ours), device, min_time_s=args.min_time)}
                t["eager"] = time_ms(step(case.ref), device, min_time_s=args.min_time)
                t["compile"] = (time_ms(step(compiled), device, min_time_s=args.min_time)
                                if compiled is not None else float("nan"))
                pk_ours = peak_memory_bytes(step(case.ours), device)
                pk_ref = peak_memory_bytes(step(case.ref), device)
                # flash-attention's rule: ours within 2x torch's own error in this dtype (+eps)
                eps = torch.finfo(dtype).eps
                ok = all(errs["ours"][i] <= 2 * errs["torch"][i] + 8 * eps for i in range(2))
                failures += not ok
                mem = ("-" if pk_ours is None or pk_ref is None
                       else f"{pk_ours / 2**20:.0f} / {pk_ref / 2**20:.0f}")
                comp_ms = f"{t['compile']:8.3f}" if compiled is not None else f"{'-':>8}"
                comp_x = (f"{t['compile'] / t['ours']:7.2f}x" if compiled is not None
                          else f"{'-':>8}")
                print(f"{case.name:<20} {SIZE_NAMES.get(numel, str(numel)):>12} "
                      f"{str(dtype)[6:]:>8} | {errs['ours'][0]:8.1e} {errs['ours'][1]:8.1e} "
                      f"{errs['torch'][0]:8.1e} {errs['torch'][1]:8.1e} | {t['ours']:8.3f} "
                      f"{t['eager']:8.3f} {comp_ms} | {t['eager'] / t['ours']:7.2f}x "
                      f"{comp_x} | {mem:>18}{'' if ok else '  ERROR'}",
                      flush=True)
                results.append((case.name, numel, dtype, t))
                del x, y, w
    if args.plot:
        plot(results, args.plot, dev_name)
    if failures:
        print(f"\n{failures} check(s) exceeded 2x PyTorch's own error", file=sys.stderr)
        return 1
    return 0


def plot(results, path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, other in zip(axes, ("eager", "compile")):
        series: dict = {}
        for name, numel, dtype, t in results:
            series.setdefault((name, str(dtype)[6:]), []).append((numel, t[other] / t["ours"]))
        for (name, dt), pts in series.items():
            if any(p[1] != p[1] for p in pts):  # compile column skipped (--no-compile)
                continue
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} {dt}")
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel("elements")
        ax.set_ylabel(f"speedup over {other} (fwd+bwd)")
        ax.set_title(f"fastgenloss vs {other}")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgenloss", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="comma-separated, e.g. float32,bfloat16")
    p.add_argument("--sizes", default=None, help="comma-separated element counts, e.g. 64K,1M,16M")
    p.add_argument("--losses", default=None, help=f"comma-separated from: {', '.join(all_cases())}")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per cell")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="speedup against size")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
