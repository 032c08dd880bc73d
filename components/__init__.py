"""KFP lightweight components of the training pipeline: thin wrappers over ``rgalign.workflow``.

Each component runs in the project image (``RGALIGN_IMAGE``, default below), imports the library inside its
body (only the body is shipped), never pip-installs anything (``install_kfp_package=False``, no
``packages_to_install``), and passes typed artifacts: ``Dataset`` (world, proposals, candidates), ``Model``
(reasoners, rankers), ``Metrics`` and ``Markdown``. ``config`` is ``rgalign.workflow.WorkflowConfig`` as a dict; each component calls one step of
``rgalign.workflow`` (the same functions ``rgalign align`` chains in one process).
"""

import os
from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

BASE_IMAGE = os.environ.get("RGALIGN_IMAGE", "ghcr.io/rgalign/rgalign-rec:0.1.0-python3.11")


def component(fn):
    return dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)(fn)


@component
def prepare_features(config: dict, world: Output[Dataset], metrics: Output[Metrics]):
    """Feast: sources -> apply -> materialize -> point-in-time training set (the world, in the embedded default)."""
    from pipelines.artifacts import report
    from rgalign.workflow import WorkflowConfig, prepare_features as step
    out = step(WorkflowConfig(**config), world.path)
    world.metadata.update({"world_digest": out.pop("world_digest"), "feature_service": "intent_ranking_v1"})
    report(metrics, out)


@component
def build_reasoner(config: dict, world: Input[Dataset], reasoner: Output[Model]):
    """The raw query reasoner: the registered base of the same settings and world, or a tiny Qwen3 built here
    (LM loss + LTP distillation), checked (`rgalign reasoner check`) and registered as that base."""
    from rgalign.workflow import WorkflowConfig, build_reasoner as step
    reasoner.metadata.update(step(world.path, WorkflowConfig(**config), reasoner.path))


@component
def embed_ltp(config: dict, world: Input[Dataset], reasoner: Input[Model], shard: int, shards: int,
              vectors: Output[Dataset], metrics: Output[Metrics]):
    """One shard of the bulk LTP of every context the rankers read (a ParallelFor iteration; resumable)."""
    from pipelines.artifacts import report
    from rgalign.workflow import WorkflowConfig, embed_ltp as step
    out = step(world.path, reasoner.path, WorkflowConfig(**config), shard, shards, vectors.path)
    vectors.metadata.update({"shard": shard, "shards": shards, "reasoner_version": out["reasoner_version"]})
    report(metrics, {k: v for k, v in out.items() if k != "reasoner_version"})


@component
def train_ranker(config: dict, label: str, model: str, world: Input[Dataset], reasoner: Input[Model],
                 ltp: Input[List[Dataset]], ranker: Output[Model], metrics: Output[Metrics]):
    """Stage 1 / Stage 3 QE-Rec on LTP (the sharded LTP's vectors), or the baseline: early stopping and ranks
    on the validation days."""
    from pipelines.artifacts import report
    from pipelines.trainjob import run_step   # here, or a TrainJob when the profile gives the step ranks
    report(metrics, run_step("train-ranker", {"world_folder": world.path, "reasoner": reasoner.path, "cfg": config,
                                              "out": ranker.path, "label": label, "model": model,
                                              "ltp": [a.path for a in ltp]}))
    ranker.metadata.update({"label": label, "model": model})


@component
def teacher_queries(config: dict, world: Input[Dataset], reasoner: Input[Model], proposals: Output[Dataset],
                    metrics: Output[Metrics]):
    """Multi-LLM sample generation: every teacher and the reasoner write one query per context."""
    from pipelines.artifacts import report
    from rgalign.workflow import WorkflowConfig, teacher_queries as step
    report(metrics, step(world.path, reasoner.path, WorkflowConfig(**config), proposals.path))


@component
def reward_best_of_n(config: dict, world: Input[Dataset], reasoner: Input[Model], ranker: Input[Model],
                     proposals: Input[Dataset], candidates: Output[Dataset], metrics: Output[Metrics]):
    """The Stage-1 QE-Rec scores every query (NDCG of the clicked intent); best-of-N picks Q^w and Q^l."""
    from pipelines.artifacts import report
    from rgalign.workflow import WorkflowConfig, reward_best_of_n as step
    report(metrics, step(world.path, reasoner.path, ranker.path, proposals.path, WorkflowConfig(**config),
                         candidates.path))


