"""Benchmark: ranker training throughput and the latency of scoring one user against all intents.

Baseline (two-tower AutoInt + MMoE) vs QE-Rec in the same run, on the cached Stage-1 inputs of a world
(built on first use). Scoring uses the serving path: the intent index z_i is precomputed, one request =
feature encoding + user/query towers + one (1, d) x (d, n_intents) product.

    python bench/ranker.py --world artifacts/worlds/ci-s0
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from rgalign.config import RankerConfig
from rgalign.ranker.inputs import load_ranker_inputs
from rgalign.ranker.ranker_trainer import RankerTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--steps", type=int, default=30, help="training steps timed per model")
    ap.add_argument("--requests", type=int, default=500, help="single-user scoring calls timed per model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    inputs = load_ranker_inputs(args.world, progress=False)
    rows = {}
    for model in ("baseline", "qe-rec"):
        cfg = RankerConfig(model=model)
        tr = RankerTrainer(cfg, inputs, progress=False)
        data, gen = tr.data["train"], torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(tr._params(), lr=cfg.lr)
        tr.model.train()
        idx = torch.arange(cfg.batch_size)
        tr.train_step(*tr.global_batch(data, idx, gen), opt, len(idx))  # warm-up
        t = time.perf_counter()
        for s in range(args.steps):
            idx = torch.arange(s * cfg.batch_size, (s + 1) * cfg.batch_size) % len(data)
            tr.train_step(*tr.global_batch(data, idx, gen), opt, len(idx))
        sps = args.steps * cfg.batch_size / (time.perf_counter() - t)
        m = tr.model.eval()
        ev = inputs.eval
        records = ev.head(args.requests + 20).to_dict("records")  # dicts, as the online store hands them over
        with torch.inference_mode():
            index = m.intent_index()
            lat, lat_model = [], []
            for i in range(args.requests + 20):
                row = records[i % len(records)]
                t0 = time.perf_counter()
                x, _ = tr.spec.encode_rows([row])  # the serving encoder (rgalign.recommend)
                t1 = time.perf_counter()
                s = m(x, torch.from_numpy(inputs.query["eval"][i % len(ev)][None]), intent_index=index)
                torch.topk(s, 3)
                t2 = time.perf_counter()
                if i >= 20:
                    lat.append(t2 - t0)
                    lat_model.append(t2 - t1)
        n_params = sum(p.numel() for p in m.parameters())
        rows[model] = (sps, np.percentile(lat_model, 50) * 1e3, np.percentile(lat_model, 99) * 1e3,
                       np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3, n_params)
    print(f"machine: {platform.machine()}, 1 thread, torch {torch.__version__}, {inputs.n_intents} intents, "
          f"batch {RankerConfig().batch_size}, {RankerConfig().n_neg} negatives + {inputs.train.shown_intents.iloc[0].__len__()} shown")
    print("| model | params | train samples/s | score p50 (ms) | score p99 (ms) | encode+score p50 (ms) | encode+score p99 (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model, (sps, p50, p99, e50, e99, n) in rows.items():
        print(f"| {model} | {n:,} | {sps:,.0f} | {p50:.2f} | {p99:.2f} | {e50:.2f} | {e99:.2f} |")
    b, q = rows["baseline"], rows["qe-rec"]
    print(f"| qe-rec / baseline | {q[5] / b[5]:.2f}x | {q[0] / b[0]:.2f}x | {q[1] / b[1]:.2f}x | {q[2] / b[2]:.2f}x | "
          f"{q[3] / b[3]:.2f}x | {q[4] / b[4]:.2f}x |")


if __name__ == "__main__":
    main()
