"""Monitoring jobs behind ``rgalign monitor ab|drift|publish`` and the pipeline's drift gate: thin glue between
the world / Feast / serving and ``monitoring.drift`` / ``monitoring.workspace``.
"""
from __future__ import annotations

from rgalign.errors import MissingInputError

from pathlib import Path

import pandas as pd

from monitoring.drift import drift_gate, embedding_drift, feature_drift, score_drift
from monitoring.workspace import ab_snapshots, embedding_snapshot, publish, stats_row
from rgalign.abtest import ab_summary, eval_window, http_arm, simulate_ab, summary_table


def window_features(world: str | Path, split: str, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` sessions of ``split`` with their point-in-time Feast features (the monitoring windows)."""
    from rgalign.features.feast_io import FeatureStoreSession
    fs = FeatureStoreSession(world)
    s = fs.sessions(split)
    if s.empty:
        raise ValueError(f"world {world} has no {split} sessions")
    s = s.sample(min(n, len(s)), random_state=seed).sort_values("session_id")
    fs.apply()
    return fs.training_set(sessions=s)


def run_drift(world: str | Path, window: int = 2000, scenario: str | None = None, reasoner: str | None = None,
              current_reasoner: str | None = None, workspace: str | Path | None = None, max_share: float = 0.2,
              seed: int = 0, ranker: str | None = None, models: dict | None = None) -> dict:
    """Training weeks (reference) vs the evaluation week (current), optionally under a drifted scenario; with
    ``reasoner`` also the drift of the query embeddings (current ones from ``current_reasoner`` if given); with
    ``ranker`` (a checkpoint folder; a QE-Rec one reads ``reasoner``'s LTP) the drift of its top-1 score. Every
    snapshot is named and tagged with the world and the scenario, its metadata names ``models`` (e.g. the
    registry versions the folders came from)."""
    from rgalign.world.scenarios import logistics_disruption
    ref = window_features(world, "train", window, seed)
    cur = window_features(world, "eval", window, seed + 1)
    if scenario == "logistics":
        cur = logistics_disruption(cur, seed=seed)
    elif scenario is not None:
        raise ValueError(f"scenario={scenario!r}; known: logistics")
    ts = pd.to_datetime(cur.event_timestamp, utc=True).max().to_pydatetime()
    src, sc = Path(world).name, scenario or "none"
    meta = {"world": src, "scenario": sc, "window": str(window), **{k: str(v) for k, v in (models or {}).items()}}
    tags = [f"world:{src}", f"scenario:{sc}"]

    def label(what):
        return f"{what} {ts:%Y-%m-%d} {src}" + (f" ({sc} scenario)" if scenario else "")
    from rgalign.contract import load_contract
    contract = load_contract(world)
    feats = feature_drift(ref, cur, contract.numerical, contract.categorical, timestamp=ts, tags=("drift", *tags),
                          name=label("feature drift"), metadata=meta)
    emb = scores = None
    k = min(500, len(ref), len(cur))
    e_ref = e_cur = None
    if reasoner:
        from rgalign.ranker.inputs import verbalize_frame
        from rgalign.reasoner.ltp import LTPEncoder
        from rgalign.reasoner.sources import load_reasoner
        kb = pd.read_parquet(Path(world) / "kb.parquet")
        e_ref = LTPEncoder(load_reasoner(reasoner)).embed(verbalize_frame(ref.iloc[:k], kb, contract))
        e_cur = LTPEncoder(load_reasoner(current_reasoner or reasoner)).embed(
            verbalize_frame(cur.iloc[:k], kb, contract))
        emb = embedding_drift(e_ref, e_cur)
    if ranker:
        from rgalign.recommend import Recommender
        rec = Recommender(ranker)
        if rec.d_e and e_ref is None:
            raise ValueError("a QE-Rec ranker's scores need its reasoner's LTP: pass reasoner (--reasoner, or "
                             "--ranker ALIAS, which brings the registered parent reasoner)")
        top = [rec.rank(f.iloc[:k], e if rec.d_e else None, k=1).scores[:, 0] for f, e in ((ref, e_ref), (cur, e_cur))]
        scores = score_drift(*top, timestamp=ts, tags=("score-drift", *tags), name=label("score drift"), metadata=meta)
    gate = drift_gate(feats, max_share, contract.critical, embedding=emb, scores=scores)
    if workspace:
        snaps = [feats.snapshot] + ([scores.snapshot] if scores else [])
        snaps += [embedding_snapshot(emb, ts, tags, label("embedding drift"), meta)] if emb else []
        publish(workspace, snaps)
    return {"features": feats, "embedding": emb, "scores": scores, "gate": gate}


def run_ab(world: str | Path, champion, challenger, share: float = 0.5, days: int | None = 2,
           max_sessions: int | None = 2000, out: str | Path | None = None, workspace: str | Path | None = None,
           progress: bool = True, judge=None, targets: dict | None = None) -> dict:
    """Replay a window through two arms (URLs of recommend endpoints, or callables), write the session log,
    summarise, and publish per-day snapshots. ``targets`` (``{"champion": ..., "challenger": ...}``) say what
    each arm served (a registry version, ``popularity``); a URL arm is its own target. The log's ``arm_target``
    column and the snapshots carry them. With ``judge`` (an ``rgalign.judge.IntentJudge``), each session
    also gets ``judged_intent`` from its transcript and the judge's agreement with the world's truth is reported."""
    if out is not None and Path(out).exists():
        raise FileExistsError(f"{out} exists; A/B logs are never overwritten: choose a new --out")
    pairs = (("champion", champion), ("challenger", challenger))
    arms = {name: http_arm(a) if isinstance(a, str) else a for name, a in pairs}
    targets = {name: (targets or {}).get(name) or (a if isinstance(a, str) else getattr(a, "__name__", "in process"))
               for name, a in pairs}
    from rgalign.contract import load_contract
    log = simulate_ab(eval_window(world, days, max_sessions), arms, share, progress=progress,
                      request=load_contract(world).request)
    log["arm_target"] = log.arm.map(targets)
    from rgalign.abtest import ab_segments, segment_table
    log = ab_segments(log, world)
    summary = ab_summary(log)
    table = summary_table(summary) + "\n\nBy segment (where the query path should pay):\n" + segment_table(log)
    if judge is not None:
        from rgalign.judge import agreement, judged_hit_rate
        log["judged_intent"] = judge.judge(transcripts(world, log))
        agree = agreement(log.judged_intent.tolist(), log.true_intent)
        rate, miss = judged_hit_rate(log.shown.tolist(), log.judged_intent.tolist())
        table += (f"\nLLM judge: agreement with the true intent {agree:.3f}; judged hit rate {rate:.4f} "
                  f"({miss} sessions unlabelled) vs true hit rate {log.hit3.mean():.4f}")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        log.to_parquet(Path(out).with_suffix(".tmp"), index=False)
        Path(out).with_suffix(".tmp").replace(out)
    if workspace:
        publish(workspace, publish_inputs(log, {"world": Path(world).name}))
    return {"log": log, "summary": summary, "table": table}


def transcripts(world: str | Path, log: pd.DataFrame) -> list[str]:
    """Simulated session transcripts: the user states the need behind the true intent in the KB's words
    (production transcripts come from the chat logs)."""
    kb = pd.read_parquet(Path(world) / "kb.parquet").set_index("intent_id")
    return [f"user: {kb.description.get(int(t), 'I need help with my order')}\nassistant: Let me check that for you."
            for t in log.true_intent]


def publish_inputs(log: pd.DataFrame, metadata: dict | None = None) -> list:
    """Per-day A/B snapshots, with the tests computed on the data up to the end of each day (what a team
    watching the experiment would have seen that day); ``metadata`` (the data source) goes on each one."""
    from rgalign.abtest import LOG_COLUMNS
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing:
        raise MissingInputError(f"the A/B log lacks column(s) {missing}; publish logs written by `rgalign monitor ab`")
    if log.empty:
        raise ValueError("the A/B log is empty: nothing to publish")
    day = pd.to_datetime(log.event_timestamp, utc=True).dt.floor("D")
    stats = {}
    for d in sorted(day.unique()):
        upto = log[day <= d]
        if upto.arm.nunique() == 2:
            stats[pd.Timestamp(d).to_pydatetime()] = stats_row(ab_summary(upto))
    return ab_snapshots(log, stats, metadata)


# ---------------------------------------------------------------- the monitoring pipeline's steps
class DriftDetected(RuntimeError):
    """The drift gate fired and the caller asked to fail on drift."""


def drift_gate_step(world_folder: str | Path, scenario: str, window: int, fail_on_drift: bool) -> tuple[bool, str]:
    """The monitoring gate: evaluation week vs training weeks (optionally under a drifted scenario). Returns
    ``(fired, markdown report)``; raises ``DriftDetected`` when it fired and ``fail_on_drift``."""
    from rgalign.workflow import inject_failure, world_of
    inject_failure("drift_gate")
    res = run_drift(world_of(world_folder), window, scenario or None)
    g, f = res["gate"], res["features"]
    md = (f"# Drift gate: {'FIRED' if g.fired else 'quiet'}\n\n" + "\n".join(f"- {r}" for r in g.reasons) +
          f"\n\n{len(f.drifted)}/{len(f.per_column)} columns drifted ({f.methods['num_method']} / "
          f"{f.methods['cat_method']}, {f.n_reference:,} vs {f.n_current:,} sessions)\n")
    if g.fired and fail_on_drift:
        raise DriftDetected("drift gate fired: " + "; ".join(g.reasons))
    return g.fired, md


def request_retraining(reason: str, cfg) -> str:
    """Record a retraining request in MLflow (experiment ``rgalign-monitoring``) and, when ``KFP_HOST`` is set,
    submit the compiled training pipeline (``RGALIGN_PIPELINE_PACKAGE``) with the workflow config ``cfg`` to it.
    Returns the MLflow run id."""
    import os

    import mlflow

    from rgalign.tracking import experiment
    exp = experiment("rgalign-monitoring", cfg.uri, cfg.root)   # the store of the workflow config ``cfg``
    with mlflow.start_run(experiment_id=exp, run_name="retraining requested") as run:
        mlflow.set_tags({"action": "retraining-requested", "env": cfg.env, "reason": reason[:5000]})
        host = os.environ.get("KFP_HOST")
        if host:
            from pipelines.run import submit
            run_id = submit(os.environ.get("RGALIGN_PIPELINE_PACKAGE", "rgalign-training.yaml"), host, cfg)
            mlflow.set_tag("training_run_id", run_id)
    return run.info.run_id
