"""Feast as the single source of features: apply, materialize, training sets and online reads.

The declarative repo is ``feature_repo/`` (``feature_store.yaml`` + ``definitions.py``). A world is bound
to it through two environment variables, set here around every Feast call:

- ``RGALIGN_WORLD_DIR``: the world folder whose parquet files are the batch sources;
- ``RGALIGN_FEAST_DIR``: where the registry and the SQLite online store of that world live.

Example (after ``rgalign world generate --scale ci``):
    >>> fs = FeatureStoreSession("artifacts/worlds/ci-s0")          # doctest: +SKIP
    >>> fs.apply(); fs.materialize()                                # doctest: +SKIP
    >>> train = fs.training_set(split="train")                     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd

from rgalign.contract import load_contract
from rgalign.contract.dataset import check_dataset, column_range, manifest, session_days, time_range
from rgalign.features.context import derive_request_features, derive_request_row
from rgalign.memory import release_memory

FEATURE_SERVICE = "intent_ranking_v1"
LABEL_COLUMNS = ["session_id", "user_id", "event_timestamp", "shown_intents", "clicked_intent", "click_position",
                 "day", "split"]  # with the contract's request features: the session log's columns a training row keeps


def feature_repo_path() -> Path:
    """The Feast repo: ``$RGALIGN_FEATURE_REPO`` or ``feature_repo/`` of this checkout / image."""
    env = os.environ.get("RGALIGN_FEATURE_REPO")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "feature_repo"
    if not (path / "feature_store.yaml").is_file():
        raise FileNotFoundError(f"no Feast repo at {path} (feature_store.yaml missing); set "
                                "RGALIGN_FEATURE_REPO to the project's feature_repo/ folder.")
    return path


def import_feast():
    """``import feast`` without typeguard's import-time instrumentation: Feast decorates its object classes with
    ``@typechecked``, which recompiles every method from source when the module loads (~4 of the ~8 s an
    ``import feast`` takes on a 2-core machine, paid by every KFP step and server that reads features). The
    decorator is made the identity while Feast loads, exactly what typeguard itself does under ``python -O``;
    the objects it would check are built from a validated data contract (``rgalign.contract``)."""
    if "feast" in sys.modules:
        return sys.modules["feast"]
    import typeguard
    real = typeguard.typechecked
    typeguard.typechecked = lambda target=None, **kw: (lambda t: t) if target is None else target
    try:
        import feast
    finally:
        typeguard.typechecked = real
    return feast


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _own_ibis_backend():
    """A fresh in-memory DuckDB as ibis's default backend for one retrieval, closed after it: Feast's DuckDB
    offline store registers each call's entity table and source views in the default backend and never drops
    them, so over the parts of a large training set they pile up (~13 MB a part of 250,000 sessions)."""
    import ibis
    old = ibis.options.default_backend
    con = ibis.duckdb.connect()
    ibis.set_backend(con)
    try:
        yield
    finally:
        ibis.options.default_backend = old
        con.disconnect()


class FeatureStoreSession:
    """A Feast store bound to one dataset (a folder with ``contract.yaml`` and its tables).

    Args:
        world_dir: the dataset: a generated world (``rgalign world generate``) or your own (``rgalign data init``).
        feast_dir: registry + online store folder; default ``<world_dir>/../../feast/<world name>``.
        repo: the Feast repo (default: ``feature_repo_path()``).
    """

    def __init__(self, world_dir: str | Path, feast_dir: str | Path | None = None, repo: str | Path | None = None):
        self.world_dir = Path(world_dir).resolve()
        self.contract = load_contract(check_dataset(self.world_dir))
        self.manifest = manifest(self.world_dir)  # a generated world's extras ({} for other datasets)
        self.feast_dir = Path(feast_dir or self.world_dir.parent.parent / "feast" / self.world_dir.name).resolve()
        self.repo = Path(repo).resolve() if repo else feature_repo_path()
        self.env = {"RGALIGN_WORLD_DIR": str(self.world_dir), "RGALIGN_FEAST_DIR": str(self.feast_dir),
                    "RGALIGN_CONTRACT": str(self.world_dir / "contract.yaml")}

    def store(self):
        """The Feast store, built once per session (building one reads the registry: tens of ms)."""
        if getattr(self, "_store", None) is None:
            FeatureStore = import_feast().FeatureStore
            yaml_name = os.environ.get("RGALIGN_FEAST_CONFIG", "feature_store.yaml")  # production: Redis
            with _env(**self.env):
                self._store = FeatureStore(repo_path=str(self.repo), fs_yaml_file=self.repo / yaml_name)
        return self._store

    def definitions(self) -> list:
        """The Feast objects of ``definitions.py``, loaded with this world's paths."""
        feast = import_feast()
        Entity, FeatureService, FeatureView = feast.Entity, feast.FeatureService, feast.FeatureView
        spec = importlib.util.spec_from_file_location(f"rgalign_feast_defs_{id(self)}", self.repo / "definitions.py")
        mod = importlib.util.module_from_spec(spec)
        with _env(**self.env):
            spec.loader.exec_module(mod)
        sys.modules.pop(spec.name, None)
        return [v for v in vars(mod).values() if isinstance(v, (Entity, FeatureView, FeatureService))]

    def apply(self) -> list[str]:
        """``feast apply`` for this world (idempotent). Returns the names of the applied objects."""
        self.feast_dir.mkdir(parents=True, exist_ok=True)
        objs = self.definitions()
        with _env(**self.env):
            self.store().apply(objs)
        return sorted(o.name for o in objs)

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The window of the dataset's feature rows (what ``materialize`` loads)."""
        if getattr(self, "_range", None) is None:
            self._range = time_range(self.world_dir, self.contract)
        return self._range

    def materialize(self, end: pd.Timestamp | None = None, batch_rows: int = 25_000,
                    bucket_rows: int = 2_000_000) -> None:
        """Load the latest feature values up to ``end`` (default: the end of the world) into the online store.

        Feast's ``materialize`` holds every source row of the window in memory (8.5 GB for the 4x bench world's
        9.4M rows); here DuckDB picks each entity's latest row of each view and ``write_to_online_store`` writes
        them ``batch_rows`` at a time. A view of more than ``bucket_rows`` source rows is read in hash buckets of
        its entity keys (one query each, every entity in exactly one), so the window query's memory is set by
        ``bucket_rows`` and the protos' by ``batch_rows``, not by the number of entities. The online store then
        holds what ``materialize`` would (``tests/test_feast.py``), and the interval is recorded in the registry
        as ``materialize`` records it."""
        import tempfile

        import duckdb
        import pyarrow.parquet as pq
        if batch_rows < 1 or bucket_rows < 1:
            raise ValueError(f"batch_rows={batch_rows}, bucket_rows={bucket_rows}: both must be >= 1 (rows)")
        start, stop = self.time_range()
        end = end or stop
        with _env(**self.env):
            store = self.store()
            for fv in store.list_feature_views():
                names = [e.name for e in fv.entity_columns]
                keys = ", ".join(f'"{k}"' for k in names)
                ts = fv.batch_source.timestamp_field
                cols = ", ".join(f'"{c}"' for c in [*names, *(f.name for f in fv.features), ts])
                buckets = -(-pq.ParquetFile(fv.batch_source.path).metadata.num_rows // bucket_rows)
                with tempfile.TemporaryDirectory() as spill, duckdb.connect() as con:
                    con.execute(f"SET memory_limit='2GB'; SET temp_directory='{spill}'; SET preserve_insertion_order=false")
                    for b in range(buckets):
                        reader = con.execute(
                            f"SELECT {cols} FROM read_parquet(?) WHERE \"{ts}\" > ? AND \"{ts}\" <= ? "
                            f"AND hash({keys}) % ? = ? QUALIFY "
                            f"row_number() OVER (PARTITION BY {keys} ORDER BY \"{ts}\" DESC) = 1",
                            [fv.batch_source.path, start.to_pydatetime(), end.to_pydatetime(), buckets, b]
                        ).to_arrow_reader(batch_rows)
                        for batch in reader:
                            store.write_to_online_store(fv.name, batch.to_pandas())
                            release_memory()
                store.registry.apply_materialization(fv, store.project, start.to_pydatetime(), end.to_pydatetime())

    def sessions(self, split: str | None = None) -> pd.DataFrame:
        """The session log (labels and entity rows, with each session's ``day`` index), optionally one split
        (``train`` or ``eval``)."""
        if split not in (None, "train", "eval"):
            raise ValueError(f"split={split!r}; use 'train', 'eval' or None")
        df = pd.read_parquet(self.world_dir / f"{self.contract.tables['sessions']}.parquet")
        df["day"] = session_days(df)
        return df if split is None else df[df.split == split].reset_index(drop=True)

    def training_set(self, split: str | None = None, sessions: pd.DataFrame | None = None) -> pd.DataFrame:
        """Point-in-time correct features of each session (``get_historical_features`` on the feature
        service), derived request features, and the session's labels; one row per session."""
        s = sessions if sessions is not None else self.sessions(split)
        if "day" not in s:  # sessions read elsewhere: the day index is the log's
            s = s.merge(self.sessions()[["session_id", "day"]], on="session_id", how="left")
        entity = s[["session_id", "user_id", "event_timestamp"]]
        with _env(**self.env):
            store = self.store()
            with _own_ibis_backend():
                job = store.get_historical_features(entity_df=entity,
                                                    features=store.get_feature_service(FEATURE_SERVICE))
                feats = job.to_df()
        feats = feats.drop(columns=["user_id", "event_timestamp"]).merge(
            s[[c for c in [*LABEL_COLUMNS, *self.contract.request] if c in s.columns]], on="session_id", how="right")
        return derive_request_features(feats, self.contract).sort_values("session_id").reset_index(drop=True)

    def training_set_parts(self, out: str | Path, rows: int, progress: bool = False) -> list[Path]:
        """``training_set`` in parts of at most ``rows`` sessions (the session log read ``rows`` at a time, each
        part one point-in-time retrieval), written as ``out/part-00000.parquet``, ...: memory is set by
        ``rows``, not by the log. Resumable: a part already on disk is kept (written to a temporary name and
        renamed, so a killed run leaves no half part); ``out/_SUCCESS`` records the count when all are done."""
        import json

        import pyarrow.parquet as pq
        from tqdm.auto import tqdm
        if rows < 1:
            raise ValueError(f"rows must be >= 1 (sessions per training-set part), got {rows}")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        log_path = self.world_dir / f"{self.contract.tables['sessions']}.parquet"
        log = pq.ParquetFile(log_path)
        n = -(-log.metadata.num_rows // rows)
        done = out / "_SUCCESS"
        paths = [out / f"part-{i:05d}.parquet" for i in range(n)]
        if done.is_file() and json.loads(done.read_text()).get("parts") == n and all(p.is_file() for p in paths):
            return paths
        day0 = None
        if "day" not in log.schema_arrow.names:   # the day index counts from the log's first UTC day
            day0 = column_range(log_path, "event_timestamp")[0].floor("D")   # statistics, no column read
        batches = log.iter_batches(batch_size=rows)
        for path in tqdm(paths, desc="training set", unit="part", disable=None if progress else True):
            s = next(batches).to_pandas()
            if path.is_file():
                continue
            if day0 is not None:
                s["day"] = session_days(s, day0)
            tmp = path.with_suffix(".tmp")
            self.training_set(sessions=s).to_parquet(tmp, index=False)
            tmp.replace(path)
            del s
            release_memory()
        done.write_text(json.dumps({"parts": n, "rows_per_part": rows, "sessions": log.metadata.num_rows}))
        return paths

    def online_context(self, user_ids: list[int], request_ts: pd.Timestamp | None = None,
                       requests: list[dict] | None = None) -> pd.DataFrame:
        """Online features of ``user_ids`` at ``request_ts`` (default: now), with each user's request features
        (``requests[i]``: name -> id; absent ones are 0, "none") and the derived request features."""
        with _env(**self.env):
            store = self.store()
            if getattr(self, "_service", None) is None:  # parsed once: the registry lookup costs ~10 ms a call
                self._service = store.get_feature_service(FEATURE_SERVICE)
            resp = store.get_online_features(features=self._service, entity_rows=[{"user_id": int(u)} for u in user_ids])
        rows = pd.DataFrame(resp.to_dict())  # to_dict + one DataFrame: ~2.5 ms less per call than to_df()
        rows["event_timestamp"] = request_ts or pd.Timestamp.now(tz="UTC")
        if requests is not None:
            for n in self.contract.request:
                rows[n] = [r.get(n, 0) for r in requests]
        return derive_request_features(rows, self.contract)

    def online_file(self) -> Path | None:
        """The SQLite file of the online store (None for a server store such as Redis)."""
        cfg = self.store().config
        if getattr(cfg.online_store, "type", None) != "sqlite":
            return None
        path = Path(cfg.online_store.path)
        return path if path.is_absolute() else Path(cfg.repo_path or self.repo) / path

    def reset_online(self) -> None:
        """Drop the online store's connection: the next ``online_rows`` opens a new one (after an error, or
        when the store's file was replaced)."""
        conn = getattr(getattr(self, "_online", None), "_conn", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        self._views = self._online = None

    def online_rows(self, user_ids: list[int], request_ts: pd.Timestamp | None = None,
                    requests: list[dict] | None = None) -> list[dict]:
        """``online_context`` as one dict per user, without pandas (the serving hot path: ~0.3 ms for one
        user instead of ~3 ms). Reads each feature view of the service through the online store's own
        ``online_read`` (the interface SQLite and Redis stores implement), so values and nulls are the ones
        ``get_online_features`` returns; tests/test_feast.py checks the two agree row for row."""
        from feast.type_map import feast_value_type_to_python_type
        if getattr(self, "_views", None) is None:
            from feast.infra.online_stores.helpers import get_online_store_from_config
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value
            with _env(**self.env):
                store = self.store()
                service = store.get_feature_service(FEATURE_SERVICE)
                self._views = [(store.get_feature_view(p.name), [f.name for f in p.features])
                               for p in service.feature_view_projections]
            self._online, self._config = get_online_store_from_config(store.config.online_store), store.config
            self._key = lambda u: EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(u))])
        keys = [self._key(u) for u in user_ids]
        rows = [{"user_id": int(u)} for u in user_ids]
        for view, names in self._views:
            for row, (_, values) in zip(rows, self._online.online_read(self._config, view, keys, names)):
                for n in names:
                    v = values.get(n) if values else None
                    row[n] = feast_value_type_to_python_type(v) if v is not None else None
        ts = pd.Timestamp(request_ts) if request_ts is not None else pd.Timestamp.now(tz="UTC")
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        now = int(ts.timestamp())
        for i, row in enumerate(rows):
            row["event_timestamp"] = ts
            if requests is not None:
                row.update({n: requests[i].get(n, 0) for n in self.contract.request})
            derive_request_row(row, now, self.contract)
        return rows
