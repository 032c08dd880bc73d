"""Every setting acts: a walk over every field of every stage config (and so every CLI flag made from them).

Each field has a probe that changes it and shows the change reaching the code it names: a different trained
model, a different TRL argument, a refused input, a different selection. A field added without a probe fails
``test_every_field_has_a_probe``; a probe whose field stopped acting fails its own case.
"""
import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch

from rgalign.alignment.rg_cl_config import RGCLConfig
from rgalign.alignment.rg_dpo_config import RGDPOConfig
from rgalign.alignment.rg_sft_config import RGSFTConfig
from rgalign.config import AlignmentConfig, RankerConfig, ReasonerConfig
from rgalign.workflow import STAGE_FIELDS, WorkflowConfig

# ------------------------------------------------------------------------------------------ the workflow
# fields that act in the workflow itself (not through a stage config): how each reaches its code
WORKFLOW_OWN = {
    "max_val": lambda c: c.inputs_kw["max_val_sessions"], "max_eval": lambda c: c.inputs_kw["max_eval_sessions"],
    "deepspeed": lambda c: (c.sft().deepspeed, c.cl().deepspeed, c.dpo().deepspeed),
    "rga_method": None, "rounds": None, "register": None,          # tests/test_workflow.py (run's orchestration)
    "gate_metric": None, "gate_margin": None,                      # tests/test_workflow.py (the gate)
    "env": None, "tracking": None, "artifacts": None, "tracking_uri": None,   # test_log_step_* below
    "reuse_base": None, "check_reasoner": None,                    # tests/test_workflow.py (the base, the check)
    "data": None,                                                  # tests/test_contract.py (prepare_features)
}
NEW = {int: lambda v: v + 3, float: lambda v: v + 0.5, bool: lambda v: not v,
       str: lambda v: {"ci": "bench", "V2": "V1", "sft-cl": "sft-dpo", "MRR": "R@3", "minilm": "lsa",
                             "context": "chat", "fixed": "adaptive"}.get(v, v + "-x")}


def test_every_workflow_field_reaches_its_stage_config_or_the_workflow():
    for f in dataclasses.fields(WorkflowConfig):
        assert f.name in STAGE_FIELDS or f.name in WORKFLOW_OWN, f"WorkflowConfig.{f.name} has no probe"
        assert f.metadata.get("help"), f"WorkflowConfig.{f.name} has no help"
    base = WorkflowConfig()
    for name, (stage, field) in STAGE_FIELDS.items():
        value = NEW[type(getattr(base, name))](getattr(base, name))
        changed = replace(base, **{name: value})
        stages = ("sft", "cl", "dpo") if stage == "rga" else (stage,)
        for s in stages:
            got = getattr(getattr(changed, s)(), field)
            assert got == value and got != getattr(getattr(base, s)(), field), f"{name} does not reach {s}.{field}"
    for name, probe in WORKFLOW_OWN.items():
        if probe is not None:
            value = NEW[type(getattr(base, name))](getattr(base, name))
            assert probe(replace(base, **{name: value})) != probe(base), f"WorkflowConfig.{name} does nothing"


def test_log_step_honours_tracking_env_and_the_store(tmp_path):
    import mlflow

    from rgalign.tracking import experiment
    from rgalign.workflow import WORKFLOW_EXPERIMENT, log_step
    assert log_step(WorkflowConfig(tracking=False, artifacts=str(tmp_path)), "s", {}, {}) is None
    assert not (tmp_path / "mlflow.db").exists()
    cfg = WorkflowConfig(env="staging", artifacts=str(tmp_path / "a"),
                         tracking_uri=f"sqlite:///{tmp_path / 'other.db'}")
    run_id = log_step(cfg, "rg-sft", {"p": 1}, {"loss": 2.0}, {"curve": [3.0, 2.0]})
    assert (tmp_path / "other.db").is_file()
    run = mlflow.get_run(run_id)
    assert run.data.tags["env"] == "staging" and run.data.params["p"] == "1" and run.data.metrics["loss"] == 2.0
    assert [m.value for m in mlflow.MlflowClient().get_metric_history(run_id, "curve")] == [3.0, 2.0]
    assert experiment(WORKFLOW_EXPERIMENT, cfg.uri, cfg.root)


