"""The query half of QE-Rec: how well cos(z_i, z_q) ranks alone, by the weight of its own loss term.

Trains the Stage-1 QE-Rec (the pipeline's settings, ``WorkflowConfig``) on a reasoner's LTP at each
``--weights`` value of ``RankerConfig.query_loss_weight`` and each ``--seeds`` seed, on the sessions the
pipeline uses, and reports validation-day MRR (what a choice may read) and evaluation-week MRR (reported)
of the full model and of its query half alone, each next to the popularity floor: a paired bootstrap interval
per seed and a Student-t interval over the seeds (``rgalign.metrics.across_seeds``).

    python bench/query_half.py --run artifacts/kfp/<run> --reasoner build-reasoner/reasoner --seeds 0,1,2
    python bench/query_half.py --run artifacts/kfp/<run> --query ltp,lsa --weights 0.25 --seeds 0,1,2

``--query ltp,lsa`` also trains QE-Rec on a frozen LSA encoder of the same contexts and adds the paired
difference of the full models, LTP - LSA, per seed and over the seeds.

``--run`` is a local pipeline run folder (its world and reasoner are read); ~30 s a model on 2 cores at ci
scale once the LTP cache exists. Writes query_half.{md,json} to --out.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from rgalign import workflow
from rgalign.metrics import across_seeds, evaluate_ranks, paired_difference
from rgalign.ranker.stage1 import run_ranker


def measure(run: Path, reasoner: Path, weight: float, seed: int, out: Path, query: str = "ltp") -> dict:
    """One Stage-1 QE-Rec: e = the reasoner's LTP (``query="ltp"``) or a frozen text encoder of the same
    verbalized contexts (``lsa``, ``minilm``, ``hashing``), on the pipeline's sessions."""
    world = workflow.world_of(run / "prepare-features" / "world")
    cfg = workflow.WorkflowConfig(tracking=False)
    rcfg = replace(cfg.ranker("qe-rec"), query_loss_weight=weight, seed=seed)
    if query == "ltp":
        inputs = workflow.ltp_inputs(world, reasoner, rcfg, progress=False, **cfg.inputs_kw)
    else:
        rcfg = replace(rcfg, query_encoder=query)
        inputs = workflow.text_inputs(world, query, rcfg, progress=False, **cfg.inputs_kw)
    res = run_ranker(rcfg, world, False, None, out, inputs, False, label=f"lambda={weight}")
    r = workflow.split_ranks(res.result.model, res.result.spec, inputs)    # the ranks the pipeline's gate reads
    row = {"query": query, "weight": weight, "seed": seed, "best_epoch": res.result.best_epoch, "ranks": {}}
    for split in ("val", "eval"):
        pop, users = r[f"popularity_{split}"], r[f"users_{split}"]
        for name, ranks in (("full", r[split]), ("query", r[f"query_{split}"])):
            d = paired_difference(ranks, pop)["MRR"]
            row[f"{split}_{name}"] = evaluate_ranks(ranks, users, inputs.n_intents)["MRR"].value
            row["ranks"][f"{split}_{name}"] = ranks
            row[f"{split}_{name}_vs_pop"] = [d.value, d.lo, d.hi]
        row[f"{split}_pop"] = evaluate_ranks(pop, users, inputs.n_intents)["MRR"].value
    return row


