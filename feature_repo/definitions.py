"""Feast definitions of rgalign-rec: entity `user`, three feature views, one feature service.

The same FeatureService (`intent_ranking_v1`) feeds training (`get_historical_features`, point-in-time
joins on the session timestamp) and serving (`get_online_features` after materialize). Column names and
kinds follow the metadata dictionary (rgalign/features/metadata.py); tests/test_feast.py keeps them in sync.
"""
import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, Int64

WORLD = os.environ.get("RGALIGN_WORLD_DIR") or str(Path(__file__).parent / "data" / "world")


def _source(name: str) -> FileSource:
    path = WORLD + f"/{name}.parquet" if "://" in WORLD else str(Path(WORLD).resolve() / f"{name}.parquet")
    return FileSource(name=name, path=path, timestamp_field="event_timestamp")


# The chatbot user; every feature below is keyed by user_id.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="E-commerce buyer who opens the chatbot")

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=14),  # weekly snapshots; a missing week reads as null, not a stale profile
    schema=[
        Field(name="gender", dtype=Int64),             # id in metadata GENDERS
        Field(name="age_band", dtype=Int64),           # id in metadata AGE_BANDS
        Field(name="region", dtype=Int64),             # id of one of 8 regions
        Field(name="membership_tier", dtype=Int64),    # Classic / Silver / Gold / Platinum
        Field(name="device_os", dtype=Int64),          # Android / iOS / Web
        Field(name="language", dtype=Int64),           # preferred language
        Field(name="account_age_days", dtype=Int64),   # days since sign-up at snapshot time
        Field(name="orders_90d", dtype=Int64),         # orders placed in the last 90 days
        Field(name="avg_order_value", dtype=Float64),  # USD
        Field(name="return_rate_90d", dtype=Float64),  # share of orders returned
        Field(name="cancel_rate_90d", dtype=Float64),  # share of orders cancelled
    ],
    source=_source("profiles"),
    online=True,
)

order_context = FeatureView(
    name="order_context",
    entities=[user],
    ttl=timedelta(days=2),  # the order service pushes the current order state before each chatbot session
    schema=[
        Field(name="order_status", dtype=Int64),            # TO_PAY ... RETURN_REFUND, NO_ACTIVE_ORDER
        Field(name="status_updated_at", dtype=Int64),       # epoch s; days_in_status is derived at request time
        Field(name="payment_method", dtype=Int64),          # slot: payment
        Field(name="logistics_channel", dtype=Int64),       # slot: channel
        Field(name="product_category", dtype=Int64),        # slot: category
        Field(name="promotion", dtype=Int64),               # slot: promo (0 = none)
        Field(name="seller_type", dtype=Int64),             # Mall / Preferred / Regular / Overseas
        Field(name="order_amount", dtype=Float64),          # USD
        Field(name="items_count", dtype=Int64),             # items in the order
        Field(name="expected_delivery_days", dtype=Int64),  # promised delivery time of the channel
    ],
    source=_source("order_context"),
    online=True,
)

behaviour_sequence = FeatureView(
    name="behaviour_sequence",
    entities=[user],
    ttl=timedelta(days=1),  # only clicks of the last 24 hours matter
    schema=[
        Field(name="recent_intents", dtype=Array(Int64)),   # clicked intent ids, oldest first, <= 10
        Field(name="recent_click_ts", dtype=Array(Int64)),  # their click times, epoch s
    ],
    source=_source("behaviour"),
    online=True,
)

# The one feature service used by training sets and by the online recommend path.
intent_ranking = FeatureService(
    name="intent_ranking_v1",
    features=[user_profile, order_context, behaviour_sequence],
    description="All stored features of the zero-query intent ranker (request features come with the call)",
)
