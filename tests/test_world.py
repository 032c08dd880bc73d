import json

import numpy as np
import pandas as pd
import pytest

from rgalign.config import WorldConfig
from rgalign.world import generate as G
from rgalign.world.kb import FAMILY_NAMES, build_kb, load_bitext


def test_kb_covers_bitext_families_with_long_tail():
    bitext = load_bitext()
    kb = build_kb(bitext, seed=0)
    assert len(kb) >= 1000
    assert set(kb.family) == set(bitext.intent) == set(FAMILY_NAMES)
    assert kb.intent_id.tolist() == list(range(1, len(kb) + 1))
    assert kb.popularity.sum() == pytest.approx(1)
    top = kb.popularity.sort_values(ascending=False)
    assert top.head(len(kb) // 10).sum() > 0.35  # 10% of intents carry over a third of the traffic
    assert kb.title.is_unique
    # an intent's text names its slot values (what a text model can match to the user's order)
    row = kb[(kb.family == "track_order") & (kb.slot_channel == 4) & (kb.slot_region == 8)].iloc[0]
    assert "Cross-Border Air" in row.title and "Brazil" in row.title


def test_world_is_deterministic_per_seed(tmp_path):
    a = G.generate_world(WorldConfig(n_users=200, seed=3), tmp_path / "a", progress=False)
    b = G.generate_world(WorldConfig(n_users=200, seed=3), tmp_path / "b", progress=False)
    c = G.generate_world(WorldConfig(n_users=200, seed=4), tmp_path / "c", progress=False)
    fa, fb, fc = (json.loads((d / "manifest.json").read_text())["files"] for d in (a, b, c))
    assert fa == fb
    assert fa["sessions.parquet"] != fc["sessions.parquet"]


def test_bayes_ceiling_clearly_above_popularity_floor(ci_world):
    m = G.load_manifest(ci_world)
    assert 15_000 <= m["rows"]["sessions"] <= 25_000
    bayes, pop = m["report"]["Bayes-optimal (ceiling)"], m["report"]["Popularity (floor)"]
    for metric in ("R@3", "MRR", "GAUC"):
        assert bayes[metric]["lo"] > pop[metric]["hi"], metric
    assert bayes["R@3"]["value"] - pop["R@3"]["value"] > 0.10


def test_observed_tables_hold_no_label(ci_world):
    observed = {"sessions", "profiles", "order_context", "behaviour"}
    for name in observed:
        cols = set(pd.read_parquet(ci_world / f"{name}.parquet").columns)
        assert not cols & {"true_intent", "persona", "bayes_rank", "p_true"}, name
    s = pd.read_parquet(ci_world / "sessions.parquet")
    o = pd.read_parquet(ci_world / "order_context.parquet")
    b = pd.read_parquet(ci_world / "behaviour.parquet")
    # each session's order-context row is written 1-30 minutes before the session opens
    o = o.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    s = s.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    assert len(o) == len(s) and (o.user_id == s.user_id).all()
    lead = (s.event_timestamp - o.event_timestamp).dt.total_seconds()
    assert lead.between(60, 1800).all()
    first_session = s.groupby("user_id").event_timestamp.min()
    first_click = b.groupby("user_id").event_timestamp.min()
    assert (first_click > first_session.reindex(first_click.index)).all()
    # the 24-hour sequence of the behaviour rows never reaches into the future of its own row
    ts = (b.event_timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    assert all(max(c) <= t for c, t in zip(b.recent_click_ts, ts))
    assert all(min(c) >= t - 86_400 for c, t in zip(b.recent_click_ts, ts))


def test_cold_start_intents_never_appear_in_training(ci_world):
    kb = pd.read_parquet(ci_world / "kb.parquet")
    cold = set(kb.intent_id[kb.launch_day > 0])
    assert len(cold) == round(0.03 * len(kb))
    assert (kb.launch_day[kb.launch_day > 0] == 28).all()
    s = pd.read_parquet(ci_world / "sessions.parquet")
    train = s[s.split == "train"]
    assert not cold & set(train.clicked_intent)
    assert not cold & set(np.concatenate(train.shown_intents.to_list()))
    labels = pd.read_parquet(ci_world / "eval_labels.parquet")
    assert cold & set(labels.true_intent)  # and they are asked for in the evaluation week
    assert (labels.event_timestamp >= pd.Timestamp("2026-09-29", tz="UTC")).all()


def test_clicks_are_noisy_and_position_biased(ci_world):
    s = pd.read_parquet(ci_world / "sessions.parquet").merge(
        pd.read_parquet(ci_world / "hidden/sessions.parquet"), on="session_id")
    clicked = s[s.clicked_intent > 0]
    agree = (clicked.clicked_intent == clicked.true_intent).mean()
    assert 0.5 < agree < 0.95  # labels are mostly right, not always
    pos = clicked.click_position.value_counts().sort_index()
    assert (np.diff(pos.to_numpy()) < 0).all()  # fewer clicks further down the list


def test_same_config_is_reused_and_different_config_refused(small_world):
    before = (small_world / "manifest.json").stat().st_mtime_ns
    again = G.generate_world(WorldConfig(scale="ci", n_users=300), small_world.parent, progress=False)
    assert again == small_world and (small_world / "manifest.json").stat().st_mtime_ns == before
    other = WorldConfig(scale="ci", n_users=300, temperature=2.0)  # same folder name, other digest
    assert other.name == small_world.name
    with pytest.raises(FileExistsError, match="different config"):
        G.generate_world(other, small_world.parent, progress=False)
    assert (small_world / "manifest.json").stat().st_mtime_ns == before


def test_failed_generation_leaves_nothing_half_written(tmp_path, monkeypatch):
    calls = []

    def boom(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kw)
    real = G.simulate_chunk
    monkeypatch.setattr(G, "simulate_chunk", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        G.generate_world(WorldConfig(n_users=40, chunk_users=20), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw,match", [
    ({"scale": "huge"}, "scale='huge' is unknown"),
    ({"n_users": 3}, "n_users=3 is too small"),
    ({"eval_days": 40}, "eval_days=40"),
    ({"click_prob": 1.5}, "click_prob must be within"),
])
def test_bad_config_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kw)


def test_bad_bitext_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Bitext dataset not found"):
        load_bitext(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,x\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_bitext(bad)
    with pytest.raises(FileNotFoundError):
        G.generate_world(WorldConfig(n_users=20), tmp_path / "w", bitext=tmp_path / "missing.csv", progress=False)
    assert not (tmp_path / "w").exists()
