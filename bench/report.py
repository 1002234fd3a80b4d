"""Turn a pytest-benchmark JSON of bench_pixel.py into a markdown table: median ms per
(loss, size, dtype) for fastgenloss / eager reference / torch.compile, speedups, peak memory.

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
    for b in data["benchmarks"]:
        e = b["extra_info"]
        key = (e["case"], e["numel"], e["dtype"])
        rows[key][(e["impl"], e["passes"])] = (b["stats"]["median"] * 1e3, e.get("peak_mem_bytes"))
        meta = e
    mi = data.get("machine_info", {})
    print(f"Device: {meta.get('device_name')} ({meta.get('device')}), threads {meta.get('threads')}, "
          f"torch {meta.get('torch')}, CPU {mi.get('cpu', {}).get('brand_raw', '?')}, "
          f"date {data.get('datetime', '?')[:10]}\n")
    print("| loss | elements | dtype | pass | fastgenloss ms | reference ms | compile ms "
          "| vs ref | vs compile | peak MB ours / ref / compile |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2])):
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
            print(f"| {key[0]} | {key[1]} | {key[2]} | {passes} | {fmt(ours)} | {fmt(ref)} | "
                  f"{fmt(comp)} | {speed(ref)} | {speed(comp)} | {mem} |")


if __name__ == "__main__":
    main(sys.argv[1])