# ------------------------------------------------------------------------------------------ the ranker
# field -> (changed value, probe kind, base overrides)
RANKER = {
    "model": ("baseline", "scores", {}), "d": (32, "scores", {}), "w": (0.4, "scores", {}),
    "heads": (4, "scores", {}), "autoint_layers": (1, "scores", {}), "n_experts": (2, "scores", {}),
    "dropout": (0.5, "scores", {}), "weight_decay": (0.5, "scores", {}), "grad_clip": (0.01, "scores", {}),
    "lr": (3e-3, "scores", {}), "epochs": (2, "history", {}), "patience": (1, "patience", {"epochs": 4}),
    "batch_size": (64, "scores", {}), "n_neg": (5, "scores", {}), "user_tower": ("hierarchical", "scores", {}),
    "non_seq": ("autoint", "scores", {"user_tower": "hierarchical"}), "user_activation": ("tanh", "scores", {}),
    "intent_id_std": (1.0, "scores", {}), "intent_family": (True, "scores", {}),
    "intent_id_dropout": (0.5, "scores", {}), "fusion": ("adaptive", "scores", {}),
    "fusion_lr": (0.2, "scores", {"fusion": "adaptive"}), "query_loss_weight": (0.0, "scores", {}), "confidence": (False, "scores", {}),
    "confidence_floor": (0.1, "scores", {}), "confidence_span": (0.5, "scores", {}),
    "user_buckets": (1000, "scores", {}), "seed": (1, "scores", {}),
    "query_encoder": ("lsa", "refused", {}), "query_dim": (128, "refused", {}), "intent_encoder": ("hashing", "refused", {}),
    "val_days": (2, "inputs", {}), "max_train_sessions": (300, "inputs", {}), "shard_rows": (8000, "parts", {"max_train_sessions": 1000}),
}


@pytest.fixture(scope="module")
def small_inputs(ci_world):
    from rgalign.ranker.inputs import load_ranker_inputs
    inputs = load_ranker_inputs(ci_world, "hashing", 256, "minilm", progress=False)
    cut = {"train": 512, "val": 128, "eval": 64}
    return replace(inputs, **{s: getattr(inputs, s).head(n).reset_index(drop=True) for s, n in cut.items()},
                   query={s: inputs.query[s][:n] for s, n in cut.items()})


def _scores(cfg, inputs):
    from rgalign.ranker.ranker_trainer import RankerTrainer, score_all
    t = RankerTrainer(cfg, inputs, progress=False)
    r = t.train()
    return score_all(r.model, t.data["val"]), r


def test_every_ranker_field_has_a_probe():
    assert set(RANKER) == {f.name for f in dataclasses.fields(RankerConfig)}


@pytest.mark.parametrize("field", sorted(RANKER))
def test_every_ranker_setting_acts(field, small_inputs, ci_world, monkeypatch):
    value, kind, over = RANKER[field]
    base = RankerConfig(**{"epochs": 1, "batch_size": 128, **over})
    changed = replace(base, **{field: value})
    if kind == "scores":
        a, _ = _scores(base, small_inputs)
        b, _ = _scores(changed, small_inputs)
        assert a.shape != b.shape or not np.allclose(a, b), f"RankerConfig.{field}={value!r} changed nothing"
    elif kind == "history":
        assert len(_scores(changed, small_inputs)[1].history) == 2 != len(_scores(base, small_inputs)[1].history)
    elif kind == "patience":   # validation MRR that only falls: training stops after `patience` bad epochs
        from rgalign.ranker.ranker_trainer import RankerTrainer
        falling = iter([0.5, 0.4, 0.3, 0.2])
        monkeypatch.setattr(RankerTrainer, "validate", lambda self: next(falling))
        assert len(_scores(changed, small_inputs)[1].history) == 2
    elif kind == "refused":    # the trainer refuses inputs its config does not describe
        from rgalign.ranker.ranker_trainer import RankerTrainer
        with pytest.raises(ValueError, match=field):
            RankerTrainer(changed, small_inputs, progress=False)
    elif kind == "inputs":     # acts where the inputs are built (rgalign.ranker.stage1.run_ranker)
        from rgalign.ranker.inputs import load_ranker_inputs

        def frames(c):
            i = load_ranker_inputs(ci_world, "hashing", 256, "minilm", c.val_days, c.max_train_sessions, c.seed,
                                   False)
            return len(i.train), len(i.val)
        assert frames(changed) != frames(base)
    elif kind == "parts":      # run_ranker reads the training set in parts and streams the training split
        from rgalign.ranker.inputs import TrainParts
        from rgalign.ranker.stage1 import run_ranker
        run = run_ranker(replace(changed, intent_encoder="hashing"), ci_world, tracking=False, progress=False)
        assert isinstance(run.inputs.train, TrainParts) and len(run.inputs.train.frames) > 1
        assert (run.result.shard_rows[0] == np.arange(len(run.inputs.train))).all()


