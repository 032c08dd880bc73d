"""QE-Rec variants (the paper's fixed w = 0.7, adaptive fusion, ...) vs the production baseline over seeds.

Trains the Stage-1 QE-Rec (the pipeline's settings, ``WorkflowConfig``) once per ``--variants`` entry (default:
``--fusion fixed`` and ``adaptive``, ``rgalign.ranker.qe_rec.FusionGate``) and the production baseline (AutoInt
+ MMoE) at each ``--seeds`` seed, on the same sessions and query embeddings (a reasoner's LTP). Reports each
variant's validation MRR over seeds and the choice it makes (the best; the evaluation week is never read for
it); for each variant minus the first and minus the baseline: validation-day MRR / R@3 and the evaluation week
overall and by segment (the target intent's training clicks, the user's history), a paired bootstrap interval
per seed and a t-interval over seeds; plus each adaptive variant's learned gate (a: intent clicks, b: recent
clicks; mean w of cold and warm intents).

    python bench/fusion.py --run artifacts/kfp/<run> --seeds 0,1,2          # the main job's world and reasoner
    python bench/fusion.py --world DIR --reasoner DIR --seeds 0,1,2 --max-train 8000 \
        --variants "fixed:fusion=fixed adaptive:fusion=adaptive id-first:fusion=fixed,intent_id_std=1.0"

Resumable: each trained ranker's ranks are kept under ``--out``/runs (keyed by world, reasoner and sizes;
a variant's settings are kept beside them). ~30 s a model on 2 cores at ci scale, ~1-2 min at 8,000 bench
training sessions on one thread, once the LTP cache exists. Writes fusion.{md,json} to --out.
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
from rgalign.metrics import MetricValue, across_seeds, paired_difference
from rgalign.ranker.ranker_trainer import RankerTrainer
from rgalign.reproduce import paired_md, paired_seeds

VARIANTS = "fixed:fusion=fixed adaptive:fusion=adaptive"


def parse_variants(text: str, base) -> dict[str, dict]:
    """``"name:field=value,field=value name2:..."`` -> {name: RankerConfig overrides}, each field checked
    against ``RankerConfig`` and its value cast to the field's type (a typo is an error, not a silent no-op)."""
    import dataclasses
    types = {f.name: type(getattr(base, f.name)) for f in dataclasses.fields(base)}
    out = {}
    for item in text.split():
        name, _, spec = item.partition(":")
        if not name or name == "baseline" or name in out:
            raise SystemExit(f"--variants {item!r}: each variant needs its own name (not 'baseline'), then ':'")
        kw = {}
        for pair in filter(None, spec.split(",")):
            field, _, value = pair.partition("=")
            if field not in types or field in ("model", "seed"):
                raise SystemExit(f"--variants {item!r}: {field!r} is not a QE-Rec setting (RankerConfig field)")
            kind = types[field]
            kw[field] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        out[name] = kw
    return out


def train(inputs, rcfg, cache: Path, spec: dict | None = None) -> SimpleNamespace:
    """One ranker's ``split_ranks`` (and, for adaptive fusion, its gate figures); read back from ``cache``
    when an interrupted run already trained it (the bench is resumable). ``spec``: the variant's overrides,
    kept beside the ranks; a cached run of the same name with other settings is an error."""
    ranks_file, gate_file, spec_file = (cache.with_suffix(x) for x in (".npz", ".gate.json", ".spec.json"))
    if spec is not None and spec_file.exists() and json.loads(spec_file.read_text()) != spec:
        raise SystemExit(f"{cache.name}: cached with {spec_file.read_text()}, now {json.dumps(spec)}; give the "
                         "variant another name or another --out")
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
    if spec is not None:
        spec_file.write_text(json.dumps(spec))
    ranks_file.with_suffix(".tmp.npz").rename(ranks_file)       # written last: a present .npz is complete
    return SimpleNamespace(ranks=ranks, gate=gate, best_epoch=r.best_epoch)


