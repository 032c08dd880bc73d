"""Stage 2's data: ``build_candidates`` (teachers -> embeddings -> reward) and ``select`` (best-of-N). The
RGA trainers run on a selection in ``rgalign.workflow`` (``rg_sft``, ``rg_refine``, ``align``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rgalign.alignment.best_of_n import Selection, best_of_n, edit_distance, preference_pairs
from rgalign.alignment.reward import QueryEmbedder, candidate_ndcg, golden_cosine
from rgalign.alignment.teachers import (FollowUpTeacher, HFTeacher, OpenAITeacher, PlaybookTeacher, RetrievalTeacher,
                                        Teacher, TeacherPool)
from rgalign.config import AlignmentConfig
from rgalign.contract import DataContract
from rgalign.features.prompt import ReasonerPrompt
from rgalign.ranker.inputs import intent_texts, verbalize_frame
from rgalign.reasoner.ltp import LTPEncoder

REASONER = "reasoner"


class ReasonerTeacher(Teacher):
    """The reasoner being aligned is the 4th candidate (greedy generation of its own query)."""
    name = REASONER

    def __init__(self, encoder: LTPEncoder):
        self.encoder = encoder

    def generate(self, contexts):
        from rgalign.reasoner.generate import generate_queries
        return generate_queries(self.encoder, contexts, batch_size=32)   # the reasoner's own max_new_tokens


def make_teachers(cfg: AlignmentConfig, kb: pd.DataFrame, contract: DataContract, encoder: LTPEncoder) -> list[Teacher]:
    out: list[Teacher] = []
    for t in cfg.teacher_list:
        if t == "kb-retrieval":
            out.append(RetrievalTeacher(intent_texts(kb), kb.title.tolist(), contract))
        elif t == "playbook":
            out.append(PlaybookTeacher(contract))
        elif t == "follow-up":
            out.append(FollowUpTeacher(contract))
        elif t == "openai":
            teacher = OpenAITeacher(cfg.teacher_url, cfg.teacher_model, name="openai", api_key_env=cfg.teacher_key_env,
                                    timeout_s=cfg.teacher_timeout_s, retries=cfg.retries,
                                    prompt=ReasonerPrompt(**contract.prompt_words()))
            teacher.check()
            out.append(teacher)
        else:
            out.append(HFTeacher(t[3:], name=t))
    return out + [ReasonerTeacher(encoder)]


@dataclass
class Proposals:
    """What the teacher pool wrote: K queries for each kept session (before any reward)."""
    frame: pd.DataFrame            # (S rows) Feast features of the kept sessions
    prompts: list[str]             # rendered section 3.2 prompts (the reasoner's input)
    names: list[str]               # (K,) teachers, the reasoner last
    queries: list[list[str]]       # (S, K), '' where a teacher's answer was dropped
    dropped: dict

    @property
    def valid(self) -> np.ndarray:
        """(S, K) True where the teacher's query was kept."""
        return np.array([[bool(q) for q in row] for row in self.queries])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(path / "frame.parquet", index=False)
        (path / "proposals.json").write_text(json.dumps({"prompts": self.prompts, "names": self.names,
                                                         "queries": self.queries, "dropped": self.dropped}))
        return path

    @staticmethod
    def load(path: str | Path) -> "Proposals":
        j = json.loads((Path(path) / "proposals.json").read_text())
        return Proposals(pd.read_parquet(Path(path) / "frame.parquet"), j["prompts"], j["names"], j["queries"],
                         j["dropped"])