# ------------------------------------------------------------------------------------------ the reasoner
REASONER_PRETRAIN = {"pretrain_steps": 3, "pretrain_batch": 3, "pretrain_lr": 1e-2, "seq_len": 64, "seed": 1,
                     "context_share": 0.2, "distil_weight": 0.3, "distil_batch": 3}
REASONER_LTP = {"max_prompt_tokens": 24, "ltp_batch": 1, "max_new_tokens": 3}
REASONER_BUILD = {"source": "nope", "corpus_sessions": 40, "distil_teacher": "lsa", "distil_texts": 60}


def test_every_reasoner_field_has_a_probe():
    assert set(REASONER_PRETRAIN) | set(REASONER_LTP) | set(REASONER_BUILD) == {
        f.name for f in dataclasses.fields(ReasonerConfig)}


@pytest.mark.parametrize("field", sorted(REASONER_PRETRAIN))
def test_every_pretraining_setting_acts(field, micro_reasoner):
    from rgalign.reasoner.sources import load_reasoner, pretrain
    docs = [("Where is my parcel?", " It is on its way."), ("", "Refunds take five days."),
            ("Can I cancel?", " Yes, before it ships.")] * 4

    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import Distillation

    def curve(cfg):
        r = load_reasoner(micro_reasoner)
        enc = LTPEncoder(r)
        texts = ["Where is my parcel?", "Refunds take five days.", "Can I cancel?"]
        distil = Distillation(enc.token_ids([enc.render(t) for t in texts]),
                                           torch.eye(3, r.hidden_size), enc.prefix)
        torch.manual_seed(0)
        return pretrain(r.model, r.tokenizer, docs, cfg, progress=False, distil=distil)
    base = ReasonerConfig(pretrain_steps=2, pretrain_batch=2, seq_len=8, distil_batch=2)
    assert curve(replace(base, **{field: REASONER_PRETRAIN[field]})) != curve(base), f"{field} changed nothing"


def test_the_ltp_settings_a_reasoner_is_built_with_reach_every_encoder(micro_reasoner):
    from rgalign.reasoner.generate import generate_queries
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner, ltp_settings
    r = load_reasoner(micro_reasoner)
    enc = LTPEncoder(r)
    r.meta["ltp"] = ltp_settings(ReasonerConfig(**REASONER_LTP))
    small = LTPEncoder(r)
    assert (small.max_prompt_tokens, small.batch_size, small.max_new_tokens) == (24, 1, 3)
    assert (enc.max_prompt_tokens, enc.batch_size, enc.max_new_tokens) == (512, 32, 40)
    ctx = ["User Profile: User Gender: Female, Region: Thailand, Membership Tier: Gold"]
    with pytest.warns(UserWarning, match="truncated"):
        assert not np.allclose(small.embed(ctx), enc.embed(ctx))
    assert len(generate_queries(small, ctx)[0].split()) <= 3


