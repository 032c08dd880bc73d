"""The training pipeline (Stages 1-3 -> gate -> registry) and how it runs: kfp.local, compile, submit.

One definition serves both worlds: ``build_pipeline(profile)`` applies a cluster profile's GPU, node
selector, toleration, PVC and secret settings to the heavy steps; kfp.local ignores them.
"""

import dataclasses
from pathlib import Path

import yaml
from kfp import dsl

import components as c
from rgalign.workflow import WorkflowConfig

PROFILES = Path(__file__).parent / "cluster_profiles.yaml"


def load_profile(name: str | None, path: str | Path = PROFILES) -> dict | None:
    if name is None:
        return None
    profiles = yaml.safe_load(Path(path).read_text())
    if name not in profiles:
        raise ValueError(f"cluster profile {name!r} is not in {path}; known: {sorted(profiles)}")
    return profiles[name]


def _apply(task, settings: dict | None, profile: dict) -> None:
    from kfp import kubernetes
    if settings:
        if settings.get("accelerator_type"):
            task.set_accelerator_type(settings["accelerator_type"]).set_accelerator_limit(settings.get("accelerator_count", 1))
        if settings.get("cpu"):
            task.set_cpu_limit(str(settings["cpu"]))
        if settings.get("memory"):
            task.set_memory_limit(str(settings["memory"]))
        for k, v in (settings.get("node_selector") or {}).items():
            kubernetes.add_node_selector(task, k, v)
        for t in settings.get("tolerations") or []:
            kubernetes.add_toleration(task, **t)
    pvc = profile.get("model_cache_pvc")
    if pvc:
        kubernetes.mount_pvc(task, pvc["name"], pvc["mount_path"])
    for secret, keys in (profile.get("secrets") or {}).items():
        kubernetes.use_secret_as_env(task, secret, keys)


def trainjob_spec(kind: str, profile: dict | None):
    """The Kubeflow Trainer spec of a kind's rank steps (None: they train inside their pod)."""
    from pipelines.trainjob import TrainJobSpec
    return TrainJobSpec.from_profile(profile.get(kind), profile, c.BASE_IMAGE) if profile else None


def configure(task, kind: str, profile: dict | None, retries: int = 0, cache: bool = True, ranks: bool = False):
    """Apply ``profile``'s settings of ``kind`` to ``task``. ``ranks``: the step can run on several ranks
    (``rgalign.workflow.rank_steps``); when the kind has a ``trainjob`` block it submits a TrainJob with the
    kind's accelerators, and its own pod gets the ``light`` resources (it waits)."""
    task.set_display_name(task.name)   # (train-baseline and train-ranker-stage3 rename theirs)
    if not cache:
        task.set_caching_options(False)
    if retries:
        task.set_retry(retries, backoff_duration="30s")
    if profile is not None:
        spec = trainjob_spec(kind, profile) if ranks else None
        if spec is not None:
            import json
            from pipelines.trainjob import ENV
            task.set_env_variable(ENV, json.dumps(dataclasses.asdict(spec)))
            kind = "light"
        _apply(task, profile.get(kind), profile)
    return task


def ltp_shards(profile: dict | None) -> int:
    """How many shards the bulk LTP runs as (the profile's ``ltp_shards``; one in the embedded default)."""
    n = 1 if profile is None else profile.get("ltp_shards", 1)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"ltp_shards={n!r} in the cluster profile must be an integer >= 1")
    return n


def sharded_ltp(config, world, reasoner, profile: dict | None, name: str):
    """A ParallelFor of ``ltp_shards(profile)`` LTP shards of ``reasoner`` (``rgalign.reasoner.ltp_shards``), on
    the profile's ``llm`` nodes; returns a function that gives each training step the collected vectors (one
    ``dsl.Collected`` per consumer: KFP 2.17 fails to compile one shared by two tasks)."""
    n = ltp_shards(profile)
    with dsl.ParallelFor(items=list(range(n)), name=f"{name}-shards") as shard:
        task = configure(c.embed_ltp(config=config, world=world, reasoner=reasoner, shard=shard, shards=n),
                         "ltp" if profile and "ltp" in profile else "llm", profile, retries=1)
        task.set_display_name(name)
    return lambda: dsl.Collected(task.outputs["vectors"])


