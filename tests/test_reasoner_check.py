"""Does a reasoner's LTP carry meaning: the diagnostics of ``rgalign reasoner check``, the held-out utterances,
the prefix-cached LTP, the distillation loss, and the reward's separability figures."""
import dataclasses

import numpy as np
import pytest
import torch

from rgalign.config import ReasonerConfig
from rgalign.reasoner.check import anisotropy, family_retrieval, heldout_utterances
from rgalign.reasoner.ltp import LTPEncoder
from rgalign.reasoner.sources import Distillation, load_reasoner, pretrain


def test_anisotropy_tells_a_constant_vector_from_spread_ones():
    rng = np.random.default_rng(0)
    const = np.ones((200, 32)) + 1e-3 * rng.standard_normal((200, 32))
    cos, _ = anisotropy(const)
    assert cos > 0.99
    spread = rng.standard_normal((500, 32))
    cos, rank = anisotropy(spread)
    assert abs(cos) < 0.05 and rank > 25
    line = np.outer(rng.standard_normal(300), rng.standard_normal(32))
    assert anisotropy(line)[1] < 1.5          # every row on one line: effective rank 1


def test_family_retrieval_counts_the_first_intent_of_the_right_family():
    fam = np.array(["a", "a", "b", "c", "d"])
    scores = np.array([[5, 4, 3, 2, 1],      # first hit at rank 0
                       [5, 4, 3, 2, 1],      # family c: rank 3, outside the top 3
                       [1, 2, 3, 4, 5]])     # family d: rank 0
    out = family_retrieval(scores, fam, np.array(["a", "c", "d"]))
    assert out["R@3"].tolist() == [1, 0, 1]
    assert out["MRR"].tolist() == pytest.approx([1, 1 / 4, 1])


def test_held_out_utterances_never_reach_a_pretraining_corpus():
    from rgalign.reasoner.corpus import build_corpus, distil_pairs
    from rgalign.world.kb import build_kb, heldout_mask, kb_utterances, load_bitext
    b = load_bitext()
    held = heldout_mask(b)
    assert 0.1 < held.mean() < 0.3 and np.array_equal(held, heldout_mask(b.sample(frac=1, random_state=1).sort_index()))
    assert not set(b.instruction[held]) & set(kb_utterances(b).values())     # the KB quotes none of them
    kb = build_kb(b, seed=0)
    texts = {t for _, t in build_corpus(b, kb, [], [], 0)} | {x for x, _ in distil_pairs(b, kb, [], [], 10_000, 0)}
    assert not set(b.instruction[held]) & texts
    u = heldout_utterances(54)
    assert len(u) == 54 and u.family.value_counts().eq(2).all() and set(u.instruction) <= set(b.instruction[held])


def test_prefix_cached_ltp_equals_the_full_prompt(micro_reasoner):
    from conftest import MICRO_CTX
    r = load_reasoner(micro_reasoner)
    texts = [MICRO_CTX, "Where is my parcel now?", "refund", MICRO_CTX + " and more " * 30]
    fast, full = LTPEncoder(r), LTPEncoder(r, prefix_cache=False)
    assert len(fast.prefix) >= 8 and full.prefix == []
    np.testing.assert_allclose(fast.embed(texts), full.embed(texts), atol=1e-5)


def test_distillation_moves_the_ltp_towards_its_targets(micro_reasoner):
    """L_LM + lambda * (1 - cos(e_LTP, t)): a few steps raise the cosine of each prompt's LTP to its target,
    and lambda = 0 leaves the distillation out (the weights then follow the LM loss alone)."""
    from conftest import MICRO_CTX
    r = load_reasoner(micro_reasoner)
    enc = LTPEncoder(r)
    texts = [MICRO_CTX, "Where is my parcel now?", "I want a refund for my order.", "Track my order"]
    ids = enc.token_ids([enc.render(t) for t in texts])
    targets = torch.nn.functional.normalize(torch.randn(4, r.hidden_size, generator=torch.Generator().manual_seed(0)), dim=-1)
    d = Distillation(ids, targets, enc.prefix)
    assert all(x[:len(d.prefix)] == d.prefix for x in d.ids)       # every row takes the prefix-cached path

    def cos():
        return float(torch.nn.functional.cosine_similarity(torch.from_numpy(LTPEncoder(r).embed(texts)), targets).mean())
    before = cos()
    cfg = ReasonerConfig(pretrain_steps=30, pretrain_batch=2, seq_len=32, pretrain_lr=1e-2, distil_batch=4)
    curves = pretrain(r.model, r.tokenizer, [("", "Where is my parcel?")] * 4, cfg, progress=False, distil=d)
    assert len(curves["distil"]) == 30 and curves["distil"][-1] < curves["distil"][0]
    assert cos() > before + 0.3
    off = pretrain(r.model, r.tokenizer, [("", "Where is my parcel?")] * 4,
                   dataclasses.replace(cfg, distil_weight=0.0), progress=False, distil=d)
    assert off["distil"] == []


