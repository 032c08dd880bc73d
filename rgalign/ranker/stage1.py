"""Stage 1 as one call: inputs -> train -> evaluate -> MLflow (params, per-epoch metrics, table, model).

The CLI (``rgalign train ranker``), the KFP component and the tests call ``run_ranker``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rgalign.config import RankerConfig
from rgalign.features.feast_io import FEATURE_SERVICE
from rgalign.metrics import MetricValue
from rgalign.ranker.inputs import RankerInputs, load_ranker_inputs
from rgalign.ranker.ranker_trainer import RankerTrainer, TrainResult, evaluate_model
from rgalign.contract.dataset import dataset_digest, headroom

MODEL_LABEL = {"baseline": "Baseline (AutoInt + MMoE)", "qe-rec": "QE-Rec"}


@dataclass
class RankerRun:
    result: TrainResult
    table: dict[str, dict[str, MetricValue]]
    inputs: RankerInputs
    run_id: str | None
    model_uri: str | None
    seconds: float


def cold_start_rows(model, data, kb, label: str, seed: int) -> dict[str, dict[str, MetricValue]]:
    """The evaluation restricted to sessions whose true intent launched with the evaluation week."""
    import numpy as np
    cold = np.isin(data.clicked.numpy(), kb.intent_id[kb.launch_day > 0].to_numpy())
    if not cold.any():
        return {}
    return {f"{label} [cold-start intents, n={int(cold.sum())}]":
            evaluate_model(model, data.subset(np.flatnonzero(cold)), seed=seed)}


def _train_and_evaluate(cfg: RankerConfig, inputs: RankerInputs, progress: bool, log_fn, label: str):
    trainer = RankerTrainer(cfg, inputs, progress, log_fn)
    result = trainer.train()
    ev = trainer.data["eval"]
    table = {label: evaluate_model(result.model, ev, seed=cfg.seed),
             **cold_start_rows(result.model, ev, inputs.kb, label, cfg.seed)}
    return result, table


def run_ranker(cfg: RankerConfig, world: str | Path, tracking: bool = True, tracking_uri: str | None = None,
               root: str | Path = "artifacts", inputs: RankerInputs | None = None, progress: bool = True,
               label: str | None = None, experiment_name: str = "rgalign-ranker") -> RankerRun:
    t0 = time.perf_counter()
    world = Path(world)
    digest = dataset_digest(world)
    inputs = inputs or load_ranker_inputs(world, cfg.query_encoder, cfg.query_dim, cfg.intent_encoder,
                                          cfg.val_days, cfg.max_train_sessions, cfg.seed, progress)
    label = label or MODEL_LABEL[cfg.model]
    if not tracking:
        result, table = _train_and_evaluate(cfg, inputs, progress, None, label)
        return RankerRun(result, table, inputs, None, None, time.perf_counter() - t0)
    import mlflow

    from rgalign.tracking import experiment, log_ranker
    exp = experiment(experiment_name, tracking_uri, root)
    with mlflow.start_run(experiment_id=exp, run_name=f"{cfg.model}-{world.name}") as run:
        # the encoders that built the inputs (a reasoner's LTP is not one of cfg's text encoders)
        built = {k: getattr(inputs, k) for k in ("query_encoder", "intent_encoder") if getattr(inputs, k)}
        mlflow.log_params({f"ranker.{k}": v for k, v in {**cfg.to_dict(), **built}.items()})
        mlflow.set_tags({"world": world.name, "world_digest": digest,
                         "feature_service": FEATURE_SERVICE, "stage": label, "model": cfg.model})
        mlflow.log_params({"train_sessions": len(inputs.train), "val_sessions": len(inputs.val),
                           "eval_sessions": len(inputs.eval), "query_dim": inputs.query["train"].shape[1]})
        result, table = _train_and_evaluate(cfg, inputs, progress,
                                            lambda m, step: mlflow.log_metrics(m, step=step), label)
        mlflow.log_metrics({f"eval_{k.replace('@', '_at_')}": v.value for k, v in table[label].items()})
        mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.seconds,
                            "train_samples_per_s": result.samples_per_s})
        uri = log_ranker(result, inputs, {**headroom(world), **table}, {"world_digest": digest})
        return RankerRun(result, table, inputs, run.info.run_id, uri, time.perf_counter() - t0)
