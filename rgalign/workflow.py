"""The training workflow, written once (paper sections 4.1-4.3): Stage 1 -> Stage 2 (RGA) -> Stage 3 -> gate
-> registry. Every caller runs these functions: the KFP components (``components/``, one per step, checked
against ``STEPS`` in a test), ``rgalign pipeline run|align|reproduce`` and the tests. No stage logic lives
anywhere else.

    prepare_features -> build_reasoner -> train_ranker (Stage 1, QE-Rec) + train_ranker (baseline)
    -> teacher_queries -> reward_best_of_n -> rg_sft -> rg_refine (RG-CL | RG-DPO) -> train_ranker (Stage 3)
    -> evaluation_gate -> register

Each step reads folders written by earlier steps and writes one output folder (a KFP artifact's ``.path``);
it returns the small metrics dict a component logs, and logs its parameters, metrics and curves to MLflow
(experiment ``rgalign-workflow``, one run per step; ``register`` tags the registered versions with those
runs). Folders are written atomically by the library, so a failed step leaves earlier ones intact.

``run`` chains the steps in one process (what ``rgalign align`` and the tests call); the KFP pipeline runs
the same functions one component at a time, so both give the same numbers for the same config.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from rgalign.config import (REPRODUCE_PRESETS, AlignmentConfig, RankerConfig, ReasonerConfig, WorldConfig, _Config,
                            _f)
from rgalign.metrics import METRICS, MetricValue, evaluate_ranks, format_table, paired_difference, segment_metrics

_CI = REPRODUCE_PRESETS["ci"]

# the steps of the workflow, in order; the KFP pipeline has one task per entry (tests/test_workflow.py)
STEPS = ("prepare-features", "build-reasoner", "embed-ltp", "train-ranker", "train-baseline", "teacher-queries",
         "reward-best-of-n", "rg-sft", "rg-refine", "embed-ltp-stage3", "train-ranker-stage3", "evaluation-gate",
         "register-models")
RGA_METHODS = ("sft-cl", "sft-dpo", "sft")
WORKFLOW_EXPERIMENT = "rgalign-workflow"


@dataclass
class WorkflowConfig(_Config):
    """The knobs of one training run (plain values: they are the KFP pipeline's ``config`` parameter and the
    ``rgalign pipeline run`` / ``rgalign align`` flags). Each field reaches exactly one stage config
    (``STAGE_FIELDS``) or the gate / registry; ``tests/test_settings.py`` walks them all."""
    data: str = _f("", "your own dataset: a folder with contract.yaml and its tables (`rgalign data init`), checked "
                   "with `rgalign data validate` before any step; empty = generate the benchmark world")
    scale: str = _f("ci", "world scale: ci (~20k sessions), bench (~1M) or paper (~7.5M)")
    world_seed: int = _f(0, "seed of the benchmark world")
    reasoner_steps: int = _f(_CI["pretrain_steps"], "pre-training steps of the built tiny reasoner")
    pretrain_batch: int = _f(_CI["pretrain_batch"], "pre-training sequences per step")
    corpus_sessions: int = _f(_CI["corpus_sessions"], "training-week sessions in the reasoner's pre-training corpus")
    max_prompt_tokens: int = _f(512, "LTP / generation: longer prompts are truncated from the left")
    distil_teacher: str = _f("minilm", "sentence encoder distilled into the reasoner's LTP during pre-training "
                             "(minilm, lsa, hashing; none = the LM loss only)")
    reuse_base: bool = _f(True, "start from the registered <env>.reasoner-base built with the same reasoner settings "
                          "on the same world when there is one; a new build that passes the check is registered as "
                          "one (needs tracking: the base lives in the MLflow registry)")
    check_reasoner: bool = _f(True, "run `rgalign reasoner check` on the built and the aligned reasoner (logged to "
                              "MLflow); the gate fails when the aligned reasoner does not pass")
    max_train: int = _f(0, "clicked training sessions of the rankers (0 = all)")
    max_val: int = _f(0, "validation-day sessions (early stopping and the gate; 0 = all)")
    max_eval: int = _f(_CI["max_eval"], "evaluation-week sessions reported (0 = all)")
    shard_rows: int = _f(0, "sessions per part of the rankers' training set, streamed from parquet a part at a "
                         "time so memory stays flat at any scale (e.g. 250000); 0 = the whole split in memory")
    ranker_epochs: int = _f(10, "maximum epochs of the Stage-1 / Stage-3 rankers and the baseline")
    ranker_seed: int = _f(0, "seed of the rankers' initialisation, shuffling and negative sampling")
    fusion: str = _f("fixed", "QE-Rec's Eq. 4 fusion: fixed (w = 0.7 for every pair, the paper) or adaptive (a gate "
                     "over the intent's training clicks and the user's recent clicks, started at 0.7)")
    intent_id_std: float = _f(RankerConfig.intent_id_std,
                              "QE-Rec's initial intent-ID embedding scale; 0.01 (the default) starts every intent near "
                              "its text, a text-first intent tower: the validation choice on the main job's run and at "
                              "bench scale (docs/results.md); 1.0 starts the ID vectors at full scale")
    n_samples: int = _f(_CI["n_samples"], "Stage-2 contexts with candidate queries")
    min_samples: int = _f(8, "fail Stage 2 if fewer contexts keep enough candidate queries")
    strategy: str = _f("V2", "best-of-N strategy: V1, V2, V3 or V4")
    query_prompt: str = _f("context", "how the frozen reasoner reads a candidate query for the reward and RG-CL's "
                           "e+: context (inside the section 3.2 prompt) or chat (a bare user turn)")
    rga_method: str = _f("sft-cl", "RGA method: sft-cl (RG-SFT then RG-CL), sft-dpo (RG-SFT then RG-DPO) or sft")
    rounds: int = _f(1, "closed-loop rounds of Stage 2 + Stage 3 (the retrained ranker is the next reward model)")
    sft_epochs: float = _f(_CI["sft_epochs"], "RG-SFT epochs")
    cl_epochs: float = _f(_CI["cl_epochs"], "RG-CL epochs")
    dpo_epochs: float = _f(_CI["dpo_epochs"], "RG-DPO epochs")
    dpo_pairs: int = _f(_CI["dpo_pairs"], "RG-DPO preference pairs per context")
    rga_max_length: int = _f(512, "RG-SFT / RG-CL / RG-DPO: prompt + query tokens (a longer prompt is an error)")
    deepspeed: bool = _f(False, "train RG-SFT / RG-CL / RG-DPO with DeepSpeed ZeRO-3")
    env: str = _f("dev", "registry environment: versions go to <env>.reasoner and <env>.ranker")
    gate_metric: str = _f("MRR", "metric of the gate (validation days): GAUC, R@3, R@5, N@3, N@5 or MRR")
    gate_margin: float = _f(0.005, "non-inferiority margin of promotion (absolute, e.g. 0.005 = 0.5 MRR points)")
    register: bool = _f(True, "register the candidate when it passes the gate")
    tracking: bool = _f(True, "log every step to MLflow")
    artifacts: str = _f("artifacts", "root of the embedded MLflow store (SQLite) and its artifacts")
    tracking_uri: str = _f("", "MLflow tracking URI (empty: SQLite under artifacts)")

    def __post_init__(self):
        # KFP passes dict parameters through protobuf Struct, where every number is a float: cast back
        for f in fields(self):
            v = getattr(self, f.name)
            want = type(f.default)
            if want is int and isinstance(v, float) and not isinstance(v, bool):
                if not v.is_integer():
                    raise ValueError(f"workflow parameter {f.name} must be an integer, got {v}")
                setattr(self, f.name, int(v))
            elif want is float and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f.name, float(v))
            elif not isinstance(getattr(self, f.name), want):
                raise ValueError(f"workflow parameter {f.name} must be {want.__name__}, got {v!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.rga_method not in RGA_METHODS:
            raise ValueError(f"rga_method={self.rga_method!r}; use one of {', '.join(RGA_METHODS)}")
        if self.gate_metric not in METRICS:
            raise ValueError(f"gate_metric={self.gate_metric!r}; use one of {', '.join(METRICS)}")
        if self.gate_margin < 0:
            raise ValueError(f"gate_margin must be >= 0, got {self.gate_margin}")
        for name in ("max_train", "max_val", "max_eval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = all sessions), got {getattr(self, name)}")
        # every stage config validates its own fields (a bad value fails here, before any step runs)
        self.world(), self.reasoner(), self.ranker(), self.alignment(), self.sft(), self.cl(), self.dpo()

    # ---------------------------------------------------------------- the stage configs it makes
    def _stage(self, stage: str) -> dict:
        """The fields of ``stage`` (``rga`` fields go to all three RGA trainers)."""
        rga = ("rga",) if stage in ("sft", "cl", "dpo") else ()
        return {field: getattr(self, name) for name, (s, field) in STAGE_FIELDS.items() if s in (stage, *rga)}

    def world(self) -> WorldConfig:
        return WorldConfig(**self._stage("world"))

    def reasoner(self) -> ReasonerConfig:
        return ReasonerConfig(source="tiny", **self._stage("reasoner"))

    def ranker(self, model: str = "qe-rec") -> RankerConfig:
        kw = self._stage("ranker")
        kw["max_train_sessions"] = kw["max_train_sessions"] or None
        return RankerConfig(model=model, **kw)

    def alignment(self) -> AlignmentConfig:
        return AlignmentConfig(**self._stage("alignment"))

    def sft(self):
        from rgalign.alignment.rg_sft_config import RGSFTConfig
        return RGSFTConfig(**self._stage("sft"), deepspeed=self.deepspeed)

    def cl(self):
        from rgalign.alignment.rg_cl_config import RGCLConfig
        return RGCLConfig(**self._stage("cl"), deepspeed=self.deepspeed)

    def dpo(self):
        from rgalign.alignment.rg_dpo_config import RGDPOConfig
        return RGDPOConfig(**self._stage("dpo"), deepspeed=self.deepspeed)

    @property
    def inputs_kw(self) -> dict:
        """Session caps of every ranker's inputs (the same sessions for every model of a run)."""
        return {"max_val_sessions": self.max_val or None, "max_eval_sessions": self.max_eval or None, "data_seed": 0}

    @property
    def root(self) -> str:
        return self.artifacts or "artifacts"

    @property
    def uri(self) -> str | None:
        return self.tracking_uri or None