@component
def rg_sft(config: dict, candidates: Input[Dataset], reasoner: Input[Model], aligned: Output[Model],
           metrics: Output[Metrics]):
    """RG-SFT (Eq. 8) on the winners, LoRA merged."""
    from pipelines.artifacts import report
    from pipelines.trainjob import run_step
    report(metrics, run_step("rga", {"step": "rg-sft", "candidates": candidates.path, "reasoner": reasoner.path,
                                     "cfg": config, "out": aligned.path}))


@component
def rg_refine(config: dict, candidates: Input[Dataset], reasoner: Input[Model], aligned: Output[Model],
              metrics: Output[Metrics]):
    """The config's rga_method on the RG-SFT reasoner: RG-CL (Eq. 11, InfoNCE + 0.01 causal LM, NEFTune) or
    RG-DPO (Eq. 9-10, the RG-SFT checkpoint as reference)."""
    from pipelines.artifacts import report
    from pipelines.trainjob import run_step
    from rgalign.workflow import WorkflowConfig
    report(metrics, run_step("rga", {"step": "rg-refine", "candidates": candidates.path, "reasoner": reasoner.path,
                                     "cfg": config, "out": aligned.path}))
    aligned.metadata["rga_method"] = WorkflowConfig(**config).rga_method


@component
def evaluation_gate(config: dict, world: Input[Dataset], candidate: Input[Model], baseline: Input[Model],
                    stage1: Input[Model], gate: Output[Dataset], report_md: Output[Markdown]) -> bool:
    """Decided on the validation days: the candidate must beat the popularity floor beyond the paired 95%
    interval; its paired differences to the baseline and Stage 1 are recorded for promotion."""
    from rgalign.workflow import WorkflowConfig, gate_step
    g = gate_step(world.path, candidate.path, baseline.path, stage1.path, WorkflowConfig(**config), gate.path)
    with open(report_md.path, "w") as f:
        f.write(g.markdown())
    print(g.markdown())
    return g.passed


@component
def register_models(config: dict, run_id: str, world: Input[Dataset], reasoner: Input[Model], ranker: Input[Model],
                    gate: Input[Dataset], metrics: Output[Metrics]):
    """Register the aligned reasoner and the Stage-3 ranker in MLflow as ``candidate`` with lineage tags."""
    from pipelines.artifacts import report
    from rgalign.workflow import WorkflowConfig, register
    out = register(reasoner.path, ranker.path, world.path, gate.path, WorkflowConfig(**config), run_id)
    report(metrics, {k: int(v) for k, v in out.items()})


@component
def record_run_status(config: dict, run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: record how the run ended (and which task failed) in MLflow, success or not."""
    from rgalign.tracking import record_pipeline_status
    from rgalign.workflow import WorkflowConfig
    cfg = WorkflowConfig(**config)
    record_pipeline_status(run_id, status.state, status.error_message or "", cfg.root, cfg.uri)


@component
def render_manifests(config: dict, manifests: Output[Dataset],
                     metrics: Output[Metrics]):
    """KServe InferenceServices (reasoner, ranker, vLLM reasoner) of the registered candidate, CRD-validated."""
    from pipelines.artifacts import report
    from rgalign.workflow import WorkflowConfig
    from serving.manifests import render_registered
    cfg = WorkflowConfig(**config)
    report(metrics, render_registered(cfg.env, "candidate", cfg.uri, cfg.root, manifests.path))


@component
def drift_gate(config: dict, world: Input[Dataset], scenario: str, window: int, fail_on_drift: bool,
               report_md: Output[Markdown]) -> bool:
    """The monitoring gate: feature drift of the evaluation week vs the training weeks; True when it fired."""
    from monitoring.jobs import drift_gate_step as step
    fired, md = step(world.path, scenario, window, fail_on_drift)
    with open(report_md.path, "w") as fh:
        fh.write(md)
    return fired


@component
def request_retraining(config: dict, reason: str) -> str:
    """Record the retraining request (and submit the training pipeline when KFP_HOST is set)."""
    from monitoring.jobs import request_retraining as step
    from rgalign.workflow import WorkflowConfig
    return step(reason, WorkflowConfig(**config))
