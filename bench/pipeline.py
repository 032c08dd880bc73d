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
from pathlib import Path
from datetime import datetime

# label -> the statement a fresh process runs; Feast both as rgalign imports it (without typeguard's
# import-time instrumentation, rgalign.features.feast_io.import_feast) and plain
IMPORTS = {m: f"import {m}" for m in ("rgalign.workflow", "torch", "transformers", "trl", "mlflow", "kfp")} | {
    "feast (as rgalign imports it)": "from rgalign.features.feast_io import import_feast; import_feast()",
    "feast (plain import)": "import feast"}


def import_seconds(statement: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--log", default=None, help="parse the log of an earlier `rgalign pipeline run` instead of running")
    ap.add_argument("--skip-imports", action="store_true")
    args = ap.parse_args()
    root = args.artifacts or tempfile.mkdtemp(prefix="bench-pipeline-")
    if not args.skip_imports:
        base = import_seconds("import sys")
        print("| import (fresh process) | s | x python |\n|---|---:|---:|")
        print(f"| python -c 'import sys' | {base:.2f} | 1.0 |")
        for label, statement in IMPORTS.items():
            s = import_seconds(statement)
            print(f"| {label} | {s:.2f} | {s / base:.1f} |")
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
    what = f"the log `{Path(args.log).name}`" if args.log else f"`rgalign pipeline run --no-cache` (rc {rc}): {total:.0f} s wall"
    print(f"\n{what}: {steps:.0f} s in steps\n")
    print("| step | s | share | status |\n|---|---:|---:|---|")
    for name, s, status in rows:
        print(f"| {name} | {s:.1f} | {s / steps:.0%} | {status} |")


if __name__ == "__main__":
    main()
