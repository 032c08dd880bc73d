"""Benchmark: peak memory and time of prepare-features + one Stage-1 epoch as the world grows, per KFP step.

One large world is generated once (``rgalign world generate --scale paper``) and subsampled by user into
smaller ones (every table filtered to the same users), so every size has the same KB and behaviour. Each size
runs its two KFP steps, each in a fresh process under ``/usr/bin/time -v`` as its pod runs it: prepare-features
from scratch (Feast apply + materialize, the point-in-time training set in parts of ``--shard-rows`` sessions,
the split), then Stage 1 on its output (verbalization and the query encoding of every split, one QE-Rec epoch
streamed a part at a time). The smallest size also runs with the training split held whole (``shard_rows=0``,
the default below bench scale): the baseline measured in the same run. Then the 1- vs 2-rank speed-up of the
epoch (``torchrun``, DDP over gloo) on the smallest size.

    rgalign world generate --scale paper --out /data/worlds            # once: ~7.75M sessions, ~12 min on 2 cores
    python bench/scale.py --world /data/worlds/paper-s0 --fractions 0.132 0.53 1 --out /data/scale

The query encoder is the hashing encoder: the data path is what is measured (a reasoner's LTP of every
context is the sharded-LTP step's cost, spread over GPU workers on a cluster). Prints a markdown table with
ratios against the smallest streamed size, writes ``scale.json``, ``scale.md`` (the table; docs/results/scale.md via
``scripts/docs_results.py --collect``), ``scale_summary.md`` (the README's two sentences) and ``scale.png`` under ``--out``.
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
world, shard_rows, cap, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
res = {}
if step == "features":     # the pipeline's prepare-features step (rgalign.workflow.prepare_features on a dataset)
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.workflow import session_frames
    fs = FeatureStoreSession(world)
    fs.apply(); mark("apply")
    fs.materialize(); mark("materialize")
    res["train_sessions"] = len(session_frames(world, 3, None, shard_rows).train); mark("training_set")
else:                      # the Stage-1 step: the ranker's inputs from the cached training set, one epoch
    from rgalign.config import RankerConfig
    from rgalign.distributed import DistEnv
    from rgalign.ranker.inputs import load_ranker_inputs
    from rgalign.ranker.ranker_trainer import RankerTrainer
    dist = DistEnv.from_env().init()
    inputs = load_ranker_inputs(world, "hashing", 256, "hashing", max_val_sessions=cap, max_eval_sessions=cap,
                                shard_rows=shard_rows, progress=False)
    mark("inputs")
    cfg = RankerConfig(epochs=1, query_encoder="hashing", intent_encoder="hashing", shard_rows=shard_rows)
    trainer = RankerTrainer(cfg, inputs, progress=False, dist=dist)
    mark("trainer")
    r = trainer.train()
    mark("epoch")
    if not dist.main:
        sys.exit(0)
    res = {"train_sessions": len(inputs.train), "epoch_s": r.seconds, "samples_per_s": r.samples_per_s,
           "val_mrr": r.history[-1]["val_mrr"]}
print("RESULT " + json.dumps({**res, "phases": {k: round(v - t["start"], 1) for k, v in t.items()},
      "peak_mb_after": peak, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
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


def fresh(world: Path) -> None:
    """Drop the world's Feast registry, online store and cached training set: a row measures the whole step."""
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.ranker.inputs import cache_dir
    shutil.rmtree(FeatureStoreSession(world).feast_dir, ignore_errors=True)
    shutil.rmtree(cache_dir(world), ignore_errors=True)