def test_the_build_settings_act(small_world, tmp_path):
    import json

    from rgalign.reasoner.sources import build_reasoner
    with pytest.raises(ValueError, match="source='nope'"):
        build_reasoner(ReasonerConfig(source="nope", pretrain_steps=0), small_world, tmp_path / "x", progress=False)
    def meta(name, **kw):
        base = dict(pretrain_steps=1, pretrain_batch=1, seq_len=32, corpus_sessions=20, distil_teacher="hashing",
                    distil_texts=50, distil_batch=2)
        p = build_reasoner(ReasonerConfig(**{**base, **kw}), small_world, tmp_path / name, progress=False)
        return json.loads((p / "rgalign_reasoner.json").read_text())
    base = meta("base")
    for field, value in REASONER_BUILD.items():
        if field == "source":
            continue
        m = meta(field, **{field: value})
        key = {"corpus_sessions": "documents", "distil_texts": "distil_pairs", "distil_teacher": "distil_losses"}[field]
        assert m[key] != base[key], f"{field} changed nothing"
    assert meta("none", distil_teacher="none")["distil_pairs"] == 0


# ------------------------------------------------------------------------------------------ Stage 2
def test_every_alignment_setting_reaches_the_teacher_pool_or_the_selection(monkeypatch, small_world, micro_reasoner):
    import pandas as pd

    from conftest import chat_reply, json_server
    from rgalign.alignment import stage2
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    seen = {}

    class Pool:
        def __init__(self, teachers, *args):
            seen["teachers"], seen["args"] = teachers, args

        def generate(self, contexts):
            seen["n"], seen["contexts"] = len(contexts), contexts
            raise StopIteration
    monkeypatch.setattr(stage2, "TeacherPool", Pool)
    from rgalign.features.feast_io import FeatureStoreSession
    kb = pd.read_parquet(small_world / "kb.parquet")
    fs = FeatureStoreSession(small_world)
    fs.apply()
    frame = fs.training_set(split="train")
    enc = LTPEncoder(load_reasoner(micro_reasoner))

    def pool(cfg):
        with pytest.raises(StopIteration):
            stage2.generate_candidates(frame, kb, fs.contract, enc, cfg)
        return seen["args"], [t.name for t in seen["teachers"]], seen["n"], seen["contexts"]

    def client(cfg):
        pool(cfg)
        c = seen["teachers"][1].client
        return c.url, c.model, c.key, c.timeout_s, c.retries
    monkeypatch.setenv("OTHER_KEY", "secret")
    with json_server(lambda path, body: (200, chat_reply("Where is my parcel?"))) as srv:
        base = AlignmentConfig(n_samples=8, teachers="kb-retrieval,openai", teacher_url=srv.url + "/v1")
        for field, value in {"teacher_model": "m2", "teacher_key_env": "OTHER_KEY", "teacher_timeout_s": 3.0,
                             "teacher_url": srv.url + "/v2", "retries": 4}.items():
            assert client(replace(base, **{field: value})) != client(base), field
    base = AlignmentConfig(n_samples=8)
    for field, value in {"max_words": 9, "retries": 3, "min_candidates": 3, "min_samples": 9}.items():
        assert pool(replace(base, **{field: value}))[0] != pool(base)[0], field
    assert pool(replace(base, teachers="playbook"))[1] != pool(base)[1]
    assert pool(replace(base, n_samples=9))[2] != pool(base)[2]
    assert pool(replace(base, seed=1))[3] != pool(base)[3]          # another draw of sessions
    # strategy and priority act in the selection
    ndcg = np.array([[0.5, 0.5, 0.2], [0.1, 0.5, 0.9]])   # row 1 is won by the reasoner (V2 drops it)
    names = ["kb-retrieval", "playbook", "reasoner"]
    c = stage2.Candidates(frame.head(2), ["p", "q"], names, [["a", "b", "c"], ["d", "e", "f"]], {},
                          e=np.zeros((2, 3, 2)), ndcg=ndcg, edit=np.ones((2, 3)), golden_cos=np.zeros((2, 3)))
    a = stage2.select(c, base)
    assert stage2.select(c, replace(base, strategy="V1")).kept.tolist() != a.kept.tolist()
    flipped = stage2.select(c, replace(base, strategy="V1", priority="playbook,kb-retrieval,reasoner"))
    assert flipped.winner.tolist() != stage2.select(c, replace(base, strategy="V1")).winner.tolist()
    # query_prompt acts in the reward's query embedding
    from rgalign.alignment.reward import QueryEmbedder
    q = ["Where is my parcel?"]
    assert not np.allclose(QueryEmbedder(enc, base.query_prompt).embed(q),
                           QueryEmbedder(enc, replace(base, query_prompt="chat").query_prompt).embed(q))
    covered = {"n_samples", "teachers", "teacher_url", "teacher_model", "teacher_key_env", "teacher_timeout_s",
               "priority", "strategy", "max_words", "retries", "min_candidates", "min_samples", "seed", "query_prompt"}
    assert covered == {f.name for f in dataclasses.fields(AlignmentConfig)}


