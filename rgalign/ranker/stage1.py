"""Stage 1 as one call: inputs -> train -> evaluate -> MLflow (params, per-epoch metrics, table, model).

The CLI (``rgalign train ranker``), the KFP component and the tests call ``run_ranker``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rgalign.config import RankerConfig
from rgalign.distributed import DistEnv
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


def _train_and_evaluate(cfg: RankerConfig, inputs: RankerInputs, progress: bool, log_fn, label: str, dist: DistEnv):
    trainer = RankerTrainer(cfg, inputs, progress, log_fn, dist)
    result = trainer.train()
    ev = trainer.data["eval"]
    table = {label: evaluate_model(result.model, ev, seed=cfg.seed),
             **cold_start_rows(result.model, ev, inputs.kb, label, cfg.seed)}
    return result, table


def run_ranker(cfg: RankerConfig, world: str | Path, tracking: bool = True, tracking_uri: str | None = None,
               root: str | Path = "artifacts", inputs: RankerInputs | None = None, progress: bool = True,
               label: str | None = None, experiment_name: str = "rgalign-ranker",
               dist: DistEnv | None = None) -> RankerRun:
    """Train and evaluate one ranker. Under a launcher (``torchrun``; ``dist`` from the environment by default)
    every rank trains its part of each batch (DDP) and only rank 0 logs to MLflow."""
    t0 = time.perf_counter()
    dist = dist or DistEnv.from_env().init()
    tracking, progress = tracking and dist.main, progress and dist.main
    world = Path(world)
    digest = dataset_digest(world)
    inputs = inputs or load_ranker_inputs(world, cfg.query_encoder, cfg.query_dim, cfg.intent_encoder,
                                          cfg.val_days, cfg.max_train_sessions, cfg.seed, progress,
                                          shard_rows=cfg.shard_rows)
    label = label or MODEL_LABEL[cfg.model]
    if not tracking:
        result, table = _train_and_evaluate(cfg, inputs, progress, None, label, dist)
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
                                            lambda m, step: mlflow.log_metrics(m, step=step), label, dist)
        mlflow.log_metrics({f"eval_{k.replace('@', '_at_')}": v.value for k, v in table[label].items()})
        mlflow.log_metrics({"best_epoch": result.best_epoch, "train_seconds": result.seconds,
                            "train_samples_per_s": result.samples_per_s})
        uri = log_ranker(result, inputs, {**headroom(world), **table}, {"world_digest": digest})
        return RankerRun(result, table, inputs, run.info.run_id, uri, time.perf_counter() - t0)


def save_run(run: RankerRun, out: str | Path, dist: DistEnv | None = None) -> Path:
    """Rank 0 saves the checkpoint (``rgalign.ranker.checkpoint``); every rank writes ``shards/rank<r>.npz``,
    the training rows it trained on in each epoch (``epoch1``, ...; under DDP the ranks' rows of an epoch are
    disjoint and together all of them)."""
    from rgalign.ranker.checkpoint import save_ranker
    from rgalign.ranker.data import family_ids
    dist, out = dist or DistEnv(), Path(out)
    save_shards(run.result, out, dist)
    if dist.main:
        kb = run.inputs.kb
        save_ranker(run.result.model, run.result.spec, run.result.cfg, run.inputs.semantic, family_ids(kb), kb, out,
                    meta={"label": MODEL_LABEL[run.result.cfg.model], "ranks": dist.world,
                          "train_sessions": len(run.inputs.train)})
    dist.barrier()
    return out


def save_shards(result: TrainResult, out: str | Path, dist: DistEnv) -> Path:
    """``out/shards/rank<r>.npz``: the training rows this rank trained on, one array per epoch."""
    import numpy as np
    path = Path(out) / "shards" / f"rank{dist.rank}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"epoch{i + 1}": r for i, r in enumerate(result.shard_rows)})
    return path