# workflow field -> (stage, field of that stage's config); the fields not named here act in the workflow itself
# (rga_method, rounds, max_val / max_eval, deepspeed, reuse_base, check_reasoner, the gate, the registry and tracking)
STAGE_FIELDS: dict[str, tuple[str, str]] = {
    "scale": ("world", "scale"), "world_seed": ("world", "seed"),
    "reasoner_steps": ("reasoner", "pretrain_steps"), "pretrain_batch": ("reasoner", "pretrain_batch"),
    "corpus_sessions": ("reasoner", "corpus_sessions"), "max_prompt_tokens": ("reasoner", "max_prompt_tokens"),
    "distil_teacher": ("reasoner", "distil_teacher"),
    "max_train": ("ranker", "max_train_sessions"), "shard_rows": ("ranker", "shard_rows"),
    "ranker_epochs": ("ranker", "epochs"),
    "ranker_seed": ("ranker", "seed"), "fusion": ("ranker", "fusion"),
    "intent_id_std": ("ranker", "intent_id_std"),
    "n_samples": ("alignment", "n_samples"), "min_samples": ("alignment", "min_samples"),
    "strategy": ("alignment", "strategy"), "query_prompt": ("alignment", "query_prompt"),
    "sft_epochs": ("sft", "epochs"), "cl_epochs": ("cl", "epochs"), "rga_max_length": ("rga", "max_length"),
    "dpo_epochs": ("dpo", "epochs"), "dpo_pairs": ("dpo", "max_pairs_per_sample"),
}


# ------------------------------------------------------------------------------------------------ helpers
def inject_failure(step: str) -> None:
    """Fault injection for tests and game days: ``RGALIGN_INJECT_FAILURE=<step>`` makes that step fail."""
    if os.environ.get("RGALIGN_INJECT_FAILURE") == step:
        raise RuntimeError(f"injected failure in step {step!r} (RGALIGN_INJECT_FAILURE)")


def world_of(folder: str | Path) -> Path:
    """The dataset inside a ``prepare_features`` output folder (or a dataset folder itself): the folder with
    ``contract.yaml``."""
    folder = Path(folder)
    if (folder / "contract.yaml").is_file():
        return folder
    found = [p.parent for p in folder.glob("*/contract.yaml")]
    if len(found) != 1:
        raise FileNotFoundError(f"{folder} holds {len(found)} datasets; expected the output of prepare_features")
    return found[0]


def _meta(folder: str | Path, name: str) -> dict:
    p = Path(folder) / name
    return json.loads(p.read_text()) if p.is_file() else {}


def _add_meta(folder: str | Path, name: str, extra: dict) -> None:
    p = Path(folder) / name
    p.write_text(json.dumps({**_meta(folder, name), **extra}, indent=2))


def log_step(cfg: WorkflowConfig, step: str, params: dict, metrics: dict, curves: dict[str, list] | None = None,
             tags: dict | None = None, text: dict[str, str] | None = None) -> str | None:
    """One MLflow run of ``step`` in the ``rgalign-workflow`` experiment: parameters, final metrics, curves
    (``{name: [value per step]}``) and text artifacts. Returns the run id (None when tracking is off)."""
    if not cfg.tracking:
        return None
    import mlflow

    from rgalign.tracking import experiment
    exp = experiment(WORKFLOW_EXPERIMENT, cfg.uri, cfg.root)
    with mlflow.start_run(experiment_id=exp, run_name=step, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"step": step, "env": cfg.env, **{k: str(v) for k, v in (tags or {}).items()}})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float)) and np.isfinite(v)})
        for name, values in (curves or {}).items():
            for i, v in enumerate(values):
                if v is not None and np.isfinite(v):
                    mlflow.log_metric(name, float(v), step=i + 1)
        for fname, body in (text or {}).items():
            mlflow.log_text(body, fname)
        return run.info.run_id


