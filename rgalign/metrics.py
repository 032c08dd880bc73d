"""Offline metrics of the paper's Table 2: GAUC, Recall@K, NDCG@K, MRR (K in {3, 5}), with bootstrap 95% CIs.

Conventions:
- A session has one relevant intent (the evaluation week's true intent). Its 0-based ``rank`` is the number
  of candidates scored strictly higher, plus *all* candidates scored equal (ties count against the target,
  so a constant scorer earns nothing). The Stage-2 reward (``rgalign.alignment.reward.candidate_ndcg``) and
  the popularity floor (``rgalign.world.generate.popularity_ranks``) use the same convention.
- GAUC is the per-user AUC weighted by the user's impressions (every candidate intent of every session).
  Pairs are compared within a session, because a session's scores rank that session's candidates: with one
  positive per session this is ``1 - sum(rank) / (sessions * (N - 1))`` (``gauc_from_ranks``). ``gauc`` is
  the general grouped AUC over flattened impressions (ties 1/2), for logs with several labels per group;
  groups without both a positive and a negative are skipped.

Example:
    >>> import numpy as np
    >>> scores = np.array([[.9, .1, .5], [.2, .8, .3]])
    >>> ranks_from_scores(scores, np.array([2, 1]))  # 0-based candidate index of the target
    array([1, 0])
    >>> round(mrr(np.array([1, 0])), 3)
    0.75
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("GAUC", "R@3", "R@5", "N@3", "N@5", "MRR")


def _check_2d(scores: np.ndarray, target: np.ndarray) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, N), got shape {scores.shape}")
    if target.shape != (scores.shape[0],):
        raise ValueError(f"target must be (B,) = ({scores.shape[0]},), got shape {target.shape}")
    if len(target) and (target.min() < 0 or target.max() >= scores.shape[1]):
        raise ValueError(f"target holds candidate indices outside [0, {scores.shape[1]}); map intent ids to "
                         "column indices first")


def ranks_from_scores(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of ``target[b]`` in ``scores[b]`` (B, N); ties count against the target. Returns (B,)."""
    scores, target = np.asarray(scores), np.asarray(target)
    _check_2d(scores, target)
    t = scores[np.arange(len(target)), target][:, None]
    return (scores > t).sum(1) + (scores == t).sum(1) - 1


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of sessions whose relevant intent is in the top k."""
    return float(np.mean(np.asarray(ranks) < k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k, else 0 (IDCG = 1)."""
    r = np.asarray(ranks, float)
    return float(np.mean(np.where(r < k, 1 / np.log2(r + 2), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank."""
    return float(np.mean(1 / (np.asarray(ranks, float) + 1)))


def ndcg_graded(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    """NDCG@k for graded relevance (B, N), the general form (equals sklearn's ``ndcg_score`` without ties)."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    order = np.argsort(-y_score, 1, kind="stable")[:, :k]
    disc = 1 / np.log2(np.arange(2, order.shape[1] + 2))
    dcg = (np.take_along_axis(y_true, order, 1) * disc).sum(1)
    idcg = (-np.sort(-y_true, 1)[:, :k] * disc).sum(1)
    return float(np.mean(np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count 1/2). NaN without both classes."""
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    # average ranks with ties (1-based)
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2
    ranks = np.repeat(avg, counts)
    r_pos = ranks[labels[order]].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_user_auc(user_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user AUC and impression count over flattened impressions. Returns (auc (G,), weight (G,)) for the
    users that have both a positive and a negative impression."""
    user_ids, scores, labels = (np.asarray(x).ravel() for x in (user_ids, scores, labels))
    if not (len(user_ids) == len(scores) == len(labels)):
        raise ValueError("user_ids, scores and labels must have the same number of impressions")
    order = np.argsort(user_ids, kind="stable")
    u, s, y = user_ids[order], scores[order], labels[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    aucs, weights = [], []
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(u)]):
        v = auc(s[a:b], y[a:b])
        if not np.isnan(v):
            aucs.append(v)
            weights.append(b - a)
    return np.array(aucs), np.array(weights, float)


def gauc(user_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> float:
    """Group AUC: per-user AUC weighted by the user's impressions."""
    a, w = per_user_auc(user_ids, scores, labels)
    return float(np.sum(a * w) / np.sum(w)) if len(a) else float("nan")


@dataclass
class MetricValue:
    value: float
    lo: float
    hi: float

    def fmt(self, pct: bool = True) -> str:
        m = 100 if pct else 1
        return f"{self.value * m:.2f} ± {(self.hi - self.lo) / 2 * m:.2f}"


def _bootstrap(per_item: np.ndarray, weights: np.ndarray | None, n_boot: int, rng) -> tuple[float, float]:
    n = len(per_item)
    w = np.ones(n) if weights is None else weights
    stats = np.empty(n_boot)
    for b in range(n_boot):
        c = np.bincount(rng.integers(0, n, n), minlength=n) * w
        stats[b] = np.dot(c, per_item) / c.sum()
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def session_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-session values of R@3, R@5, N@3, N@5 and MRR (their means are the metrics)."""
    r = np.asarray(ranks, float)
    out = {f"R@{k}": (r < k).astype(float) for k in (3, 5)}
    out.update({f"N@{k}": np.where(r < k, 1 / np.log2(r + 2), 0.0) for k in (3, 5)})
    out["MRR"] = 1 / (r + 1)
    return out


def evaluate_ranks(ranks: np.ndarray, user_ids: np.ndarray | None = None, n_candidates: int | None = None,
                   n_boot: int = 200, seed: int = 0) -> dict[str, MetricValue]:
    """All Table 2 metrics with bootstrap 95% CIs from per-session ranks of the true intent.

    With one positive among ``n_candidates`` in every session, the per-user AUC reduces to pooled rank
    counts; it is computed exactly (ties against the target) when ``user_ids`` and ``n_candidates`` are given.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, per in session_metrics(ranks).items():
        lo, hi = _bootstrap(per, None, n_boot, rng)
        out[name] = MetricValue(float(per.mean()), lo, hi)
    if user_ids is not None and n_candidates is not None:
        a, w = gauc_from_ranks(np.asarray(user_ids), np.asarray(ranks), n_candidates)
        lo, hi = _bootstrap(a, w, n_boot, rng)
        out["GAUC"] = MetricValue(float(np.dot(a, w) / w.sum()), lo, hi)
    return {k: out[k] for k in METRICS if k in out}


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, n_boot: int = 200,
                      seed: int = 0) -> dict[str, MetricValue]:
    """Metric of model A minus metric of model B on the *same* sessions, with a paired bootstrap 95% CI
    (sessions resampled jointly). The right test for "A beats B" on one evaluation set: the two models'
    per-session values are strongly correlated, so their separate CIs overlap long after the difference is
    real. A difference whose interval excludes 0 is significant at the 5% level.

    Example:
        >>> d = paired_difference(np.array([0, 1, 0, 2]), np.array([1, 1, 3, 2]))
        >>> round(d["R@3"].value, 2)   # A has 3 of 4 targets in its top 3, B 2 of 4
        0.25
    """
    a, b = np.asarray(ranks_a), np.asarray(ranks_b)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs the same sessions: ranks_a {a.shape} vs ranks_b {b.shape}")
    rng, ma, mb = np.random.default_rng(seed), session_metrics(a), session_metrics(b)
    out = {}
    for name in ma:
        d = ma[name] - mb[name]
        out[name] = MetricValue(float(d.mean()), *_bootstrap(d, None, n_boot, rng))
    return out


def across_seeds(values, level: float = 0.95) -> MetricValue:
    """Mean of one figure measured at several training seeds, with a Student-t interval over the seeds.

    ``paired_difference`` covers the sampling of evaluation sessions only: a model trained again with another
    seed moves by more than that interval. A claim about models rather than runs ("QE-Rec beats the
    baseline") needs this interval, over seeds, to exclude 0. With few seeds it is wide on purpose
    (t = 4.30 for 3 seeds).

    Example:
        >>> v = across_seeds([0.001, 0.002, 0.003])
        >>> round(v.value, 4), round(v.hi - v.value, 5)   # mean, and t(0.975, 2) * sd / sqrt(3)
        (0.002, 0.00248)
    """
    from scipy.stats import t
    v = np.asarray(values, float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"across_seeds needs a figure from 2 or more seeds, got {len(np.atleast_1d(v))}; "
                         "train and evaluate at more seeds (e.g. bench/learning_curve.py --seeds 0,1,2)")
    if not np.isfinite(v).all():
        raise ValueError(f"across_seeds got non-finite values {v.tolist()}")
    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return MetricValue(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half)


def gauc_from_ranks(user_ids: np.ndarray, ranks: np.ndarray, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user AUC and weight when each session has exactly one positive among ``n_candidates``, scored
    within its session (cross-session pairs are not compared: a session's scores are a ranking of its own
    candidates). AUC_user = 1 - sum(rank) / (sessions * (N - 1)); weight = sessions * N impressions."""
    order = np.argsort(user_ids, kind="stable")
    u, r = user_ids[order], ranks[order].astype(float)
    uniq, start, counts = np.unique(u, return_index=True, return_counts=True)
    sums = np.add.reduceat(r, start) if len(r) else np.array([])
    return 1 - sums / (counts * (n_candidates - 1)), counts * float(n_candidates)


def format_table(rows: dict[str, dict[str, MetricValue]], title: str = "") -> str:
    """Markdown table, one row per model, columns = METRICS, values in % with the 95% CI half-width."""
    cols = [m for m in METRICS if any(m in r for r in rows.values())]
    lines = ([f"**{title}**", ""] if title else []) + [
        "| Model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(r[c].fmt() if c in r else "-" for c in cols) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ segments
# buckets of the target intent's training clicks (where text / LLM representations pay: cold and long-tail
# intents), and of the user's training clicks
CLICK_SEGMENTS = (("cold-start", 0, 0), ("1-20", 1, 20), ("21-100", 21, 100), ("101-500", 101, 500), ("501+", 501, None))
SEGMENT_METRICS = ("R@3", "MRR")


def segment_masks(target: np.ndarray, train_clicks: np.ndarray, user_clicks: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Boolean masks (N,) of the sessions by the target intent's training clicks (``train_clicks[target]``:
    cold-start, 1-20, 21-100, 101-500, 501+, and <= 100) and, with ``user_clicks`` (N,), by the user's own
    training clicks (none, some)."""
    c = np.asarray(train_clicks)[np.asarray(target)]
    out = {f"intent {name}": (c >= lo) & (c <= hi if hi is not None else True) for name, lo, hi in CLICK_SEGMENTS}
    out["intent <= 100 clicks"] = c <= 100
    if user_clicks is not None:
        u = np.asarray(user_clicks)
        out["user without training clicks"], out["user with training clicks"] = u == 0, u > 0
    return out


def segment_report(ranks: dict[str, np.ndarray], masks: dict[str, np.ndarray], reference: str | None = None,
                   metrics: tuple[str, ...] = SEGMENT_METRICS, n_boot: int = 200, seed: int = 0) -> tuple[dict, dict]:
    """Per segment: every model's ``metrics`` (bootstrap 95% CI) and each model minus ``reference`` (default: the
    last model; paired bootstrap on the segment's sessions). Returns ``(rows, diffs)`` keyed
    ``"<segment> (n=N): <model>"`` and ``"<segment> (n=N): <model> - <reference>"``; empty segments are skipped."""
    names = list(ranks)
    ref = reference or names[-1]
    rows, diffs = {}, {}
    for seg, m in masks.items():
        n = int(m.sum())
        if not n:
            continue
        for name in names:
            ev = evaluate_ranks(ranks[name][m], n_boot=n_boot, seed=seed)
            rows[f"{seg} (n={n:,}): {name}"] = {k: ev[k] for k in metrics}
        for name in names:
            if name != ref:
                d = paired_difference(ranks[name][m], ranks[ref][m], n_boot=n_boot, seed=seed)
                diffs[f"{seg} (n={n:,}): {name} - {ref}"] = {k: d[k] for k in metrics}
    return rows, diffs


def segment_metrics(diffs: dict, prefix: str = "seg") -> dict[str, float]:
    """Flat MLflow metrics of ``segment_report``'s differences: ``seg.<segment>.<model - ref>.<metric>`` (value
    and ``.lo``), names made MLflow-safe."""
    import re
    out = {}
    for key, ms in diffs.items():
        seg, _, pair = key.partition(": ")
        seg = re.sub(r" \(n=[\d,]+\)", "", seg)
        name = re.sub(r"[^0-9A-Za-z_.-]+", "_", f"{prefix}.{seg}.{pair.replace(' - ', '_vs_')}").strip("_")
        for m, v in ms.items():
            out[f"{name}.{m.replace('@', '_at_')}"] = v.value
            out[f"{name}.{m.replace('@', '_at_')}.lo"] = v.lo
    return out
