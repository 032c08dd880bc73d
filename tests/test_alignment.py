"""Stage 2 / Stage 3: losses against hand-computed values, NEFTune, best-of-N, teachers, trainers."""
import json
from pathlib import Path
import math
import time
import warnings

import numpy as np
import pytest
from conftest import chat_reply, json_server
from rgalign.ranker.data import FeatureSpec
from rgalign.world import bench_contract
import torch

from rgalign.alignment.best_of_n import STRATEGIES, best_of_n, edit_distance, preference_pairs
from rgalign.alignment.rg_cl_config import RGCLConfig
from rgalign.alignment.rg_cl_trainer import info_nce, neftune_hook, rg_cl_loss
from rgalign.alignment.teachers import (FollowUpTeacher, OpenAITeacher, PlaybookTeacher, Teacher, TeacherPool,
                                        TeacherUnreachable, parse_context)


# ---------------------------------------------------------------- losses (Eq. 11, section 5.1)
def test_info_nce_equals_hand_computed_value():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    e = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    tau = 0.5
    c = 1 / math.sqrt(2)  # cos(h0, e0) = cos(h1, e0) = 1/sqrt(2); cos(h0, e1) = 0; cos(h1, e1) = 1
    l0 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(0 / tau)))
    l1 = -math.log(math.exp(1 / tau) / (math.exp(c / tau) + math.exp(1 / tau)))
    assert info_nce(h, e, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_joint_loss_is_cl_plus_001_causal():
    torch.manual_seed(0)
    h, e = torch.randn(3, 4), torch.randn(3, 4)
    logits = torch.randn(3, 5, 7)
    labels = torch.full((3, 5), -100)
    labels[:, 3:] = torch.tensor([[1, 2], [3, 4], [5, 6]])
    cfg = RGCLConfig()
    total, l_cl, l_lm = rg_cl_loss(h, e, logits, labels, cfg)
    # causal LM: token t is predicted from position t - 1, only on labelled (q^w) tokens
    logp = torch.log_softmax(logits, -1)
    nll = [-logp[b, t - 1, labels[b, t]].item() for b in range(3) for t in (3, 4)]
    assert l_lm.item() == pytest.approx(np.mean(nll), rel=1e-6)
    assert l_cl.item() == pytest.approx(info_nce(h, e, 0.05).item())
    assert total.item() == pytest.approx(l_cl.item() + 0.01 * l_lm.item(), rel=1e-6)


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.zeros(2, 3), torch.zeros(2, 4), 0.05)


def test_neftune_is_active_only_in_training():
    emb = torch.nn.Embedding(10, 8)
    emb.register_forward_hook(neftune_hook(5.0))
    ids = torch.arange(6)[None]
    clean = emb.weight[ids].detach()
    emb.train()
    noisy = emb(ids).detach()
    assert not torch.allclose(noisy, clean)
    bound = 5.0 / math.sqrt(6 * 8)  # alpha / sqrt(L d)
    assert (noisy - clean).abs().max() <= bound + 1e-6
    emb.eval()
    assert torch.equal(emb(ids).detach(), clean)


def test_rgcl_config_validates():
    with pytest.raises(ValueError, match="tau"):
        RGCLConfig(tau=0)
    with pytest.raises(ValueError, match="in-batch negatives"):
        RGCLConfig(batch_size=1)
    assert RGCLConfig().batch_size * RGCLConfig().grad_accum == 24  # paper: effective batch 24


# ---------------------------------------------------------------- best-of-N (section 4.2)
NAMES = ["gemini", "gpt", "playbook", "reasoner"]


def test_v1_picks_best_and_breaks_ties_by_priority():
    ndcg = np.array([[0.5, 0.5, 0.1, 0.3],      # tie gemini/gpt -> priority decides
                     [0.2, 0.3, 0.9, 0.9]])     # tie playbook/reasoner
    sel = best_of_n(ndcg, NAMES, ["gpt", "gemini", "playbook", "reasoner"], "V1")
    assert sel.winner.tolist() == [1, 2]
    assert sel.losers == [[2, 3], [0, 1]]       # the tied candidate is neither winner nor loser
    sel = best_of_n(ndcg, NAMES, ["reasoner", "gemini", "gpt", "playbook"], "V1")
    assert sel.winner.tolist() == [0, 3]


