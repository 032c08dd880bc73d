"""Learning curve: QE-Rec vs the baseline as the number of clicked training sessions grows.

Both models train on the same seeded subsample of the clicked training sessions (the validation days and the
evaluation week stay whole), early-stop on validation MRR, and are compared on the whole evaluation week by a
paired bootstrap of the per-session difference (``rgalign.metrics.paired_difference``): a gain is real at
the 5% level when its interval excludes 0. QE-Rec uses the README's Stage-1 settings (LSA query encoder,
intent-ID std 0.01); its LSA encoder is fitted once on training-week contexts (text only, no labels).

    python bench/learning_curve.py --world artifacts/worlds/bench-s0 --out artifacts/bench/learning_curve

Writes learning_curve.{md,json,png} to --out. ~35 min at bench scale on 2 cores for the default sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rgalign.config import RankerConfig
from rgalign.metrics import MetricValue, evaluate_ranks, paired_difference
from rgalign.ranker.inputs import RankerInputs, load_ranker_inputs
from rgalign.ranker.ranker_trainer import RankerTrainer, model_ranks

MODELS = {"baseline": RankerConfig(model="baseline"),
          "qe-rec": RankerConfig(model="qe-rec", query_encoder="lsa", intent_id_std=0.01)}
METRICS = ("R@3", "MRR")


def subsample(inputs: RankerInputs, n: int, seed: int) -> RankerInputs:
    """``inputs`` with ``n`` training sessions drawn without replacement (all of them when n >= the split)."""
    if n >= len(inputs.train):
        return inputs
    idx = np.sort(np.random.default_rng(seed).permutation(len(inputs.train))[:n])
    return dataclasses.replace(inputs, train=inputs.train.iloc[idx].reset_index(drop=True),
                               query={**inputs.query, "train": inputs.query["train"][idx]})


def run_point(inputs: RankerInputs, seed: int) -> dict:
    ranks, info = {}, {}
    for name, cfg in MODELS.items():
        t0 = time.perf_counter()
        tr = RankerTrainer(dataclasses.replace(cfg, seed=seed), inputs, progress=False)  # seeds torch itself
        res = tr.train()
        ranks[name] = model_ranks(res.model, tr.data["eval"])
        info[name] = {"best_epoch": res.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
                      **{m: v.__dict__ for m, v in evaluate_ranks(ranks[name], seed=seed).items() if m in METRICS}}
    diff = paired_difference(ranks["qe-rec"], ranks["baseline"], seed=seed)
    return {"train_sessions": len(inputs.train), **info, "diff": {m: diff[m].__dict__ for m in METRICS}}


def table(points: list[dict]) -> str:
    pct = lambda v: MetricValue(**v).fmt()
    lines = ["| train sessions | baseline R@3 | QE-Rec R@3 | QE - base R@3 [95% CI] | baseline MRR | QE-Rec MRR | "
             "QE - base MRR [95% CI] | best epoch (base / QE) | s (base / QE) |", "|---:|---|---|---|---|---|---|---|---|"]
    for p in points:
        d = {m: f"{100 * p['diff'][m]['value']:+.2f} [{100 * p['diff'][m]['lo']:+.2f}, {100 * p['diff'][m]['hi']:+.2f}]"
             for m in METRICS}
        b, q = p["baseline"], p["qe-rec"]
        lines.append(f"| {p['train_sessions']:,} | {pct(b['R@3'])} | {pct(q['R@3'])} | {d['R@3']} | {pct(b['MRR'])} | "
                     f"{pct(q['MRR'])} | {d['MRR']} | {b['best_epoch']} / {q['best_epoch']} | "
                     f"{b['seconds']:.0f} / {q['seconds']:.0f} |")
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [p["train_sessions"] for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, m in zip(axes, METRICS):
        d = [100 * p["diff"][m]["value"] for p in points]
        lo = [100 * p["diff"][m]["lo"] for p in points]
        hi = [100 * p["diff"][m]["hi"] for p in points]
        ax.fill_between(n, lo, hi, alpha=0.25, label="paired 95% CI")
        ax.plot(n, d, "o-", label="QE-Rec - baseline")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("clicked training sessions")
        ax.set_ylabel(f"{m} difference (points)")
        ax.set_title(m)
        ax.legend(fontsize=8)
    fig.suptitle("QE-Rec vs the baseline on the evaluation week, by training-set size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", default="artifacts/bench/learning_curve")
    ap.add_argument("--sizes", default="24000,48000,96000,0",
                    help="comma-separated training-session counts; 0 = all clicked training sessions")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(s < 0 for s in sizes):
        raise SystemExit(f"--sizes must be >= 0 (0 = all), got {args.sizes!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = load_ranker_inputs(args.world, "lsa", 256, "minilm", seed=args.seed)
    points = []
    for n in sizes:
        points.append(run_point(subsample(full, n or len(full.train), args.seed), args.seed))
        print(table(points[-1:]).splitlines()[-1], flush=True)
        (out / "learning_curve.json").write_text(json.dumps(points, indent=1))
    md = (f"Learning curve on {Path(args.world).name} (evaluation week: {len(full.eval):,} sessions; seed "
          f"{args.seed}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
          f"\n\n{table(points)}\n")
    (out / "learning_curve.md").write_text(md)
    plot(points, out / "learning_curve.png")
    print("\n" + md + f"\nwrote {out}/learning_curve.{{md,json,png}}")


if __name__ == "__main__":
    main()