def test_truncated_rows_keep_their_own_tokens(micro_reasoner):
    """A prompt cut from the left has lost the shared prefix: it runs in full, with the same LTP, next to a
    row that takes the prefix-cached path, each in its own place of the batch."""
    from rgalign.reasoner.ltp import last_token_state, left_pad, ltp_of_ids
    r = load_reasoner(micro_reasoner)
    enc = LTPEncoder(r)
    ids = enc.token_ids([enc.render("Where is my parcel now?")])
    rows = [ids[0][20:], ids[0]]
    assert rows[0][:len(enc.prefix)] != enc.prefix
    pad = r.tokenizer.pad_token_id
    with torch.no_grad():
        mixed = ltp_of_ids(r.model, rows, enc.prefix, pad)
        alone = torch.cat([last_token_state(r.model, left_pad([x], pad)) for x in rows])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)
    d = Distillation(rows, torch.zeros(2, r.hidden_size), enc.prefix)
    assert torch.isfinite(d.loss(r.model, [0, 1], pad))


def test_separability_counts_winners_beyond_one_rank_step():
    import pandas as pd

    from rgalign.alignment.stage2 import Candidates
    ndcg = np.array([[1 / np.log2(2), 1 / np.log2(3), 0.1],      # rank 0 vs rank 1: resolved
                     [0.5, 0.5, 0.5],                             # a tie: not resolved
                     [0.3, -1, -1]])                              # one valid candidate: not counted
    c = Candidates(pd.DataFrame({"session_id": [1, 2, 3]}), ["p"] * 3, ["a", "b", "reasoner"],
                   [["x", "y", "z"], ["x", "y", "z"], ["x", "", ""]], {}, e=np.zeros((3, 3, 2)), ndcg=ndcg, edit=np.zeros((3, 3)),
                   golden_cos=np.zeros((3, 3)))
    s = c.separability()
    assert s["contexts"] == 2 and s["resolved_share"] == 0.5
    assert s["ndcg_spread"] == pytest.approx(((1 - 0.1) + 0) / 2)


def test_reference_scores_are_cached_by_encoder_and_texts(tmp_path, monkeypatch):
    """The second check of the same texts reads the reference scores back instead of encoding again; other
    texts, or another encoder, miss; the default location follows $RGALIGN_CACHE_DIR."""
    from rgalign.reasoner import check
    calls = []
    real = check.reference_scores
    monkeypatch.setattr(check, "reference_scores", lambda *a: calls.append(a[0]) or real(*a))
    q, kb = ["where is my parcel", "refund please"], ["track order", "get refund", "cancel order"]
    first = check._cached(tmp_path, "tfidf", q, kb)
    assert first.shape == (2, 3) and calls == ["tfidf"]
    np.testing.assert_array_equal(check._cached(tmp_path, "tfidf", q, kb), first)
    assert calls == ["tfidf"]                                          # read back
    check._cached(tmp_path, "tfidf", q, kb[:2])
    assert calls == ["tfidf", "tfidf"]                                 # other texts miss
    monkeypatch.setenv("RGALIGN_CACHE_DIR", str(tmp_path / "c"))
    assert check.reference_cache_dir() == tmp_path / "c" / "check"
    check._cached(None, "tfidf", q, kb)
    assert calls == ["tfidf"] * 3 and len(list((tmp_path / "c" / "check").glob("tfidf-*.npy"))) == 1