RGA_COMMON = {"learning_rate": 0.123, "epochs": 7.0, "max_steps": 5, "batch_size": 3, "grad_accum": 2,
              "warmup_ratio": 0.2, "seed": 9, "max_length": 300}


@pytest.mark.parametrize("cls", [RGSFTConfig, RGCLConfig, RGDPOConfig])
def test_every_rga_setting_reaches_the_trainer(cls, tmp_path, micro_reasoner):
    """Shared fields reach the TRL / transformers arguments (or LoRA, or DeepSpeed); each method's own fields
    reach its loss or its data."""
    base = cls()
    args = base.trl_args(tmp_path)
    names = {"learning_rate": "learning_rate", "epochs": "num_train_epochs", "max_steps": "max_steps",
             "batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
             "warmup_ratio": "warmup_steps", "seed": "seed"}
    for field, value in RGA_COMMON.items():
        changed = replace(base, **{field: value})
        if field == "max_length" and cls is RGCLConfig:   # RG-CL's collator cuts prompt + query to it
            from transformers import AutoTokenizer

            from rgalign.alignment.rg_cl_trainer import CLCollator
            tok = AutoTokenizer.from_pretrained(micro_reasoner)
            rows = [{"prompt": "where is my parcel " * 40, "completion": "soon", "e_pos": np.zeros(2)}]
            width = {n: CLCollator(tok, n)(rows)["input_ids"].shape[1] for n in (64, base.max_length)}
            assert width[64] == 64 < width[base.max_length]
            continue
        if field == "max_length":
            assert changed.trl_args(tmp_path).max_length == value != args.max_length
            continue
        assert getattr(changed.trl_args(tmp_path), names[field]) == value != getattr(args, names[field]), field
    lora = replace(base, lora_r=4, lora_alpha=7).peft_config()
    assert (lora.r, lora.lora_alpha) == (4, 7) and replace(base, lora_r=0).peft_config() is None
    assert replace(base, deepspeed=True).hf_kwargs(tmp_path)["deepspeed"].endswith("zero3.json")
    own = {f.name for f in dataclasses.fields(cls)} - set(RGA_COMMON) - {"lora_r", "lora_alpha", "deepspeed"}
    if cls is RGCLConfig:
        from rgalign.alignment.rg_cl_trainer import neftune_hook, rg_cl_loss
        torch.manual_seed(0)
        h, e, logits = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 5, 11)
        labels = torch.randint(0, 11, (4, 5))

        def loss(c):
            return float(rg_cl_loss(h, e, logits, labels, c)[0])
        for field, value in {"tau": 0.5, "lambda_cl": 0.3, "lambda_causal": 0.5}.items():
            assert loss(replace(base, **{field: value})) != loss(base), field
        emb = torch.nn.Embedding(11, 8).train()
        out = emb(torch.arange(5)[None])
        torch.manual_seed(0)
        a = neftune_hook(base.neftune_alpha)(emb, None, out)
        torch.manual_seed(0)
        b = neftune_hook(1.0)(emb, None, out)
        assert not torch.allclose(a, b)
        assert own == {"tau", "lambda_cl", "lambda_causal", "neftune_alpha"}
    elif cls is RGDPOConfig:
        assert replace(base, beta=0.7).trl_args(tmp_path).beta == 0.7 != args.beta
        from rgalign.alignment.stage2 import Candidates
        from rgalign.alignment.best_of_n import best_of_n
        c = Candidates(None, ["p"], ["a", "b", "c"], [["x", "y", "z"]], {}, e=np.zeros((1, 3, 2)),
                       ndcg=np.array([[0.9, 0.5, 0.1]]), edit=np.ones((1, 3)), golden_cos=np.zeros((1, 3)))
        sel = best_of_n(c.ndcg, c.names, c.names, "V1")
        assert len(c.preference_triples(sel, replace(base, max_pairs_per_sample=1).max_pairs_per_sample)) == 1
        assert len(c.preference_triples(sel, base.max_pairs_per_sample)) == 2
        assert own == {"beta", "max_pairs_per_sample"}
    else:
        assert own == set()


