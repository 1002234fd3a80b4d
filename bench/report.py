"""Turn a pytest-benchmark JSON of bench_pixel.py / bench_diffusion.py / bench_style.py into a markdown table: median ms per
(loss, size, dtype) for fastgenloss / eager reference / torch.compile, speedups, peak memory,
and fastgenloss's rate over the fewest bytes the pass must move as a share of the measured copy
rate (test_copy_bandwidth) of the same dtype.

    python bench/report.py results.json > table.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    rows = defaultdict(dict)
    meta = {}
    copy_rate = {}  # dtype -> bytes per second
    min_bytes = {}
    flops = {}  # GEMM passes (bench_style.py): their multiply-add rate instead of a copy share
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if e["case"] == "copy":
            copy_rate[e["dtype"]] = e["bytes"] / b["stats"]["median"]
            continue
        key = (e["case"], e.get("shape", e["numel"]), e["dtype"])
        rows[key][(e["impl"], e["passes"])] = (b["stats"]["median"] * 1e3, e.get("peak_mem_bytes"))
        min_bytes[key + (e["passes"],)] = e.get("bytes")
        flops[key + (e["passes"],)] = e.get("flops")
        meta = e
    mi = data.get("machine_info", {})
    print(f"Device: {meta.get('device_name')} ({meta.get('device')}), threads {meta.get('threads')}, "
          f"torch {meta.get('torch')}, CPU {mi.get('cpu', {}).get('brand_raw', '?')}, "
          f"date {data.get('datetime', '?')[:10]}")
    for dt, rate in sorted(copy_rate.items()):
        print(f"\nMeasured copy rate ({dt}, read + write): {rate / 1e9:.1f} GB/s")
    print("\n% copy: fastgenloss's rate over the fewest bytes the pass must move "
          "(min_bytes of the bench file), as a share of the copy rate; for the GEMM-bound "
          "style passes, the rate of the matrix products' floating-point operations.\n")
    print("| loss | elements | dtype | pass | fastgenloss ms | reference ms | compile ms "
          "| vs ref | vs compile | % copy | peak MB ours / ref / compile | peer libraries ms (ours vs) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[0], str(k[1]), k[2])):
        r = rows[key]
        for passes in ("fwd", "bwd", "fwd+bwd"):
            ours = r.get(("fastgenloss", passes))
            if ours is None:
                continue
            ref = r.get(("reference", passes))
            comp = r.get(("compile", passes))

            def fmt(v):
                return f"{v[0]:.3f}" if v else "-"

            def speed(v):
                return f"{v[0] / ours[0]:.2f}x" if v else "-"

            mem = "-"
            if passes == "fwd+bwd":
                mb = [f"{v[1] / 2**20:.0f}" if v and v[1] is not None else "-" for v in (ours, ref, comp)]
                mem = " / ".join(mb)
            pct = "-"
            nbytes = min_bytes.get(key + (passes,))
            if nbytes and key[2] in copy_rate:
                pct = f"{100 * nbytes / (ours[0] / 1e3) / copy_rate[key[2]]:.0f}%"
            nflops = flops.get(key + (passes,))
            if nflops:
                pct = f"{nflops / (ours[0] / 1e3) / 1e12:.3g} TFLOP/s"
            peers = "; ".join(
                f"{impl} {v[0]:.3f} ({v[0] / ours[0]:.2f}x"
                + (f", {v[1] / 2**20:.0f} MB" if passes == "fwd+bwd" and v[1] is not None else "")
                + ")"
                for (impl, p), v in sorted(r.items())
                if p == passes and impl not in ("fastgenloss", "reference", "compile")) or "-"
            print(f"| {key[0]} | {key[1]} | {key[2]} | {passes} | {fmt(ours)} | {fmt(ref)} | "
                  f"{fmt(comp)} | {speed(ref)} | {speed(comp)} | {pct} | {mem} | {peers} |")


if __name__ == "__main__":
    main(sys.argv[1])