def gate_figures(model, inputs) -> dict:
    g = model.gate
    with torch.no_grad():
        w = g(torch.zeros(1, g.max_recent, dtype=torch.long))[0].numpy()      # a user without recent clicks
    cold = inputs.train_clicks[1:] == 0
    return {"a": float(g.a.detach()), "b": float(g.b.detach()), "w_cold": float(w[cold].mean()) if cold.any() else float("nan"),
            "w_warm": float(w[~cold].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a local pipeline run folder (its world and raw reasoner are read)")
    ap.add_argument("--world", help="a dataset folder (instead of --run)")
    ap.add_argument("--reasoner", help="the reasoner whose LTP is e (default with --run: build-reasoner/reasoner)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=VARIANTS, help="QE-Rec variants, 'name:field=value,...' separated by "
                    "spaces (RankerConfig fields); the first is the reference of the variant - variant pairs, "
                    "the one with the best validation MRR over seeds is the choice")
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
    variants = parse_variants(args.variants, base)          # a bad variant fails before the inputs are built
    inputs = workflow.ltp_inputs(world, reasoner, base, progress=False, **cfg.inputs_kw)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = list(variants)
    runs = {v: [] for v in (*names, "baseline")}
    for s in seeds:
        for v, kw in variants.items():
            runs[v].append(train(inputs, replace(base, **kw, seed=s), cache / f"{v}-s{s}", kw))
            print(f"seed {s} {v}: best epoch {runs[v][-1].best_epoch}", flush=True)
        runs["baseline"].append(train(inputs, replace(cfg.ranker("baseline"), seed=s), cache / f"baseline-s{s}"))
    pairs_of = [(v, names[0]) for v in names[1:]] + [(v, "baseline") for v in names]
    val = {f"{a} - {b}": [{m: paired_difference(x.ranks["val"], y.ranks["val"])[m] for m in ("MRR", "R@3")}
                          for x, y in zip(runs[a], runs[b])] for a, b in pairs_of}
    val_over = {k: {m: across_seeds([v[m].value for v in vs]) if len(vs) > 1 else vs[0][m] for m in ("MRR", "R@3")}
                for k, vs in val.items()}
    pairs = {f"{a} - {b}": paired_seeds(runs[a], runs[b]) for a, b in pairs_of}
    gates = {v: [r.gate for r in runs[v]] for v in names if variants[v].get("fusion", base.fusion) == "adaptive"}
    def over_seeds(xs):
        return across_seeds(xs) if len(xs) > 1 else MetricValue(xs[0], xs[0], xs[0])
    val_mrr = {v: over_seeds([float(np.mean(1 / (r.ranks["val"] + 1))) for r in runs[v]]) for v in runs}
    chosen = max(names, key=lambda v: val_mrr[v].value)

    def ci(v):
        return f"{100 * v.value:+.2f} [{100 * v.lo:+.2f}, {100 * v.hi:+.2f}]"
    md = [f"# QE-Rec variants vs the production baseline ({world.name}, reasoner {reasoner.name}, seeds {seeds})", "",
          "| variant | settings | validation MRR, mean [95% t-interval over seeds] |", "|---|---|---|"]
    md += [f"| {v} | {', '.join(f'{k}={x}' for k, x in variants.get(v, {}).items()) or '-'} | "
           f"{100 * val_mrr[v].value:.2f} [{100 * val_mrr[v].lo:.2f}, {100 * val_mrr[v].hi:.2f}] |" for v in runs]
    md += ["", f"Chosen on validation MRR: **{chosen}**.", "",
           "## Validation days (the choice reads these)", "", "| difference | seed | MRR | R@3 |", "|---|---|---|---|"]
    for k, vs in val.items():
        md += [f"| {k} | {s} | {ci(v['MRR'])} | {ci(v['R@3'])} |" for s, v in zip(seeds, vs)]
        md += [f"| {k} | across seeds | {ci(val_over[k]['MRR'])} | {ci(val_over[k]['R@3'])} |"]
    md += ["",
           "## Evaluation week (reported)", "", paired_md(pairs), "",
           "## Learned gates", "", "| variant | seed | a (intent clicks) | b (recent clicks) | mean w, cold intents | "
           "mean w, warm intents |", "|---|---|---|---|---|---|"]
    md += [f"| {v} | {s} | {g['a']:+.3f} | {g['b']:+.3f} | {g['w_cold']:.3f} | {g['w_warm']:.3f} |"
           for v, gs in gates.items() for s, g in zip(seeds, gs)]
    text = "\n".join(md)
    (out / "fusion.md").write_text(text + "\n")
    (out / "fusion.json").write_text(json.dumps({"val": {k: [{m: vars(v[m]) for m in v} for v in vs]
                                                         for k, vs in val.items()},
                                                 "paired": pairs, "gates": gates, "seeds": seeds,
                                                 "variants": variants, "chosen": chosen,
                                                 "val_mrr": {v: vars(m) for v, m in val_mrr.items()}},
                                                indent=1, default=lambda o: vars(o) if hasattr(o, "__dict__") else float(o)))
    print(text)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