# ------------------------------------------------------------------------------------------ world, reproduce, deploy
WORLD = {"scale": "bench", "seed": 1, "n_users": 50, "start_date": "2026-08-01", "days": 30, "eval_days": 5,
         "chunk_users": 15, "mean_sessions": 2.0, "max_sessions_per_user": 3, "n_personas": 2, "temperature": 3.0,
         "slot_strength": 0.0, "persona_strength": 0.0, "shown_k": 3, "position_bias": 2.0, "click_prob": 0.3,
         "noise_click_rate": 0.5, "cold_start_frac": 0.3}


def test_every_world_setting_changes_the_world(tmp_path):
    """Each field changes the generated tables (the manifest's file digests) or the world's identity (its name)."""
    import json

    from rgalign.config import WorldConfig
    from rgalign.world.generate import generate_world
    assert set(WORLD) == {f.name for f in dataclasses.fields(WorldConfig)}

    def world(cfg, name):
        w = generate_world(cfg, tmp_path / name, progress=False)
        return w.name, json.loads((w / "manifest.json").read_text())["files"]
    base = WorldConfig(scale="ci", n_users=40)
    ref = world(base, "base")
    for field, value in WORLD.items():
        assert world(replace(base, **{field: value}), field) != ref, f"WorldConfig.{field} changed nothing"


def test_every_reproduce_size_reaches_the_workflow_it_runs():
    from rgalign.config import ReproduceConfig
    from rgalign.reproduce import workflow_config
    sizes = {"pretrain_steps": "reasoner_steps", "pretrain_batch": "pretrain_batch",
             "corpus_sessions": "corpus_sessions", "max_train": "max_train", "max_val": "max_val",
             "max_eval": "max_eval", "n_samples": "n_samples", "ranker_epochs": "ranker_epochs",
             "sft_epochs": "sft_epochs", "cl_epochs": "cl_epochs", "dpo_epochs": "dpo_epochs", "dpo_pairs": "dpo_pairs",
             "world_seed": "world_seed", "scale": "scale", "fusion": "fusion",
             "intent_id_std": "intent_id_std"}
    base = ReproduceConfig()
    for field, target in sizes.items():
        value = {"scale": "bench", "fusion": "adaptive"}.get(field) or getattr(base, field) + 1
        wcfg = workflow_config(ReproduceConfig(**{field: value}))
        assert getattr(wcfg, target) == value, field
        if field in ("fusion", "intent_id_std"):      # and the rankers of every row
            assert getattr(wcfg.ranker("qe-rec"), field) == value, field
    # the rest act in run_reproduce itself (tests/test_reproduce.py runs --seeds 2 --strategies V2 --no-sft-dpo
    # into its own --out and checks the rows they add or drop)
    assert set(sizes) | {"seeds", "out", "reasoner", "sentence_encoder", "text_encoder", "strategies", "sft_dpo",
                         "bge_rows"} == {f.name for f in dataclasses.fields(ReproduceConfig)}