def test_v2_drops_samples_won_by_the_reasoner():
    ndcg = np.array([[0.1, 0.2, 0.3, 0.9], [0.9, 0.2, 0.3, 0.1]])
    sel = best_of_n(ndcg, NAMES, NAMES, "V2")
    assert sel.kept.tolist() == [1] and sel.winner.tolist() == [0]


def test_v3_intersection_and_v4_union():
    ndcg = np.array([[0.4, 0.3, 0.2, 0.1],
                     [0.4, 0.3, 0.2, 0.1]])
    edit = np.array([[5, 9, 1, 0],   # gpt is the most different from the reasoner's query
                     [5, 9, 1, 0]], float)
    cos = np.array([[0.1, 0.8, 0.2, 0.3],   # sample 0: gpt is also closest to the golden intent
                    [0.9, 0.1, 0.2, 0.3]])  # sample 1: gemini is closest, gpt most different
    v3 = best_of_n(ndcg, NAMES, NAMES, "V3", edit=edit, golden_cos=cos)
    assert v3.kept.tolist() == [0] and v3.winner.tolist() == [1]
    v4 = best_of_n(ndcg, NAMES, NAMES, "V4", edit=edit, golden_cos=cos)
    assert v4.kept.tolist() == [0, 1]
    assert v4.winner.tolist() == [1, 0]   # sample 1: {gpt, gemini} allowed, gemini has the higher NDCG
    with pytest.raises(ValueError, match="edit"):
        best_of_n(ndcg, NAMES, NAMES, "V3")


def test_invalid_candidates_are_never_selected_and_strategy_is_checked():
    ndcg = np.array([[0.9, 0.1, 0.2, 0.3]])
    valid = np.array([[False, True, True, True]])
    assert best_of_n(ndcg, NAMES, NAMES, "V1", valid=valid).winner.tolist() == [3]
    with pytest.raises(ValueError, match="strategy"):
        best_of_n(ndcg, NAMES, NAMES, "V9")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dpo_pairs_satisfy_eq9(strategy):
    rng = np.random.default_rng(0)
    ndcg = np.round(rng.random((200, 4)), 1)   # many ties
    edit, cos = rng.integers(0, 10, (200, 4)).astype(float), rng.random((200, 4))
    sel = best_of_n(ndcg, NAMES, NAMES, strategy, edit=edit, golden_cos=cos)
    pairs = preference_pairs(sel, ndcg)
    assert pairs and all(ndcg[s, w] > ndcg[s, l] for s, w, l in pairs)


def test_edit_distance_counts_words():
    assert edit_distance("where is my parcel", "where is my refund") == 1
    assert edit_distance("", "a b c") == 3
    assert edit_distance("A b", "a B") == 0


# ---------------------------------------------------------------- teachers
CTX = ("User Profile: User Gender: Female, Region: Thailand\n"
       "Order Status and Interaction Context: Entry Point: Shipping Page, Current Order Status: TO_RECEIVE, "
       "Days In Current Status: 6 days, Logistics Channel: Economy Post, Expected Delivery Time: 3 days\n"
       "User Historical Behaviour: Clicked Intents In 24 Hours: ('Track my parcel', 'Refund status')")


def test_parse_context_inverts_the_verbalizer():
    from rgalign.features.verbalize import Verbalizer
    row = {"region": 3, "order_status": 3, "entry_point": 2, "days_in_status": 6, "logistics_channel": 2,
           "recent_intents": [4, 7]}
    text = Verbalizer({4: "Track my parcel", 7: "Refund status"}, bench_contract()).context(row)
    back = parse_context(text, bench_contract())
    assert {k: back[k] for k in row if k != "recent_intents"} == {k: v for k, v in row.items() if k != "recent_intents"}
    assert back["recent_intents"] == ["Track my parcel", "Refund status"]