# ------------------------------------------------------------------------------------------------ inputs
def ltp_inputs(world: str | Path, reasoner: str | Path, cfg: RankerConfig, max_val_sessions: int | None = None,
               max_eval_sessions: int | None = None, data_seed: int = 0, progress: bool = True, encoder=None):
    """Ranker inputs whose query embedding e is the reasoner's LTP of each session's prompt (Eq. 2-3), cached
    per reasoner version and LTP settings. ``data_seed`` fixes the session subsample, so every model of a
    comparison sees the same sessions."""
    from rgalign.ranker.inputs import load_ranker_inputs
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    encoder = encoder or LTPEncoder(load_reasoner(reasoner))
    return load_ranker_inputs(world, f"ltp-{encoder.reasoner.version}-p{encoder.max_prompt_tokens}", 0,
                              cfg.intent_encoder, cfg.val_days, cfg.max_train_sessions, data_seed, progress,
                              query_fn=encoder.embed, max_val_sessions=max_val_sessions,
                              max_eval_sessions=max_eval_sessions, shard_rows=cfg.shard_rows)


def ltp_cache(world: str | Path, reasoner):
    """The LTP cache of a world and reasoner (SQLite beside the world's other cached inputs): the sharded LTP
    steps write it, the training steps read it."""
    from rgalign.ranker.inputs import cache_dir
    from rgalign.reasoner.ltp import LTPCache
    return LTPCache(cache_dir(world) / f"ltp-{reasoner.version}.sqlite")


def session_splits(world: str | Path, cfg: WorkflowConfig, model: str = "qe-rec"):
    """The sessions a ranker of this run trains and is evaluated on (``rgalign.ranker.inputs.select_sessions``
    with the run's caps, data seed and ``shard_rows``)."""
    from rgalign.ranker.inputs import select_sessions
    rcfg, kw = cfg.ranker(model), cfg.inputs_kw
    return select_sessions(world, rcfg.val_days, rcfg.max_train_sessions, kw["data_seed"], kw["max_val_sessions"],
                           kw["max_eval_sessions"], rcfg.shard_rows)


def embed_ltp(world_folder: str | Path, reasoner: str | Path, cfg: WorkflowConfig, shard: int, shards: int,
              out: str | Path, progress: bool = False) -> dict:
    """Shard ``shard`` of ``shards`` of the bulk LTP of every context the rankers read
    (``rgalign.reasoner.ltp_shards``): a ParallelFor iteration of the pipeline."""
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.ltp_shards import embed_shard
    from rgalign.reasoner.sources import load_reasoner
    inject_failure(f"embed_ltp:{shard}")
    world = world_of(world_folder)
    r = load_reasoner(reasoner)
    return embed_shard(LTPEncoder(r, cache=ltp_cache(world, r)), session_splits(world, cfg), shard, shards, out,
                       progress)


def generated_query_inputs(world: str | Path, reasoner: str | Path, cfg: RankerConfig, sentence_encoder: str = "minilm",
                           max_val_sessions: int | None = None, max_eval_sessions: int | None = None,
                           data_seed: int = 0, progress: bool = True):
    """The BGE-style alternative of Table 3: the reasoner *generates* a query, a frozen sentence encoder
    embeds it (the encoder stays unaligned in Stage 2)."""
    from rgalign.features.text_encoders import get_encoder
    from rgalign.ranker.inputs import load_ranker_inputs
    from rgalign.reasoner.generate import generate_queries
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    enc = LTPEncoder(load_reasoner(reasoner))
    sentence = get_encoder(sentence_encoder)

    def fn(contexts):
        return sentence.encode(generate_queries(enc, contexts, batch_size=32))
    return load_ranker_inputs(world, f"gen-{sentence_encoder}-{enc.reasoner.version}-p{enc.max_prompt_tokens}", 0,
                              cfg.intent_encoder, cfg.val_days, cfg.max_train_sessions, data_seed, progress,
                              query_fn=fn, max_val_sessions=max_val_sessions, max_eval_sessions=max_eval_sessions,
                              shard_rows=cfg.shard_rows)


def text_inputs(world: str | Path, encoder: str, cfg: RankerConfig, max_val_sessions: int | None = None,
                max_eval_sessions: int | None = None, data_seed: int = 0, progress: bool = True):
    """Ranker inputs whose query embedding e is a frozen text encoder (``lsa``, ``minilm``, ``hashing``) of the
    same verbalized contexts the reasoner reads: the comparison an LTP has to hold against."""
    from rgalign.ranker.inputs import load_ranker_inputs
    return load_ranker_inputs(world, encoder, cfg.query_dim, cfg.intent_encoder, cfg.val_days, cfg.max_train_sessions,
                              data_seed, progress, max_val_sessions=max_val_sessions,
                              max_eval_sessions=max_eval_sessions, shard_rows=cfg.shard_rows)


def session_frames(world: Path, val_days: int = 3, max_train: int | None = None, shard_rows: int = 0):
    """The split frames of the rankers' inputs (the Feast training set, cached beside the world) without their
    query embeddings: cheap hashed text stands in, and validation / evaluation are cut to one session."""
    from rgalign.ranker.inputs import load_ranker_inputs
    return load_ranker_inputs(world, "hashing", 16, "hashing", val_days, max_train, 0, False, max_val_sessions=1,
                              max_eval_sessions=1, shard_rows=shard_rows)


# ------------------------------------------------------------------------------------------------ steps
def prepare_features(cfg: WorkflowConfig, out: str | Path) -> dict:
    """The dataset, then Feast apply + materialize + the point-in-time training set (cached beside it).
    ``cfg.data``: your dataset, validated against its contract (a problem stops here, before anything is
    written) and copied into ``out``; otherwise the benchmark world is generated there."""
    from rgalign.contract.dataset import dataset_digest
    from rgalign.features.feast_io import FeatureStoreSession
    if cfg.data:
        world = copy_dataset(cfg.data, out)
    else:
        from rgalign.world.generate import generate_world
        world = generate_world(cfg.world(), out, progress=False)
    fs = FeatureStoreSession(world)
    fs.apply()
    fs.materialize()
    rcfg = cfg.ranker()
    n = len(session_frames(world, rcfg.val_days, None, rcfg.shard_rows).train)
    return {"train_sessions": n, "world_digest": dataset_digest(world)}


def copy_dataset(src: str | Path, out: str | Path) -> Path:
    """Validate the dataset ``src`` against its contract, then copy it to ``out/<name>`` (what later steps and
    the registry lineage read). Raises ``ValueError`` listing every problem; nothing is copied then."""
    from rgalign.contract.dataset import check_dataset
    from rgalign.contract.validate import validate_dataset
    src = check_dataset(src)
    report = validate_dataset(src)
    if not report.ok:
        raise ValueError(f"{src} does not follow its data contract (`rgalign data validate {src}`):\n"
                         + "\n".join(f"  - {p}" for p in report.errors))
    dest = Path(out) / Path(src).resolve().name
    tmp = dest.with_name(dest.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("feature_repo", "*.tmp"))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


CHECK_FILE = "rgalign_check.json"