DEPLOY = {"env": "prod", "alias": "challenger", "challenger": "challenger", "canary_percent": 10,
          "mode": "Serverless", "namespace": "other", "image": "img:2", "cpu": "2", "memory": "8Gi",
          "reasoner_gpus": 2, "ranker_gpus": 0, "threads": 2, "min_replicas": 0, "max_replicas": 2,
          "model_pvc": "pvc-a", "features_pvc": "pvc-b", "node_selector": {"gpu": "l4"}, "max_prompt_tokens": 256}


def test_every_deploy_setting_changes_the_rendered_manifests(tmp_path):
    from rgalign.config import DeployConfig
    from serving.manifests import render
    assert set(DEPLOY) == {f.name for f in dataclasses.fields(DeployConfig)}

    def bundle(v):
        return {"ranker": {"version": v, "artifact_uri": f"file:///models/ranker/{v}"},
                "reasoner": {"version": v, "artifact_uri": f"file:///models/reasoner/{v}"}}

    def text(cfg, name):
        paths = render(bundle("3"), cfg, tmp_path / name, bundle("4") if cfg.challenger else None)
        return "".join(p.read_text() for p in sorted(paths))
    base = DeployConfig()
    ref = text(base, "base")
    for field, value in DEPLOY.items():
        if field == "challenger":    # a challenger is named with its share of the traffic, never alone
            with pytest.raises(ValueError, match="canary_percent=0"):
                replace(base, challenger=value)
            continue
        kw = {field: value, **({"challenger": "challenger"} if field == "canary_percent" else {})}
        changed = text(replace(base, **kw), field)
        assert changed != ref, f"DeployConfig.{field} changed nothing in the manifests"
    split = [text(replace(base, challenger="challenger", canary_percent=p), f"split{p}") for p in (10, 30)]
    assert split[0] != split[1]


# ------------------------------------------------------------------------------------------ the reasoner check
def test_every_reasoner_check_setting_acts(small_world, micro_reasoner, tmp_path):
    from rgalign.config import ReasonerCheckConfig
    from rgalign.reasoner.check import CheckReport, check_reasoner
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    # an LTP cache: the probes re-embed the same texts, which then cost nothing (the check's figures are the same)
    enc = LTPEncoder(load_reasoner(micro_reasoner), max_prompt_tokens=128, cache=tmp_path / "ltp")
    base = ReasonerCheckConfig(n_contexts=60, n_utterances=54, references="tfidf", min_retrieval_ratio=0.0, n_boot=50)

    def run(**kw):
        r = check_reasoner(enc, small_world, replace(base, **kw))
        return (r.n_contexts, r.n_utterances, round(r.probe, 6), r.mean_cos,
                {e: {m: (v.lo, v.hi) for m, v in ms.items()} for e, ms in r.retrieval.items()})
    ref = run()
    probes = {"n_contexts": 80, "n_utterances": 81, "probe_folds": 3, "n_boot": 60, "seed": 1, "references": "tfidf,minilm"}
    for field, value in probes.items():
        assert run(**{field: value}) != ref, f"ReasonerCheckConfig.{field} changed nothing"
    # the thresholds decide pass / fail on the same figures
    mv = ref[4]["reasoner"]["R@3"]
    from rgalign.metrics import MetricValue
    retrieval = {"reasoner": {"R@3": MetricValue(0.5, *mv), "MRR": MetricValue(0.5, 0.4, 0.6)},
                 "all-MiniLM-L6-v2": {"R@3": MetricValue(0.7, 0.6, 0.8), "MRR": MetricValue(0.7, 0.6, 0.8)}}
    cfg = ReasonerCheckConfig()

    def passed(**kw):
        return CheckReport(0.8, 20.0, 128, 0.3, 0.2, retrieval, replace(cfg, **kw)).passed
    assert passed(min_retrieval_ratio=0.7) and not passed(min_retrieval_ratio=0.8)
    assert not passed(min_retrieval_ratio=0.7, max_mean_cos=0.7)
    assert not passed(min_retrieval_ratio=0.7, min_effective_rank=25.0)
    assert {*probes, "max_mean_cos", "min_effective_rank", "min_retrieval_ratio"} == {
        f.name for f in dataclasses.fields(ReasonerCheckConfig)}