def test_offline_teachers_read_only_the_context():
    q = PlaybookTeacher(bench_contract()).generate([CTX])[0]
    assert "Economy Post" in q and "3 days late" in q   # 6 days in status, 3 expected
    assert "Refund status" in FollowUpTeacher(bench_contract()).generate([CTX])[0]
    no_history = CTX.split("\nUser Historical")[0]
    assert FollowUpTeacher(bench_contract()).generate([no_history])[0].startswith(
        "I have a question about my to receive order")


class Flaky(Teacher):
    """Returns '' / over-long text for some contexts; ``fix_on_retry`` repairs them on the second call."""

    def __init__(self, name, bad, fix_on_retry):
        self.name, self.bad, self.fix, self.calls = name, set(bad), fix_on_retry, 0

    def generate(self, contexts):
        self.calls += 1
        out = []
        for c in contexts:
            if c in self.bad and not (self.fix and self.calls > 1):
                out.append("" if c.endswith("0") else "word " * 100)
            else:
                out.append(f"question about {c}")
        return out


def test_pool_retries_then_drops_with_counted_warning():
    ctx = [f"ctx {i}" for i in range(10)]
    a = Flaky("a", ["ctx 0", "ctx 1"], fix_on_retry=True)
    b = Flaky("b", ["ctx 0", "ctx 1", "ctx 2"], fix_on_retry=False)
    c = Flaky("c", ["ctx 0"], fix_on_retry=False)
    with pytest.warns(UserWarning, match="teacher b: 3 of 10"):
        res = TeacherPool([a, b, c], max_words=30, retries=1, min_candidates=2, min_samples=5).generate(ctx)
    assert a.calls == 2 and res.dropped == {"b": 3, "c": 1}
    assert 0 not in res.kept and 1 in res.kept   # ctx 0 keeps only a's answer; ctx 1: a (retried) + c
    assert all(len([q for q in r if q]) >= 2 for r in res.queries)


def test_pool_fails_clearly_when_too_few_candidates_remain():
    ctx = [f"ctx {i}" for i in range(4)]
    bad = [Flaky(n, ctx, fix_on_retry=False) for n in "ab"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="only 0 of 4 contexts"):
            TeacherPool(bad, min_samples=1).generate(ctx)


def fake_chat(path, body):
    """OpenAI-compatible fake: 'slow' contexts time out, 'empty' ones get '', others a question."""
    user = body["messages"][-1]["content"]
    if "slow" in user:
        time.sleep(1.0)
    return 200, chat_reply("" if "empty" in user else "Where is my parcel that was shipped last week, can you check it?")


@pytest.fixture
def fake_endpoint():
    with json_server(fake_chat) as srv:
        yield f"{srv.url}/v1"


def test_openai_teacher_against_a_local_fake_endpoint(fake_endpoint):
    t = OpenAITeacher(fake_endpoint, "fake-gpt", timeout_s=0.3, retries=1)
    t.check()
    ok, slow, empty = t.generate(["User Profile: ok", "User Profile: slow", "User Profile: empty"])
    assert ok.startswith("Where is my parcel") and slow is None and empty == ""
    assert sum(t.failures.values()) == 1
    pool = TeacherPool([t, PlaybookTeacher(bench_contract())], retries=1, min_candidates=2, min_samples=1)
    with pytest.warns(UserWarning, match="openai:fake-gpt: 2 of 3"):
        res = pool.generate(["User Profile: ok", "User Profile: slow", "User Profile: empty"])
    assert res.kept.tolist() == [0]


def test_openai_teacher_unreachable_is_a_clear_error():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TeacherUnreachable, match="unreachable"):
        OpenAITeacher(f"http://127.0.0.1:{port}/v1", "m", timeout_s=0.5).check()
    with pytest.raises(ValueError, match="http"):
        OpenAITeacher("127.0.0.1:8000", "m")