@dataclass
class Candidates(Proposals):
    """The proposals with their rewards (the reward model's view of Stage 2)."""
    e: np.ndarray = None           # (S, K, d) e(q) in the frozen reasoner's space
    ndcg: np.ndarray = None        # (S, K) reward, -1 where the query was dropped
    edit: np.ndarray = None        # (S, K) word edit distance to the reasoner's query
    golden_cos: np.ndarray = None  # (S, K) cos(e(q), e(clicked intent text))

    def save(self, path: str | Path) -> Path:
        path = super().save(path)
        np.savez(path / "arrays.npz", e=self.e, ndcg=self.ndcg, edit=self.edit, golden_cos=self.golden_cos)
        return path

    @staticmethod
    def load(path: str | Path) -> "Candidates":
        a = np.load(Path(path) / "arrays.npz")
        return Candidates(**vars(Proposals.load(path)), e=a["e"], ndcg=a["ndcg"], edit=a["edit"],
                          golden_cos=a["golden_cos"])

    def teacher_table(self) -> pd.DataFrame:
        """Mean reward and win share (V1) of each teacher: how good the pool's members are."""
        v = self.valid
        win = best_of_n(self.ndcg, self.names, self.names, "V1", valid=v)
        share = win.winner_counts(self.names)
        return pd.DataFrame({"teacher": self.names,
                             "mean NDCG": [float(self.ndcg[v[:, k], k].mean()) if v[:, k].any() else float("nan")
                                           for k in range(len(self.names))],
                             "V1 wins": [share[n] / max(len(win.kept), 1) for n in self.names],
                             "dropped": [self.dropped.get(n, 0) for n in self.names]})

    def separability(self) -> dict[str, float]:
        """Can the reward tell the pool's candidates apart? Over contexts with >= 2 valid candidates: the mean
        spread (max - min NDCG) among a context's candidates, and the share of contexts whose winner beats the
        runner-up by more than one rank step at the winner's rank (1/log2(2+r) - 1/log2(3+r)), the smallest
        change of the clicked intent's place; a smaller gap is a tie the reward cannot resolve."""
        v = self.valid
        rows = [np.sort(self.ndcg[s, v[s]])[::-1] for s in range(len(self.ndcg)) if v[s].sum() >= 2]
        if not rows:
            return {"contexts": 0, "ndcg_spread": float("nan"), "resolved_share": float("nan")}
        best = np.array([r[0] for r in rows])
        second = np.array([r[1] for r in rows])
        rank = np.clip(2 ** (1 / np.maximum(best, 1e-9)) - 2, 0, None)   # NDCG = 1/log2(2 + r)
        step = 1 / np.log2(2 + rank) - 1 / np.log2(3 + rank)
        return {"contexts": len(rows), "ndcg_spread": float(np.mean([r[0] - r[-1] for r in rows])),
                "resolved_share": float(np.mean(best - second > step * (1 - 1e-6)))}

    # the training sets of the three RGA trainers, from one best-of-N selection
    def winners(self, sel: Selection) -> list[tuple[str, str]]:
        """``(prompt, q^w)`` per kept sample (RG-SFT, RG-CL)."""
        return [(self.prompts[s], self.queries[s][w]) for s, w in zip(sel.kept, sel.winner)]

    def winner_embeddings(self, sel: Selection) -> np.ndarray:
        """e_i^+ = e(q^w) per kept sample, (S', d) (RG-CL, Eq. 11)."""
        return np.stack([self.e[s, w] for s, w in zip(sel.kept, sel.winner)])

    def preference_triples(self, sel: Selection, max_per_sample: int) -> list[tuple[str, str, str]]:
        """``(prompt, q^w, q^l)`` with NDCG(q^w) > NDCG(q^l) (Eq. 9), at most ``max_per_sample`` per context."""
        out, per = [], {}
        for s, w, l in preference_pairs(sel, self.ndcg):
            if per.get(s, 0) < max_per_sample:
                per[s] = per.get(s, 0) + 1
                out.append((self.prompts[s], self.queries[s][w], self.queries[s][l]))
        return out


def generate_candidates(train_frame: pd.DataFrame, kb: pd.DataFrame, contract: DataContract, encoder: LTPEncoder,
                        cfg: AlignmentConfig, progress: bool = False) -> Proposals:
    """Sample ``cfg.n_samples`` clicked training sessions and ask every teacher and the reasoner for a query."""
    frame = train_frame[train_frame.clicked_intent > 0]
    frame = frame.sample(min(cfg.n_samples, len(frame)), random_state=cfg.seed).sort_values("session_id")
    contexts = verbalize_frame(frame, kb, contract, progress)
    pool = TeacherPool(make_teachers(cfg, kb, contract, encoder), cfg.max_words, cfg.retries, cfg.min_candidates,
                       cfg.min_samples)
    res = pool.generate(contexts)
    return Proposals(frame.iloc[res.kept].reset_index(drop=True), [encoder.render(contexts[i]) for i in res.kept],
                     res.names, res.queries, dict(res.dropped))


def score_candidates(p: Proposals, kb: pd.DataFrame, ranker, spec, encoder: LTPEncoder,
                     query_prompt: str = "context") -> Candidates:
    """The reward: embed every query with the frozen reasoner (``QueryEmbedder``, read as ``query_prompt``),
    NDCG of the clicked intent under the Stage-1 QE-Rec; plus the V3/V4 criteria (edit distance to the
    reasoner's query, cosine to the golden intent)."""
    S, K = len(p.queries), len(p.names)
    embedder = QueryEmbedder(encoder, query_prompt)
    flat = sorted({q for row in p.queries for q in row if q})
    vec = dict(zip(flat, embedder.embed(flat)))
    e = np.zeros((S, K, embedder.dim), np.float32)
    for s, row in enumerate(p.queries):
        for k, q in enumerate(row):
            if q:
                e[s, k] = vec[q]
    clicked = p.frame.clicked_intent.to_numpy(np.int64)
    ndcg = candidate_ndcg(ranker, spec.encode(p.frame)[0], e, clicked)
    r = p.names.index(REASONER)
    edit = np.array([[edit_distance(q, row[r]) for q in row] for row in p.queries], float)
    texts = intent_texts(kb)
    golden = embedder.embed([texts[c - 1] for c in clicked])
    return Candidates(**vars(p), e=e, ndcg=np.where(p.valid, ndcg, -1.0), edit=edit,
                      golden_cos=golden_cosine(e, golden))


def build_candidates(train_frame: pd.DataFrame, kb: pd.DataFrame, contract: DataContract, ranker, spec,
                     encoder: LTPEncoder, cfg: AlignmentConfig, progress: bool = False) -> Candidates:
    """Teachers, then reward (``generate_candidates`` then ``score_candidates``)."""
    return score_candidates(generate_candidates(train_frame, kb, contract, encoder, cfg, progress), kb, ranker, spec,
                            encoder)


def select(c: Candidates, cfg: AlignmentConfig) -> Selection:
    priority = [p.strip() for p in cfg.priority.split(",")]
    return best_of_n(c.ndcg, c.names, priority, cfg.strategy, REASONER, c.valid, c.edit, c.golden_cos)
