"""How much of the world's headroom each hidden term carries: the Bayes-optimal ranking of the evaluation week
with terms removed (persona marginalised, slot matches dropped, slot matches kept only for intents with enough
training clicks), and MRR by the true intent's number of training clicks - the buckets a ranker is read in.

    python bench/headroom_ablation.py --world artifacts/worlds/bench-s0 [--sessions 40000] [--out DIR]

Writes the table to DIR/headroom.md (default artifacts/bench/headroom).

Reads the world's hidden parameters: an analysis tool, never a model input.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from rgalign.config import WorldConfig
from rgalign.metrics import evaluate_ranks, ranks_from_scores
from rgalign.ranker.inputs import load_ranker_inputs
from rgalign.world.intent_model import IntentModel, context_arrays

BUCKETS = [(0, 0), (1, 20), (21, 100), (101, 500), (501, 10 ** 9)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--sessions", type=int, default=40_000, help="evaluation sessions sampled (seed 0)")
    ap.add_argument("--out", default="artifacts/bench/headroom", help="folder of headroom.md")
    a = ap.parse_args()
    w = Path(a.world)
    man = json.loads((w / "manifest.json").read_text())
    cfg = WorldConfig(**{k: v for k, v in man["config"].items() if k in WorldConfig.__dataclass_fields__})
    kb = pd.read_parquet(w / "kb.parquet")
    m = IntentModel.build(kb, cfg)
    inputs = load_ranker_inputs(w, progress=False)          # builds the Feast training set if not cached
    hidden = pd.read_parquet(w / "hidden" / "sessions.parquet")[["session_id", "persona", "p_true"]]
    ev = inputs.eval.merge(hidden, on="session_id").sample(min(a.sessions, len(inputs.eval)), random_state=0)
    ev = ev.reset_index(drop=True)
    ctx, day, true = context_arrays(ev, m), ev.day.to_numpy(), ev.true_intent.to_numpy() - 1
    clicks = np.bincount(inputs.train.clicked_intent, minlength=len(kb) + 1)
    rows = []

    def run(name: str, mm: IntentModel, marginalise: bool) -> None:
        p = (np.mean([mm.probs({**ctx, "persona": np.full(len(ev), k)}, day) for k in range(cfg.n_personas)], 0)
             if marginalise else mm.probs(ctx, day))
        r = ranks_from_scores(p, true)
        res = evaluate_ranks(r, ev.user_id.to_numpy(), len(kb), n_boot=50)
        c = clicks[true + 1]
        by = [np.mean(1 / (r[(c >= lo) & (c <= hi)] + 1)) * 100 for lo, hi in BUCKETS]
        rows.append([name, res["R@3"].fmt(), res["MRR"].fmt()] + [f"{x:.2f}" for x in by])
        print(" | ".join(rows[-1]), flush=True)

    full = m.probs(ctx, day)[np.arange(len(ev)), true]
    assert np.allclose(full, ev.p_true.to_numpy()), "rebuilt context does not reproduce the simulator's p_true"
    keep = lambda **kw: IntentModel(**{**m.__dict__, **kw})  # noqa: E731
    run("Bayes-optimal (hidden persona)", m, False)
    run("persona unknown (marginalised)", m, True)
    run("persona unknown, no slot matches", keep(slot_beta=m.slot_beta * 0), True)
    for thr in (20, 100, 300):
        run(f"persona unknown, slot matches only for intents with >= {thr} training clicks",
            keep(slots=np.where((clicks[1:] >= thr)[:, None], m.slots, 0)), True)
    n = [int(((clicks[true + 1] >= lo) & (clicks[true + 1] <= hi)).sum()) for lo, hi in BUCKETS]
    head = ["ranking", "R@3", "MRR"] + [f"MRR, {lo}-{hi if hi < 10**9 else 'max'} clicks (n={k:,})"
                                        for (lo, hi), k in zip(BUCKETS, n)]
    md = [f"World `{w.name}`, {len(ev):,} evaluation sessions (seed 0); MRR by the true intent's training clicks.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "headroom.md").write_text("\n".join(md) + "\n")
    print("\n" + "\n".join(md))


if __name__ == "__main__":
    main()
