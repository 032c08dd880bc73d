"""Feast as the single source of features: definitions in sync with the metadata dictionary, point-in-time
correct training sets, training/serving parity, and the production config."""
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rgalign.features.feast_io import FEATURE_SERVICE, FeatureStoreSession, feature_repo_path


@pytest.fixture(scope="module")
def fs(ci_world, tmp_path_factory):
    s = FeatureStoreSession(ci_world, feast_dir=tmp_path_factory.mktemp("feast"))
    s.apply()
    s.materialize()
    return s


def test_feature_views_match_the_data_contract(fs):
    from feast import FeatureService, FeatureView
    from feast.types import Array, Float64, Int64
    objs = {o.name: o for o in fs.definitions()}
    kind = {"categorical": {Int64}, "numerical": {Int64, Float64}, "timestamp": {Int64},
            "sequence": {Array(Int64)}}
    FEATURES, VIEW_FEATURES = fs.contract.features, fs.contract.view_features()
    assert fs.contract.path == str(fs.world_dir / "contract.yaml")
    for view, names in VIEW_FEATURES.items():
        fv = objs[view]
        assert isinstance(fv, FeatureView)
        assert sorted(f.name for f in fv.schema) == sorted(names)
        for f in fv.schema:
            assert f.dtype in kind[FEATURES[f.name].kind], f.name
    svc = objs[FEATURE_SERVICE]
    assert isinstance(svc, FeatureService)
    assert sorted(p.name for p in svc.feature_view_projections) == sorted(VIEW_FEATURES)


def test_training_set_reproduces_the_worlds_context(fs, ci_world):
    train = fs.training_set()
    hidden = pd.read_parquet(ci_world / "hidden/sessions.parquet")
    m = train.merge(hidden, on="session_id", suffixes=("", "_world"))
    assert len(m) == len(train) == len(hidden)
    assert (m.days_in_status == m.days_in_status_world).all()
    assert (m.recent_intents.map(len) == m.n_recent).all()
    assert train[["region", "order_status", "gender"]].notna().all().all()
    # the profile joined is the weekly snapshot in force at the session time
    prof = pd.read_parquet(ci_world / "profiles.parquet")
    row = train.iloc[123]
    snap = prof[(prof.user_id == row.user_id) & (prof.event_timestamp <= row.event_timestamp)].iloc[-1]
    assert row.orders_90d == snap.orders_90d and row.account_age_days == snap.account_age_days


