"""Bounded memory: the Feast training set read in parts, the training split kept on disk and streamed a part at
a time (``shard_rows``), equal to the in-memory split session for session."""
import numpy as np
import pandas as pd
import pytest
import torch

from rgalign.config import RankerConfig
from rgalign.features.feast_io import FeatureStoreSession
from rgalign.ranker.data import FeatureSpec
from rgalign.ranker.inputs import TrainParts, load_ranker_inputs, train_parts
from rgalign.ranker.ranker_trainer import RankerTrainer

ENC = dict(query_encoder="hashing", query_dim=32, intent_encoder="hashing", progress=False)


@pytest.fixture(scope="module")
def whole(small_world):
    return load_ranker_inputs(small_world, **ENC)


@pytest.fixture(scope="module")
def parts(small_world):
    return load_ranker_inputs(small_world, shard_rows=400, **ENC)


def test_training_set_parts_are_the_training_set_and_a_rerun_redoes_only_missing_parts(small_world, tmp_path):
    fs = FeatureStoreSession(small_world)
    fs.apply()
    full = fs.training_set()
    paths = fs.training_set_parts(tmp_path, 400)
    assert len(paths) == -(-len(full) // 400) > 2
    joined = pd.concat([pd.read_parquet(p) for p in paths]).sort_values("session_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(joined, full.sort_values("session_id").reset_index(drop=True), check_dtype=False)
    kept = {p: p.stat().st_mtime_ns for p in paths if p != paths[1]}
    lost = pd.read_parquet(paths[1])
    paths[1].unlink()
    (tmp_path / "_SUCCESS").unlink()
    again = fs.training_set_parts(tmp_path, 400)
    assert again == paths and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), lost)
    with pytest.raises(ValueError, match="rows must be >= 1"):
        fs.training_set_parts(tmp_path, 0)


def test_training_set_parts_of_a_log_without_a_day_column_count_days_from_the_whole_log(small_world, tmp_path):
    """A session log without ``day``: every part counts its sessions' days from the whole log's first UTC day
    (read from the parquet statistics), as ``training_set`` does over the whole log."""
    import shutil
    world = tmp_path / small_world.name
    shutil.copytree(small_world, world, ignore=shutil.ignore_patterns("feature_repo"))
    log = pd.read_parquet(world / "sessions.parquet")
    log.drop(columns=["day"]).to_parquet(world / "sessions.parquet", index=False)
    fs = FeatureStoreSession(world, feast_dir=tmp_path / "feast")
    fs.apply()
    full = fs.training_set()
    parts = pd.concat([pd.read_parquet(p) for p in fs.training_set_parts(tmp_path / "parts", 400)])
    assert len(parts) == len(full) and parts.day.min() == 0 < parts.day.max()
    got = parts.set_index("session_id").day.sort_index()
    assert (got == full.set_index("session_id").day.sort_index()).all()
    assert (got == log.set_index("session_id").day.sort_index()).all()    # the world's own day index


def test_streamed_inputs_hold_the_same_sessions_embeddings_and_feature_spec(whole, parts, small_world):
    assert isinstance(parts.train, TrainParts) and len(parts.train.frames) > 2
    assert len(parts.train) == len(whole.train) > 0
    ids = parts.train.columns(["session_id"]).session_id.to_numpy()
    order = np.argsort(ids)
    assert (ids[order] == whole.train.session_id.to_numpy()).all()
    q = np.concatenate([np.load(p) for p in parts.train.queries])
    np.testing.assert_array_equal(q[order], whole.query["train"])
    for split in ("val", "eval"):
        pd.testing.assert_frame_equal(getattr(parts, split), getattr(whole, split))
        np.testing.assert_array_equal(parts.query[split], whole.query[split])
    np.testing.assert_array_equal(parts.train_clicks, whole.train_clicks)
    a = FeatureSpec.fit(whole.train, whole.n_intents, whole.contract)
    b = FeatureSpec.fit(lambda cols: (load(cols)[0] for load in train_parts(parts)), parts.n_intents, parts.contract)
    assert a.numerical and a.mean.keys() == b.mean.keys()
    for c in a.numerical:
        assert a.mean[c] == pytest.approx(b.mean[c], rel=1e-12, abs=1e-12)
        assert a.std[c] == pytest.approx(b.std[c], rel=1e-12)
    one = load_ranker_inputs(small_world, shard_rows=10**7, **ENC)   # a single part is the in-memory split
    assert isinstance(one.train, pd.DataFrame)
    pd.testing.assert_frame_equal(one.train, whole.train)


