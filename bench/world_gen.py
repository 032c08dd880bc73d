"""Benchmark: world generation time and peak memory at two sizes (memory must stay flat as sessions grow).

Each size runs in a fresh process so its peak RSS is its own. Prints a markdown table with ratios against the
smaller size, measured in the same run.

    python bench/world_gen.py                       # 20k and 100k users (~0.1M and ~0.45M sessions)
    python bench/world_gen.py --users 4500 225000   # ci and bench scale
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, resource, sys, time
from rgalign.config import WorldConfig
from rgalign.world.generate import generate_world
t = time.perf_counter()
d = generate_world(WorldConfig(scale="ci", n_users=int(sys.argv[1])), sys.argv[2], progress=False)
m = json.loads((d / "manifest.json").read_text())
print(json.dumps({"seconds": time.perf_counter() - t, "sessions": m["rows"]["sessions"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[20_000, 100_000])
    args = ap.parse_args()
    rows = []
    for n in args.users:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp], check=True, capture_output=True,
                                 text=True).stdout
        rows.append({"users": n, **json.loads(out.strip().splitlines()[-1])})
    base = rows[0]
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| users | sessions | seconds | sessions/s | peak RSS (MB) | sessions x | RSS x |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['users']:,} | {r['sessions']:,} | {r['seconds']:.1f} | {r['sessions'] / r['seconds']:,.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['sessions'] / base['sessions']:.1f} | "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")


if __name__ == "__main__":
    main()
