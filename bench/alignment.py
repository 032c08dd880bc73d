"""Wall time and samples/s per stage of `rgalign reproduce` (Stage 1, teachers + reward, Stage 2, Stage 3), at
each scale given, with the ratio of the larger scale to the first one (same table, same machine).

    rgalign reproduce --scale ci --out /tmp/rp/ci && rgalign reproduce --scale bench --out /tmp/rp/bench
    python bench/alignment.py ci=/tmp/rp/ci bench=/tmp/rp/bench

The runs themselves take 9 min (ci) and 2.5 h (bench) on 2 cores, so this script reads their `reproduce.json`
instead of re-running them. A sample is what the stage processes, named in the `unit` column; the sizes come
from the scale's preset (`rgalign.config.REPRODUCE_PRESETS`) and the samples each strategy kept.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rgalign.config import REPRODUCE_PRESETS, ReproduceConfig  # noqa: E402


def stage_samples(scale: str, result: dict) -> dict[str, tuple[str, float]]:
    """``{timing key: (unit, samples)}`` of one ``reproduce.json``."""
    c = ReproduceConfig(scale=scale)
    sessions = c.max_train + c.max_val + c.max_eval
    kept = {v: k["samples"] for v, k in result["kept"].items() if "skipped" not in k}
    n_aligned = len(kept) + ("V2" in kept)  # RG-CL per strategy + RG-DPO on V2
    stage2 = sum(n * (c.sft_epochs + c.cl_epochs) for n in kept.values())
    stage2 += kept.get("V2", 0) * (c.sft_epochs + c.dpo_pairs * c.dpo_epochs)
    return {
        "world + raw reasoner": ("pre-training sequences", c.pretrain_steps * c.pretrain_batch),
        "LTP of the raw reasoner": ("prompts encoded", sessions),
        "Stage 1 (baseline + QE-Rec)": ("session-epochs (max)", 2 * c.seeds * c.max_train * c.ranker_epochs),
        "teachers + reward": ("queries generated + scored", c.n_samples * len(result["teachers"])),
        "Stage 2 (RG-SFT, RG-CL x4, RG-DPO)": ("training examples", stage2),
        "Stage 3 (LTP + QE-Rec retrained)": ("prompts encoded", n_aligned * sessions),
        "BGE-style rows": ("queries generated", 2 * sessions),
    }


def main(argv: list[str]):
    if not argv or any("=" not in a for a in argv):
        sys.exit("usage: python bench/alignment.py SCALE=DIR [SCALE=DIR ...]  (DIR holds reproduce.json)")
    runs = {}
    for arg in argv:
        scale, d = arg.split("=", 1)
        if scale not in REPRODUCE_PRESETS:
            sys.exit(f"scale {scale!r}: use one of {sorted(REPRODUCE_PRESETS)}")
        path = Path(d) / "reproduce.json"
        if not path.is_file():
            sys.exit(f"{path} not found: run `rgalign reproduce --scale {scale} --out {d}` first")
        runs[scale] = json.loads(path.read_text())
    first = next(iter(runs))
    head = ["stage", "unit"] + [f"{s} {x}" for s in runs for x in ("samples", "s", "samples/s")]
    head += [f"{s}/{first} s" for s in list(runs)[1:]]
    print("| " + " | ".join(head) + " |\n|" + "---|" * 2 + "---:|" * (len(head) - 2))
    for key, (unit, _) in stage_samples(first, runs[first]).items():
        cells, secs = [key, unit], {}
        for scale, res in runs.items():
            n, s = stage_samples(scale, res)[key][1], res["timings"].get(key, 0.0)
            secs[scale] = s
            cells += [f"{n:,.0f}", f"{s:,.1f}", f"{n / s:,.1f}" if s > 0 else "(reused)"]
        cells += [f"{secs[s] / secs[first]:.1f}x" if secs[first] > 0 else "-" for s in list(runs)[1:]]
        print("| " + " | ".join(cells) + " |")
    tot = [r["timings"]["total"] for r in runs.values()]
    print("| total | | " + " | ".join(f" | {t:,.1f} | " for t in tot) + " | "
          + " | ".join(f"{t / tot[0]:.1f}x" for t in tot[1:]) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
