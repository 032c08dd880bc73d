"""``rgalign reproduce``: the paper's Tables 2-4 on the benchmark world, by one command.

Flow (every arrow is a library call that the pipeline components make too):
world -> tiny reasoner (raw) -> LTP -> Stage 1 (baseline and QE-Rec, ``seeds`` each) -> candidates from the
teacher pool scored by the seed-0 QE-Rec -> best-of-N V1-V4 -> RG-SFT -> RG-CL (V1-V4) / RG-DPO (V2) ->
rows without Stage 3 (the Stage-1 rankers read the aligned LTP) and with Stage 3 (QE-Rec retrained), plus
the BGE-style rows (generated query -> frozen sentence encoder) and QE-Rec on a frozen text encoder (LSA) of
the same contexts. Paired per-seed differences (LTP - LSA, Stage 3 - Stage 1) and ``rgalign reasoner check``
of the raw and each RG-CL-aligned reasoner say whether the LTP carries meaning and which way alignment moved
it. Every row sees the same sessions.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rgalign.config import ReasonerCheckConfig, ReproduceConfig
from rgalign.metrics import METRICS, MetricValue, across_seeds, format_table, paired_difference


def combine(per_seed: list[dict[str, MetricValue]]) -> dict[str, MetricValue]:
    """Mean over seeds; the half-width combines the mean bootstrap half-width and the t-interval of the
    seed means (``across_seeds``): hw = sqrt(boot^2 + (t * sd / sqrt(n))^2)."""
    out = {}
    for m in METRICS:
        vals = np.array([r[m].value for r in per_seed if m in r])
        if not len(vals):
            continue
        boot = np.mean([(r[m].hi - r[m].lo) / 2 for r in per_seed if m in r])
        seed_hw = across_seeds(vals).hi - vals.mean() if len(vals) > 1 else 0.0
        hw = float(np.hypot(boot, seed_hw))
        out[m] = MetricValue(float(vals.mean()), float(vals.mean()) - hw, float(vals.mean()) + hw)
    return out


PAIRED = ("MRR", "R@3")


def paired_seeds(a: list, b: list) -> dict:
    """A - B on the evaluation week for rankers trained at the same seeds (``a[s]`` vs ``b[s]``): per seed a
    paired bootstrap interval over sessions, then the mean of the per-seed differences with a t-interval over
    seeds (``across_seeds``): the claim about models, not runs."""
    from rgalign.workflow import segments_of, split_ranks
    per, by_seg = [], {}
    for ra, rb in zip(a, b):
        for r in (ra, rb):     # a ranker in several pairs (Stage 1) is ranked once
            if getattr(r, "ranks", None) is None:
                r.ranks = split_ranks(r.model, r.spec, r.inputs)
        sa, sb = ra.ranks, rb.ranks
        d = paired_difference(sa["eval"], sb["eval"])
        per.append({m: d[m] for m in PAIRED})
        for seg, mask in segments_of(sa).items():      # the same sessions at every seed: the same masks
            if mask.any():
                d = paired_difference(sa["eval"][mask], sb["eval"][mask])
                by_seg.setdefault(f"{seg} (n={int(mask.sum()):,})", []).append({m: d[m].value for m in PAIRED})

    def over(vals: list[dict]) -> dict:
        return {m: across_seeds([v[m] for v in vals]) if len(vals) > 1 else MetricValue(vals[0][m], vals[0][m], vals[0][m])
                for m in PAIRED}
    seeds = {m: across_seeds([p[m].value for p in per]) if len(per) > 1 else per[0][m] for m in PAIRED}
    return {"per_seed": per, "across_seeds": seeds, "segments": {k: over(v) for k, v in by_seg.items()}}


def paired_md(pairs: dict) -> str:
    def ci(v):
        return f"{100 * v.value:+.2f} [{100 * v.lo:+.2f}, {100 * v.hi:+.2f}]"
    lines = ["| difference | seed | " + " | ".join(PAIRED) + " |", "|---|---|" + "---|" * len(PAIRED)]
    for name, p in pairs.items():
        for s, d in enumerate(p["per_seed"]):
            lines.append(f"| {name} | {s} | " + " | ".join(ci(d[m]) for m in PAIRED) + " |")
        lines.append(f"| {name} | mean of {len(p['per_seed'])} | "
                     + " | ".join(ci(p["across_seeds"][m]) for m in PAIRED) + " |")
    lines += ["", "By segment (the true intent's and the user's training clicks; mean of the per-seed paired "
              "differences, t-interval over seeds):", "",
              "| difference | segment | " + " | ".join(PAIRED) + " |", "|---|---|" + "---|" * len(PAIRED)]
    for name, p in pairs.items():
        for seg, d in p.get("segments", {}).items():
            lines.append(f"| {name} | {seg} | " + " | ".join(ci(d[m]) for m in PAIRED) + " |")
    return "\n".join(lines)


def checks_md(checks: dict) -> str:
    lines = ["| reasoner | mean cos | effective rank | family probe | query-only family R@3 | query-only MRR | check |",
             "|---|---:|---:|---:|---|---|---|"]
    for name, c in checks.items():
        r = c.retrieval["reasoner"]
        lines.append(f"| {name} | {c.mean_cos:.3f} | {c.effective_rank:.1f} | {c.probe:.3f} | {r['R@3'].fmt()} | "
                     f"{r['MRR'].fmt()} | {'PASS' if c.passed else 'FAIL'} |")
    ref = next(iter(checks.values())).retrieval
    for enc in (e for e in ref if e != "reasoner"):
        lines.append(f"| {enc} (reference) | | | | {ref[enc]['R@3'].fmt()} | {ref[enc]['MRR'].fmt()} | |")
    return "\n".join(lines)


def improvement_rows(base: dict[str, MetricValue], rows: list[dict[str, MetricValue]]) -> dict[str, dict[str, str]]:
    """The paper's "Rel. Improv. (Best)" and "Error Reduction (Best)" rows against ``base``."""
    rel, err = {}, {}
    for m in METRICS:
        if m not in base:
            continue
        best = max(r[m].value for r in rows)
        rel[m] = f"{(best - base[m].value) / base[m].value * 100:+.2f}%"
        err[m] = f"{(best - base[m].value) / (1 - base[m].value) * 100:+.2f}%"
    return {"Rel. Improv. (Best)": rel, "Error Reduction (Best)": err}