def measure(world: Path, out: Path, step: str, shard_rows: int, cap: int, ranks: int = 1) -> dict:
    """One KFP step (``features``: prepare-features from scratch; ``stage1``: one Stage-1 epoch on its output)
    in a fresh process, as its pod runs it (``ranks`` > 1: under torchrun); peak RSS from ``/usr/bin/time -v``;
    the process's output goes to a log under ``out`` named by the row."""
    if step == "features":
        fresh(world)
    cmd = [sys.executable, "-c", CHILD, str(world), str(shard_rows), str(cap), step]
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
    log = out / f"{world.name}-r{shard_rows}-{step}-x{ranks}.log"
    log.write_text(p.stdout + "\n--- stderr\n" + p.stderr)
    found = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not found:
        raise SystemExit(f"{world} ({step}, shard_rows={shard_rows}, ranks={ranks}) failed (rc {p.returncode}, "
                         f"log {log}):\n{p.stderr[-3000:]}")
    res = json.loads(found[0][7:])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    manifest = json.loads((world / "manifest.json").read_text())
    return {"world": world.name, "sessions": manifest["rows"]["sessions"], "step": step, "shard_rows": shard_rows,
            "ranks": ranks, "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": int(m.group(1)) / 1024 if m else res["ru_maxrss_mb"], **res}


