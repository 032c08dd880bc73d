"""Benchmark: LTP prompts/s at fp32 and int8 and with cache hits, per reasoner, in one run; and the linear
probe (LTP -> family of the evaluation week's true intent) of each reasoner next to a random-init twin.

    python bench/reasoner.py --world artifacts/worlds/ci-s0 \\
        --reasoner artifacts/reasoners/tiny-s0 artifacts/reasoners/smollm2 --n 300 --probe 3000
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    from rgalign.ranker.inputs import load_ranker_inputs, verbalize_frame
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.quantize import quantize_int8
    from rgalign.reasoner.sources import Reasoner, load_reasoner
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True)
    ap.add_argument("--reasoner", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=300, help="prompts timed per variant (large models get n/10)")
    ap.add_argument("--probe", type=int, default=0, help="sessions for the linear probe (0 = skip)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    inputs = load_ranker_inputs(args.world, progress=False)
    ctx_all = verbalize_frame(inputs.eval.head(max(args.n, args.probe)), inputs.kb, inputs.contract)
    print(f"machine: {platform.machine()}, 1 thread, torch {torch.__version__}")
    print("| reasoner | params | d | fp32 prompts/s | int8 prompts/s | int8 x | cached prompts/s | int8 cos vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    probes = []
    for path in args.reasoner:
        r = load_reasoner(path)
        n_params = sum(p.numel() for p in r.model.parameters())
        n = args.n if n_params < 20e6 else max(10, args.n // 10)
        ctx = ctx_all[:n]
        rates, outs = {}, {}
        for name, model in (("fp32", r.model), ("int8", quantize_int8(r.model))):
            enc = LTPEncoder(Reasoner(model, r.tokenizer, f"{r.version}-{name}"))
            enc.embed(ctx[:2])  # warm-up
            t = time.perf_counter()
            outs[name] = enc.embed(ctx)
            rates[name] = n / (time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            enc = LTPEncoder(r, cache=f"{tmp}/ltp.sqlite")
            enc.embed(ctx)
            t = time.perf_counter()
            enc.embed(ctx)
            cached = n / (time.perf_counter() - t)
        a, b = outs["fp32"], outs["int8"]
        cos = float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
        print(f"| {path} | {n_params / 1e6:.1f}M | {r.hidden_size} | {rates['fp32']:.1f} | {rates['int8']:.1f} | "
              f"{rates['int8'] / rates['fp32']:.2f}x | {cached:,.0f} | {cos:.4f} |", flush=True)
        if args.probe and n_params < 20e6:
            probes.append((path, r))
    if probes:
        from rgalign.reasoner.check import linear_probe
        from rgalign.reasoner.sources import build_model
        df = inputs.eval.head(args.probe)
        y = inputs.kb.set_index("intent_id").family.loc[df.true_intent].to_numpy()
        ctx = ctx_all[:args.probe]

        def probe(reasoner):
            return linear_probe(LTPEncoder(reasoner).embed(ctx), y)
        print(f"\nlinear probe, LTP -> true-intent family, {args.probe} evaluation sessions, 5-fold accuracy "
              f"(majority class {np.unique(y, return_counts=True)[1].max() / len(y):.3f}):")
        print("| reasoner | pre-trained | random init (same architecture) |")
        print("|---|---:|---:|")
        for path, r in probes:
            size = "small" if r.hidden_size == 512 else "tiny"
            rand = Reasoner(build_model(size, len(r.tokenizer), seed=123).eval(), r.tokenizer, "random")
            print(f"| {path} | {probe(r):.3f} | {probe(rand):.3f} |", flush=True)


if __name__ == "__main__":
    main()
