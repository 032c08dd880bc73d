"""Adaptive fusion vs the paper's fixed w = 0.7 (where the query path pays).

Trains the Stage-1 QE-Rec (the pipeline's settings, ``WorkflowConfig``) with ``--fusion fixed`` and
``adaptive`` (``rgalign.ranker.qe_rec.FusionGate``) at each ``--seeds`` seed on the same sessions and the same
query embeddings (a reasoner's LTP), and reports, for adaptive - fixed: validation-day MRR / R@3 (what the
choice reads) and the evaluation week overall and by segment (the target intent's training clicks, the user's
history), a paired bootstrap interval per seed and a t-interval over seeds; each QE-Rec minus the production
baseline (AutoInt + MMoE, same seeds and sessions) the same way; plus the gates' learned coefficients (a:
intent clicks, b: recent clicks) and the mean w of cold and warm intents.

    python bench/fusion.py --run artifacts/kfp/<run> --seeds 0,1,2          # the main job's world and reasoner
    python bench/fusion.py --world DIR --reasoner DIR --seeds 0,1,2 --max-train 8000

~30 s a model on 2 cores at ci scale once the LTP cache exists. Writes fusion.{md,json} to --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from rgalign import workflow
from rgalign.metrics import across_seeds, paired_difference
from rgalign.ranker.ranker_trainer import RankerTrainer
from rgalign.reproduce import paired_md, paired_seeds

FUSIONS = ("fixed", "adaptive")
PAIRS = (("adaptive", "fixed"), ("adaptive", "baseline"), ("fixed", "baseline"))


def train(inputs, rcfg, cache: Path) -> SimpleNamespace:
    """One ranker's ``split_ranks`` (and, for adaptive fusion, its gate figures); read back from ``cache``
    when an interrupted run already trained it (the bench is resumable)."""
    ranks_file, gate_file = cache.with_suffix(".npz"), cache.with_suffix(".gate.json")
    if ranks_file.exists():
        with np.load(ranks_file, allow_pickle=False) as z:
            ranks = {k: z[k] for k in z.files}
        gate = json.loads(gate_file.read_text()) if gate_file.exists() else None
        return SimpleNamespace(ranks=ranks, gate=gate, best_epoch=int(ranks["best_epoch"]))
    r = RankerTrainer(rcfg, inputs, progress=False).train()
    ranks = workflow.split_ranks(r.model, r.spec, inputs)
    gate = gate_figures(r.model, inputs) if rcfg.fusion == "adaptive" and rcfg.model == "qe-rec" else None
    np.savez(ranks_file.with_suffix(".tmp.npz"), best_epoch=np.int64(r.best_epoch), **ranks)
    if gate is not None:
        gate_file.write_text(json.dumps(gate))
    ranks_file.with_suffix(".tmp.npz").rename(ranks_file)       # written last: a present .npz is complete
    return SimpleNamespace(ranks=ranks, gate=gate, best_epoch=r.best_epoch)


def gate_figures(model, inputs) -> dict:
    g = model.gate
    with torch.no_grad():
        w = g(torch.zeros(1, g.max_recent, dtype=torch.long))[0].numpy()      # a user without recent clicks
    cold = inputs.train_clicks[1:] == 0
    return {"a": float(g.a), "b": float(g.b), "w_cold": float(w[cold].mean()) if cold.any() else float("nan"),
            "w_warm": float(w[~cold].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a local pipeline run folder (its world and raw reasoner are read)")
    ap.add_argument("--world", help="a dataset folder (instead of --run)")
    ap.add_argument("--reasoner", help="the reasoner whose LTP is e (default with --run: build-reasoner/reasoner)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-train", type=int, default=None, help="training sessions (default: the pipeline's)")
    ap.add_argument("--max-val", type=int, default=None, help="validation-day sessions (default: the pipeline's)")
    ap.add_argument("--max-eval", type=int, default=None, help="evaluation-week sessions (default: the pipeline's)")
    ap.add_argument("--out", default="artifacts/bench/fusion")
    args = ap.parse_args()
    if args.run:
        run = Path(args.run)
        world = workflow.world_of(run / "prepare-features" / "world")
        reasoner = Path(args.reasoner) if args.reasoner else run / "build-reasoner" / "reasoner"
    else:
        world, reasoner = Path(args.world), Path(args.reasoner)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {k: getattr(args, k) for k in ("max_train", "max_val", "max_eval") if getattr(args, k) is not None}
    cfg = workflow.WorkflowConfig(tracking=False, **sizes)
    cache = out / "runs" / hashlib.sha256(json.dumps([str(world), str(reasoner), sizes]).encode()).hexdigest()[:12]
    cache.mkdir(parents=True, exist_ok=True)
    base = cfg.ranker("qe-rec")
    inputs = workflow.ltp_inputs(world, reasoner, base, progress=False, **cfg.inputs_kw)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {f: [] for f in (*FUSIONS, "baseline")}
    for s in seeds:
        for f in FUSIONS:
            runs[f].append(train(inputs, replace(base, fusion=f, seed=s), cache / f"{f}-s{s}"))
            print(f"seed {s} {f}: best epoch {runs[f][-1].best_epoch}", flush=True)
        runs["baseline"].append(train(inputs, replace(cfg.ranker("baseline"), seed=s), cache / f"baseline-s{s}"))
    val = {f"{a} - {b}": [{m: paired_difference(x.ranks["val"], y.ranks["val"])[m] for m in ("MRR", "R@3")}
                          for x, y in zip(runs[a], runs[b])] for a, b in PAIRS}
    val_over = {k: {m: across_seeds([v[m].value for v in vs]) if len(vs) > 1 else vs[0][m] for m in ("MRR", "R@3")}
                for k, vs in val.items()}
    pairs = {f"{a} - {b}": paired_seeds(runs[a], runs[b]) for a, b in PAIRS}
    gates = [r.gate for r in runs["adaptive"]]

    def ci(v):
        return f"{100 * v.value:+.2f} [{100 * v.lo:+.2f}, {100 * v.hi:+.2f}]"
    md = [f"# Adaptive fusion - fixed w = {base.w} ({world.name}, reasoner {reasoner.name}, seeds {seeds})", "",
          "## Validation days (the choice reads these)", "", "| difference | seed | MRR | R@3 |", "|---|---|---|---|"]
    for k, vs in val.items():
        md += [f"| {k} | {s} | {ci(v['MRR'])} | {ci(v['R@3'])} |" for s, v in zip(seeds, vs)]
        md += [f"| {k} | across seeds | {ci(val_over[k]['MRR'])} | {ci(val_over[k]['R@3'])} |"]
    md += ["",
           "## Evaluation week (reported)", "", paired_md(pairs), "",
           "## Learned gates", "", "| seed | a (intent clicks) | b (recent clicks) | mean w, cold intents | "
           "mean w, warm intents |", "|---|---|---|---|---|"]
    md += [f"| {s} | {g['a']:+.3f} | {g['b']:+.3f} | {g['w_cold']:.3f} | {g['w_warm']:.3f} |" for s, g in zip(seeds, gates)]
    text = "\n".join(md)
    (out / "fusion.md").write_text(text + "\n")
    (out / "fusion.json").write_text(json.dumps({"val": {k: [{m: vars(v[m]) for m in v} for v in vs]
                                                         for k, vs in val.items()},
                                                 "paired": pairs, "gates": gates, "seeds": seeds},
                                                indent=1, default=lambda o: vars(o) if hasattr(o, "__dict__") else float(o)))
    print(text)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