def test_a_streamed_ranker_trains_on_every_row_once_an_epoch_and_learns(parts):
    cfg = RankerConfig(epochs=2, patience=5, query_encoder="hashing", query_dim=32, intent_encoder="hashing",
                       shard_rows=400)
    trainer = RankerTrainer(cfg, parts, progress=False)
    assert "train" not in trainer.data and len(trainer.parts) == len(parts.train.frames)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train()
    n = len(parts.train)
    assert len(result.shard_rows) == 2 and all((r == np.arange(n)).all() for r in result.shard_rows)
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert all(np.isfinite(h["train_loss"]) and 0 < h["val_mrr"] <= 1 for h in result.history)


# ------------------------------------------------------------------------------------------------ sharded LTP
def test_ltp_shards_cut_every_prompt_once_equal_the_unsharded_embedding_and_resume(small_world, micro_reasoner,
                                                                                    tmp_path):
    from rgalign.reasoner.ltp import LTPCache, LTPEncoder
    from rgalign.reasoner.ltp_shards import embed_shard, load_shards, shard_of
    from rgalign.reasoner.sources import load_reasoner
    from rgalign.ranker.inputs import select_sessions, verbalize_frame
    r = load_reasoner(micro_reasoner)
    splits = select_sessions(small_world, max_val_sessions=60, max_eval_sessions=60, shard_rows=400)
    assert splits.on_disk
    cache = LTPCache(tmp_path / "ltp.sqlite")
    outs = [tmp_path / f"shard{i}" for i in range(3)]
    sums = [embed_shard(LTPEncoder(r, cache=cache), splits, i, 3, outs[i]) for i in range(3)]
    enc = LTPEncoder(r)
    prompts = {enc.key(enc.render(c)): enc.render(c) for _, df in splits.frames()
               for c in verbalize_frame(df, splits.kb, splits.contract)}
    assert sum(s["prompts"] for s in sums) == len(prompts) and all(s["forward"] == s["prompts"] > 0 for s in sums)
    per = [set(pd.read_parquet(o / "vectors.parquet").key) for o in outs]
    assert set().union(*per) == set(prompts) and sum(map(len, per)) == len(prompts)
    assert all(shard_of(k, 3) == i for i, keys in enumerate(per) for k in keys)
    # what the training step does with the shards: load them into its cache; it then runs no forward pass
    fresh = LTPCache(tmp_path / "train.sqlite")
    assert load_shards(outs, fresh, r.version) == len(prompts)
    reader = LTPEncoder(r, cache=fresh)
    keys = sorted(prompts)[:40]
    got = reader.embed_prompts([prompts[k] for k in keys])
    assert reader.misses == 0 and reader.hits == len(keys)
    np.testing.assert_allclose(got, enc.embed_prompts([prompts[k] for k in keys]), atol=1e-5)
    # a rerun of a finished shard does nothing; a shard whose file was lost re-embeds from the cache only
    assert embed_shard(LTPEncoder(r, cache=cache), splits, 1, 3, outs[1])["resumed"]
    (outs[2] / "vectors.parquet").unlink()
    again = embed_shard(LTPEncoder(r, cache=cache), splits, 2, 3, outs[2])
    assert again["forward"] == 0 and again["cache_hits"] == again["prompts"] == sums[2]["prompts"]
    with pytest.raises(ValueError, match="not other: rerun"):
        load_shards(outs, fresh, "other")
    with pytest.raises(ValueError, match="shard=3"):
        embed_shard(enc, splits, 3, 3, tmp_path / "bad")