def table(rows: list[dict]) -> str:
    def pct(x):
        return f"{100 * x:.2f}"

    def ci(v):
        return f"{100 * v[0]:+.2f} [{100 * v[1]:+.2f}, {100 * v[2]:+.2f}]"
    out = ["| e | lambda | seed | val MRR full | val MRR query half | query half - popularity (val) | eval MRR full | "
           "eval MRR query half | query half - popularity (eval) |", "|---|---:|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['query']} | {r['weight']} | {r['seed']} | {pct(r['val_full'])} | {pct(r['val_query'])} | "
                   f"{ci(r['val_query_vs_pop'])} | {pct(r['eval_full'])} | {pct(r['eval_query'])} | "
                   f"{ci(r['eval_query_vs_pop'])} |")
    for q, w in sorted({(r["query"], r["weight"]) for r in rows}):
        rs = [r for r in rows if r["weight"] == w and r["query"] == q]
        if len(rs) > 1:
            cells = []
            for k in ("val_full", "val_query", "val_query_vs_pop", "eval_full", "eval_query", "eval_query_vs_pop"):
                m = across_seeds([r[k][0] if isinstance(r[k], list) else r[k] for r in rs])
                cells.append(f"{100 * m.value:+.2f} [{100 * m.lo:+.2f}, {100 * m.hi:+.2f}]" if k.endswith("pop")
                             else f"{100 * m.value:.2f} ± {100 * (m.hi - m.value):.2f}")
            out.append(f"| {q} | {w} | mean of {len(rs)} | " + " | ".join(cells) + " |")
    pop = rows[0]
    out.append(f"\npopularity floor: val MRR {pct(pop['val_pop'])}, eval MRR {pct(pop['eval_pop'])} (same sessions)")
    pairs = [(a, b) for a in rows for b in rows if a["query"] == "ltp" and b["query"] != "ltp"
             and (a["weight"], a["seed"]) == (b["weight"], b["seed"])]
    if pairs:
        out += ["", "| LTP - other e, full model | lambda | seed | val MRR | eval MRR |", "|---|---:|---|---|---|"]
        for a, b in pairs:
            d = {s: paired_difference(a["ranks"][f"{s}_full"], b["ranks"][f"{s}_full"])["MRR"] for s in ("val", "eval")}
            out.append(f"| ltp - {b['query']} | {a['weight']} | {a['seed']} | "
                       + " | ".join(ci([d[s].value, d[s].lo, d[s].hi]) for s in ("val", "eval")) + " |")
        for q, w in sorted({(b["query"], b["weight"]) for _, b in pairs}):
            ps = [(a, b) for a, b in pairs if (b["query"], b["weight"]) == (q, w)]
            if len(ps) > 1:
                m = {s: across_seeds([a[f"{s}_full"] - b[f"{s}_full"] for a, b in ps]) for s in ("val", "eval")}
                out.append(f"| ltp - {q} | {w} | mean of {len(ps)} | "
                           + " | ".join(ci([m[s].value, m[s].lo, m[s].hi]) for s in ("val", "eval")) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a local pipeline run folder (artifacts/kfp/rgalign-training-...)")
    ap.add_argument("--reasoner", default="build-reasoner/reasoner", help="reasoner folder inside --run (the raw one "
                                                                          "Stage 1 reads) or an absolute path")
    ap.add_argument("--weights", default="0,0.25,0.5", help="query_loss_weight values")
    ap.add_argument("--seeds", default="0", help="ranker seeds")
    ap.add_argument("--query", default="ltp", help="query embeddings e to compare: ltp (the reasoner) and frozen text "
                                                   "encoders of the same contexts (lsa, minilm, hashing), comma-separated")
    ap.add_argument("--out", default="artifacts/bench/query_half")
    args = ap.parse_args()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reasoner = run / args.reasoner if not Path(args.reasoner).is_absolute() else Path(args.reasoner)
    rows = []
    for q in args.query.split(","):
        for w in (float(x) for x in args.weights.split(",")):
            for s in (int(x) for x in args.seeds.split(",")):
                rows.append(measure(run, reasoner, w, s, out, q))
                print(f"e={q} lambda={w} seed={s}: val full {100 * rows[-1]['val_full']:.2f} "
                      f"query {100 * rows[-1]['val_query']:.2f}", flush=True)
    md = table(rows)
    (out / "query_half.md").write_text(md + "\n")
    (out / "query_half.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "ranks"} for r in rows],
                                                   indent=1, default=float))
    print(md)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
