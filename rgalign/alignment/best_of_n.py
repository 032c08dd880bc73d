"""Best-of-N sampling (paper section 4.2): which candidate query of each sample is the winner q^w.

Given the reward ``ndcg`` (S, K) of K candidate queries for S samples (from ``reward.candidate_ndcg``):

- **V1 Full Retention**: q^w = the highest NDCG; ties go to the teacher earliest in ``priority``
  (paper: CompassMax > Gemini > GPT-5 > Qwen3).
- **V2 Non-reasoner filtering**: V1, but a sample whose winner is the reasoner's own query is discarded.
- **V3 Intersection**: the candidates with the maximum (word-level) edit distance from the reasoner's query
  (diversity) and the candidates with the highest cosine to the golden (clicked) intent (accuracy); a sample
  is kept only if some candidate is in both sets, and q^w is the best-NDCG candidate of the intersection.
- **V4 Union**: as V3 with the union of the two sets (more samples, more diversity).

Every other valid candidate whose NDCG is strictly below NDCG(q^w) is a loser in Q^l, so every DPO pair
(Eq. 9) satisfies NDCG(q^w) > NDCG(q^l).

Example:
    >>> import numpy as np
    >>> sel = best_of_n(np.array([[0.5, 0.5, 0.2]]), ["gpt", "gemini", "reasoner"], ["gemini", "gpt", "reasoner"], "V1")
    >>> sel.winner.tolist(), sel.losers
    ([1], [[2]])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("V1", "V2", "V3", "V4")
_TIE = 1e-9


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences of ``a`` and ``b``."""
    x, y = a.lower().split(), b.lower().split()
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i]
        for j, wy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy)))
        prev = cur
    return prev[-1]


@dataclass
class Selection:
    """``kept`` (S',) sample indices; ``winner`` (S',) candidate index of q^w; ``losers`` their Q^l."""
    strategy: str
    kept: np.ndarray
    winner: np.ndarray
    losers: list[list[int]]

    def winner_counts(self, names: list[str]) -> dict[str, int]:
        return {n: int((self.winner == k).sum()) for k, n in enumerate(names)}


def _argbest(ndcg_row: np.ndarray, allowed: np.ndarray, rank: np.ndarray) -> int:
    best = ndcg_row[allowed].max()
    tied = np.flatnonzero(allowed & (ndcg_row >= best - _TIE))
    return int(tied[np.argmin(rank[tied])])


def best_of_n(ndcg: np.ndarray, names: list[str], priority: list[str], strategy: str = "V2",
              reasoner: str = "reasoner", valid: np.ndarray | None = None, edit: np.ndarray | None = None,
              golden_cos: np.ndarray | None = None) -> Selection:
    """Select q^w and Q^l per sample.

    Args:
        ndcg: (S, K) reward of each candidate. names: (K,) teacher of each column.
        priority: tie order, earliest first; names missing from it rank after it in column order.
        valid: (S, K) bool, False where a teacher gave no usable query (never selected).
        edit: (S, K) edit distance to the reasoner's query (V3/V4). golden_cos: (S, K) cosine of the
            candidate's embedding to the clicked intent's embedding (V3/V4).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; use one of {STRATEGIES}")
    ndcg = np.asarray(ndcg, float)
    S, K = ndcg.shape
    if len(names) != K:
        raise ValueError(f"names has {len(names)} entries for {K} candidate columns")
    valid = np.ones((S, K), bool) if valid is None else np.asarray(valid, bool)
    if strategy in ("V2",) and reasoner not in names:
        raise ValueError(f"strategy V2 filters the reasoner's own queries, but no candidate is named {reasoner!r}")
    if strategy in ("V3", "V4") and (edit is None or golden_cos is None):
        raise ValueError(f"strategy {strategy} needs edit (distance to the reasoner's query) and golden_cos")
    order = {n: i for i, n in enumerate(priority)}
    rank = np.array([order.get(n, len(priority) + k) for k, n in enumerate(names)])
    r_col = names.index(reasoner) if reasoner in names else -1
    kept, winners, losers = [], [], []
    for s in range(S):
        ok = valid[s]
        if not ok.any():
            continue
        if strategy in ("V1", "V2"):
            allowed = ok
        else:
            div = ok.copy()
            if r_col >= 0:
                div[r_col] = False
            if not div.any():
                continue
            by_edit = div & (edit[s] >= edit[s][div].max() - _TIE)
            by_cos = ok & (golden_cos[s] >= golden_cos[s][ok].max() - _TIE)
            allowed = (by_edit & by_cos) if strategy == "V3" else (by_edit | by_cos)
            if not allowed.any():
                continue
        w = _argbest(ndcg[s], allowed, rank)
        if strategy == "V2" and w == r_col:
            continue
        kept.append(s)
        winners.append(w)
        losers.append([k for k in range(K) if ok[k] and k != w and ndcg[s, k] < ndcg[s, w] - _TIE])
    return Selection(strategy, np.array(kept, int), np.array(winners, int), losers)


def preference_pairs(sel: Selection, ndcg: np.ndarray) -> list[tuple[int, int, int]]:
    """``(sample, winner column, loser column)`` triples of Eq. 9; NDCG(q^w) > NDCG(q^l) by construction."""
    out = [(int(s), int(w), l) for s, w, ls in zip(sel.kept, sel.winner, sel.losers) for l in ls]
    assert all(ndcg[s, w] > ndcg[s, l] for s, w, l in out)
    return out
