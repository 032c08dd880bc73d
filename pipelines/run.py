"""Run the training pipeline locally (kfp.local), compile it for a cluster, or submit it to Kubeflow."""
import dataclasses
import time
from pathlib import Path

from pipelines.training import build_monitoring_pipeline, build_pipeline, load_profile
from rgalign.workflow import WorkflowConfig


def _local(cfg: WorkflowConfig, caching: bool) -> tuple[WorkflowConfig, Path]:
    import kfp.local
    root = Path(cfg.root).resolve()
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
                   enable_caching=caching, raise_on_error=True)
    return dataclasses.replace(cfg, artifacts=str(root)), root


def run_local(cfg: WorkflowConfig, caching: bool = True) -> dict:
    """Run every step as a subprocess of this environment (kfp.local SubprocessRunner), with caching;
    artifacts under ``<cfg.artifacts>/kfp``, MLflow under it (SQLite) unless ``cfg.tracking_uri``."""
    cfg, root = _local(cfg, caching)
    t0 = time.perf_counter()
    build_pipeline(None)(config=dataclasses.asdict(cfg))
    return {"seconds": round(time.perf_counter() - t0, 1), "pipeline_root": str(root / "kfp")}


def run_monitoring_local(cfg: WorkflowConfig, scenario: str = "", window: int = 2000) -> dict:
    """The monitoring pipeline (drift gate -> retraining request) through kfp.local."""
    cfg, root = _local(cfg, True)
    t0 = time.perf_counter()
    build_monitoring_pipeline(None)(config=dataclasses.asdict(cfg), scenario=scenario, window=window)
    return {"seconds": round(time.perf_counter() - t0, 1), "pipeline_root": str(root / "kfp")}


def compile_pipeline(out: str | Path, profile: str | None = "gpu-a100", profiles: str | Path | None = None,
                     pipeline: str = "training") -> Path:
    """Compile to YAML (PipelineSpec + PlatformSpec) with the Kubernetes settings of ``profile``;
    ``pipeline`` = training or monitoring."""
    builders = {"training": build_pipeline, "monitoring": build_monitoring_pipeline}
    if pipeline not in builders:
        raise ValueError(f"pipeline={pipeline!r}; use one of {sorted(builders)}")
    from kfp import compiler
    prof = load_profile(profile, profiles) if profiles else load_profile(profile)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(builders[pipeline](prof), str(out))
    if pipeline == "training":
        write_trainjobs(prof, out.with_suffix(".trainjobs.yaml"))
    return out


def write_trainjobs(profile: dict | None, path: Path) -> Path | None:
    """For review and ``kubectl apply --dry-run=server``: the TrainJob each rank step of ``profile`` submits at
    run time (its arguments file named by a placeholder), validated against the vendored CRD schema; none
    when the profile trains inside the pipeline's pods."""
    import yaml

    from pipelines.training import trainjob_spec
    from pipelines.trainjob import render
    docs = []
    for kind, steps in (("training", ("train-ranker",)), ("llm", ("rga",))):
        spec = trainjob_spec(kind, profile)
        for step in steps if spec is not None else ():
            docs.append(render(step, "<staged-args.json>", spec, f"rgalign-{step}-example", "<result.json>"))
    if path.exists():
        path.unlink()
    if not docs:
        return None
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def submit(package: str | Path, host: str, cfg: WorkflowConfig, experiment: str = "rgalign", namespace: str | None = None,
           run_name: str | None = None) -> str:
    """Submit a compiled package to a Kubeflow Pipelines API server; returns the run id."""
    import kfp
    package = Path(package)
    if not package.is_file():
        raise FileNotFoundError(f"pipeline package {package} does not exist; run `rgalign pipeline compile` first")
    try:
        client = kfp.Client(host=host, namespace=namespace)
        run = client.create_run_from_pipeline_package(
            str(package), arguments={"config": dataclasses.asdict(cfg)},
            experiment_name=experiment, run_name=run_name or f"rgalign-{time.strftime('%Y%m%d-%H%M%S')}")
    except Exception as e:  # urllib3/kfp_server_api raise many types for an unreachable or refusing host
        raise ConnectionError(f"could not submit to the Kubeflow Pipelines API at {host}: {type(e).__name__}: "
                              f"{str(e)[:300]}. Check --host (e.g. http://ml-pipeline-ui.kubeflow:80) and credentials") from None
    return run.run_id