@pytest.mark.parametrize("domain", ["benchmark world", "telecom example"])
def test_point_in_time_join_never_reads_the_future(domain, request, tmp_path):
    """For both domains: a value of the contract's first view written one second after a session does not
    reach that session's training row, and does reach a request one second after the write."""
    src = request.getfixturevalue("small_world" if domain == "benchmark world" else "telecom")
    world = tmp_path / src.name
    shutil.copytree(src, world)
    fs = FeatureStoreSession(world, feast_dir=tmp_path / "feast")
    fs.apply()
    c = fs.contract
    view = c.views[0]
    feat = next(n for n in view.features if c.features[n].kind == "numerical")
    sessions = fs.sessions()
    s = sessions.iloc[len(sessions) // 2]
    table = world / f"{view.table}.parquet"
    rows = pd.read_parquet(table)
    late = rows[rows.user_id == s.user_id].iloc[[-1]].copy()
    late["event_timestamp"] = s.event_timestamp + pd.Timedelta(seconds=1)
    late[feat] = 987654
    pq.write_table(pa.Table.from_pandas(pd.concat([rows, late], ignore_index=True), preserve_index=False), table)
    probe = pd.DataFrame({"session_id": [s.session_id, -1], "user_id": [s.user_id, s.user_id],
                          "event_timestamp": [s.event_timestamp, s.event_timestamp + pd.Timedelta(seconds=2)]})
    out = fs.training_set(sessions=probe).set_index("session_id")
    assert out.loc[s.session_id, feat] != 987654
    # ...while a request one second after the write does see it (the row is readable, just not early)
    assert out.loc[-1, feat] == 987654


def test_online_store_serves_latest_values(fs, ci_world):
    prof = pd.read_parquet(ci_world / "profiles.parquet")
    users = [5, 77, 1234]
    end = fs.time_range()[1]
    online = fs.online_context(users, request_ts=end, requests=[{"entry_point": e} for e in (1, 2, 3)]).set_index("user_id")
    for u in users:
        latest = prof[prof.user_id == u].sort_values("event_timestamp").iloc[-1]
        assert online.loc[u, "orders_90d"] == latest.orders_90d
        assert online.loc[u, "region"] == latest.region
    assert online.entry_point.tolist() == [1, 2, 3]


def test_bounded_materialize_leaves_the_online_store_feasts_own_materialize_leaves(small_world, tmp_path):
    """``FeatureStoreSession.materialize`` (each entity's latest row by DuckDB, written a batch at a time) and
    Feast's ``materialize`` over the same window give the same online rows, and the registry records the
    interval as Feast does. Read in hash buckets of the entity keys (every user in exactly one), as a view
    larger than ``bucket_rows`` is."""
    ours = FeatureStoreSession(small_world, feast_dir=tmp_path / "ours")
    feast = FeatureStoreSession(small_world, feast_dir=tmp_path / "feast")
    for s in (ours, feast):
        s.apply()
    ours.materialize(batch_rows=64, bucket_rows=400)     # several buckets per view, several batches per bucket
    start, end = feast.time_range()
    from rgalign.features.feast_io import _env
    with _env(**feast.env):
        feast.store().materialize(start.to_pydatetime(), end.to_pydatetime())
    users = pd.read_parquet(small_world / "profiles.parquet").user_id.drop_duplicates().tolist()
    assert len(users) > 64 * 2 and len(pd.read_parquet(small_world / "profiles.parquet")) > 400 * 2
    a, b = ours.online_rows(users, end), feast.online_rows(users, end)
    assert a == b and sum(r["region"] is not None for r in a) == len(users)
    with _env(**ours.env):
        fv = ours.store().list_feature_views()[0]
        assert [(i[0].date(), i[1].date()) for i in fv.materialization_intervals] == [(start.date(), end.date())]


def test_online_and_offline_agree_for_the_same_moment(fs, ci_world):
    """Training/serving parity: a user's last session read offline at its timestamp gives the same stored
    features as the online store, whose latest rows are exactly the ones in force at that session."""
    s = fs.sessions()
    last = s.sort_values("event_timestamp").groupby("user_id").tail(1)
    last = last[last.day >= 28].head(20)  # after the last weekly profile snapshot (day 28)
    assert len(last) == 20
    offline = fs.training_set(sessions=last).set_index("user_id")
    online = fs.online_context(last.user_id.tolist()).set_index("user_id")
    cols = ["region", "orders_90d", "order_status", "status_updated_at", "logistics_channel"]
    pd.testing.assert_frame_equal(offline.loc[online.index, cols], online[cols], check_dtype=False)


def test_online_rows_equal_online_context(fs, ci_world):
    """The serving hot path (one dict per user, read through the online store's ``online_read``, derived by
    ``derive_request_row``) returns what ``get_online_features`` + ``derive_request_features`` return."""
    import numpy as np
    users = pd.read_parquet(ci_world / "profiles.parquet").user_id.drop_duplicates().head(300).tolist() + [10**9]
    s = fs.sessions()
    for at in (fs.time_range()[1], s.event_timestamp.iloc[len(s) // 2], pd.Timestamp("2030-01-01")):
        eps = [{"entry_point": i % 9} if i % 5 else {} for i in range(len(users))]
        frame, rows = fs.online_context(users, at, eps), fs.online_rows(users, at, eps)
        assert len(rows) == len(frame) and set(rows[0]) == set(frame.columns)
        for r, f in zip(rows, frame.to_dict("records")):
            for c, b in r.items():
                a = f[c]
                if c == "event_timestamp":  # a naive request time is UTC on both paths; rows carry it tz-aware
                    assert pd.to_datetime(a, utc=True) == b and b.tzinfo is not None
                elif isinstance(b, list):
                    assert list(a) == b, c
                elif b is None or b != b:
                    assert a is None or pd.isna(a), c
                else:
                    assert a == b and not isinstance(a, str), c
    assert rows[-1]["region"] is None and np.isnan(rows[-1]["days_in_status"])  # unknown user: nulls, no error
    mid = fs.online_rows(users, s.event_timestamp.iloc[len(s) // 2])
    assert any(r["recent_intents"] for r in fs.online_rows(users, fs.time_range()[1])) or any(
        r["recent_intents"] for r in mid)


def test_production_config_parses(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config
    for k, v in dict(FEAST_REGISTRY_USER="u", FEAST_REGISTRY_PASSWORD="p", FEAST_REGISTRY_HOST="pg",
                     REDIS_HOST="redis", REDIS_PASSWORD="pw").items():
        monkeypatch.setenv(k, v)
    shutil.copy(feature_repo_path() / "feature_store.production.yaml", tmp_path / "feature_store.yaml")
    cfg = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")
    assert type(cfg.online_store).__name__ == "RedisOnlineStoreConfig"
    assert cfg.online_store.connection_string == "redis:6379,password=pw"
    assert cfg.registry.registry_type == "sql" and cfg.registry.path.startswith("postgresql+psycopg://u:p@pg")


def test_not_a_world_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset .no contract.yaml.: generate the benchmark world"):
        FeatureStoreSession(tmp_path)


def test_derive_request_features_needs_feast_columns():
    from rgalign.features.context import derive_request_features
    from rgalign.world import bench_contract
    with pytest.raises(KeyError, match="status_updated_at"):
        derive_request_features(pd.DataFrame({"event_timestamp": [pd.Timestamp.now(tz="UTC")]}), bench_contract())
