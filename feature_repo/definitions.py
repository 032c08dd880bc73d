"""Feast definitions of rgalign-rec, declared by the dataset's data contract (``contract.yaml``).

Entity `user`, one feature view per view of the contract, one feature service. The same FeatureService
(`intent_ranking_v1`) feeds training (`get_historical_features`, point-in-time joins on the session timestamp)
and serving (`get_online_features` after materialize). Which contract: ``$RGALIGN_CONTRACT``, else the
``contract.yaml`` of ``$RGALIGN_WORLD_DIR`` (rgalign sets both; export them to use the `feast` CLI by hand).
"""
import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64

from rgalign.contract import load_contract

WORLD = os.environ.get("RGALIGN_WORLD_DIR") or str(Path(__file__).parent / "data" / "world")
CONTRACT = load_contract(os.environ.get("RGALIGN_CONTRACT") or WORLD)
DTYPES = {"int64": Int64, "float64": Float64, "int64 list": Array(Int64)}  # contract storage -> Feast type


def _source(table: str) -> FileSource:
    path = WORLD + f"/{table}.parquet" if "://" in WORLD else str(Path(WORLD).resolve() / f"{table}.parquet")
    return FileSource(name=table, path=path, timestamp_field="event_timestamp")


# The chatbot user; every feature below is keyed by user_id.
user = Entity(name=CONTRACT.entity.get("name", "user"), join_keys=["user_id"], value_type=ValueType.INT64,
              description=CONTRACT.entity.get("description", ""))

# One view per contract view: its features with their storage types, its table, its time-to-live.
VIEWS = [FeatureView(name=v.name, entities=[user], ttl=timedelta(days=v.ttl_days), online=True,
                     schema=[Field(name=n, dtype=DTYPES[CONTRACT.features[n].storage]) for n in v.features],
                     source=_source(v.table), description=v.description)
         for v in CONTRACT.views]
globals().update({v.name: v for v in VIEWS})  # `feast apply` collects module-level objects

# The one feature service used by training sets and by the online recommend path.
intent_ranking = FeatureService(
    name="intent_ranking_v1",
    features=VIEWS,
    description="All stored features of the zero-query intent ranker (request features come with the call)",
)
