"""Rankers in the style of TRL/torchrec tests: exact equations, shapes, every parameter trains, loss falls."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rgalign.config import RankerConfig
from rgalign.ranker.baseline import MMoE, TwoTowerAutoIntMMoE
from rgalign.ranker.data import FeatureSpec, candidate_lists
from rgalign.ranker.loss import ConfidencePredictor, listnet_kl, weighted_intent_loss
from rgalign.ranker.qe_rec import QERec, qe_score
from rgalign.ranker.towers import IntentTower, QueryTower
from rgalign.world import bench_contract

N_INTENTS, B, L = 40, 6, 10
CONTRACT = bench_contract()
CATEGORICAL, NUMERICAL = CONTRACT.categorical, CONTRACT.numerical
SHAPE = FeatureSpec.of(CONTRACT, N_INTENTS).shape


def batch(seed=0, empty_seq=False):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_INTENTS + 1, (B, L), generator=g)
    seq[:, : L // 2] = 0  # left padding
    if empty_seq:
        seq[:] = 0
    return {"cat": torch.randint(1, 3, (B, len(CATEGORICAL)), generator=g),
            "user": torch.randint(1, 100, (B,), generator=g), "num": torch.randn(B, len(NUMERICAL), generator=g),
            "seq": seq, "seq_age": torch.where(seq > 0, torch.randint(1, 6, (B, L), generator=g), 0)}


def make(model: str):
    torch.manual_seed(0)
    if model.startswith("qe-rec"):
        tower = "hierarchical" if model == "qe-rec" else "autoint-mmoe"
        return QERec(SHAPE, N_INTENTS, torch.randn(N_INTENTS, 24), d_e=32, d=16, user_buckets=100, dropout=0.0,
                     user_tower=tower, families=torch.randint(1, 5, (N_INTENTS,)) if tower == "autoint-mmoe" else None)
    return TwoTowerAutoIntMMoE(SHAPE, N_INTENTS, torch.randint(1, 5, (N_INTENTS,)), d=16, user_buckets=100, dropout=0.0)


def test_eq4_holds_exactly_for_hand_set_embeddings():
    z_u = torch.tensor([[1.0, 0.0]])
    z_q = torch.tensor([[0.0, 2.0]])
    z_i = torch.tensor([[3.0, 3.0], [1.0, 0.0], [0.0, -1.0]])
    s = qe_score(z_u, z_i, z_q, w=0.7)
    c = 1 / math.sqrt(2)
    expected = [0.7 * c + 0.3 * c, 0.7 * 1 + 0.3 * 0, 0.7 * 0 + 0.3 * -1]
    assert torch.allclose(s, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(qe_score(z_u, z_i, None, 0.7), torch.tensor([[c, 1.0, 0.0]]), atol=1e-6)


def test_adaptive_fusion_starts_at_the_papers_w_and_learns_per_intent_weights():
    """FusionGate: at initialisation every pair weighs w = 0.7 (the same scores as the fixed fusion); one training
    step moves its click coefficients, after which warm and cold intents get different weights."""
    from rgalign.ranker.qe_rec import FusionGate
    x, e, cand = batch(), torch.randn(B, 32), torch.randint(1, N_INTENTS + 1, (B, 7))
    models = {}
    for fusion in ("fixed", "adaptive"):
        torch.manual_seed(0)
        models[fusion] = QERec(SHAPE, N_INTENTS, torch.randn(N_INTENTS, 24), d_e=32, d=16, user_buckets=100,
                               dropout=0.0, fusion=fusion)
    m = models["adaptive"]
    clicks = torch.arange(N_INTENTS + 1).float() ** 2          # intent k has k^2 training clicks
    m.gate.set_intent_clicks(clicks)
    assert torch.allclose(m.weight(x, cand), torch.full((B, 7), 0.7))
    assert torch.allclose(m(x, e, cand), models["fixed"](x, e, cand), atol=1e-6)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    y = torch.zeros(B, 7)
    y[:, 0] = 1
    weighted_intent_loss(m(x, e, cand), y, None, torch.ones(B, 7, dtype=torch.bool)).backward()
    opt.step()
    assert m.gate.a.item() != 0 and m.gate.b.item() != 0
    w_all = m.weight(x)                                        # (B, n_intents)
    assert w_all.shape == (B, N_INTENTS) and not torch.allclose(w_all[:, 0], w_all[:, -1])
    with pytest.raises(ValueError, match="0 < w < 1"):
        FusionGate(N_INTENTS, w0=1.0)


def test_confidence_weighted_listnet_equals_hand_computation():
    s = torch.tensor([[0.5, -0.2, 0.1], [0.0, 0.9, -0.4], [0.3, 0.3, 0.8]])
    y = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
    w = torch.tensor([0.5, 1.2, 1.3])

    def kl(yr, sr):
        p = np.exp(yr) / np.exp(yr).sum()
        q = np.exp(sr) / np.exp(sr).sum()
        return float((p * np.log(p / q)).sum())
    per = [kl(y[j].numpy(), s[j].numpy()) for j in range(3)]
    assert torch.allclose(listnet_kl(s, y), torch.tensor(per), atol=1e-6)
    assert float(weighted_intent_loss(s, y, w)) == pytest.approx(sum(wj * k for wj, k in zip(w.tolist(), per)) / 3, abs=1e-6)
    # a masked candidate drops out of both softmaxes
    mask = torch.tensor([[True, True, False]] * 3)
    per_m = [kl(y[j, :2].numpy(), s[j, :2].numpy()) for j in range(3)]
    assert torch.allclose(listnet_kl(s, y, mask), torch.tensor(per_m), atol=1e-6)


def test_confidence_weights_cannot_collapse():
    cp = ConfidencePredictor(d=4, n_positions=5, floor=0.5)
    with torch.no_grad():
        cp.net[-1].weight.mul_(1000)  # extreme scores
    w = cp(torch.randn(64, 4), torch.randint(-1, 5, (64,)))
    assert w.shape == (64,)
    w = w.detach()
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(w.min()) >= 0.5 - 1e-6
    with pytest.raises(ValueError, match="floor"):
        ConfidencePredictor(4, 5, floor=1.0)


def test_confidence_span_bounds_how_much_one_sample_can_weigh():
    torch.manual_seed(0)
    z, pos = torch.randn(256, 4), torch.randint(-1, 5, (256,))
    free, bounded = ConfidencePredictor(4, 5, floor=0.5), ConfidencePredictor(4, 5, floor=0.5, span=1.0)
    bounded.load_state_dict(free.state_dict())
    with torch.no_grad():
        for cp in (free, bounded):
            cp.net[-1].weight.mul_(1000)   # a predictor that has learned to single out a few samples
    wf, wb = free(z, pos).detach(), bounded(z, pos).detach()
    assert float(wf.max()) > 10                                  # unbounded: a few samples carry the batch
    assert float(wb.max()) <= 0.5 + 0.5 * math.e ** 2 + 1e-5      # w_j <= floor + (1 - floor) e^(2 span)
    assert float(wb.mean()) == pytest.approx(1.0, abs=1e-5) and float(wb.min()) >= 0.5 - 1e-6
    with pytest.raises(ValueError, match="confidence_span must be >= 0"):
        RankerConfig(confidence_span=-1)


@pytest.mark.parametrize("model", ["qe-rec", "qe-rec-autoint", "baseline"])
def test_shapes(model):
    m = make(model).eval()
    x, e = batch(), torch.randn(B, 32)
    cand = torch.randint(1, N_INTENTS + 1, (B, 7))
    assert m(x, e, cand).shape == (B, 7)                      # (B, N)
    assert m(x, e).shape == (B, N_INTENTS)                     # all intents
    assert m.intent_index().shape == (N_INTENTS, 16)           # (n_intents, d)
    assert m.user(x).shape == (B, 16)                          # (B, d)
    assert torch.allclose(m(x, e), m(x, e, intent_index=m.intent_index()))


@pytest.mark.parametrize("model", ["qe-rec", "qe-rec-autoint", "baseline"])
def test_one_step_changes_every_trainable_parameter(model):
    m = make(model).train()
    extra = ConfidencePredictor(16, 5) if model.startswith("qe-rec") else None
    params = list(m.parameters()) + (list(extra.parameters()) if extra else [])
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)  # no decay: a change must come from the gradient
    x, e = batch(), torch.randn(B, 32)
    clicked = torch.randint(1, N_INTENTS + 1, (B,))
    shown = torch.cat([clicked[:, None], torch.randint(1, N_INTENTS + 1, (B, 4))], 1)
    cand, y, mask = candidate_lists(clicked, shown, 5, torch.ones(N_INTENTS) / N_INTENTS,
                                    torch.Generator().manual_seed(0))
    if model.startswith("qe-rec"):
        z_u = m.user(x)
        s = qe_score(z_u, m.intent_tower(cand), m.query_tower(e), m.w)
        loss = weighted_intent_loss(s, y, extra(z_u, torch.randint(-1, 5, (B,))), mask)
    else:
        loss = weighted_intent_loss(m(x, None, cand), y, None, mask)
    opt.zero_grad()
    loss.backward()
    opt.step()
    names = [n for n, _ in m.named_parameters()] + ([f"confidence.{n}" for n, _ in extra.named_parameters()] if extra else [])
    unchanged = [n for n, p, b in zip(names, params, before) if torch.equal(p, b)]
    assert unchanged == []


@pytest.mark.parametrize("model", ["qe-rec", "qe-rec-autoint", "baseline"])
def test_loss_falls_on_a_tiny_set(model):
    m = make(model).train()
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    x, e = batch(1), torch.randn(B, 32)
    cand = torch.randint(1, N_INTENTS + 1, (B, 8))
    y = torch.zeros(B, 8)
    y[:, 0] = 1
    losses = []
    for _ in range(60):
        loss = weighted_intent_loss(m(x, e, cand), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_empty_behaviour_sequence_is_a_defined_fallback():
    m = make("qe-rec").eval()
    z_empty = m.user(batch(2, empty_seq=True))
    z_full = m.user(batch(2))
    assert torch.isfinite(z_empty).all()
    assert not torch.allclose(z_empty, z_full)


def test_bad_inputs_are_named():
    m = make("qe-rec")
    with pytest.raises(ValueError, match=r"query embedding must have shape \(B, 32\)"):
        m(batch(), torch.randn(B, 31))
    with pytest.raises(ValueError, match=r"intent ids must be within \[1, 40\]"):
        m(batch(), torch.randn(B, 32), torch.full((B, 3), 41))
    with pytest.raises(ValueError, match="seq must have shape"):
        x = batch()
        x["seq"] = x["seq"][:2]
        m(x, torch.randn(B, 32))
    with pytest.raises(ValueError, match="semantic has 3 rows"):
        QERec(SHAPE, N_INTENTS, torch.randn(3, 8), d_e=8)
    with pytest.raises(ValueError, match="must be divisible"):
        RankerConfig(d=30, heads=4)
    with pytest.raises(ValueError, match="model="):
        RankerConfig(model="dlrm")
    with pytest.raises(ValueError, match="user_tower="):
        QERec(SHAPE, N_INTENTS, torch.randn(N_INTENTS, 8), d_e=8, user_tower="wide")


def test_feature_spec_fallbacks_are_counted():
    df = pd.DataFrame({"user_id": [1, 2], "gender": [1, 99], "region": [3, -1],
                       "recent_intents": [[5, 999], []], "recent_click_ts": [[0, 0], []],
                       "event_timestamp": pd.to_datetime([3600 * 2, 0], unit="s", utc=True),
                       "days_in_status": [np.nan, 3.0]})
    spec = FeatureSpec.fit(df, 50, CONTRACT)
    x, oov = spec.encode(df)
    assert oov == {"gender": 1, "region": 1, "recent_intents": 1}
    assert x["cat"][1, CATEGORICAL.index("gender")] == 0
    assert x["seq"][0, -2:].tolist() == [5, spec.oov_intent]
    assert x["seq"][1].tolist() == [0] * spec.max_recent
    assert x["seq_age"][0, -1] == 2  # clicked 2 h before the request: bucket (1, 3] h
    assert torch.isfinite(x["num"]).all()
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert all(np.isfinite(v) and v > 0 for v in spec.std.values())


def test_encode_rows_equals_the_frame_encoding():
    """The serving path encodes dicts without a DataFrame; it must give the training encoder's tensors and
    fallback counts: missing values, a key absent from some rows, out-of-vocabulary ids, a non-number."""
    ts = pd.Timestamp(7200, unit="s", tz="UTC")
    rows = [{"user_id": 1, "gender": 1, "region": 3, "orders_90d": 4, "avg_order_value": 12.5, "recent_intents": [5, 999],
             "recent_click_ts": [0, 3600], "event_timestamp": ts, "days_in_status": float("nan")},
            {"user_id": 2, "gender": 99, "region": None, "orders_90d": None, "recent_intents": [], "recent_click_ts": [],
             "event_timestamp": ts, "days_in_status": 3.0, "hour_of_day": 14},
            {"user_id": 70_001, "gender": 2, "region": -1, "orders_90d": "many", "recent_intents": None,
             "recent_click_ts": None, "event_timestamp": pd.Timestamp(0, unit="s"), "order_amount": 1e6}]
    spec = FeatureSpec.fit(pd.DataFrame(rows), 50, CONTRACT)
    x_frame, oov_frame = spec.encode(pd.DataFrame(rows))
    x_rows, oov_rows = spec.encode_rows(rows)
    assert oov_rows == oov_frame == {"gender": 1, "region": 1, "recent_intents": 1}
    for k in x_frame:
        assert x_rows[k].dtype == x_frame[k].dtype and torch.equal(x_rows[k], x_frame[k]), k
    with pytest.raises(KeyError, match="row 1 lacks 'user_id'"):
        spec.encode_rows([rows[0], {"gender": 1}])


def test_mmoe_gates_mix_experts():
    m = MMoE(8, 4, n_experts=4, n_tasks=2)
    out = m(torch.randn(3, 8))
    assert len(out) == 2 and out[0].shape == (3, 4) and not torch.allclose(out[0], out[1])


def test_query_tower_is_single_layer():
    q = QueryTower(10, 4)
    assert sum(isinstance(mod, torch.nn.Linear) for mod in q.modules()) == 1
    it = IntentTower(torch.randn(5, 3), d=4)
    assert not it.semantic.requires_grad and "semantic" not in dict(it.named_parameters())


def test_intent_id_scale_sets_the_start_of_z_id():
    sem = torch.randn(N_INTENTS, 24)
    small = IntentTower(sem, 16, id_std=0.01).ids.weight
    assert small[0].abs().sum() == 0 and 0.005 < small[1:].std() < 0.02
    assert 0.8 < IntentTower(sem, 16).ids.weight[1:].std() < 1.2        # nn.Embedding's default N(0, 1)
    with pytest.raises(ValueError, match="intent_id_std must be > 0"):
        RankerConfig(intent_id_std=0)
    with pytest.raises(ValueError, match="id_std must be > 0"):
        IntentTower(sem, 16, id_std=-1)


def test_family_embedding_carries_what_one_intent_learns_to_its_family():
    """Intents 1 and 2 share family 1, intent 3 is in family 2: a step on intent 1 alone moves z_i of
    intent 2 through the shared family vector (ID and text rows of other intents get no gradient)."""
    torch.manual_seed(0)
    fam = torch.tensor([1, 1, 2])
    tower = IntentTower(torch.randn(3, 8), 4, dropout=0.0, families=fam)
    before = tower(torch.tensor([1, 2, 3])).detach()
    opt = torch.optim.SGD([tower.family_ids.weight], lr=0.5)
    tower(torch.tensor([1])).sum().backward()
    opt.step()
    moved = (tower(torch.tensor([1, 2, 3])).detach() - before).abs().sum(-1)
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0
    with pytest.raises(ValueError, match="families must have shape"):
        IntentTower(torch.randn(3, 8), 4, families=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="ids >= 1"):
        IntentTower(torch.randn(3, 8), 4, families=torch.tensor([0, 1, 2]))


def test_intent_id_dropout_scores_some_candidates_as_if_new_in_training_only():
    torch.manual_seed(0)
    tower = IntentTower(torch.randn(3, 8), 4, dropout=0.0, id_dropout=0.3)
    ids = torch.tensor([2]).repeat(4000)
    full = tower.eval()(ids[:1]).detach()                 # the intent with its trained ID row
    tower.train()
    new = IntentTower(torch.randn(3, 8), 4, dropout=0.0)
    new.load_state_dict(tower.state_dict())
    with torch.no_grad():
        new.ids.weight.zero_()                            # the same intent with an untrained (zero) ID row
    as_new = new.eval()(ids[:1]).detach()
    out = tower(ids).detach()
    dropped = torch.isclose(out, as_new, atol=1e-6).all(-1)
    kept = torch.isclose(out, full, atol=1e-6).all(-1)
    assert (dropped | kept).all() and 0.25 < dropped.float().mean() < 0.35
    tower.eval()
    assert torch.allclose(tower(ids[:50]), full.expand(50, -1), atol=1e-6)   # no ID dropout at serving time
    with pytest.raises(ValueError, match="intent_id_dropout must be within"):
        RankerConfig(intent_id_dropout=1.0)