# ---------------------------------------------------------------- reward (QE-Rec as reward model)
def test_candidate_ndcg_matches_full_scoring():
    from rgalign.alignment.reward import candidate_ndcg
    from rgalign.ranker.qe_rec import QERec
    torch.manual_seed(0)
    m = QERec(FeatureSpec.of(bench_contract(), 30).shape, n_intents=30, semantic=torch.randn(30, 8), d_e=12, d=8).eval()
    B, K = 5, 3
    x = {"cat": torch.zeros(B, 13, dtype=torch.long), "user": torch.arange(1, B + 1), "num": torch.randn(B, 10),
         "seq": torch.zeros(B, 10, dtype=torch.long), "seq_age": torch.zeros(B, 10, dtype=torch.long)}
    e = np.random.default_rng(0).normal(size=(B, K, 12)).astype(np.float32)
    clicked = np.array([1, 5, 9, 30, 2])
    got = candidate_ndcg(m, x, e, clicked)
    with torch.no_grad():
        for k in range(K):
            s = m(x, torch.from_numpy(e[:, k])).numpy()                     # (B, n) by the model's own forward
            rank = (s > s[np.arange(B), clicked - 1][:, None]).sum(1)
            np.testing.assert_allclose(got[:, k], 1 / np.log2(rank + 2), rtol=1e-5)
    with pytest.raises(ValueError, match="d_e"):
        candidate_ndcg(m, x, e[..., :4], clicked)


# ---------------------------------------------------------------- trainers change the weights
def _samples(path, n=8):
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    enc = LTPEncoder(load_reasoner(path))
    ctx = [CTX.replace("6 days", f"{i} days") for i in range(n)]
    return enc, ctx, [enc.render(c) for c in ctx]


def _changed(a, b):
    from transformers import AutoModelForCausalLM
    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def test_rg_sft_rg_dpo_rg_cl_change_the_weights_and_the_ltp(micro_reasoner, tmp_path):
    from rgalign.alignment.rg_dpo_config import RGDPOConfig
    from rgalign.alignment.rg_dpo_trainer import rg_dpo
    from rgalign.alignment.rg_sft_config import RGSFTConfig
    from rgalign.alignment.rg_sft_trainer import rg_sft
    from rgalign.alignment.rg_cl_trainer import rg_cl
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    enc, ctx, prompts = _samples(micro_reasoner)
    qs = [f"Where is my parcel after {i} days?" for i in range(8)]
    sft = rg_sft(micro_reasoner, list(zip(prompts, qs)), RGSFTConfig(max_steps=2, batch_size=4), tmp_path / "sft")
    lora_targets = {k for k in _changed(micro_reasoner, sft)}
    # LoRA merged into every targeted projection of every layer
    assert any("q_proj" in k for k in lora_targets) and any("down_proj" in k for k in lora_targets)
    assert (tmp_path / "sft.adapter" / "adapter_config.json").is_file()
    meta = json.loads((sft / "rgalign_reasoner.json").read_text())
    assert meta["source"] == "rg-sft" and meta["parent_digest"] == enc.reasoner.version
    e_pos = np.random.default_rng(0).normal(size=(8, enc.dim)).astype(np.float32)
    cl = rg_cl(sft, list(zip(prompts, qs)), e_pos, RGCLConfig(max_steps=2, batch_size=4, grad_accum=1, learning_rate=1e-3),
               tmp_path / "cl")
    trainable = {k for k, _ in load_reasoner(sft).model.named_parameters()}
    assert _changed(sft, cl) >= trainable - {"lm_head.weight"}  # full fine-tuning: every parameter moved
    dpo = rg_dpo(sft, [(p, q, "refund refund refund") for p, q in zip(prompts, qs)],
                 RGDPOConfig(max_steps=2, batch_size=4), tmp_path / "dpo")
    assert any("v_proj" in k for k in _changed(sft, dpo))
    raw_ltp = enc.embed(ctx)
    for path in (sft, cl, dpo):
        assert not np.allclose(LTPEncoder(load_reasoner(path)).embed(ctx), raw_ltp, atol=1e-4)