def sizes(rows: list[dict]) -> list[dict]:
    """One row per (world, shard_rows) run on one rank: its two steps side by side, the job's peak the larger."""
    out = {}
    for r in rows:
        if r["ranks"] == 1:
            out.setdefault((r["world"], r["shard_rows"]), {})[r["step"]] = r
    return [{"world": w, "shard_rows": k, "sessions": d["features"]["sessions"],
             "train_sessions": d["features"]["train_sessions"], "features": d["features"], "stage1": d["stage1"],
             "peak_rss_mb": max(d["features"]["peak_rss_mb"], d["stage1"]["peak_rss_mb"]),
             "wall_s": d["features"]["wall_s"] + d["stage1"]["wall_s"]}
            for (w, k), d in out.items() if {"features", "stage1"} <= d.keys()]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = sizes(rows)
    streamed = sorted((r for r in runs if r["shard_rows"]), key=lambda r: r["train_sessions"])
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [r["train_sessions"] / 1e6 for r in streamed]
    for step, mark in (("features", "o-"), ("stage1", "^-")):
        ax[0].plot(x, [r[step]["peak_rss_mb"] / 1024 for r in streamed], mark,
                   label=f"{'prepare-features' if step == 'features' else 'Stage-1 epoch'} step (streamed)")
    whole = [r for r in runs if not r["shard_rows"]]
    ax[0].plot([r["train_sessions"] / 1e6 for r in whole], [r["peak_rss_mb"] / 1024 for r in whole], "s",
               color="C3", label="split held whole (larger step)")
    ax[0].axhline(8, ls=":", color="grey")
    ax[0].set(xlabel="clicked training sessions (M)", ylabel="peak RSS (GB)", ylim=(0, None),
              title="memory per KFP step")
    ax[0].legend(fontsize=8)
    ax[1].plot(x, [r["features"]["wall_s"] / 60 for r in streamed], "o-", label="prepare-features")
    ax[1].plot(x, [r["stage1"]["wall_s"] / 60 for r in streamed], "^-", label="Stage-1 step")
    ax[1].plot(x, [r["stage1"]["epoch_s"] / 60 for r in streamed], "^--", label="of which the epoch")
    ax[1].set(xlabel="clicked training sessions (M)", ylabel="minutes", ylim=(0, None), title="time")
    ax[1].legend(fontsize=8)
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
    small, cap = worlds[0], args.cap
    # the ends first (streamed smallest, its 2-rank epoch, largest), then the split held whole (the baseline),
    # then the middle sizes; a Stage-1 row reads the training set its world's prepare-features row left
    plan = [(small, "features", args.shard_rows, 1), (small, "stage1", args.shard_rows, 1)]
    if not args.no_ranks:
        plan += [(small, "stage1", args.shard_rows, 2)]
    for w in [worlds[-1]] * (len(worlds) > 1) + [small] + worlds[1:-1]:
        k = 0 if w is small else args.shard_rows
        plan += [(w, "features", k, 1), (w, "stage1", k, 1)]
    rows = []
    for world, step, shard_rows, ranks in plan:
        rows.append(measure(world, args.out, step, shard_rows, cap, ranks))
        print(json.dumps(rows[-1]), flush=True)                  # each step as it finishes
        (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
    report(rows, args.out)


def report(rows: list[dict], out: Path) -> None:
    plot(rows, out / "scale.png")
    (out / "scale.md").write_text(table(rows) + "\n")
    (out / "scale_summary.md").write_text(summary(rows) + "\n")
    print(table(rows) + "\n\n" + summary(rows))


def summary(rows: list[dict]) -> str:
    """The table in two sentences (the README's): each step's peak at the smallest and the largest streamed
    size, their ratio, and the split held whole."""
    runs = [r for r in sizes(rows) if r["shard_rows"]]
    lo, hi = min(runs, key=lambda r: r["sessions"]), max(runs, key=lambda r: r["sessions"])

    def gb(run: dict, step: str) -> float:
        return run[step]["peak_rss_mb"] / 1024
    steps = "; ".join(f"{name} {gb(lo, k):.2f} -> {gb(hi, k):.2f} GB ({gb(hi, k) / gb(lo, k):.2f}x)"
                      for k, name in (("features", "prepare-features"), ("stage1", "Stage 1")))
    whole = [r for r in sizes(rows) if not r["shard_rows"]]
    held = (f" Held whole (`shard_rows=0`), the {whole[0]['world']} split needs {whole[0]['peak_rss_mb'] / 1024:.2f} GB."
            if whole else "")
    return (f"Peak RSS per KFP step from {lo['sessions']:,} to {hi['sessions']:,} sessions "
            f"({hi['sessions'] / lo['sessions']:.1f}x), streamed in parts of {lo['shard_rows']:,}: {steps}; "
            f"wall time {hi['wall_s'] / lo['wall_s']:.1f}x.{held}")


def table(rows: list[dict]) -> str:
    runs = sizes(rows)
    base = next(r for r in runs if r["shard_rows"])
    out = [f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
           f"{time.strftime('%Y-%m-%d')}; each KFP step in its own process, peak RSS by /usr/bin/time -v", "",
           "| world | sessions | clicked train sessions | shard_rows | prepare-features peak RSS (GB) | "
           "Stage-1 peak RSS (GB) | prepare-features (s) | Stage-1 inputs (s) | epoch (s) | train samples/s | "
           "sessions x | RSS x (larger step) | time x |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        f, s1 = r["features"], r["stage1"]
        out.append(f"| {r['world']} | {r['sessions']:,} | {r['train_sessions']:,} | {r['shard_rows'] or 'whole'} | "
                   f"{f['peak_rss_mb'] / 1024:.2f} | {s1['peak_rss_mb'] / 1024:.2f} | {f['wall_s']:.0f} | "
                   f"{s1['phases']['inputs']:.0f} | {s1['epoch_s']:.0f} | {s1['samples_per_s']:,.0f} | "
                   f"{r['train_sessions'] / base['train_sessions']:.1f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | "
                   f"{r['wall_s'] / base['wall_s']:.2f} |")
    ranked = [r for r in rows if r["step"] == "stage1" and r["world"] == base["world"] and r["shard_rows"]]
    if len(ranked) == 2:
        one, two = sorted(ranked, key=lambda r: r["ranks"])
        out += ["", "| ranks (DDP, gloo, 1 thread each) | epoch (s) | train samples/s | speed-up |",
                "|---:|---:|---:|---:|",
                f"| 1 | {one['epoch_s']:.0f} | {one['samples_per_s']:,.0f} | 1.00 |",
                f"| 2 | {two['epoch_s']:.0f} | {two['samples_per_s']:,.0f} | {one['epoch_s'] / two['epoch_s']:.2f} |"]
    return "\n".join(out)


if __name__ == "__main__":
    main()