def _md(rows: dict, prefix_cols: list[str] | None = None, prefixes: dict | None = None) -> str:
    cols = list(METRICS)
    head = (prefix_cols or []) + cols
    lines = ["| Model | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, r in rows.items():
        pre = list((prefixes or {}).get(name, [""] * len(prefix_cols or [])))
        cells = [r[c].fmt() if isinstance(r.get(c), MetricValue) else str(r.get(c, "-")) for c in cols]
        lines.append(f"| {name} | " + " | ".join(pre + cells) + " |")
    return "\n".join(lines)


def workflow_config(cfg: ReproduceConfig, **overrides):
    """The ``WorkflowConfig`` of a reproduction: the same steps as the pipeline at the reproduce sizes."""
    from rgalign.workflow import WorkflowConfig
    return WorkflowConfig(scale=cfg.scale, world_seed=cfg.world_seed, reasoner_steps=cfg.pretrain_steps,
                          pretrain_batch=cfg.pretrain_batch, corpus_sessions=cfg.corpus_sessions,
                          max_train=cfg.max_train or 0, max_val=cfg.max_val or 0, max_eval=cfg.max_eval or 0,
                          ranker_epochs=cfg.ranker_epochs, n_samples=cfg.n_samples, sft_epochs=cfg.sft_epochs,
                          cl_epochs=cfg.cl_epochs, dpo_epochs=cfg.dpo_epochs, dpo_pairs=cfg.dpo_pairs,
                          fusion=cfg.fusion, intent_id_std=cfg.intent_id_std, tracking=False, register=False, **overrides)


def run_reproduce(cfg: ReproduceConfig, progress: bool = True) -> dict:
    import torch

    from rgalign.alignment.stage2 import build_candidates, select
    from rgalign.ranker.data import RankerData
    from rgalign.ranker.ranker_trainer import RankerTrainer, evaluate_model
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    from rgalign.reasoner.check import check_reasoner
    from rgalign.workflow import (align, base_key, copy_or_build, generated_query_inputs, ltp_inputs, shipped_base,
                                  text_inputs)
    from rgalign.contract.dataset import headroom
    from rgalign.world.generate import generate_world

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def tick(name, since):
        timings[name] = round(time.perf_counter() - since, 1)
        if progress:
            print(f"[reproduce] {name}: {timings[name]:.0f} s", flush=True)
        return time.perf_counter()

    t = time.perf_counter()
    wcfg = workflow_config(cfg)
    world = generate_world(wcfg.world(), out / "worlds", progress=progress)
    raw = Path(cfg.reasoner) if cfg.reasoner else out / "reasoners" / "raw"
    if not cfg.reasoner and not (raw / "config.json").is_file():
        # the main job's base when the package ships one for these settings (ci scale, default seed)
        copy_or_build(wcfg.reasoner(), world, raw, shipped_base(base_key(wcfg.reasoner(), world)), progress)
    t = tick("world + raw reasoner", t)

    rcfg = wcfg.ranker("qe-rec")
    kw = dict(**wcfg.inputs_kw, progress=progress)
    raw_enc = LTPEncoder(load_reasoner(raw))
    inputs_raw = ltp_inputs(world, raw, rcfg, encoder=raw_enc, **kw)
    t = tick("LTP of the raw reasoner", t)

    def train_rows(model: str, inputs, **over):
        results, rows = [], []
        for s in range(cfg.seeds):
            torch.manual_seed(s)
            r = RankerTrainer(replace(rcfg, model=model, seed=s, **over), inputs, progress=False).train()
            r.inputs = inputs
            results.append(r)
            rows.append(evaluate_model(r.model, eval_data(r, inputs), seed=s))
        return results, combine(rows)

    def eval_data(r, inputs):  # the evaluation week encoded with a trained ranker's feature spec
        return RankerData.build(inputs.eval, r.spec, inputs.query["eval"], "true_intent")

    def frozen_rows(stage1, inputs):  # Stage 2 without Stage 3: the Stage-1 rankers read the new LTP
        return combine([evaluate_model(r.model, eval_data(r, inputs), seed=i) for i, r in enumerate(stage1)])

    base_runs, baseline = train_rows("baseline", inputs_raw)
    stage1, qerec = train_rows("qe-rec", inputs_raw)
    t = tick("Stage 1 (baseline + QE-Rec)", t)
    text, pairs = None, {"QE-Rec (LTP) - Baseline": paired_seeds(stage1, base_runs)}
    if cfg.text_encoder != "none":
        text = train_rows("qe-rec", text_inputs(world, cfg.text_encoder, replace(rcfg, query_encoder=cfg.text_encoder),
                                                **kw), query_encoder=cfg.text_encoder)
        pairs[f"QE-Rec: LTP - {cfg.text_encoder.upper()}"] = paired_seeds(stage1, text[0])
        t = tick(f"Stage 1 QE-Rec on {cfg.text_encoder.upper()}", t)
    check_cfg = ReasonerCheckConfig()
    checks = {"raw": check_reasoner(raw_enc, world, check_cfg)}

    acfg = wcfg.alignment()
    cands = build_candidates(inputs_raw.train, inputs_raw.kb, inputs_raw.contract, stage1[0].model, stage1[0].spec, raw_enc, acfg, progress)
    teacher_table, separation = cands.teacher_table(), cands.separability()
    t = tick("teachers + reward", t)

    cl_batch = wcfg.cl().batch_size
    aligned, kept = {}, {}
    for strategy in ("V1", "V2", "V3", "V4"):
        sel = select(cands, replace(acfg, strategy=strategy))
        kept[strategy] = {"samples": int(len(sel.kept)), "winners": sel.winner_counts(cands.names)}
        if strategy not in cfg.strategy_list:
            continue
        if len(sel.kept) < cl_batch:
            kept[strategy]["skipped"] = "too few samples"
            continue
        aligned[f"{strategy}-cl"] = align(cands, sel, raw, replace(wcfg, strategy=strategy, rga_method="sft-cl"),
                                          out / "reasoners" / strategy)
        checks[f"{strategy}-cl"] = check_reasoner(LTPEncoder(load_reasoner(aligned[f"{strategy}-cl"])), world,
                                                  check_cfg)
        if strategy == "V2" and cfg.sft_dpo:
            aligned["V2-dpo"] = align(cands, sel, raw, replace(wcfg, strategy=strategy, rga_method="sft-dpo"),
                                      out / "reasoners" / "V2")
    t = tick(f"Stage 2 (RG-SFT, then {', '.join(aligned) or 'nothing: too few samples'})", t)

    rows_no3, rows_full = {}, {}
    for name, path in aligned.items():
        inp = ltp_inputs(world, path, rcfg, **kw)
        rows_no3[name] = frozen_rows(stage1, inp)
        stage3, rows_full[name] = train_rows("qe-rec", inp)
        pairs[f"Stage 3 on {name} - Stage 1 QE-Rec"] = paired_seeds(stage3, stage1)
    t = tick("Stage 3 (LTP + QE-Rec retrained)", t)

    bge = {}
    if cfg.bge_rows:
        bge["QE-Rec"] = train_rows("qe-rec", generated_query_inputs(world, raw, rcfg, cfg.sentence_encoder, **kw))[1]
        if "V2-cl" in aligned:
            bge["Full"] = train_rows("qe-rec", generated_query_inputs(world, aligned["V2-cl"], rcfg,
                                                                      cfg.sentence_encoder, **kw))[1]
        t = tick("BGE-style rows", t)

    main = {"Baseline": baseline, "QE-Rec": qerec}
    stages = {"Baseline": ["-", "-", "-"], "QE-Rec": ["Raw LLM", "-", "No"]}
    if "V2-cl" in aligned:
        main["RGAlign-Rec (SFT&CL, no Stage 3)"] = rows_no3["V2-cl"]
        stages["RGAlign-Rec (SFT&CL, no Stage 3)"] = ["Tuned", "SFT&CL", "No"]
    if "V2-dpo" in aligned:
        main["RGAlign-Rec (SFT&DPO)"] = rows_full["V2-dpo"]
        stages["RGAlign-Rec (SFT&DPO)"] = ["Tuned", "SFT&DPO", "Yes"]
    if "V2-cl" in aligned:
        main["RGAlign-Rec (Full)"] = rows_full["V2-cl"]
        stages["RGAlign-Rec (Full)"] = ["Tuned", "SFT&CL", "Yes"]
    table2 = {**main, **improvement_rows(baseline, [r for k, r in main.items() if k != "Baseline"])}
    table3 = {"QE-Rec, BGE-style": bge["QE-Rec"]} if "QE-Rec" in bge else {}
    if text:
        table3[f"QE-Rec, {cfg.text_encoder.upper()} (frozen text encoder)"] = text[1]
    table3["QE-Rec, LTP"] = qerec
    if "Full" in bge:
        table3.update({"RGAlign-Rec (Full), BGE-style": bge["Full"], "RGAlign-Rec (Full), LTP": rows_full["V2-cl"]})
        table3["LTP vs BGE (Rel., Full)"] = {m: f"{(rows_full['V2-cl'][m].value / bge['Full'][m].value - 1) * 100:+.2f}%"
                                             for m in METRICS if m in bge["Full"]}
    table4 = {}
    for v in cfg.strategy_list:
        if f"{v}-cl" in aligned:
            table4[f"QE-Rec (Stage 2, no Stage 3), {v}"] = rows_no3[f"{v}-cl"]
    for v in cfg.strategy_list:
        if f"{v}-cl" in aligned:
            table4[f"RGAlign-Rec (Full), {v}"] = rows_full[f"{v}-cl"]

    timings["total"] = round(time.perf_counter() - t0, 1)
    md = [f"# rgalign reproduce --scale {cfg.scale}", "",
          f"World `{world.name}`; {len(inputs_raw.train):,} training, {len(inputs_raw.val):,} validation and "
          f"{len(inputs_raw.eval):,} evaluation sessions; {cfg.seeds} ranker seeds per row (mean; +- = 95% "
          f"interval combining bootstrap and seed spread); raw reasoner `{raw}` (d = {raw_enc.dim}).", "",
          "## World headroom", "", format_table(headroom(world)), "",
          "## Table 2: main results", "", _md(table2, ["Stage1(QE)", "Stage2(RGA)", "Stage3"], stages), "",
          "## Table 3: LTP vs BGE-style (generated query -> frozen sentence encoder)", "", _md(table3), "",
          "## Table 4: best-of-N strategies", "", _md(table4), "",
          "## Paired differences (evaluation week, the same sessions; per seed and a t-interval over seeds)", "",
          paired_md(pairs), "",
          "## Reasoner check: raw and RG-CL-aligned (`rgalign reasoner check`)", "", checks_md(checks), "",
          "## Teacher pool (reward of each candidate source, Stage-1 QE-Rec seed 0)", "",
          frame_md(teacher_table), "",
          f"Reward separation over {separation['contexts']:,} contexts with >= 2 valid candidates: mean NDCG spread "
          f"(best - worst) {separation['ndcg_spread']:.3f}; winner beats the runner-up by more than one rank step "
          f"in {separation['resolved_share']:.1%} of them.", "",
          "Samples kept per strategy: " + ", ".join(f"{k}: {v['samples']}" for k, v in kept.items()), "",
          "## Wall time (s)", "", "| step | s |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in timings.items()]
    (out / "reproduce.md").write_text("\n".join(md) + "\n")
    result = {"table2": table2, "table3": table3, "table4": table4, "kept": kept, "timings": timings,
              "paired": pairs, "checks": {k: c.metrics() for k, c in checks.items()},
              "teachers": teacher_table.to_dict("records"),
              "separation": separation}
    (out / "reproduce.json").write_text(json.dumps(result, default=lambda o: o.__dict__, indent=1))
    plot(table2, table4, out / "reproduce.png")
    return result


def frame_md(df) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|---" * len(df.columns) + "|"] +
                     ["| " + " | ".join(r) + " |" for r in cells])


def plot(table2: dict, table4: dict, path: Path) -> Path:
    """R@3 and MRR with their intervals for the rows of Tables 2 and 4."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {k: v for k, v in {**table2, **table4}.items() if isinstance(v.get("MRR"), MetricValue)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.5), sharey=True)
    names = list(rows)[::-1]
    for ax, m in zip(axes, ("R@3", "MRR")):
        vals = np.array([rows[n][m].value for n in names]) * 100
        err = np.array([(rows[n][m].hi - rows[n][m].lo) / 2 for n in names]) * 100
        ax.barh(names, vals, xerr=err, color=["#888" if n == "Baseline" else "#3a7" for n in names], capsize=3)
        ax.set_xlim(max(0, vals.min() - 3 * err.max() - 1), vals.max() + 3 * err.max() + 1)
        ax.set_xlabel(f"{m} (%)")
        ax.axvline(rows["Baseline"][m].value * 100, color="#888", ls="--", lw=1)
    fig.suptitle("rgalign reproduce: rows of Tables 2 and 4 (mean over seeds, 95% intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