def test_rg_cl_needs_in_batch_negatives(micro_reasoner, tmp_path):
    from rgalign.alignment.rg_cl_trainer import rg_cl
    _, _, prompts = _samples(micro_reasoner, 3)
    with pytest.raises(ValueError, match="in-batch negatives"):
        rg_cl(micro_reasoner, [(p, "q") for p in prompts], np.zeros((3, 128), np.float32), RGCLConfig(), tmp_path)


DS_SCRIPT = """
import json, sys, numpy as np
from rgalign.alignment.rg_cl_config import RGCLConfig
from rgalign.alignment.rg_cl_trainer import rg_cl
from rgalign.alignment.rg_dpo_config import RGDPOConfig
from rgalign.alignment.rg_dpo_trainer import rg_dpo
from rgalign.alignment.rg_sft_config import RGSFTConfig
from rgalign.alignment.rg_sft_trainer import rg_sft
from rgalign.reasoner.ltp import LTPEncoder
from rgalign.reasoner.sources import load_reasoner
raw, out = sys.argv[1], sys.argv[2]
enc = LTPEncoder(load_reasoner(raw))
prompts = [enc.render(f"User Profile: Orders In Last 90 Days: {i}") for i in range(8)]
qs = [f"where is my parcel {i}?" for i in range(8)]
kw = dict(max_steps=2, batch_size=4, deepspeed=True)
sft = rg_sft(raw, list(zip(prompts, qs)), RGSFTConfig(**kw), out + "/sft")
cl = rg_cl(sft, list(zip(prompts, qs)), np.random.randn(8, enc.dim).astype("f4"),
           RGCLConfig(grad_accum=1, learning_rate=1e-3, **kw), out + "/cl")
dpo = rg_dpo(sft, [(p, q, "refund") for p, q in zip(prompts, qs)], RGDPOConfig(**kw), out + "/dpo")
"""


@pytest.mark.slow
def test_every_trainer_runs_two_steps_under_deepspeed_zero3_on_cpu(micro_reasoner, tmp_path):
    """Single process, CPU accelerator, gloo: the set-up of rgalign/alignment/deepspeed/zero3.json."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rgalign-torch-ext"))}
    r = subprocess.run([sys.executable, "-c", DS_SCRIPT, str(micro_reasoner), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, parent in (("sft", micro_reasoner), ("cl", tmp_path / "sft"), ("dpo", tmp_path / "sft")):
        meta = json.loads((tmp_path / name / "rgalign_reasoner.json").read_text())
        assert meta["deepspeed_zero_stage"] == 3, name
        assert _changed(parent, tmp_path / name), f"{name} under ZeRO-3 left the weights unchanged"


def test_candidates_round_trip_and_the_rga_training_sets(tmp_path):
    """What the pipeline passes between the reward step and the RGA trainers survives save/load."""
    import pandas as pd
    from rgalign.alignment.stage2 import Candidates
    ndcg = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.7]])
    c = Candidates(pd.DataFrame({"session_id": [1, 2]}), ["p0", "p1"], ["gpt", "playbook", "reasoner"],
                   [["a0", "b0", "c0"], ["a1", "", "c1"]], {"playbook": 1},
                   e=np.arange(18, dtype=np.float32).reshape(2, 3, 3), ndcg=ndcg, edit=np.ones((2, 3)),
                   golden_cos=np.zeros((2, 3)))
    back = Candidates.load(c.save(tmp_path / "c"))
    assert back.queries == c.queries and back.dropped == c.dropped and back.valid.tolist() == c.valid.tolist()
    np.testing.assert_array_equal(back.e, c.e)
    sel = best_of_n(back.ndcg, back.names, back.names, "V1", valid=back.valid)
    assert back.winners(sel) == [("p0", "a0"), ("p1", "c1")]
    np.testing.assert_array_equal(back.winner_embeddings(sel), np.stack([c.e[0, 0], c.e[1, 2]]))
    assert back.preference_triples(sel, 1) == [("p0", "a0", "b0"), ("p1", "c1", "a1")]
    assert back.preference_triples(sel, 3) == [("p0", "a0", "b0"), ("p0", "a0", "c0"), ("p1", "c1", "a1")]


# ---------------------------------------------------------------- correctness fixes (each failed before its fix)
def test_info_nce_does_not_count_a_duplicate_positive_as_a_negative():
    """Rows 0 and 1 share their winning query (a templated teacher): neither is the other's negative."""
    e = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    h = e + 0.1 * torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    tau = 0.5
    logits = (torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(e, dim=-1).T / tau).numpy()
    keep = ~np.array([[False, True, False, False], [True, False, False, False], [False] * 4, [False] * 4])
    want = np.mean([-(logits[i, i] - np.log(np.exp(logits[i][keep[i]]).sum())) for i in range(4)])
    assert float(info_nce(h, e, tau)) == pytest.approx(want, abs=1e-5)
    distinct = e.clone()
    distinct[1] = torch.tensor([0.9, 0.1, 0.0])   # no duplicate: every other row is a negative, as before
    lg = (torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(distinct, dim=-1).T / tau)
    assert float(info_nce(h, distinct, tau)) == pytest.approx(float(torch.nn.functional.cross_entropy(lg, torch.arange(4))))


