"""MLflow tracking for every stage: SQLite by default, any tracking URI (``mlflow server``, Postgres) by
``--tracking-uri`` / ``MLFLOW_TRACKING_URI``. Artifacts of the default store land beside the database, never
in the current directory's ``./mlruns``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

DEFAULT_DIR = Path("artifacts")


def default_uri(root: str | Path = DEFAULT_DIR) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def tracking_uri(uri: str | None = None, root: str | Path = DEFAULT_DIR) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)


def use(uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect of exporting MLFLOW_TRACKING_URI (which would
    make the first store used in a process the default of every later call with another root)."""
    import mlflow
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def experiment(name: str, uri: str | None = None, root: str | Path = DEFAULT_DIR) -> str:
    """Set the tracking URI and get-or-create ``name`` with an artifact location under ``root/mlruns``."""
    import mlflow
    resolved = tracking_uri(uri, root)
    use(resolved)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        # the embedded default keeps artifacts beside its database; a server decides for itself
        loc = (Path(root).resolve() / "mlruns").as_uri() if resolved == default_uri(root) else None
        return mlflow.create_experiment(name, artifact_location=loc)
    return exp.experiment_id


def log_ranker(result, inputs, table: dict, extra_tags: dict | None = None) -> str:
    """Log a trained ranker into the active run: its checkpoint as a models-from-code pyfunc, the evaluation
    table (markdown + json) and the feature spec. Returns the model URI."""
    import mlflow
    from rgalign.metrics import format_table
    from rgalign.ranker.checkpoint import save_ranker
    from rgalign.ranker.data import family_ids
    fam = family_ids(inputs.kb)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_ranker(result.model, result.spec, result.cfg, inputs.semantic, fam, inputs.kb,
                           Path(tmp) / "checkpoint", meta={"world": inputs.world.name, **(extra_tags or {})})
        md = format_table(table, f"{result.cfg.model} on {inputs.world.name} (evaluation week, 95% CI)")
        mlflow.log_text(md, "evaluation/table.md")
        mlflow.log_text(json.dumps({m: vars(v) for r in table.values() for m, v in r.items()}, indent=2),
                        "evaluation/metrics.json")
        return _log_ranker_pyfunc(ckpt)


def _log_ranker_pyfunc(ckpt: Path) -> str:
    import mlflow
    info = mlflow.pyfunc.log_model(name="ranker", python_model=str(Path(__file__).parent / "ranker" / "pyfunc_model.py"),
                                   artifacts={"checkpoint": str(ckpt)}, pip_requirements=["rgalign-rec"])
    return info.model_uri


def log_ranker_checkpoint(ckpt: str | Path, uri: str | None = None, root: str | Path = DEFAULT_DIR,
                          tags: dict | None = None) -> str:
    """Log a saved ranker checkpoint folder (``rgalign.ranker.checkpoint``) as the ranker pyfunc in a new run
    of ``rgalign-ranker``, with its evaluation metrics; returns the model URI (what the registry registers)."""
    import mlflow
    meta = json.loads((Path(ckpt) / "meta.json").read_text())
    exp = experiment("rgalign-ranker", uri, root)
    with mlflow.start_run(experiment_id=exp, run_name=f"register {meta.get('label', 'ranker')}",
                          nested=mlflow.active_run() is not None):
        mlflow.set_tags({k: str(v) for k, v in (tags or {}).items()})
        if meta.get("mlflow_run_id"):
            mlflow.set_tag("training_run_id", meta["mlflow_run_id"])   # the run with the per-epoch curves
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
        mlflow.log_params({f"ranker.{k}": str(v) for k, v in cfg.items()})
        for split in ("eval", "val"):
            mlflow.log_metrics({f"{split}_{k.replace('@', '_at_')}": v for k, v in (meta.get(split) or {}).items()})
        return _log_ranker_pyfunc(Path(ckpt))


def log_reasoner(path: str | Path, uri: str | None = None, root: str | Path = DEFAULT_DIR,
                 run_name: str | None = None) -> str:
    """Log a reasoner directory (``save_pretrained`` output) as run artifacts; returns ``runs:/<id>/reasoner``,
    which ``rgalign.reasoner.sources.load_reasoner`` accepts."""
    import mlflow
    path = Path(path)
    meta = json.loads((path / "rgalign_reasoner.json").read_text()) if (path / "rgalign_reasoner.json").is_file() else {}
    exp = experiment("rgalign-reasoner", uri, root)
    with mlflow.start_run(experiment_id=exp, run_name=run_name or path.name) as run:
        mlflow.set_tags({"source": meta.get("source", "hf-dir"), "digest": meta.get("digest", ""),
                         "world": meta.get("world", "")})
        flat = {f"reasoner.{k}": v for k, v in (meta.get("config") or {}).items()}
        if flat:
            mlflow.log_params(flat)
        for k in ("loss_first", "loss_last", "seconds"):
            if meta.get(k) is not None:
                mlflow.log_metric(k, meta[k])
        mlflow.log_artifacts(str(path), "reasoner")
    return f"runs:/{run.info.run_id}/reasoner"


def record_pipeline_status(run_id: str, state: str, error: str, root: str | Path = DEFAULT_DIR,
                           uri: str | None = None) -> None:
    """One run in ``rgalign-pipeline-runs`` per pipeline run: its final state and error (the exit handler)."""
    import mlflow
    exp = experiment("rgalign-pipeline-runs", uri, root)
    with mlflow.start_run(experiment_id=exp, run_name=f"pipeline {run_id}"):
        mlflow.set_tags({"pipeline_run_id": run_id, "state": state, "error": error[:4000]})