def build_pipeline(profile: dict | None = None):
    """The pipeline function; ``profile`` = a cluster profile (None for kfp.local). One task per step of
    ``rgalign.workflow.STEPS`` (the KFP task names; a test checks them), wired as ``workflow.run`` chains them."""

    @dsl.pipeline(name="rgalign-training", description="RGAlign-Rec: Stage 1 -> Stage 2 (RGA) -> Stage 3 -> "
                                                         "evaluation gate -> MLflow registry")
    def pipeline(config: dict = dataclasses.asdict(WorkflowConfig())):
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        exit_task = configure(c.record_run_status(config=config, run_id=run_id), "light", profile, cache=False)
        with dsl.ExitHandler(exit_task, name="rgalign"):
            data = configure(c.prepare_features(config=config), "light", profile)
            world = data.outputs["world"]
            raw = configure(c.build_reasoner(config=config, world=world), "llm", profile)
            raw_ltp = sharded_ltp(config, world, raw.outputs["reasoner"], profile, "embed-ltp")
            s1 = configure(c.train_ranker(config=config, label="Stage 1", model="qe-rec", world=world,
                                          reasoner=raw.outputs["reasoner"], ltp=raw_ltp()), "training", profile,
                           ranks=True)
            base = configure(c.train_ranker(config=config, label="Baseline", model="baseline", world=world,
                                            reasoner=raw.outputs["reasoner"], ltp=raw_ltp()), "training", profile,
                             ranks=True)
            base.set_display_name("train-baseline")
            props = configure(c.teacher_queries(config=config, world=world, reasoner=raw.outputs["reasoner"]),
                              "llm", profile, retries=2)
            cands = configure(c.reward_best_of_n(config=config, world=world, reasoner=raw.outputs["reasoner"],
                                                 ranker=s1.outputs["ranker"], proposals=props.outputs["proposals"]),
                              "llm", profile)
            sft = configure(c.rg_sft(config=config, candidates=cands.outputs["candidates"],
                                     reasoner=raw.outputs["reasoner"]), "llm", profile, ranks=True)
            aligned = configure(c.rg_refine(config=config, candidates=cands.outputs["candidates"],
                                            reasoner=sft.outputs["aligned"]), "llm", profile, ranks=True)
            aligned_ltp = sharded_ltp(config, world, aligned.outputs["aligned"], profile, "embed-ltp-stage3")
            s3 = configure(c.train_ranker(config=config, label="Stage 3", model="qe-rec", world=world,
                                          reasoner=aligned.outputs["aligned"], ltp=aligned_ltp()), "training", profile,
                           ranks=True)
            s3.set_display_name("train-ranker-stage3")
            gate = configure(c.evaluation_gate(config=config, world=world, candidate=s3.outputs["ranker"],
                                               baseline=base.outputs["ranker"], stage1=s1.outputs["ranker"]),
                             "light", profile)
            with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (KFP condition)
                reg = configure(c.register_models(config=config, run_id=run_id, world=world,
                                                  reasoner=aligned.outputs["aligned"], ranker=s3.outputs["ranker"],
                                                  gate=gate.outputs["gate"]), "light", profile, retries=2,
                                cache=False)  # a registry write is never skipped
                configure(c.render_manifests(config=config).after(reg), "light", profile, cache=False)
    return pipeline


def build_monitoring_pipeline(profile: dict | None = None):
    """The monitoring pipeline: features -> drift gate -> (fired) a recorded retraining request, which also
    submits the training pipeline when the step sees ``KFP_HOST``."""

    @dsl.pipeline(name="rgalign-monitoring", description="RGAlign-Rec: drift gate -> retraining request")
    def pipeline(config: dict = dataclasses.asdict(WorkflowConfig()), scenario: str = "", window: int = 2000):
        data = configure(c.prepare_features(config=config), "light", profile)
        gate = configure(c.drift_gate(config=config, world=data.outputs["world"], scenario=scenario, window=window,
                                      fail_on_drift=False), "light", profile, cache=False)
        with dsl.If(gate.outputs["Output"] == True, name="drift-detected"):  # noqa: E712 (KFP condition)
            configure(c.request_retraining(config=config, reason="drift gate fired"), "light", profile, cache=False)
    return pipeline
