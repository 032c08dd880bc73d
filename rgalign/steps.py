"""The training pipeline's steps as functions of folders: what each KFP component in ``components/`` calls.

Each step reads its inputs from folders written by earlier steps and writes one output folder (a KFP
artifact's ``.path``); it returns the small metrics dict the component logs. Every folder is written
atomically by the library (world, reasoner, checkpoints), so a failed step leaves earlier ones intact.

    prepare_features -> build_reasoner -> train_ranker (Stage 1) -> teacher_queries -> reward_best_of_n
    -> rg_sft -> rg_cl | rg_dpo -> train_ranker (Stage 3) -> evaluation_gate -> register
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from rgalign.config import REPRODUCE_PRESETS, AlignmentConfig, RankerConfig, ReasonerConfig, WorldConfig

_CI = REPRODUCE_PRESETS["ci"]  # the pipeline's defaults are the ci sizes of `rgalign reproduce`


@dataclass
class PipelineConfig:
    """The knobs a pipeline run takes (all plain values: they become KFP pipeline parameters)."""
    scale: str = "ci"
    world_seed: int = 0
    reasoner_steps: int = _CI["pretrain_steps"]
    max_train: int = _CI["max_train"]
    max_val: int = _CI["max_val"]
    max_eval: int = _CI["max_eval"]
    ranker_epochs: int = _CI["ranker_epochs"]
    n_samples: int = _CI["n_samples"]
    strategy: str = "V2"
    method: str = "sft-cl"
    rga_epochs: float = _CI["sft_epochs"]
    env: str = "dev"
    gate_metric: str = "MRR"
    gate_tolerance: float = 0.01

    def __post_init__(self):
        # KFP passes dict parameters through protobuf Struct, where every number is a float: cast back
        for f in fields(self):
            v = getattr(self, f.name)
            want = type(f.default)
            if want is int and isinstance(v, float):
                if not v.is_integer():
                    raise ValueError(f"pipeline parameter {f.name} must be an integer, got {v}")
                setattr(self, f.name, int(v))
            elif want is float and isinstance(v, int):
                setattr(self, f.name, float(v))
            elif not isinstance(getattr(self, f.name), want):
                raise ValueError(f"pipeline parameter {f.name} must be {want.__name__}, got {v!r}")
        if self.scale not in ("ci", "bench", "paper"):
            raise ValueError(f"scale={self.scale!r}; use ci, bench or paper")
        if self.strategy not in ("V1", "V2", "V3", "V4"):
            raise ValueError(f"strategy={self.strategy!r}; use V1, V2, V3 or V4")


def report(metrics, values: dict) -> None:
    """Log ``values`` on a KFP ``Metrics`` artifact and also write them to its path: kfp.local's cache treats
    an output whose file is missing as stale, and lightweight Metrics write no file of their own."""
    values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    for k, v in values.items():
        metrics.log_metric(k, v)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=1))


def inject_failure(step: str) -> None:
    """Fault injection for tests and game days: ``RGALIGN_INJECT_FAILURE=<step>`` makes that step fail."""
    import os
    if os.environ.get("RGALIGN_INJECT_FAILURE") == step:
        raise RuntimeError(f"injected failure in step {step!r} (RGALIGN_INJECT_FAILURE)")


def world_of(folder: str | Path) -> Path:
    """The world directory inside a ``prepare_features`` output folder."""
    found = [p.parent for p in Path(folder).glob("*/manifest.json")]
    if len(found) != 1:
        raise FileNotFoundError(f"{folder} holds {len(found)} worlds; expected the output of prepare_features")
    return found[0]


def prepare_features(scale: str, seed: int, out: str | Path) -> dict:
    """Embedded default: generate the world's parquet sources, then Feast apply + materialize + the
    point-in-time training set (cached beside the world). On a cluster the sources already exist."""
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.ranker.inputs import load_ranker_inputs
    from rgalign.world.generate import generate_world
    world = generate_world(WorldConfig(scale=scale, seed=seed), out, progress=False)
    fs = FeatureStoreSession(world)
    fs.apply()
    fs.materialize()
    inputs = load_ranker_inputs(world, "hashing", 16, "hashing", progress=False, max_val_sessions=1, max_eval_sessions=1)
    return {"train_sessions": len(inputs.train), "world_digest": fs.manifest["config_digest"]}


def build_reasoner(world_folder: str | Path, steps: int, out: str | Path) -> dict:
    from rgalign.reasoner.sources import build_reasoner as build
    path = build(ReasonerConfig(source="tiny", pretrain_steps=steps, pretrain_batch=_CI["pretrain_batch"],
                                corpus_sessions=_CI["corpus_sessions"]),
                 world_of(world_folder), out, progress=False)
    meta = json.loads((Path(path) / "rgalign_reasoner.json").read_text())
    return {"loss_last": meta.get("loss_last") or 0.0}


def train_ranker(world_folder: str | Path, reasoner: str | Path, cfg: PipelineConfig, out: str | Path,
                 label: str = "QE-Rec") -> dict:
    """Stage 1 (raw reasoner) or Stage 3 (aligned reasoner): QE-Rec on the reasoner's LTP, evaluated on the
    evaluation week, saved as a checkpoint with its table."""
    from rgalign.alignment.calibrate import ltp_inputs
    from rgalign.ranker.checkpoint import save_ranker
    from rgalign.ranker.ranker_trainer import RankerTrainer, evaluate_model
    inject_failure(f"train_ranker:{label}")
    world = world_of(world_folder)
    rcfg = RankerConfig(epochs=cfg.ranker_epochs, max_train_sessions=cfg.max_train)
    inputs = ltp_inputs(world, reasoner, rcfg, cfg.max_val, cfg.max_eval, progress=False)
    trainer = RankerTrainer(rcfg, inputs, progress=False)
    result = trainer.train()
    metrics = {k: v.value for k, v in evaluate_model(result.model, trainer.data["eval"]).items()}
    fam = inputs.kb.family.astype("category").cat.codes.to_numpy() + 1
    meta = json.loads((Path(reasoner) / "rgalign_reasoner.json").read_text())
    save_ranker(result.model, result.spec, rcfg, inputs.semantic, fam, inputs.kb, out,
                meta={"world": world.name, "reasoner_digest": meta.get("digest"), "label": label,
                      "eval": metrics})
    return metrics


def teacher_queries(world_folder: str | Path, reasoner: str | Path, cfg: PipelineConfig, out: str | Path) -> dict:
    from rgalign.alignment.calibrate import ltp_inputs
    from rgalign.alignment.stage2 import generate_candidates
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    world = world_of(world_folder)
    enc = LTPEncoder(load_reasoner(reasoner))
    inputs = ltp_inputs(world, reasoner, RankerConfig(max_train_sessions=cfg.max_train), cfg.max_val, cfg.max_eval,
                        progress=False, encoder=enc)
    p = generate_candidates(inputs.train, inputs.kb, enc, AlignmentConfig(n_samples=cfg.n_samples, min_samples=8))
    p.save(out)
    return {"samples": len(p.queries), **{f"dropped_{k}": v for k, v in p.dropped.items()}}


def reward_best_of_n(world_folder: str | Path, reasoner: str | Path, ranker: str | Path, proposals: str | Path,
                     cfg: PipelineConfig, out: str | Path) -> dict:
    """Score every proposal with the Stage-1 QE-Rec (NDCG of the clicked intent) and select Q^w / Q^l."""
    import pandas as pd

    from rgalign.alignment.stage2 import Proposals, score_candidates, select
    from rgalign.ranker.checkpoint import load_ranker
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    kb = pd.read_parquet(world_of(world_folder) / "kb.parquet")
    model, spec, _, _ = load_ranker(ranker)
    c = score_candidates(Proposals.load(proposals), kb, model, spec, LTPEncoder(load_reasoner(reasoner)))
    sel = select(c, AlignmentConfig(strategy=cfg.strategy, n_samples=cfg.n_samples))
    c.save(out)
    (Path(out) / "selection.json").write_text(json.dumps({"strategy": sel.strategy, "kept": sel.kept.tolist(),
                                                          "winner": sel.winner.tolist(), "losers": sel.losers}))
    return {"kept": int(len(sel.kept)), **{f"wins_{k}": v for k, v in sel.winner_counts(c.names).items()}}


def _load_selection(folder: str | Path):
    from rgalign.alignment.best_of_n import Selection
    from rgalign.alignment.stage2 import Candidates
    import numpy as np
    j = json.loads((Path(folder) / "selection.json").read_text())
    return Candidates.load(folder), Selection(j["strategy"], np.array(j["kept"], int), np.array(j["winner"], int),
                                              j["losers"])


def rga(method: str, candidates: str | Path, reasoner: str | Path, cfg: PipelineConfig, out: str | Path) -> dict:
    """One RGA trainer on the best-of-N selection: ``rg-sft`` (on the raw reasoner), ``rg-cl`` / ``rg-dpo``
    (on the RG-SFT reasoner)."""
    from rgalign.alignment.rg_cl_config import RGCLConfig
    from rgalign.alignment.rg_cl_trainer import rg_cl
    from rgalign.alignment.rg_dpo_config import RGDPOConfig
    from rgalign.alignment.rg_dpo_trainer import rg_dpo
    from rgalign.alignment.rg_sft_config import RGSFTConfig
    from rgalign.alignment.rg_sft_trainer import rg_sft
    c, sel = _load_selection(candidates)
    winners = c.winners(sel)
    if method == "rg-sft":
        path = rg_sft(reasoner, winners, RGSFTConfig(epochs=cfg.rga_epochs), out)
    elif method == "rg-cl":
        path = rg_cl(reasoner, winners, c.winner_embeddings(sel), RGCLConfig(epochs=cfg.rga_epochs), out)
    elif method == "rg-dpo":
        path = rg_dpo(reasoner, c.preference_triples(sel, 1), RGDPOConfig(epochs=cfg.rga_epochs), out)
    else:
        raise ValueError(f"method={method!r}; use rg-sft, rg-cl or rg-dpo")
    meta = json.loads((Path(path) / "rgalign_reasoner.json").read_text())
    return {"train_loss": meta.get("train_loss") or 0.0, "samples": len(winners)}


def evaluation_gate(stage1: str | Path, stage3: str | Path, metric: str, tolerance: float) -> tuple[bool, str]:
    """Register only if Stage 3 does not regress ``metric`` vs Stage 1 by more than ``tolerance``."""
    a = json.loads((Path(stage1) / "meta.json").read_text())["eval"]
    b = json.loads((Path(stage3) / "meta.json").read_text())["eval"]
    if metric not in a:
        raise ValueError(f"gate metric {metric!r} is unknown; use one of {sorted(a)}")
    ok = b[metric] >= a[metric] - tolerance
    rows = "\n".join(f"| {m} | {a[m] * 100:.2f} | {b[m] * 100:.2f} | {(b[m] - a[m]) * 100:+.2f} |" for m in a)
    md = (f"# Evaluation gate: {'PASS' if ok else 'FAIL'}\n\n{metric}: Stage 3 {b[metric]:.4f} vs Stage 1 "
          f"{a[metric]:.4f} (tolerance {tolerance})\n\n| metric | Stage 1 | Stage 3 | delta |\n|---|---:|---:|---:|\n{rows}\n")
    return ok, md


def register(reasoner: str | Path, ranker: str | Path, world_folder: str | Path, env: str, run_id: str,
             tracking_uri: str | None = None, root: str | Path = "artifacts") -> dict:
    """Log and register the aligned reasoner and the Stage-3 ranker as ``candidate`` versions with lineage."""
    from rgalign.features.feast_io import FEATURE_SERVICE
    from rgalign.registry import Registry, log_reasoner_model
    from rgalign.tracking import log_ranker_checkpoint
    world = world_of(world_folder)
    digest = json.loads((world / "manifest.json").read_text())["config_digest"]
    rmeta = json.loads((Path(reasoner) / "rgalign_reasoner.json").read_text())
    kmeta = json.loads((Path(ranker) / "meta.json").read_text())
    reg = Registry(tracking_uri, root)
    lineage = {"pipeline_run_id": run_id, "world_digest": digest, "feature_service": FEATURE_SERVICE}
    reasoner_uri = log_reasoner_model(reasoner, tracking_uri, root, lineage)   # logging first: no registry writes
    ranker_uri = log_ranker_checkpoint(ranker, tracking_uri, root, lineage)
    # both versions first, aliases last: a failure in between leaves no alias moved and no half pair
    rv = reg.register("reasoner", env, reasoner_uri,
                      {**lineage, "reasoner_digest": rmeta.get("digest"), "method": rmeta.get("source"),
                       "parent_digest": rmeta.get("parent_digest")}, kmeta["eval"], alias=None)
    try:
        inject_failure("register:ranker")
        kv = reg.register("ranker", env, ranker_uri, {**lineage, "parent_reasoner": f"{env}.reasoner/{rv}",
                                                       "reasoner_digest": kmeta.get("reasoner_digest")}, kmeta["eval"],
                          alias=None)
    except Exception:
        reg.unregister("reasoner", env, rv, "the ranker of the same run failed to register")
        raise
    reg.promote(env, "reasoner", rv, "candidate")
    reg.promote(env, "ranker", kv, "candidate")
    return {"reasoner_version": rv, "ranker_version": kv}


def render_manifests(env: str, alias: str, tracking_uri: str | None, root: str | Path, out: str | Path) -> dict:
    """The KServe InferenceServices of the just-registered versions (validated against the CRD schema)."""
    from rgalign.config import DeployConfig
    from rgalign.registry import Registry
    from serving.manifests import render
    bundle = Registry(tracking_uri, root).serving_bundle(env, alias)
    paths = render(bundle, DeployConfig(env=env, alias=alias), out)
    return {"manifests": len(paths), "ranker_version": int(bundle["ranker"]["version"])}


class DriftDetected(RuntimeError):
    """The drift gate fired and the caller asked to fail on drift."""


def drift_gate(world_folder: str | Path, scenario: str, window: int, fail_on_drift: bool) -> tuple[bool, str]:
    """The monitoring gate: evaluation week vs training weeks (optionally under a drifted scenario). Returns
    ``(fired, markdown report)``; raises ``DriftDetected`` when it fired and ``fail_on_drift``."""
    from monitoring.jobs import run_drift
    inject_failure("drift_gate")
    res = run_drift(world_of(world_folder), window, scenario or None)
    g, f = res["gate"], res["features"]
    md = (f"# Drift gate: {'FIRED' if g.fired else 'quiet'}\n\n" + "\n".join(f"- {r}" for r in g.reasons) +
          f"\n\n{len(f.drifted)}/{len(f.per_column)} columns drifted ({f.methods['num_method']} / "
          f"{f.methods['cat_method']}, {f.n_reference:,} vs {f.n_current:,} sessions)\n")
    if g.fired and fail_on_drift:
        raise DriftDetected("drift gate fired: " + "; ".join(g.reasons))
    return g.fired, md


def request_retraining(reason: str, env: str, tracking_uri: str | None, root: str | Path) -> str:
    """Record a retraining request in MLflow (experiment ``rgalign-monitoring``) and, when ``KFP_HOST`` is set,
    submit the compiled training pipeline (``RGALIGN_PIPELINE_PACKAGE``) to it. Returns the MLflow run id."""
    import os

    import mlflow

    from rgalign.tracking import experiment
    exp = experiment("rgalign-monitoring", tracking_uri, root)
    with mlflow.start_run(experiment_id=exp, run_name="retraining requested") as run:
        mlflow.set_tags({"action": "retraining-requested", "env": env, "reason": reason[:5000]})
        host = os.environ.get("KFP_HOST")
        if host:
            from pipelines.run import submit
            run_id = submit(os.environ.get("RGALIGN_PIPELINE_PACKAGE", "rgalign-training.yaml"), host, PipelineConfig(env=env))
            mlflow.set_tag("training_run_id", run_id)
    return run.info.run_id
