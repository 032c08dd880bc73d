"""KFP lightweight components of the training pipeline: thin wrappers over ``rgalign.steps``.

Each component runs in the project image (``RGALIGN_IMAGE``, default below), imports the library inside its
body (only the body is shipped), never pip-installs anything (``install_kfp_package=False``, no
``packages_to_install``), and passes typed artifacts: ``Dataset`` (world, proposals, candidates), ``Model``
(reasoners, rankers), ``Metrics`` and ``Markdown``. ``config`` is ``rgalign.steps.PipelineConfig`` as a dict.
"""

import os

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

BASE_IMAGE = os.environ.get("RGALIGN_IMAGE", "ghcr.io/rgalign/rgalign-rec:0.1.0-python3.11")


def component(fn):
    return dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)(fn)


@component
def prepare_features(config: dict, world: Output[Dataset], metrics: Output[Metrics]):
    """Feast: sources -> apply -> materialize -> point-in-time training set (the world, in the embedded default)."""
    from rgalign.steps import PipelineConfig, report, prepare_features as step
    cfg = PipelineConfig(**config)
    out = step(cfg.scale, cfg.world_seed, world.path)
    world.metadata.update({"world_digest": out.pop("world_digest"), "feature_service": "intent_ranking_v1"})
    report(metrics, out)


@component
def build_reasoner(config: dict, world: Input[Dataset], reasoner: Output[Model]):
    """The raw query reasoner: a tiny Qwen3 with its own tokenizer, pre-trained on the world's training weeks."""
    from rgalign.steps import PipelineConfig, build_reasoner as step
    reasoner.metadata.update(step(world.path, PipelineConfig(**config).reasoner_steps, reasoner.path))


@component
def train_ranker(config: dict, label: str, world: Input[Dataset], reasoner: Input[Model], ranker: Output[Model],
                 metrics: Output[Metrics]):
    """Stage 1 (raw reasoner) or Stage 3 (aligned reasoner): QE-Rec on LTP, evaluated on the evaluation week."""
    from rgalign.steps import PipelineConfig, report, train_ranker as step
    report(metrics, step(world.path, reasoner.path, PipelineConfig(**config), ranker.path, label))
    ranker.metadata["label"] = label


@component
def teacher_queries(config: dict, world: Input[Dataset], reasoner: Input[Model], proposals: Output[Dataset],
                    metrics: Output[Metrics]):
    """Multi-LLM sample generation: every teacher and the reasoner write one query per context."""
    from rgalign.steps import PipelineConfig, report, teacher_queries as step
    report(metrics, step(world.path, reasoner.path, PipelineConfig(**config), proposals.path))


@component
def reward_best_of_n(config: dict, world: Input[Dataset], reasoner: Input[Model], ranker: Input[Model],
                     proposals: Input[Dataset], candidates: Output[Dataset], metrics: Output[Metrics]):
    """The Stage-1 QE-Rec scores every query (NDCG of the clicked intent); best-of-N picks Q^w and Q^l."""
    from rgalign.steps import PipelineConfig, report, reward_best_of_n as step
    report(metrics, step(world.path, reasoner.path, ranker.path, proposals.path, PipelineConfig(**config),
                     candidates.path))


@component
def rg_sft(config: dict, candidates: Input[Dataset], reasoner: Input[Model], aligned: Output[Model],
           metrics: Output[Metrics]):
    """RG-SFT (Eq. 8) on the winners, LoRA merged."""
    from rgalign.steps import PipelineConfig, report, rga
    report(metrics, rga("rg-sft", candidates.path, reasoner.path, PipelineConfig(**config), aligned.path))


@component
def rg_cl(config: dict, candidates: Input[Dataset], reasoner: Input[Model], aligned: Output[Model],
          metrics: Output[Metrics]):
    """RG-CL (Eq. 11): InfoNCE on last-token states + 0.01 causal LM, NEFTune."""
    from rgalign.steps import PipelineConfig, report, rga
    report(metrics, rga("rg-cl", candidates.path, reasoner.path, PipelineConfig(**config), aligned.path))


@component
def rg_dpo(config: dict, candidates: Input[Dataset], reasoner: Input[Model], aligned: Output[Model],
           metrics: Output[Metrics]):
    """RG-DPO (Eq. 9-10) with the RG-SFT checkpoint as the reference."""
    from rgalign.steps import PipelineConfig, report, rga
    report(metrics, rga("rg-dpo", candidates.path, reasoner.path, PipelineConfig(**config), aligned.path))


@component
def evaluation_gate(config: dict, stage1: Input[Model], stage3: Input[Model], report: Output[Markdown]) -> bool:
    """Pass when Stage 3 does not regress the gate metric vs Stage 1 beyond the tolerance."""
    from rgalign.steps import PipelineConfig, evaluation_gate as step
    cfg = PipelineConfig(**config)
    ok, md = step(stage1.path, stage3.path, cfg.gate_metric, cfg.gate_tolerance)
    with open(report.path, "w") as f:
        f.write(md)
    return ok


@component
def register_models(config: dict, artifacts_root: str, tracking_uri: str, run_id: str, world: Input[Dataset],
                    reasoner: Input[Model], ranker: Input[Model], metrics: Output[Metrics]):
    """Register the aligned reasoner and the Stage-3 ranker in MLflow as ``candidate`` with lineage tags."""
    from rgalign.steps import PipelineConfig, report, register
    out = register(reasoner.path, ranker.path, world.path, PipelineConfig(**config).env, run_id,
                   tracking_uri or None, artifacts_root or "artifacts")
    report(metrics, {k: int(v) for k, v in out.items()})


@component
def record_run_status(artifacts_root: str, tracking_uri: str, run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: record how the run ended (and which task failed) in MLflow, success or not."""
    from rgalign.tracking import record_pipeline_status
    record_pipeline_status(run_id, status.state, status.error_message or "", artifacts_root or "artifacts",
                           tracking_uri or None)


@component
def render_manifests(config: dict, artifacts_root: str, tracking_uri: str, manifests: Output[Dataset],
                     metrics: Output[Metrics]):
    """KServe InferenceServices (reasoner, ranker, vLLM reasoner) of the registered candidate, CRD-validated."""
    from rgalign.steps import PipelineConfig, render_manifests as step, report
    report(metrics, step(PipelineConfig(**config).env, "candidate", tracking_uri or None, artifacts_root or "artifacts",
                         manifests.path))


@component
def drift_gate(config: dict, world: Input[Dataset], scenario: str, window: int, fail_on_drift: bool,
               report_md: Output[Markdown]) -> bool:
    """The monitoring gate: feature drift of the evaluation week vs the training weeks; True when it fired."""
    from rgalign.steps import drift_gate as step
    fired, md = step(world.path, scenario, window, fail_on_drift)
    with open(report_md.path, "w") as fh:
        fh.write(md)
    return fired


@component
def request_retraining(config: dict, artifacts_root: str, tracking_uri: str, reason: str) -> str:
    """Record the retraining request (and submit the training pipeline when KFP_HOST is set)."""
    from rgalign.steps import PipelineConfig, request_retraining as step
    return step(reason, PipelineConfig(**config).env, tracking_uri or None, artifacts_root or "artifacts")
