"""Benchmark: peak memory and time of prepare-features + one Stage-1 epoch as the world grows (issue 23).

One large world is generated once (``rgalign world generate --scale paper``) and subsampled by user into
smaller ones (every table filtered to the same users), so every size has the same KB and behaviour. Each size
runs in a fresh process under ``/usr/bin/time -v``: Feast apply + materialize, the point-in-time training set
in parts of ``--shard-rows`` sessions, verbalization and the query encoding of every split, then one Stage-1
epoch of QE-Rec streamed a part at a time. The smallest size also runs with the training split held whole
(``shard_rows=0``, the default below bench scale): the baseline measured in the same run. Then the 1- vs 2-rank
speed-up of the epoch (``torchrun``, DDP over gloo) on the smallest size.

    rgalign world generate --scale paper --out /data/worlds            # once: ~7.5M sessions, ~20 min
    python bench/scale.py --world /data/worlds/paper-s0 --fractions 0.132 0.53 1 --out /data/scale

The query encoder is the hashing encoder: the data path is what is measured (a reasoner's LTP of every
context is the sharded-LTP step's cost, spread over GPU workers on a cluster). Prints a markdown table with
ratios against the smallest streamed size, writes ``scale.json``, ``scale.md`` (the table; docs/results/scale.md via
``scripts/docs_results.py --collect``) and ``scale.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
t, peak = {"start": time.perf_counter()}, {}


def mark(name):   # the phase's end time and the peak RSS so far (which phase set the peak)
    t[name] = time.perf_counter()
    peak[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
from rgalign.config import RankerConfig
from rgalign.distributed import DistEnv
from rgalign.features.feast_io import FeatureStoreSession
from rgalign.ranker.inputs import load_ranker_inputs
from rgalign.ranker.ranker_trainer import RankerTrainer
world, shard_rows, cap, skip_features = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
dist = DistEnv.from_env().init()
if not skip_features:
    fs = FeatureStoreSession(world)
    fs.apply(); mark("apply")
    fs.materialize(); mark("materialize")
if not dist.main:
    dist.barrier()
inputs = load_ranker_inputs(world, "hashing", 256, "hashing", max_val_sessions=cap, max_eval_sessions=cap,
                            shard_rows=shard_rows, progress=False)
if dist.main:
    dist.barrier()
mark("inputs")
cfg = RankerConfig(epochs=1, query_encoder="hashing", intent_encoder="hashing", shard_rows=shard_rows)
trainer = RankerTrainer(cfg, inputs, progress=False, dist=dist)
mark("trainer")
r = trainer.train()
mark("epoch")
if dist.main:
    print("RESULT " + json.dumps({"train_sessions": len(inputs.train), "epoch_s": r.seconds,
          "samples_per_s": r.samples_per_s, "val_mrr": r.history[-1]["val_mrr"],
          "phases": {k: round(v - t["start"], 1) for k, v in t.items()}, "peak_mb_after": peak,
          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""


def subsample(src: Path, out: Path, fraction: float) -> Path:
    """``src`` restricted to the users with ``user_id % 1000 < 1000 * fraction`` (every table; tables without a
    user id by session id), written a row group at a time."""
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    if fraction >= 1:
        return src
    dst = out / f"{src.name}-f{fraction:g}"
    if (dst / "manifest.json").is_file():
        return dst
    tmp = out / f"{dst.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.parquet"))
    keep = int(round(1000 * fraction))
    sessions: list[np.ndarray] = []
    for rel in ["sessions.parquet"] + sorted(str(p.relative_to(src)) for p in src.rglob("*.parquet")
                                             if p.name != "kb.parquet" and str(p.relative_to(src)) != "sessions.parquet"):
        f = pq.ParquetFile(src / rel)
        ids = np.concatenate(sessions) if sessions else None
        with pq.ParquetWriter(tmp / rel, f.schema_arrow) as w:
            for batch in f.iter_batches(batch_size=500_000):
                t = pa.Table.from_batches([batch])
                if "user_id" in t.column_names:
                    t = t.filter(pa.array(t["user_id"].to_numpy() % 1000 < keep))
                else:
                    t = t.filter(pa.array(np.isin(t["session_id"].to_numpy(), ids)))
                if rel == "sessions.parquet":
                    sessions.append(t["session_id"].to_numpy())
                w.write_table(t)
    shutil.copy2(src / "kb.parquet", tmp / "kb.parquet")
    m = json.loads((src / "manifest.json").read_text())
    m["name"], m["config_digest"] = dst.name, f"{m.get('config_digest', '')}-f{fraction:g}"
    m["files"] = {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                  for p in sorted(tmp.rglob("*.parquet"))}
    m["rows"] = {**m.get("rows", {}), "sessions": int(sum(len(s) for s in sessions))}
    (tmp / "manifest.json").write_text(json.dumps(m, indent=1))
    tmp.replace(dst)
    return dst


def measure(world: Path, out: Path, shard_rows: int, cap: int, ranks: int = 1, skip_features: bool = False) -> dict:
    """One size in a fresh process (``ranks`` > 1: under torchrun); peak RSS from ``/usr/bin/time -v``; the
    process's output goes to a log under ``out`` named by the row."""
    cmd = [sys.executable, "-c", CHILD, str(world), str(shard_rows), str(cap), "1" if skip_features else "0"]
    if ranks > 1:
        script = Path(tempfile.mkdtemp()) / "child.py"
        script.write_text(CHILD)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--standalone",
               str(script), *cmd[3:]]
    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").is_file() else cmd
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    p = subprocess.run(timed, capture_output=True, text=True, env=env)
    log = out / f"{world.name}-r{shard_rows}-x{ranks}{'-epoch' if skip_features else ''}.log"
    log.write_text(p.stdout + "\n--- stderr\n" + p.stderr)
    found = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not found:
        raise SystemExit(f"{world} (shard_rows={shard_rows}, ranks={ranks}) failed (rc {p.returncode}, log {log}):\n"
                         f"{p.stderr[-3000:]}")
    res = json.loads(found[0][7:])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    manifest = json.loads((world / "manifest.json").read_text())
    return {"world": world.name, "sessions": manifest["rows"]["sessions"], "shard_rows": shard_rows,
            "ranks": ranks, "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": int(m.group(1)) / 1024 if m else res["ru_maxrss_mb"], **res}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    streamed = [r for r in rows if r["shard_rows"] and r["ranks"] == 1]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [r["train_sessions"] / 1e6 for r in streamed]
    ax[0].plot(x, [r["peak_rss_mb"] / 1024 for r in streamed], "o-", label="streamed (shard_rows)")
    whole = [r for r in rows if not r["shard_rows"]]
    ax[0].plot([r["train_sessions"] / 1e6 for r in whole], [r["peak_rss_mb"] / 1024 for r in whole], "s",
               color="C3", label="held whole")
    ax[0].axhline(8, ls=":", color="grey")
    ax[0].set(xlabel="clicked training sessions (M)", ylabel="peak RSS (GB)", ylim=(0, None),
              title="memory: prepare-features + 1 epoch")
    ax[0].legend()
    ax[1].plot(x, [r["wall_s"] / 60 for r in streamed], "o-", label="wall, all phases")
    ax[1].plot(x, [r["epoch_s"] / 60 for r in streamed], "o--", label="Stage-1 epoch")
    ax[1].set(xlabel="clicked training sessions (M)", ylabel="minutes", ylim=(0, None), title="time")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="the large world (rgalign world generate --scale paper)")
    ap.add_argument("--render", type=Path, metavar="SCALE_JSON", help="only redraw the table and plot of a finished run")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.132, 0.53, 1.0],
                    help="user fractions; 0.132 of the paper world is the bench world's size (1x)")
    ap.add_argument("--shard-rows", type=int, default=250_000, help="sessions per training-set part")
    ap.add_argument("--cap", type=int, default=20_000, help="validation / evaluation sessions kept (max_val/max_eval)")
    ap.add_argument("--out", type=Path, default=Path("artifacts/scale"))
    ap.add_argument("--no-ranks", action="store_true", help="skip the 1- vs 2-rank epoch")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        return report(json.loads(args.render.read_text()), args.out)
    if args.world is None:
        ap.error("--world is required (or --render SCALE_JSON)")
    worlds = [subsample(args.world, args.out, f) for f in sorted(args.fractions)]
    # the ends first (streamed smallest and largest), then the split held whole (the baseline), the middle sizes
    plan = [(worlds[0], args.shard_rows, 1, False), (worlds[-1], args.shard_rows, 1, False),
            (worlds[0], 0, 1, False)] + [(w, args.shard_rows, 1, False) for w in worlds[1:-1]]
    if not args.no_ranks:
        plan += [(worlds[0], args.shard_rows, 1, True), (worlds[0], args.shard_rows, 2, True)]
    rows = []
    for world, shard_rows, ranks, skip in plan:
        rows.append(measure(world, args.out, shard_rows, args.cap, ranks, skip_features=skip))
        print(json.dumps(rows[-1]), flush=True)                  # each size as it finishes
        (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
    report(rows, args.out)


def report(rows: list[dict], out: Path) -> None:
    plot(rows, out / "scale.png")
    (out / "scale.md").write_text(table(rows) + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["shard_rows"] and r["ranks"] == 1)
    out = [f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
           f"{time.strftime('%Y-%m-%d')}", "",
           "| world | sessions | clicked train sessions | shard_rows | peak RSS (GB) | prepare + inputs (s) | "
           "epoch (s) | train samples/s | sessions x | RSS x | time x |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["ranks"] > 1 or "apply" not in r["phases"]:
            continue
        out.append(f"| {r['world']} | {r['sessions']:,} | {r['train_sessions']:,} | {r['shard_rows'] or 'whole'} | "
                   f"{r['peak_rss_mb'] / 1024:.2f} | {r['phases']['inputs']:.0f} | {r['epoch_s']:.0f} | "
                   f"{r['samples_per_s']:,.0f} | {r['train_sessions'] / base['train_sessions']:.1f} | "
                   f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['wall_s'] / base['wall_s']:.2f} |")
    ranked = [r for r in rows if "apply" not in r["phases"]]
    if len(ranked) == 2:
        one, two = ranked
        out += ["", "| ranks (DDP, gloo, 1 thread each) | epoch (s) | train samples/s | speed-up |",
                "|---:|---:|---:|---:|",
                f"| 1 | {one['epoch_s']:.0f} | {one['samples_per_s']:,.0f} | 1.00 |",
                f"| 2 | {two['epoch_s']:.0f} | {two['samples_per_s']:,.0f} | {one['epoch_s'] / two['epoch_s']:.2f} |"]
    return "\n".join(out)


if __name__ == "__main__":
    main()
