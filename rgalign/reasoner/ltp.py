"""Last-token pooling (paper Eq. 2-3): e_LTP = H[-1], the final-layer hidden state of the last prompt token.

Prompts are the section 3.2 chat (system + user template around the context C) rendered by the tokenizer's
chat template with the generation prompt appended, so the last token is where the answer would start. Batches
are left-padded, so the last position is the last real token of every row. Results are float32 (B, d).

Verbalized contexts repeat across sessions, so an on-disk cache (SQLite) keyed by sha256(model version,
prompt) answers repeats without a forward pass.

Example:
    >>> enc = LTPEncoder(load_reasoner("artifacts/reasoners/tiny-s0"))        # doctest: +SKIP
    >>> enc.embed(["User Profile: User Gender: Female"]).shape                # doctest: +SKIP
    (1, 128)
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import sqlite3
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from rgalign.features.prompt import ReasonerPrompt


def left_pad(ids: list[list[int]], pad: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids`` / ``attention_mask`` of token lists (width rounded up to ``multiple``), so the
    last position of every row is its last real token: where LTP reads (Eq. 2-3)."""
    width = -(-max(len(x) for x in ids) // multiple) * multiple
    return {"input_ids": torch.tensor([[pad] * (width - len(x)) + x for x in ids]),
            "attention_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])}


def last_token_state(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """e_LTP (B, d): the final-layer (post-norm) hidden state of the last token of a left-padded batch."""
    base = getattr(model, "model", model)  # the decoder body: last_hidden_state is after the final norm
    return base(**batch).last_hidden_state[:, -1]


def shared_prefix(ids: list[list[int]]) -> int:
    """Length of the token prefix every row shares, less one (so no row is left without a suffix token)."""
    n = min(len(x) for x in ids) - 1
    p = 0
    while p < n and len({x[p] for x in ids}) == 1:
        p += 1
    return p


def prefixed_last_token_state(model, prefix: list[int], suffixes: list[list[int]], pad_id: int,
                              multiple: int = 1) -> torch.Tensor:
    """e_LTP (B, d) of prompts ``prefix + suffix``, the shared prefix (the section 3.2 system prompt and the
    template up to the context, ~110 tokens) run once and its key/value cache repeated over the batch; the
    suffixes are right-padded (to a multiple of ``multiple``) and read at their own last token. Equal to ``last_token_state`` on the full
    prompts (to float rounding) and differentiable, so pre-training and LTP extraction both use it."""
    base = getattr(model, "model", model)
    b, p = len(suffixes), len(prefix)
    width = -(-max(len(x) for x in suffixes) // multiple) * multiple
    device = next(base.parameters()).device
    out = base(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    cache = out.get("cache") or out.get("past_key_values")   # transformers >= 5.24 names it "cache"
    cache.batch_repeat_interleave(b)
    ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in suffixes], device=device)
    mask = torch.tensor([[1] * (p + len(x)) + [0] * (width - len(x)) for x in suffixes], device=device)
    pos = torch.arange(p, p + width, device=device).expand(b, -1)
    h = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
             **{_cache_kwarg(type(base)): cache}).last_hidden_state
    return h[torch.arange(b, device=device), torch.tensor([len(x) for x in suffixes], device=device) - 1]


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def ltp_of_ids(model, ids: list[list[int]], prefix: list[int], pad_id: int, multiple: int = 1) -> torch.Tensor:
    """e_LTP (B, d) of tokenized prompts, in their order: rows that start with ``prefix`` (and go past it) through
    ``prefixed_last_token_state``, the others (no prefix, or one cut away by left truncation) in full."""
    p = len(prefix)
    has = [p > 0 and len(x) > p and x[:p] == prefix for x in ids]
    pre = [i for i, h in enumerate(has) if h]
    rest = [i for i, h in enumerate(has) if not h]
    parts = []
    if pre:
        parts.append(prefixed_last_token_state(model, prefix, [ids[i][p:] for i in pre], pad_id, multiple))
    if rest:
        parts.append(last_token_state(model, left_pad([ids[i] for i in rest], pad_id, multiple)))
    if not rest or not pre:
        return parts[0]
    return torch.cat(parts)[torch.argsort(torch.tensor(pre + rest))]


class LTPCache:
    """SQLite key -> float32 vector store; safe to share between threads of one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS ltp (key TEXT PRIMARY KEY, vec BLOB)")
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, vec FROM ltp WHERE key IN ({','.join('?' * len(chunk))})"
                out.update({k: np.frombuffer(v, np.float32) for k, v in self._db.execute(q, chunk)})
        return out

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO ltp VALUES (?, ?)",
                                 [(k, np.asarray(v, np.float32).tobytes()) for k, v in items.items()])
            self._db.commit()


class LTPEncoder:
    """Batched LTP extraction with left padding, left truncation and an optional cache.

    Args:
        reasoner: a loaded ``Reasoner`` (``rgalign.reasoner.sources.load_reasoner``); its ``version`` keys the cache.
        max_prompt_tokens: longer prompts keep their last tokens (a warning; counted in ``truncated``).
        batch_size: prompts per forward pass; max_new_tokens: generation budget of a query.
            None (the default) takes the reasoner's own settings (``Reasoner.ltp_settings``, i.e. the
            ``ReasonerConfig`` it was built with), else 512 / 32 / 40.
        cache: an ``LTPCache`` (or a path to one), or None.
        prefix_cache: run the prompt prefix every context shares (system prompt, template head) once per
            batch and reuse its key/value cache (``prefixed_last_token_state``; same LTP, ~2x faster on
            utterances); False runs every prompt in full.
    """

    def __init__(self, reasoner, max_prompt_tokens: int | None = None, batch_size: int | None = None,
                 cache: LTPCache | str | Path | None = None, prompt: ReasonerPrompt | None = None,
                 max_new_tokens: int | None = None, prefix_cache: bool = True):
        own = reasoner.ltp_settings
        max_prompt_tokens = max_prompt_tokens or own.get("max_prompt_tokens", 512)
        batch_size = batch_size or own.get("ltp_batch", 32)
        self.max_new_tokens = max_new_tokens or own.get("max_new_tokens", 40)
        if max_prompt_tokens < 16:
            raise ValueError(f"max_prompt_tokens must be >= 16, got {max_prompt_tokens}")
        self.reasoner, self.max_prompt_tokens, self.batch_size = reasoner, max_prompt_tokens, batch_size
        self.cache = LTPCache(cache) if isinstance(cache, (str, Path)) else cache
        self.prompt = prompt or ReasonerPrompt(**own.get("prompt", {}))   # the domain words it was built with
        self.truncated = self.hits = self.misses = 0
        self.prefix_cache = prefix_cache
        self._affix: tuple | None = None
        self._prefix: list[int] | None = None

    @property
    def dim(self) -> int:
        return self.reasoner.hidden_size

    def render(self, context: str) -> str:
        """The chat prompt text of one verbalized context (raises on an empty context)."""
        if self._affix is None:
            self._affix = self._template_affix()
        if self._affix and context == context.strip():
            return self._affix[0] + context + self._affix[1]
        return self._render_template(context)

    def _render_template(self, context: str) -> str:
        return self.reasoner.tokenizer.apply_chat_template(self.prompt.messages(context), tokenize=False,
                                                           add_generation_prompt=True)

    def _template_affix(self) -> tuple[str, str] | tuple:
        """(prefix, suffix) when the chat template puts a context verbatim between fixed texts (checked on two
        probes with quotes, braces and new lines), so ``render`` is two concatenations instead of a Jinja run
        (~35 us a context on the serving path); () when it does not, and the template runs every time."""
        probe = "\x01rgalign-context\x01"
        full = self._render_template(probe)
        if full.count(probe) != 1:
            return ()
        prefix, suffix = full.split(probe)
        check = "User Profile: a 'b' \"c\" {{ d }} {% e %}\nOrder Status: <|x|>"
        return (prefix, suffix) if self._render_template(check) == prefix + check + suffix else ()

    def key(self, prompt: str) -> str:
        """The cache key of a rendered prompt (reasoner version, truncation length, prompt)."""
        # the truncation length changes the LTP of a long prompt: it is part of the key
        return hashlib.sha256(f"{self.reasoner.version}\x00{self.max_prompt_tokens}\x00{prompt}".encode()).hexdigest()

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of rendered prompts, over-long ones cut from the left (a warning, counted in ``truncated``)."""
        ids = self.reasoner.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        over = [len(x) > self.max_prompt_tokens for x in ids]
        if any(over):
            self.truncated += sum(over)
            warnings.warn(f"{sum(over)} prompt(s) longer than max_prompt_tokens={self.max_prompt_tokens} were "
                          f"truncated from the left ({self.truncated} so far)", stacklevel=3)
            ids = [x[-self.max_prompt_tokens:] for x in ids]
        return ids

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded batch of rendered prompts (what ``generate`` continues)."""
        # pad to a multiple of 32 tokens: a few distinct shapes keep the CPU kernels' per-shape set-up (seen as
        # 1-2 s latency tails when every request had a new length) out of the serving path; LTP is unchanged
        return left_pad(self.token_ids(prompts), self.reasoner.tokenizer.pad_token_id, 32)

    @property
    def prefix(self) -> list[int]:
        """Token ids every rendered prompt starts with (system prompt and template up to the context), found
        on two probe contexts; [] when the template shares none or ``prefix_cache`` is off."""
        if self._prefix is None:
            probes = self.reasoner.tokenizer([self.render("Order Status: probe"), self.render("User Profile: x")],
                                             add_special_tokens=False)["input_ids"]
            p = shared_prefix(probes) if self.prefix_cache else 0
            self._prefix = probes[0][:p] if p >= 8 else []
        return self._prefix

    @torch.inference_mode()
    def embed_prompts(self, prompts: list[str]) -> np.ndarray:
        """LTP of already rendered prompts, (N, d) float32."""
        keys = [self.key(p) for p in prompts]
        found = self.cache.get_many(list(set(keys))) if self.cache is not None else {}
        todo = sorted({k: p for k, p in zip(keys, prompts) if k not in found}.items())
        self.hits += sum(k in found for k in keys)
        self.misses += len(todo)
        new = {}
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            # padded to a multiple of 32 tokens, as in ``tokenize``
            h = ltp_of_ids(self.reasoner.model, self.token_ids([p for _, p in chunk]), self.prefix,
                           self.reasoner.tokenizer.pad_token_id, 32).float().numpy()
            new.update({k: v for (k, _), v in zip(chunk, h)})
        if self.cache is not None and new:
            self.cache.put_many(new)
        found.update(new)
        return np.stack([found[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, self.dim), np.float32)

    def embed(self, contexts: list[str]) -> np.ndarray:
        """LTP of verbalized contexts C, (N, d) float32."""
        return self.embed_prompts([self.render(c) for c in contexts])