def check_step(reasoner: str | Path, world_folder: str | Path, cfg: WorkflowConfig, label: str) -> dict:
    """``rgalign reasoner check`` of a reasoner folder, logged to MLflow as step ``reasoner-check`` (tag
    ``label``: built / aligned). Returns ``{"passed", "failures", "metrics", "table", "digest"}``, {} when
    ``cfg.check_reasoner`` is off; a check already written beside the same weights (``rgalign_check.json``,
    same digest) is read instead of rerun."""
    if not cfg.check_reasoner:
        return {}
    from rgalign.reasoner.check import check_reasoner
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    r = load_reasoner(reasoner)
    done = _meta(reasoner, CHECK_FILE)
    if done.get("digest") == r.version:
        return done
    report = check_reasoner(LTPEncoder(r), world_of(world_folder))
    out = {"passed": report.passed, "failures": report.failures, "metrics": report.metrics(), "table": report.table(),
           "digest": r.version}
    log_step(cfg, "reasoner-check", {"reasoner": label}, report.metrics(),
             tags={"reasoner_digest": r.version, "check": "PASS" if report.passed else "FAIL", "reasoner": label},
             text={"reasoner_check.md": report.table()})
    return out


def base_key(rcfg: ReasonerConfig, world: Path) -> str:
    """What a registered base reasoner must match to be reused: its build settings and the world's digest."""
    import hashlib

    from rgalign.contract.dataset import dataset_digest
    return hashlib.sha256(f"{rcfg.digest()}:{dataset_digest(world)}".encode()).hexdigest()[:16]


SHIPPED_BASES = Path(__file__).parent / "reasoner" / "bases"


def shipped_base(key: str) -> Path | None:
    """The base reasoner shipped inside the package for ``key`` (``rgalign/reasoner/bases/<base_key>``: the
    main job's reasoner settings on the default ci world, so a fresh machine skips the ~7-minute first build),
    or None. ``rgalign reasoner base`` rebuilds it and says whether the rebuild matches."""
    path = SHIPPED_BASES / key
    return path if (path / "model.safetensors").is_file() else None


def build_base(world_folder: str | Path, cfg: WorkflowConfig, out: str | Path | None = None, threads: int = 2) -> dict:
    """Build the base reasoner of ``cfg``'s reasoner settings on a world from scratch (no registry, no shipped
    copy), check it, and compare it with the shipped base of the same key. Writes to ``out`` (default: the
    package's ``bases/<base_key>``, replacing the shipped copy). A build is bit-identical at the same number of
    torch ``threads`` (the shipped base: 2), not across them. Returns ``{"key", "path", "digest",
    "shipped_digest", "matches"}``."""
    import torch
    world = world_of(world_folder)
    key = base_key(cfg.reasoner(), world)
    shipped = shipped_base(key)
    was = _meta(shipped, "rgalign_reasoner.json").get("digest") if shipped else None
    out = Path(out) if out else SHIPPED_BASES / key
    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        build_reasoner(world, replace(cfg, reuse_base=False, tracking=False), tmp)
    finally:
        torch.set_num_threads(before)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    digest = _meta(out, "rgalign_reasoner.json")["digest"]
    return {"key": key, "path": str(out), "digest": digest, "shipped_digest": was, "matches": was == digest}


def copy_or_build(rcfg: ReasonerConfig, world: Path, out: str | Path, src: str | Path | None,
                  progress: bool = False) -> Path:
    """The base reasoner folder ``src`` (registered or shipped) copied to ``out``; without one, a reasoner of
    ``rcfg`` pre-trained there."""
    from rgalign.reasoner.sources import build_reasoner as build
    out = Path(out)
    if src is None:
        return build(rcfg, world, out, progress=progress)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    return out


def register_base(reasoner: str | Path, world: Path, cfg: WorkflowConfig) -> str:
    """Register a built reasoner as a version of ``<env>.reasoner-base`` (alias ``current``), tagged with the
    ``base_key`` of ``cfg``'s reasoner settings and ``world``, which later runs look it up by."""
    from rgalign.contract.dataset import dataset_digest
    from rgalign.registry import Registry, log_reasoner_model
    rcfg, meta, check = cfg.reasoner(), _meta(reasoner, "rgalign_reasoner.json"), _meta(reasoner, CHECK_FILE)
    key = base_key(rcfg, world)
    uri = log_reasoner_model(reasoner, cfg.uri, cfg.root, {"base_key": key})
    figures = {k.replace("@", "_at_"): f"{v:.6f}" for k, v in check.get("metrics", {}).items() if not k.endswith(".lo")}
    return Registry(cfg.uri, cfg.root).register(
        "reasoner-base", cfg.env, uri, {"base_key": key, "config_digest": rcfg.digest(), "reasoner_digest": meta.get("digest"),
                                        "world_digest": dataset_digest(world),
                                        "mlflow_run_id": meta.get("mlflow_run_id"), **figures}, alias="current")


def build_reasoner(world_folder: str | Path, cfg: WorkflowConfig, out: str | Path) -> dict:
    """The raw query reasoner: the registered base of the same settings and world (``<env>.reasoner-base``)
    when ``cfg.reuse_base`` finds one, else the base shipped in the package for that key (``shipped_base``),
    else a tiny Qwen3 with its own tokenizer pre-trained here (LM loss + LTP distillation); checked, and (when
    not from the registry) registered as the base the next runs start from."""
    from rgalign.registry import Registry
    rcfg, world, out = cfg.reasoner(), world_of(world_folder), Path(out)
    key, reg = base_key(rcfg, world), Registry(cfg.uri, cfg.root)
    reuse = cfg.reuse_base and cfg.tracking   # the base lives in the MLflow registry
    base = reg.find(cfg.env, "reasoner-base", {"base_key": key}) if reuse else None
    shipped = shipped_base(key) if cfg.reuse_base and base is None else None
    src = reg.download(cfg.env, "reasoner-base", base["version"], "rgalign_reasoner.json") if base else shipped
    path = copy_or_build(rcfg, world, out, src)
    checked = check_step(path, world, cfg, "built")
    if checked:
        (path / CHECK_FILE).write_text(json.dumps(checked, indent=1))
    check = checked.get("metrics", {})
    meta = _meta(path, "rgalign_reasoner.json")
    run_id = log_step(cfg, "build-reasoner", {f"reasoner.{k}": v for k, v in rcfg.to_dict().items()},
                      {"loss_first": meta.get("loss_first") or 0.0, "loss_last": meta.get("loss_last") or 0.0,
                       "distil_last": meta.get("distil_last") or 0.0, "seconds": meta.get("seconds", 0.0), **check},
                      {"pretrain_loss": meta.get("losses", []), "distil_loss": meta.get("distil_losses", [])},
                      {"reasoner_digest": meta.get("digest"), "base_key": key,
                       "reused_base": base["version"] if base else "shipped" if shipped else "",
                       "check": "off" if not check else "PASS" if check["check.passed"] else "FAIL"},
                      text={"reasoner_check.md": checked["table"]} if checked else None)
    _add_meta(path, "rgalign_reasoner.json", {"mlflow_run_id": run_id})
    if base is None and reuse and check.get("check.passed", 1.0):
        try:
            register_base(path, world, cfg)
        except Exception as e:  # the base only saves the next run's build: this run goes on without it
            import warnings
            warnings.warn(f"could not register the base reasoner ({e}); the next run will build again", stacklevel=2)
    return {"loss_last": meta.get("loss_last") or 0.0, "reused_base": float(src is not None),
            **{k: v for k, v in check.items() if not k.endswith(".lo")}}