def test_rg_cl_batch_8_x_3_accumulated_updates_like_batch_24(micro_reasoner, tmp_path, monkeypatch):
    """transformers 5 skips the division by the accumulation steps for models that take loss kwargs; RG-CL's
    loss is a micro-batch mean, so 8 x 3 gave 3x the gradient of 24 x 1. With SGD (the update is the gradient)
    and the causal-LM term alone on identical samples, the two must give the same weights."""
    from transformers import AutoModelForCausalLM

    from rgalign.alignment.rg_cl_trainer import rg_cl
    plain = RGCLConfig.trl_args

    def sgd(self, out):
        a = plain(self, out)
        a.optim, a.max_grad_norm, a.lr_scheduler_type, a.warmup_steps = "sgd", 1e9, "constant", 0
        return a
    monkeypatch.setattr(RGCLConfig, "trl_args", sgd)
    _, _, prompts = _samples(micro_reasoner, 1)
    samples = [(prompts[0], "where is my parcel?")] * 24
    e_pos = np.ones((24, 128), np.float32)
    kw = dict(max_steps=1, learning_rate=0.5, lambda_cl=0.0, neftune_alpha=0.0, max_length=1024)
    one = rg_cl(micro_reasoner, samples, e_pos, RGCLConfig(batch_size=24, grad_accum=1, **kw), tmp_path / "one")
    acc = rg_cl(micro_reasoner, samples, e_pos, RGCLConfig(batch_size=8, grad_accum=3, **kw), tmp_path / "acc")
    raw = AutoModelForCausalLM.from_pretrained(micro_reasoner).state_dict()
    a = AutoModelForCausalLM.from_pretrained(one).state_dict()
    b = AutoModelForCausalLM.from_pretrained(acc).state_dict()
    moved = [k for k in raw if not torch.equal(raw[k], a[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(b[k] - raw[k], a[k] - raw[k], rtol=1e-3, atol=1e-6)


def test_rg_cl_projection_trains_under_lora(micro_reasoner, tmp_path):
    """With LoRA, get_peft_model freezes every non-adapter parameter: a projection attached before it stayed at
    its random start. e^+ of another size than h needs it, so it must train."""
    from rgalign.alignment.rg_cl_trainer import rg_cl
    _, _, prompts = _samples(micro_reasoner)
    out = rg_cl(micro_reasoner, [(p, f"where is parcel {i}?") for i, p in enumerate(prompts)],
                np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32),
                RGCLConfig(max_steps=2, batch_size=4, grad_accum=1, lora_r=4, learning_rate=1e-2, max_length=1024),
                tmp_path / "cl")
    assert json.loads((out / "rgalign_reasoner.json").read_text())["proj_trained"] is True


def test_the_reward_counts_ties_against_the_clicked_intent_as_the_metrics_do():
    """A flat ranking (every intent scored the same) earns the last place's reward, as ``ranks_from_scores``
    ranks it; it used to earn NDCG 1 (a tie for the first place)."""
    from rgalign.alignment.reward import candidate_ndcg
    from rgalign.metrics import ranks_from_scores

    class Flat(torch.nn.Module):
        d_e, w, n = 4, 0.7, 5

        def intent_index(self):
            return torch.ones(self.n, 3)

        def user(self, x):
            return torch.ones(len(x["u"]), 3)

        def query_tower(self, e):
            return torch.ones(len(e), 3)

        def weight(self, x):
            return self.w
    r = candidate_ndcg(Flat(), {"u": torch.zeros(2)}, np.zeros((2, 3, 4), np.float32), np.array([1, 4]))
    last = ranks_from_scores(np.ones((1, 5)), np.array([0]))[0]
    assert last == 4 and np.allclose(r, 1 / np.log2(last + 2))


def test_input_caches_are_keyed_by_the_worlds_content(tmp_path):
    """A world regenerated under the same name with other knobs (--force) gets other caches."""
    from rgalign.config import WorldConfig
    from rgalign.ranker.inputs import cache_dir
    from rgalign.world.generate import generate_world
    a = generate_world(WorldConfig(scale="ci", n_users=60), tmp_path, progress=False)
    before = cache_dir(a)
    b = generate_world(WorldConfig(scale="ci", n_users=60, temperature=2.0), tmp_path, force=True, progress=False)
    assert a == b and cache_dir(b) != before


ZERO3_RANKS_SCRIPT = """
import sys, numpy as np
from rgalign.alignment.rg_cl_config import RGCLConfig
from rgalign.alignment.rg_cl_trainer import rg_cl
from rgalign.reasoner.ltp import LTPEncoder
from rgalign.reasoner.sources import load_reasoner
raw, out, accum, ds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "ds"
enc = LTPEncoder(load_reasoner(raw))
prompts = [enc.render(f"User Profile: Orders In Last 90 Days: {i}") for i in range(8)]
qs = [f"where is my parcel {i}?" for i in range(8)]
e = np.random.default_rng(0).standard_normal((8, enc.dim)).astype("f4")
rg_cl(raw, list(zip(prompts, qs)), e, RGCLConfig(batch_size=2, grad_accum=accum, max_steps=2, learning_rate=1e-3,
                                                 neftune_alpha=0.0, deepspeed=ds), out)
"""


@pytest.mark.slow
def test_rg_cl_on_two_zero3_ranks_partitions_the_parameters_and_matches_one_process(micro_reasoner, tmp_path):
    """``torchrun --nproc_per_node 2`` with ZeRO-3: each rank holds half of the parameters' elements, and the
    aligned weights equal one process's at the same effective batch (2 per rank x 2 ranks = 2 x 2 accumulation
    steps; the same micro-batches, so the same in-batch negatives; NEFTune off) within 1e-3 of the update."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from conftest import free_port
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "rgalign-torch-ext"))}
    one = subprocess.run([sys.executable, "-c", ZERO3_RANKS_SCRIPT, str(micro_reasoner), str(tmp_path / "one"), "2", "plain"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    script = tmp_path / "cl.py"
    script.write_text(ZERO3_RANKS_SCRIPT)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), str(script), str(micro_reasoner), str(tmp_path / "two"), "1", "ds"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    meta = json.loads((tmp_path / "two" / "rgalign_reasoner.json").read_text())
    part = meta["zero3_partition"]
    assert meta["deepspeed_zero_stage"] == 3 and len(part["per_rank"]) == 2 and sum(part["per_rank"]) == part["params"]
    assert all(abs(n - part["params"] / 2) <= 0.01 * part["params"] for n in part["per_rank"]), part
    raw, a, b = (load_file(next(Path(d).glob("*.safetensors"))) for d in (micro_reasoner, tmp_path / "one", tmp_path / "two"))
    moved = torch.cat([(a[k] - raw[k]).flatten() for k in raw])
    apart = torch.cat([(a[k] - b[k]).flatten() for k in raw])
    assert moved.norm() > 0.1, "the one-process run left the weights where they were"
    assert apart.norm() / moved.norm() < 1e-3, (apart.norm().item(), moved.norm().item())
