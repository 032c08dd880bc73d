"""Where the local pipeline's time goes: wall time per step of `rgalign pipeline run` at ci scale (kfp.local,
no cache), next to the cost of importing each heavy package in a fresh process (every component is one).

    python bench/pipeline.py [--artifacts /tmp/bench-pipeline]
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime

IMPORTS = ["rgalign.workflow", "torch", "transformers", "trl", "feast", "mlflow", "kfp"]


def import_seconds(module: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--log", default=None, help="parse the log of an earlier `rgalign pipeline run` instead of running")
    ap.add_argument("--skip-imports", action="store_true")
    args = ap.parse_args()
    root = args.artifacts or tempfile.mkdtemp(prefix="bench-pipeline-")
    if not args.skip_imports:
        base = import_seconds("sys")
        print("| import (fresh process) | s | x python |\n|---|---:|---:|")
        print(f"| python -c 'import sys' | {base:.2f} | 1.0 |")
        for m in IMPORTS:
            s = import_seconds(m)
            print(f"| {m} | {s:.2f} | {s / base:.1f} |")
    if args.log:
        text, rc, total = open(args.log).read(), 0, float("nan")
    else:
        t0 = time.perf_counter()
        r = subprocess.run(["rgalign", "pipeline", "run", "--no-cache", "--artifacts", root], capture_output=True, text=True)
        text, rc, total = r.stdout + r.stderr, r.returncode, time.perf_counter() - t0
    log = re.sub(r"\x1b\[[0-9;]*m", "", text)
    start = {}
    rows = []
    for m in re.finditer(r"(\d\d:\d\d:\d\d\.\d+) - \w+ - (?:Executing task '([\w-]+)'|Task '([\w-]+)' finished with status (\w+))", log):
        ts = datetime.strptime(m.group(1), "%H:%M:%S.%f")
        if m.group(2):
            start[m.group(2)] = ts
        else:
            rows.append((m.group(3), (ts - start.pop(m.group(3))).total_seconds(), m.group(4)))
    steps = sum(s for _, s, _ in rows)
    print(f"\n`rgalign pipeline run --no-cache` (rc {rc}): {total:.0f} s wall, {steps:.0f} s in steps\n")
    print("| step | s | share | status |\n|---|---:|---:|---|")
    for name, s, status in rows:
        print(f"| {name} | {s:.1f} | {s / steps:.0%} | {status} |")


if __name__ == "__main__":
    main()