def split_ranks(model, spec, inputs) -> dict[str, np.ndarray]:
    """0-based target ranks of a trained ranker on the validation days (clicked intent) and the evaluation week
    (true intent): ``<split>`` (the model), ``query_<split>`` (QE-Rec's query half alone), ``popularity_<split>``
    (the floor on the same sessions), plus ``users_<split>`` and ``sessions_<split>``."""
    from rgalign.ranker.data import RankerData
    from rgalign.ranker.ranker_trainer import model_ranks
    from rgalign.world.generate import popularity_ranks
    ranks = {"train_clicks": inputs.train_clicks}
    clicks_of = user_training_clicks(inputs.world)          # read once for both splits
    for split, target in (("val", "clicked_intent"), ("eval", "true_intent")):
        frame = getattr(inputs, split)
        data = RankerData.build(frame, spec, inputs.query[split], target)
        ranks[split] = model_ranks(model, data)
        if getattr(model, "d_e", 0):
            ranks[f"query_{split}"] = model_ranks(model, data, query_half=True)
        ranks[f"popularity_{split}"] = popularity_ranks(inputs.train_clicks, frame[target].to_numpy())
        ranks[f"users_{split}"], ranks[f"sessions_{split}"] = frame.user_id.to_numpy(), frame.session_id.to_numpy()
        ranks[f"target_{split}"] = frame[target].to_numpy()
        ranks[f"user_clicks_{split}"] = user_training_clicks(inputs.world, frame.user_id, clicks_of)
    return ranks


def user_training_clicks(world: str | Path, user_ids=None, counts=None):
    """Clicked training-week sessions per user (the user-history segments): a Series by user id (users without
    any are absent), or with ``user_ids`` one count per session, (N,) int64. ``counts``: the Series, already read."""
    from rgalign.contract.dataset import training_clicks
    if counts is None:
        counts = training_clicks(world).user_id.value_counts()
    return counts if user_ids is None else counts.reindex(user_ids).fillna(0).to_numpy(np.int64)


def segments_of(ranks: dict, split: str = "eval") -> dict[str, np.ndarray]:
    """``metrics.segment_masks`` of a ``split_ranks`` result (intent and user training clicks)."""
    from rgalign.metrics import segment_masks
    return segment_masks(ranks[f"target_{split}"], ranks["train_clicks"], ranks.get(f"user_clicks_{split}"))


def train_ranker(world_folder: str | Path, reasoner: str | Path, cfg: WorkflowConfig, out: str | Path,
                 label: str = "Stage 1", model: str = "qe-rec", progress: bool = False,
                 ltp: list[str | Path] | None = None) -> dict:
    """Stage 1 (raw reasoner), Stage 3 (aligned reasoner) or the production baseline (``model="baseline"``,
    which reads no query) on the same sessions: trained with early stopping on the validation days, saved
    as a checkpoint with its validation and evaluation-week ranks (what the gate compares), logged to MLflow.
    ``ltp``: folders of the sharded LTP steps (``embed_ltp``) of this reasoner, loaded into its LTP cache first."""
    from rgalign.distributed import DistEnv
    from rgalign.ranker.checkpoint import save_ranker
    from rgalign.ranker.data import family_ids
    from rgalign.ranker.stage1 import run_ranker, save_shards
    inject_failure(f"train_ranker:{label}")
    world = world_of(world_folder)
    rcfg = cfg.ranker(model)
    dist = DistEnv.from_env().init()   # several ranks under torchrun / a TrainJob: DDP, rank 0 saves and logs
    if not dist.main:
        dist.barrier()                 # rank 0 embeds first and fills the LTP cache; the others read it
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    r = load_reasoner(reasoner)
    cache = ltp_cache(world, r)
    if ltp and dist.main:
        from rgalign.reasoner.ltp_shards import load_shards
        load_shards(ltp, cache, r.version)
    inputs = ltp_inputs(world, reasoner, rcfg, progress=progress and dist.main, encoder=LTPEncoder(r, cache=cache),
                        **cfg.inputs_kw)
    if dist.main:
        dist.barrier()
    checked = check_step(reasoner, world, cfg, "aligned" if label.startswith("Stage 3") else "built") \
        if model != "baseline" and dist.main else {}
    run = run_ranker(rcfg, world, cfg.tracking, cfg.uri, cfg.root, inputs, progress, label=label,
                     experiment_name=WORKFLOW_EXPERIMENT, dist=dist)
    if dist.enabled:
        save_shards(run.result, out, dist)   # the rows each rank trained on
        if not dist.main:
            return {}
    ranks = split_ranks(run.result.model, run.result.spec, inputs)
    metrics = {f"{s}_{k}": v.value for s in ("val", "eval")
               for k, v in evaluate_ranks(ranks[s], ranks[f"users_{s}"], inputs.n_intents).items()}
    fam = family_ids(inputs.kb)
    rmeta = _meta(reasoner, "rgalign_reasoner.json")
    save_ranker(run.result.model, run.result.spec, rcfg, inputs.semantic, fam, inputs.kb, out,
                meta={"world": world.name, "reasoner_digest": rmeta.get("digest"), "label": label, "model": model,
                      "eval": {k[5:]: v for k, v in metrics.items() if k.startswith("eval_")},
                      "val": {k[4:]: v for k, v in metrics.items() if k.startswith("val_")},
                      "mlflow_run_id": run.run_id, "train_sessions": len(inputs.train),
                      "reasoner_check": {k: checked[k] for k in ("passed", "failures", "metrics") if k in checked}})
    np.savez(Path(out) / "ranks.npz", **ranks)
    return metrics


def teacher_queries(world_folder: str | Path, reasoner: str | Path, cfg: WorkflowConfig, out: str | Path) -> dict:
    """Multi-LLM sample generation: every teacher and the reasoner write one query per sampled context."""
    from rgalign.alignment.stage2 import generate_candidates
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    world = world_of(world_folder)
    enc = LTPEncoder(load_reasoner(reasoner))
    rcfg = cfg.ranker()
    inputs = session_frames(world, rcfg.val_days, rcfg.max_train_sessions, rcfg.shard_rows)  # Stage 1's sessions
    acfg = cfg.alignment()
    p = generate_candidates(inputs.train_sample(acfg.n_samples, acfg.seed), inputs.kb, inputs.contract, enc, acfg)
    p.save(out)
    return {"samples": len(p.queries), **{f"dropped_{k}": v for k, v in p.dropped.items()}}


