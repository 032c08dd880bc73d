"""Learning curve: QE-Rec vs the baseline as the number of clicked training sessions grows.

Both models train on the same seeded subsample of the clicked training sessions (the validation days and the
evaluation week stay whole), early-stop on validation MRR, and are compared on the whole evaluation week by a
paired bootstrap of the per-session difference (``rgalign.metrics.paired_difference``): a gain is real at
the 5% level when its interval excludes 0. QE-Rec uses the README's Stage-1 settings (LSA query encoder,
intent-ID std 0.01); its LSA encoder is fitted once on training-week contexts (text only, no labels).

The paired interval covers the evaluation sessions, not training: with ``--seeds 0,1,2`` every size is trained
at each seed (its own subsample, initialisation and negatives) and a second table gives the mean difference
with a Student-t interval over the seeds (``rgalign.metrics.across_seeds``), the one to read for a claim
about the models. Finished points are kept in ``learning_curve.json`` and skipped when the run is started
again with the same --out.

    python bench/learning_curve.py --world artifacts/worlds/bench-s0 --out artifacts/bench/learning_curve
    python bench/learning_curve.py --world artifacts/worlds/bench-s0 --sizes 0 --seeds 0,1,2

Writes learning_curve.{md,json,png} to --out. ~35 min at bench scale on 2 cores for the default sizes and one
seed; ~14 min per seed at the full training set.
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
from rgalign.metrics import MetricValue, across_seeds, evaluate_ranks, paired_difference
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


def run_point(inputs: RankerInputs, size: int, seed: int) -> dict:
    ranks, info = {}, {}
    for name, cfg in MODELS.items():
        t0 = time.perf_counter()
        tr = RankerTrainer(dataclasses.replace(cfg, seed=seed), inputs, progress=False)  # seeds torch itself
        res = tr.train()
        ranks[name] = model_ranks(res.model, tr.data["eval"])
        info[name] = {"best_epoch": res.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
                      **{m: v.__dict__ for m, v in evaluate_ranks(ranks[name], seed=seed).items() if m in METRICS}}
    diff = paired_difference(ranks["qe-rec"], ranks["baseline"], seed=seed)
    return {"size": size, "seed": seed, "train_sessions": len(inputs.train), **info,
            "diff": {m: diff[m].__dict__ for m in METRICS}}


def _ci(v: dict) -> str:
    return f"{100 * v['value']:+.2f} [{100 * v['lo']:+.2f}, {100 * v['hi']:+.2f}]"


def table(points: list[dict]) -> str:
    pct = lambda v: MetricValue(**v).fmt()
    lines = ["| train sessions | seed | baseline R@3 | QE-Rec R@3 | QE - base R@3 [95% CI] | baseline MRR | QE-Rec MRR | "
             "QE - base MRR [95% CI] | best epoch (base / QE) | s (base / QE) |", "|---:|---:|---|---|---|---|---|---|---|---|"]
    for p in points:
        d = {m: _ci(p["diff"][m]) for m in METRICS}
        b, q = p["baseline"], p["qe-rec"]
        lines.append(f"| {p['train_sessions']:,} | {p['seed']} | {pct(b['R@3'])} | {pct(q['R@3'])} | {d['R@3']} | {pct(b['MRR'])} | "
                     f"{pct(q['MRR'])} | {d['MRR']} | {b['best_epoch']} / {q['best_epoch']} | "
                     f"{b['seconds']:.0f} / {q['seconds']:.0f} |")
    return "\n".join(lines)


def seed_summary(points: list[dict]) -> list[dict]:
    """Per training-set size measured at 2+ seeds: the mean QE - base difference and its t-interval over seeds."""
    out = []
    for n in sorted({p["train_sessions"] for p in points}):
        at = [p for p in points if p["train_sessions"] == n]
        if len(at) >= 2:
            out.append({"train_sessions": n, "seeds": sorted(p["seed"] for p in at),
                        **{m: across_seeds([p["diff"][m]["value"] for p in at]).__dict__ for m in METRICS},
                        **{f"{m} wins": sum(p["diff"][m]["lo"] > 0 for p in at) for m in METRICS},
                        **{f"{m} losses": sum(p["diff"][m]["hi"] < 0 for p in at) for m in METRICS}})
    return out


def summary_table(rows: list[dict]) -> str:
    lines = ["| train sessions | seeds | QE - base R@3, mean [95% t-CI over seeds] | seeds won / lost (paired CI) | "
             "QE - base MRR, mean [95% t-CI over seeds] | seeds won / lost (paired CI) |", "|---:|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['train_sessions']:,} | {','.join(map(str, r['seeds']))} | " + " | ".join(
            f"{_ci(r[m])} | {r[f'{m} wins']} / {r[f'{m} losses']}" for m in METRICS) + " |")
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, m in zip(axes, METRICS):
        for seed in sorted({p["seed"] for p in points}):
            at = sorted((p for p in points if p["seed"] == seed), key=lambda p: p["train_sessions"])
            n = [p["train_sessions"] for p in at]
            line, = ax.plot(n, [100 * p["diff"][m]["value"] for p in at], "o-", label=f"seed {seed}")
            ax.fill_between(n, [100 * p["diff"][m]["lo"] for p in at], [100 * p["diff"][m]["hi"] for p in at],
                            alpha=0.2, color=line.get_color())
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("clicked training sessions")
        ax.set_ylabel(f"QE-Rec - baseline, {m} (points)")
        ax.set_title(f"{m} (bands: paired 95% CI over evaluation sessions)", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("QE-Rec vs the baseline on the evaluation week, by training-set size and seed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _ints(flag: str, text: str) -> list[int]:
    try:
        v = [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag} must be comma-separated integers, got {text!r}")
    if any(x < 0 for x in v):
        raise SystemExit(f"{flag} must be >= 0, got {text!r}")
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", default="artifacts/bench/learning_curve")
    ap.add_argument("--sizes", default="24000,48000,96000,0",
                    help="comma-separated training-session counts; 0 = all clicked training sessions")
    ap.add_argument("--seeds", "--seed", default="0",
                    help="comma-separated training seeds; 2 or more add the across-seed table")
    args = ap.parse_args()
    sizes, seeds = _ints("--sizes", args.sizes), _ints("--seeds", args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "learning_curve.json"
    points = [p for p in json.loads(saved.read_text()) if "size" in p] if saved.is_file() else []
    done = {(p["size"], p["seed"]) for p in points}
    if done:
        print(f"resuming: {len(done)} point(s) already in {saved}")
    full = load_ranker_inputs(args.world, "lsa", 256, "minilm")   # the splits whole; each seed subsamples
    for seed in seeds:
        for n in sizes:
            if (n, seed) in done:
                continue
            points.append(run_point(subsample(full, n or len(full.train), seed), n, seed))
            print(table(points[-1:]).splitlines()[-1], flush=True)
            saved.write_text(json.dumps(points, indent=1))
    points.sort(key=lambda p: (p["train_sessions"], p["seed"]))
    summary = seed_summary(points)
    md = (f"Learning curve on {Path(args.world).name} (evaluation week: {len(full.eval):,} sessions; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
          f"\n\n{table(points)}\n" + (f"\nAcross training seeds:\n\n{summary_table(summary)}\n" if summary else ""))
    (out / "learning_curve.md").write_text(md)
    plot(points, out / "learning_curve.png")
    print("\n" + md + f"\nwrote {out}/learning_curve.{{md,json,png}}")


if __name__ == "__main__":
    main()
