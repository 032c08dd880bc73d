"""Drift with Evidently 0.7: request features, query embeddings (the reasoner's LTP) and ranker scores, and
the drift gate a pipeline step runs.

Methods are pinned per window size, never left to Evidently's automatic switch at 1,000 rows:

| window      | numerical                          | categorical                               |
|-------------|------------------------------------|-------------------------------------------|
| < 1,000     | Kolmogorov-Smirnov, p-value < 0.05 | population stability index >= 0.1         |
| >= 1,000    | Wasserstein (normed) >= 0.1        | Jensen-Shannon distance >= 0.1            |

No chi-square: Evidently's is a goodness-of-fit test against the reference proportions, so it ignores the
reference window's own noise and, with sessions clustered by user, flagged a same-distribution 500-session
window (entry point, p = 0.0016, measured on the ci world); at large n it flags any negligible shift.
Embeddings use Evidently's domain-classifier method called directly (ROC AUC of telling the windows apart),
which skips ``EmbeddingsDrift``'s t-SNE chart (98% of its time).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SMALL_WINDOW = 1_000


class DriftInputError(ValueError):
    """A drift request that cannot be computed as given (empty window, missing reference or columns)."""


def pinned_methods(n: int) -> dict:
    small = n < SMALL_WINDOW
    return {"num_method": "ks" if small else "wasserstein", "cat_method": "psi" if small else "jensenshannon",
            "num_threshold": 0.05 if small else 0.1, "cat_threshold": 0.1}


P_VALUE_METHODS = {"ks", "chisquare", "z", "fisher_exact", "g_test", "mannw", "cramer_von_mises", "anderson"}


@dataclass
class DriftResult:
    share: float                                  # share of drifted columns
    drifted: list[str]
    per_column: dict[str, dict] = field(default_factory=dict)   # column -> {method, score, drift}
    methods: dict = field(default_factory=dict)
    n_reference: int = 0
    n_current: int = 0
    snapshot: object = None                       # the Evidently Snapshot (for the workspace)


def _check(reference: pd.DataFrame | None, current: pd.DataFrame, columns: list[str]) -> None:
    if reference is None or len(reference) == 0:
        raise DriftInputError("reference window is missing or empty; pass the training-week features "
                              "(rgalign monitor drift --reference ...)")
    if current is None or len(current) == 0:
        raise DriftInputError("current window is empty; widen the window (--days) or check the log")
    for name, df in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DriftInputError(f"{name} window lacks column(s) {missing}; it must carry the intent_ranking "
                                  "feature service columns")


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str],
                  timestamp=None, tags: tuple[str, ...] = ("drift",), name: str | None = None,
                  metadata: dict | None = None) -> DriftResult:
    """Column drift of ``current`` vs ``reference`` over the ``numerical`` and ``categorical`` columns (the
    ranker's inputs: ``DataContract.numerical`` / ``.categorical``) with the pinned methods of the smaller
    window's size; the Evidently snapshot (``result.snapshot``) carries ``timestamp``, ``tags``, ``name`` and
    ``metadata`` for the dashboard."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    num, cat = list(numerical), list(categorical)
    _check(reference, current, num + cat)

    def prep(df):
        out = df[num + cat].copy()
        for c in num:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
        for c in cat:
            out[c] = out[c].astype("Int64").astype(str)
        return out
    n = min(len(reference), len(current))
    m = pinned_methods(n)
    dd = DataDefinition(numerical_columns=num, categorical_columns=cat)
    report = Report([DataDriftPreset(columns=num + cat, **m)], include_tests=False, tags=list(tags))
    snap = report.run(Dataset.from_pandas(prep(current), data_definition=dd),
                      Dataset.from_pandas(prep(reference), data_definition=dd), timestamp=timestamp, name=name,
                      metadata=metadata)
    per = {}
    for metric in snap.dict()["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("ValueDrift"):
            score, thr = float(metric["value"]), cfg.get("threshold")
            drift = score < thr if cfg["method"] in P_VALUE_METHODS else score >= thr
            per[cfg["column"]] = {"method": cfg["method"], "score": score, "threshold": thr, "drift": bool(drift)}
    drifted = sorted(c for c, v in per.items() if v["drift"])
    return DriftResult(len(drifted) / max(1, len(per)), drifted, per, m, len(reference), len(current), snap)


def score_drift(reference_scores, current_scores, **snapshot) -> DriftResult:
    """Drift of the ranker's top-1 score distribution (a numeric column with the pinned method); ``snapshot``:
    ``timestamp``, ``tags``, ``name``, ``metadata`` of its Evidently snapshot."""
    ref = pd.DataFrame({"top_score": np.asarray(reference_scores, float)})
    cur = pd.DataFrame({"top_score": np.asarray(current_scores, float)})
    return feature_drift(ref, cur, numerical=["top_score"], categorical=[], **{"tags": ("score-drift",), **snapshot})


def embedding_drift(reference: np.ndarray, current: np.ndarray, threshold: float = 0.55, seed: int = 0) -> dict:
    """Drift of query embeddings (B, d): Evidently's domain-classifier method (ROC AUC of a classifier that
    tells the windows apart; 0.5 = indistinguishable), called directly: no t-SNE chart."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise DriftInputError(f"embeddings must be (N, d) with the same d; got {reference.shape} and {current.shape}")
    if min(len(reference), len(current)) < 20:
        raise DriftInputError("embedding drift needs at least 20 rows per window")
    cols = [f"e{i}" for i in range(reference.shape[1])]
    np.random.seed(seed)  # the method's train/test split draws from numpy's global generator
    score, drift, name = model(threshold=threshold, bootstrap=False)(pd.DataFrame(current, columns=cols),
                                                                    pd.DataFrame(reference, columns=cols))
    return {"method": name, "score": float(score), "threshold": threshold, "drift": bool(drift),
            "n_reference": len(reference), "n_current": len(current)}


@dataclass
class GateResult:
    fired: bool
    reasons: list[str]
    feature_share: float
    embedding: dict | None = None
    scores: dict | None = None


def drift_gate(features: DriftResult, max_share: float = 0.2, critical: tuple[str, ...] = (),
               embedding: dict | None = None, scores: DriftResult | None = None) -> GateResult:
    """Fire when more than ``max_share`` of the feature columns drifted, when a ``critical`` column (the
    contract's ``monitoring.critical``: the context that moves intents most) drifted, or
    when the embeddings / scores drifted. For p-value methods (small windows) a column counts for the gate
    only below 0.05 / #columns (Bonferroni), so 23 tests per window do not make a same-distribution window
    fire one time in three."""
    m = max(1, len(features.per_column))
    strict = [c for c, v in features.per_column.items()
              if (v["score"] < 0.05 / m if v["method"] in P_VALUE_METHODS else v["drift"])]
    reasons = []
    if len(strict) / m > max_share:
        reasons.append(f"{len(strict) / m:.0%} of feature columns drifted (> {max_share:.0%}): {', '.join(sorted(strict))}")
    hot = sorted(set(strict) & set(critical))
    if hot:
        reasons.append(f"critical column(s) drifted: {', '.join(hot)}")
    if embedding is not None and embedding["drift"]:
        reasons.append(f"query-embedding drift: {embedding['method']} = {embedding['score']:.3f} >= {embedding['threshold']}")
    if scores is not None and scores.drifted:
        reasons.append(f"ranker score drift ({scores.per_column['top_score']['method']} "
                       f"{scores.per_column['top_score']['score']:.3f})")
    return GateResult(bool(reasons), reasons, len(strict) / m, embedding,
                      None if scores is None else scores.per_column.get("top_score"))