def reward_best_of_n(world_folder: str | Path, reasoner: str | Path, ranker: str | Path, proposals: str | Path,
                     cfg: WorkflowConfig, out: str | Path) -> dict:
    """Score every proposal with the Stage-1 QE-Rec (NDCG of the clicked intent, Eq. 7 reward) and select
    Q^w / Q^l by the best-of-N strategy."""
    import pandas as pd

    from rgalign.alignment.stage2 import Proposals, score_candidates, select
    from rgalign.ranker.checkpoint import load_ranker
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    kb = pd.read_parquet(world_of(world_folder) / "kb.parquet")
    model, spec, _, _ = load_ranker(ranker)
    acfg = cfg.alignment()
    c = score_candidates(Proposals.load(proposals), kb, model, spec, LTPEncoder(load_reasoner(reasoner)),
                         acfg.query_prompt)
    sel = select(c, acfg)
    c.save(out)
    (Path(out) / "selection.json").write_text(json.dumps({"strategy": sel.strategy, "kept": sel.kept.tolist(),
                                                          "winner": sel.winner.tolist(), "losers": sel.losers}))
    table = c.teacher_table()
    metrics = {"kept": int(len(sel.kept)), **{f"wins_{k}": v for k, v in sel.winner_counts(c.names).items()},
               **{f"mean_ndcg_{t}": v for t, v in zip(table.teacher, table["mean NDCG"])},
               **{f"pool_{k}": v for k, v in c.separability().items()}}
    log_step(cfg, "reward-best-of-n", {"strategy": sel.strategy, "teachers": ",".join(c.names),
                                       "query_prompt": acfg.query_prompt}, metrics)
    return metrics


def load_selection(folder: str | Path):
    """(Candidates, Selection) written by ``reward_best_of_n``."""
    from rgalign.alignment.best_of_n import Selection
    from rgalign.alignment.stage2 import Candidates
    j = json.loads((Path(folder) / "selection.json").read_text())
    return Candidates.load(folder), Selection(j["strategy"], np.array(j["kept"], int), np.array(j["winner"], int),
                                              j["losers"])


def _log_rga(cfg: WorkflowConfig, step: str, tcfg, path: Path, samples: int) -> dict:
    from rgalign.distributed import DistEnv
    if not DistEnv.from_env().main:   # under several ranks, rank 0 saved the reasoner and logs it
        return {"samples": samples}
    meta = _meta(path, "rgalign_reasoner.json")
    losses = [h["loss"] for h in meta.get("log_history", []) if "loss" in h]
    run_id = log_step(cfg, step, {f"{step}.{k}": v for k, v in tcfg.to_dict().items()},
                      {"train_loss": meta.get("train_loss") or 0.0, "samples": samples,
                       "seconds": meta.get("seconds", 0.0)}, {"loss": losses},
                      {"parent_digest": meta.get("parent_digest"), "reasoner_digest": meta.get("digest")})
    _add_meta(path, "rgalign_reasoner.json", {"mlflow_run_id": run_id})
    return {"train_loss": meta.get("train_loss") or 0.0, "samples": samples}


def align(c, sel, reasoner: str | Path, cfg: WorkflowConfig, out: str | Path) -> Path:
    """RG-SFT on the winners, then the refinement of ``cfg.rga_method``: RG-CL to e(q^w) or RG-DPO (q^w over
    Q^l). Returns the aligned reasoner (``out/sft`` then ``out/cl`` or ``out/dpo``)."""
    out = Path(out)
    rg_sft(c, sel, reasoner, cfg, out / "sft")
    return rg_refine(c, sel, out / "sft", cfg, out / {"sft-cl": "cl", "sft-dpo": "dpo", "sft": "final"}[cfg.rga_method])


def rg_sft(c, sel, reasoner: str | Path, cfg: WorkflowConfig, out: str | Path) -> Path:
    """RG-SFT (Eq. 8) on the best-of-N winners (C, q^w), LoRA merged."""
    from rgalign.alignment.rg_sft_trainer import rg_sft as train
    if len(sel.kept) == 0:
        raise ValueError(f"best-of-N strategy {sel.strategy} kept no sample; use V1 or more samples (--n-samples)")
    path = train(reasoner, c.winners(sel), cfg.sft(), out)
    _log_rga(cfg, "rg-sft", cfg.sft(), path, len(sel.kept))
    return path


def rg_refine(c, sel, sft_reasoner: str | Path, cfg: WorkflowConfig, out: str | Path) -> Path:
    """The second RGA step on the RG-SFT reasoner, by ``cfg.rga_method``: RG-CL (Eq. 11) or RG-DPO (Eq. 9-10);
    ``sft`` keeps the RG-SFT reasoner as it is (copied, so every run has this step's output)."""
    from rgalign.alignment.rg_cl_trainer import rg_cl
    from rgalign.alignment.rg_dpo_trainer import rg_dpo
    if cfg.rga_method == "sft-cl":
        path = rg_cl(sft_reasoner, c.winners(sel), c.winner_embeddings(sel), cfg.cl(), out)
        _log_rga(cfg, "rg-cl", cfg.cl(), path, len(sel.kept))
    elif cfg.rga_method == "sft-dpo":
        dpo = cfg.dpo()
        triples = c.preference_triples(sel, dpo.max_pairs_per_sample)
        path = rg_dpo(sft_reasoner, triples, dpo, out)
        _log_rga(cfg, "rg-dpo", dpo, path, len(triples))
    else:
        path = Path(out)
        if path.exists():
            shutil.rmtree(path)
        shutil.copytree(sft_reasoner, path)
    return Path(path)


def rga_step(step: str, candidates: str | Path, reasoner: str | Path, cfg: WorkflowConfig, out: str | Path) -> dict:
    """The folder form of ``rg_sft`` / ``rg_refine`` (what the KFP components call)."""
    c, sel = load_selection(candidates)
    path = (rg_sft if step == "rg-sft" else rg_refine)(c, sel, reasoner, cfg, out)
    meta = _meta(path, "rgalign_reasoner.json")
    return {"train_loss": meta.get("train_loss") or 0.0, "samples": int(len(sel.kept))}


def rank_steps() -> dict:
    """The steps a launcher may start on several ranks (``rgalign step NAME``: the command of a Kubeflow
    Trainer ``TrainJob``, or of ``torchrun`` on one machine): name -> (function, its path arguments: inputs,
    outputs). Every other argument is a plain value."""
    return {"train-ranker": (train_ranker, ("world_folder", "reasoner", "ltp"), ("out",)),
            "rga": (rga_step, ("candidates", "reasoner"), ("out",))}


def launch_step(name: str, kwargs: dict) -> dict:
    """Run ``rank_steps()[name]`` with ``kwargs`` (``cfg`` as the ``WorkflowConfig`` dict); every rank calls it."""
    steps = rank_steps()
    if name not in steps:
        raise ValueError(f"unknown step {name!r}; steps that run on ranks: {', '.join(steps)}")
    kw = dict(kwargs)
    kw["cfg"] = WorkflowConfig(**kw["cfg"]) if isinstance(kw.get("cfg"), dict) else kw["cfg"]
    return steps[name][0](**kw)


# ------------------------------------------------------------------------------------------------ the gate
# the rows of the gate's tables: key (MLflow metric and registry tag names) -> label (what the table prints)
GATE_ROWS = {"candidate": "Candidate (Stage 3 QE-Rec)", "stage1": "QE-Rec (Stage 1)",
             "baseline": "Baseline (AutoInt + MMoE)", "popularity": "Popularity (floor)"}


QUERY_ROW = "Candidate's query half alone"


