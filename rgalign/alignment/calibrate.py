"""Stage 3, Closed-Loop Calibration (paper section 4.3): recompute LTP with the aligned reasoner pi_align and
retrain QE-Rec on it; with ``rounds > 1`` the retrained ranker is the next round's reward model.
"""
from __future__ import annotations

from pathlib import Path

from rgalign.config import RankerConfig
from rgalign.ranker.inputs import RankerInputs, load_ranker_inputs
from rgalign.reasoner.ltp import LTPEncoder
from rgalign.reasoner.sources import load_reasoner


def ltp_inputs(world: str | Path, reasoner: str | Path, cfg: RankerConfig, max_val_sessions: int | None = None,
               max_eval_sessions: int | None = None, data_seed: int = 0, progress: bool = True,
               encoder: LTPEncoder | None = None) -> RankerInputs:
    """Ranker inputs whose query embedding e is the reasoner's LTP of each session's prompt (Eq. 2-3),
    cached per reasoner version. ``data_seed`` fixes the session subsample, so every row of a comparison
    sees the same sessions."""
    encoder = encoder or LTPEncoder(load_reasoner(reasoner))
    return load_ranker_inputs(world, f"ltp-{encoder.reasoner.version}", 0, cfg.intent_encoder, cfg.val_days,
                              cfg.max_train_sessions, data_seed, progress, query_fn=encoder.embed,
                              max_val_sessions=max_val_sessions, max_eval_sessions=max_eval_sessions)


def generated_query_inputs(world: str | Path, reasoner: str | Path, cfg: RankerConfig, sentence_encoder: str = "minilm",
                           max_val_sessions: int | None = None, max_eval_sessions: int | None = None,
                           data_seed: int = 0, progress: bool = True) -> RankerInputs:
    """The BGE-style alternative of Table 3: the reasoner *generates* a query, a frozen sentence encoder
    embeds it (the encoder stays unaligned in Stage 2)."""
    from rgalign.features.text_encoders import get_encoder
    from rgalign.reasoner.generate import generate_queries
    enc = LTPEncoder(load_reasoner(reasoner))
    sentence = get_encoder(sentence_encoder)

    def fn(contexts):
        return sentence.encode(generate_queries(enc, contexts, batch_size=32))
    return load_ranker_inputs(world, f"gen-{sentence_encoder}-{enc.reasoner.version}", 0, cfg.intent_encoder,
                              cfg.val_days, cfg.max_train_sessions, data_seed, progress, query_fn=fn,
                              max_val_sessions=max_val_sessions, max_eval_sessions=max_eval_sessions)


def calibrate(world: str | Path, aligned: str | Path, cfg: RankerConfig, tracking: bool = True,
              tracking_uri: str | None = None, root: str | Path = "artifacts", progress: bool = True, **inputs_kw):
    """Stage 3 in one call: LTP of the aligned reasoner, QE-Rec retrained (and logged) on it."""
    from rgalign.ranker.stage1 import run_ranker
    inputs = ltp_inputs(world, aligned, cfg, progress=progress, **inputs_kw)
    return run_ranker(cfg, world, tracking, tracking_uri, root, inputs, progress, label="RGAlign-Rec (Stage 3)")


def closed_loop(world: str | Path, reasoner: str | Path, rcfg: RankerConfig, acfg, out: str | Path, sft=None, cl=None,
                dpo=None, tracking: bool = True, tracking_uri: str | None = None, root: str | Path = "artifacts",
                progress: bool = True, **inputs_kw) -> list[dict]:
    """Stage 1 -> (Stage 2 -> Stage 3) x ``acfg.rounds``. Each round's reward model is the previous round's
    ranker and its candidates are embedded by the previous round's reasoner (the space that ranker reads).
    Returns one record per round: reasoner directory, ranker run and evaluation table."""
    from rgalign.alignment.stage2 import align, build_candidates, select
    from rgalign.ranker.stage1 import run_ranker
    out = Path(out)
    inputs = ltp_inputs(world, reasoner, rcfg, progress=progress, **inputs_kw)
    run = run_ranker(rcfg, world, tracking, tracking_uri, root, inputs, progress, label="QE-Rec (Stage 1)")
    history = [{"round": 0, "reasoner": str(reasoner), "run_id": run.run_id, "model_uri": run.model_uri,
                "table": run.table}]
    current = Path(reasoner)
    for r in range(1, acfg.rounds + 1):
        enc = LTPEncoder(load_reasoner(current))
        cands = build_candidates(run.inputs.train, run.inputs.kb, run.result.model, run.result.spec, enc, acfg, progress)
        sel = select(cands, acfg)
        aligned = align(cands, sel, acfg.method, current, out / f"round{r}", sft, cl, dpo)
        run = calibrate(world, aligned, rcfg, tracking, tracking_uri, root, progress, **inputs_kw)
        history.append({"round": r, "reasoner": str(aligned), "run_id": run.run_id, "model_uri": run.model_uri,
                        "table": run.table, "samples": int(len(sel.kept)),
                        "winners": sel.winner_counts(cands.names)})
        current = aligned
    return history