def diff_label(key: str) -> str:
    """The row of the paired-difference table for the candidate minus ``key``."""
    return f"candidate - {GATE_ROWS[key]}"

@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    val: dict[str, dict[str, MetricValue]]          # model -> metric on the validation days
    val_diffs: dict[str, dict[str, MetricValue]]    # "candidate - X" -> paired difference
    eval: dict[str, dict[str, MetricValue]]         # evaluation week (reported, never decided on)
    metric: str
    margin: float
    segments: dict = field(default_factory=dict)    # "<segment> (n=N): <model>" -> metric (evaluation week)
    segment_diffs: dict = field(default_factory=dict)  # "<segment> (n=N): <model> - baseline" -> paired difference

    def to_json(self) -> dict:
        enc = lambda rows: {n: {m: vars(v) for m, v in r.items()} for n, r in rows.items()}  # noqa: E731
        return {"passed": self.passed, "reasons": self.reasons, "metric": self.metric, "margin": self.margin,
                "val": enc(self.val), "val_diffs": enc(self.val_diffs), "eval": enc(self.eval),
                "segments": enc(self.segments), "segment_diffs": enc(self.segment_diffs)}

    def markdown(self) -> str:
        return "\n".join([
            f"# Evaluation gate: {'PASS' if self.passed else 'FAIL'}", "",
            *[f"- {r}" for r in self.reasons], "",
            format_table(self.val, "Validation days (logged clicks): what the gate decides on, 95% bootstrap CI"), "",
            format_table(self.val_diffs, f"Candidate minus each row, paired bootstrap 95% CI (gate metric "
                                         f"{self.metric})"), "",
            format_table(self.eval, "Evaluation week (true intents): reported only; Bayes and the world's "
                                    "popularity row cover the whole week"), "",
            *([format_table(self.segment_diffs, "Evaluation week by segment (the target intent's training clicks, "
                                                "the user's training clicks): each model minus the baseline, "
                                                "paired bootstrap 95% CI (reported only)"), ""]
              if self.segment_diffs else [])])


def evaluation_gate(world_folder: str | Path, candidate: str | Path, baseline: str | Path, stage1: str | Path,
                    cfg: WorkflowConfig) -> GateDecision:
    """The registration gate, decided on the validation days only: the candidate (Stage-3 QE-Rec) must beat
    the popularity floor on ``cfg.gate_metric`` beyond the paired 95% interval. Its paired differences to the
    production baseline and to Stage 1 (same sessions) are recorded: promotion to champion reads them
    (``Registry.promote``). The evaluation week is reported beside it, with the world's Bayes ceiling."""
    from rgalign.contract.dataset import headroom
    metric = cfg.gate_metric
    r = {name: dict(np.load(Path(p) / "ranks.npz")) for name, p in
         (("candidate", candidate), ("baseline", baseline), ("stage1", stage1))}
    cmeta = _meta(candidate, "meta.json")
    n = int(cmeta["n_intents"])
    for name in ("baseline", "stage1"):
        for s in ("val", "eval"):
            if not np.array_equal(r[name][f"sessions_{s}"], r["candidate"][f"sessions_{s}"]):
                raise ValueError(f"the {name} ranker was evaluated on other {s} sessions than the candidate: train "
                                 "them in the same run (same max_val / max_eval)")
    c = r["candidate"]

    def rows(split):
        out = {GATE_ROWS[k]: evaluate_ranks(r[k][split], c[f"users_{split}"], n) for k in ("candidate", "stage1", "baseline")}
        if f"query_{split}" in c:
            out[QUERY_ROW] = evaluate_ranks(c[f"query_{split}"], c[f"users_{split}"], n)
        out[GATE_ROWS["popularity"]] = evaluate_ranks(c[f"popularity_{split}"], c[f"users_{split}"], n)
        return out
    val = rows("val")
    diffs = {diff_label(k): paired_difference(c["val"], r[k]["val"] if k != "popularity" else
                                                           c["popularity_val"]) for k in ("popularity", "baseline", "stage1")}
    ev = {**rows("eval"), **{f"{k} (whole week)": v for k, v in headroom(world_of(world_folder)).items()}}
    seg_rows, seg_diffs = {}, {}
    if "target_eval" in c:     # ranks saved before segments existed have no targets
        from rgalign.metrics import segment_report
        named = {"candidate": c["eval"], "stage1": r["stage1"]["eval"], "popularity": c["popularity_eval"],
                 "baseline": r["baseline"]["eval"]}
        seg_rows, seg_diffs = segment_report(named, segments_of(c), reference="baseline")
    if metric == "GAUC":   # GAUC has no per-session value, so no paired interval: the point values decide
        d = val[GATE_ROWS["candidate"]][metric].value - val[GATE_ROWS["popularity"]][metric].value
        lo = d
    else:
        lo = diffs[diff_label("popularity")][metric].lo
        d = diffs[diff_label("popularity")][metric].value
    passed = lo > 0
    reasons = [f"{metric} on the validation days: candidate - popularity = {d * 100:+.2f} points, 95% CI lower "
               f"bound {lo * 100:+.2f} -> {'beats the floor' if passed else 'does NOT beat the floor: nothing is registered'}"]
    b = diffs[diff_label("baseline")][metric] if metric != "GAUC" else None
    if b is not None:
        ok = b.lo >= -cfg.gate_margin
        reasons.append(f"{metric} vs the production baseline: {b.value * 100:+.2f} [{b.lo * 100:+.2f}, {b.hi * 100:+.2f}]"
                       f" -> {'non-inferior' if ok else 'inferior'} at margin {cfg.gate_margin * 100:.2f} points "
                       "(promotion to champion without a champion requires non-inferiority)")
    if "query_val" in c:
        q = paired_difference(c["query_val"], c["popularity_val"])[metric] if metric != "GAUC" else None
        if q is not None:
            reasons.append(f"{metric} of the candidate's query half alone (cos(z_i, z_q), no user features) - "
                           f"popularity: {q.value * 100:+.2f} [{q.lo * 100:+.2f}, {q.hi * 100:+.2f}] (reported)")
    check = cmeta.get("reasoner_check") or {}
    if check:
        ok = bool(check.get("passed"))
        passed = passed and ok
        reasons.append("reasoner check of the aligned reasoner: " + ("PASS" if ok else "FAIL (" + "; ".join(
            check.get("failures", [])) + "): nothing is registered"))
    return GateDecision(passed, reasons, val, diffs, ev, metric, cfg.gate_margin, seg_rows, seg_diffs)


def gate_step(world_folder, candidate, baseline, stage1, cfg: WorkflowConfig, out: str | Path) -> GateDecision:
    """``evaluation_gate`` written to ``out`` (gate.json + gate.md) and logged to MLflow."""
    g = evaluation_gate(world_folder, candidate, baseline, stage1, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(g.to_json(), indent=1))
    (out / "gate.md").write_text(g.markdown())
    flat = {f"val.{k}.{m}": v.value for k, label in GATE_ROWS.items() for m, v in g.val[label].items()}
    flat.update({f"diff.{k}.{m}.lo": v.lo for k in GATE_ROWS if k != "candidate"
                 for m, v in g.val_diffs[diff_label(k)].items()})
    for split, rows in (("val", g.val), ("eval", g.eval)):
        flat.update({f"{split}.query_half.{m}": v.value for m, v in rows.get(QUERY_ROW, {}).items()})
    flat["passed"] = float(g.passed)
    flat.update(segment_metrics(g.segment_diffs))
    log_step(cfg, "evaluation-gate", {"gate_metric": g.metric, "gate_margin": g.margin}, flat,
             tags={"decision": "PASS" if g.passed else "FAIL"}, text={"gate.md": g.markdown()})
    return g


def register(reasoner: str | Path, ranker: str | Path, world_folder: str | Path, gate: str | Path,
             cfg: WorkflowConfig, run_id: str) -> dict:
    """Log and register the aligned reasoner and the Stage-3 ranker as ``candidate`` versions with lineage
    (the MLflow runs of the steps that made them), their validation metrics and the gate's paired differences
    to the run's baseline (what promotion to champion reads). Refuses a candidate the gate did not pass."""
    from rgalign.features.feast_io import FEATURE_SERVICE
    from rgalign.registry import Registry, log_reasoner_model
    from rgalign.tracking import log_ranker_checkpoint
    g = json.loads((Path(gate) / "gate.json").read_text())
    if not g["passed"]:
        raise ValueError("the evaluation gate did not pass: " + "; ".join(g["reasons"]))
    from rgalign.contract.dataset import dataset_digest
    world = world_of(world_folder)
    digest = dataset_digest(world)
    rmeta = _meta(reasoner, "rgalign_reasoner.json")
    kmeta = _meta(ranker, "meta.json")
    reg = Registry(cfg.uri, cfg.root)
    from rgalign.features.feast_io import FeatureStoreSession
    feast = FeatureStoreSession(world).feast_dir
    # where the served version's features live: `rgalign serve` finds the dataset and its Feast store here
    lineage = {"pipeline_run_id": run_id, "world_digest": digest, "feature_service": FEATURE_SERVICE,
               "dataset": str(world.resolve()), "feast_dir": str(feast)}
    reasoner_uri = log_reasoner_model(reasoner, cfg.uri, cfg.root, lineage)   # logging first: no registry writes
    ranker_uri = log_ranker_checkpoint(ranker, cfg.uri, cfg.root, lineage)
    gate_tags = {"gate.metric": g["metric"], "gate.margin": g["margin"], "rga_method": cfg.rga_method,
                 "stage3_run_id": kmeta.get("mlflow_run_id"), "reasoner_run_id": rmeta.get("mlflow_run_id")}
    # the figures promotion reads: metrics of each version's run (append-only), tags only as a display copy
    figures = {f"gate.vs_{k}.{m}.lo": v["lo"] for k in GATE_ROWS if k != "candidate"
               for m, v in g["val_diffs"][diff_label(k)].items()}
    figures.update({f"val.{m}": v for m, v in kmeta.get("val", {}).items()})
    figures.update(kmeta["eval"])
    # both versions first, aliases last: a failure in between leaves no alias moved and no half pair
    rv = reg.register("reasoner", cfg.env, reasoner_uri,
                      {**lineage, "reasoner_digest": rmeta.get("digest"), "method": rmeta.get("source"),
                       "parent_digest": rmeta.get("parent_digest"), "mlflow_run_id": rmeta.get("mlflow_run_id"),
                       **gate_tags}, figures, alias=None)
    try:
        inject_failure("register:ranker")
        kv = reg.register("ranker", cfg.env, ranker_uri, {**lineage, "parent_reasoner": f"{cfg.env}.reasoner/{rv}",
                                                          "reasoner_digest": kmeta.get("reasoner_digest"),
                                                          **gate_tags}, figures, alias=None)
    except Exception:
        reg.unregister("reasoner", cfg.env, rv, "the ranker of the same run failed to register")
        raise
    reg.promote(cfg.env, "reasoner", rv, "candidate")
    reg.promote(cfg.env, "ranker", kv, "candidate")
    return {"reasoner_version": rv, "ranker_version": kv}


# ------------------------------------------------------------------------------------------------ in one process
@dataclass
class WorkflowResult:
    folder: Path
    world: Path
    reasoner: Path                  # the aligned reasoner of the last round
    stage1: Path
    baseline: Path
    stage3: Path
    gate: GateDecision
    registered: dict | None
    rounds: list[dict]


def run(cfg: WorkflowConfig, out: str | Path, world: str | Path | None = None, reasoner: str | Path | None = None,
        run_id: str = "local", progress: bool = True) -> WorkflowResult:
    """Every step in order in this process (``rgalign align`` and the tests; the KFP pipeline runs the same
    functions as components). ``world`` / ``reasoner``: start from existing ones instead of building them.
    ``cfg.rounds`` > 1 repeats Stage 2 + Stage 3 with the retrained ranker as the next reward model."""
    out = Path(out)
    say = (lambda m: print(f"[workflow] {m}", flush=True)) if progress else (lambda m: None)
    if world is None:
        say("prepare features (world, Feast apply + materialize, training set)")
        prepare_features(cfg, out / "features")
        world = world_of(out / "features")
    world = Path(world)
    if reasoner is None:
        say(f"build reasoner ({cfg.reasoner_steps} pre-training steps)")
        build_reasoner(world, cfg, out / "reasoner")
        reasoner = out / "reasoner"
    say("Stage 1: the raw reasoner's LTP of every context, QE-Rec on it, and the production baseline")
    embed_ltp(world, reasoner, cfg, 0, 1, out / "ltp", progress)
    train_ranker(world, reasoner, cfg, out / "stage1", "Stage 1", progress=progress, ltp=[out / "ltp"])
    train_ranker(world, reasoner, cfg, out / "baseline", "Baseline", model="baseline", progress=progress,
                 ltp=[out / "ltp"])
    current, ranker, rounds = Path(reasoner), out / "stage1", []
    for r in range(1, cfg.rounds + 1):
        d = out / f"round{r}"
        say(f"round {r}: teacher queries, reward + best-of-N ({cfg.strategy}), RGA ({cfg.rga_method}), Stage 3")
        teacher_queries(world, current, cfg, d / "proposals")
        reward_best_of_n(world, current, ranker, d / "proposals", cfg, d / "candidates")
        rga_step("rg-sft", d / "candidates", current, cfg, d / "sft")
        rga_step("rg-refine", d / "candidates", d / "sft", cfg, d / "aligned")
        embed_ltp(world, d / "aligned", cfg, 0, 1, d / "ltp", progress)
        m = train_ranker(world, d / "aligned", cfg, d / "stage3", "Stage 3", progress=progress, ltp=[d / "ltp"])
        rounds.append({"round": r, "reasoner": str(d / "aligned"), "ranker": str(d / "stage3"), "metrics": m})
        current, ranker = d / "aligned", d / "stage3"
    say("evaluation gate (validation days)")
    g = gate_step(world, ranker, out / "baseline", out / "stage1", cfg, out / "gate")
    registered = None
    if g.passed and cfg.register:
        registered = register(current, ranker, world, out / "gate", cfg, run_id)
    return WorkflowResult(out, world, current, out / "stage1", out / "baseline", Path(ranker), g, registered, rounds)
