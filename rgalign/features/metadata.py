"""The metadata dictionary: every observed feature, its kind, its group and its id -> string vocabulary.

This is the paper's "predefined metadata dictionary" (section 3.2, Table 1). It is the only place that
knows what an id means: the world writes ids, Feast stores ids, the verbalizer turns ids back into strings
through this table, and nothing else ever reaches a prompt.

Categorical ids start at 1; id 0 means "unknown / not applicable" for every categorical feature.

Example:
    >>> from rgalign.features.metadata import FEATURES
    >>> FEATURES["order_status"].vocab[2]
    'TO_RECEIVE'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SLOTS: dict[str, list[str]] = {
    "channel": ["Standard Express", "Economy Post", "Same-Day Courier", "Cross-Border Air",
                "Self-Pickup Locker", "Bulky Freight"],
    "payment": ["Credit Card", "Debit Card", "Bank Transfer", "E-Wallet", "Cash on Delivery",
                "Buy Now Pay Later"],
    "category": ["Electronics", "Fashion", "Home & Living", "Beauty", "Groceries", "Mobile Top-up",
                 "Books & Media", "Sports & Outdoors"],
    "promo": ["Flash Sale", "Free Shipping Voucher", "Coins Cashback", "Bundle Deal", "Seller Voucher"],
    "region": ["Singapore", "Malaysia", "Thailand", "Indonesia", "Philippines", "Vietnam", "Taiwan", "Brazil"],
}
ORDER_STATUSES = ["TO_PAY", "TO_SHIP", "TO_RECEIVE", "COMPLETED", "CANCELLED", "RETURN_REFUND",
                  "NO_ACTIVE_ORDER"]
ENTRY_POINTS = ["Home Page", "Shipping Page", "Order Detail", "Payment Page", "Return/Refund Page",
                "Me Page", "Product Page", "Push Notification"]
GENDERS = ["Female", "Male", "Undisclosed"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]
TIERS = ["Classic", "Silver", "Gold", "Platinum"]
DEVICES = ["Android", "iOS", "Web"]
LANGUAGES = ["English", "Malay", "Thai", "Indonesian", "Filipino", "Vietnamese", "Chinese", "Portuguese"]
SELLER_TYPES = ["Mall", "Preferred", "Regular", "Overseas"]

Kind = Literal["categorical", "numerical", "sequence", "timestamp"]
Group = Literal["User Profile", "Behaviour Sequence", "Interaction Context"]


@dataclass(frozen=True)
class Feature:
    """One observed feature: how it is stored (``kind``), where it is verbalized (``group``), its prompt
    label (``label``), and for categorical features the vocabulary (``vocab[id - 1]`` is id's string)."""
    name: str
    kind: Kind
    group: Group
    label: str
    source: Literal["user_profile", "order_context", "behaviour_sequence", "request"]
    vocab: tuple[str, ...] = field(default=())
    unit: str = ""

    def string(self, value_id: int) -> str:
        """Map a categorical id to its string (Table 1's "ID -> String" column)."""
        return self.vocab[value_id - 1]


def _cat(name, group, label, source, vocab):
    return Feature(name, "categorical", group, label, source, tuple(vocab))


_P, _B, _C = "User Profile", "Behaviour Sequence", "Interaction Context"
FEATURES: dict[str, Feature] = {f.name: f for f in [
    # user profile (Feast view user_profile, weekly snapshots)
    _cat("gender", _P, "User Gender", "user_profile", GENDERS),
    _cat("age_band", _P, "Age Band", "user_profile", AGE_BANDS),
    _cat("region", _P, "Region", "user_profile", SLOTS["region"]),
    _cat("membership_tier", _P, "Membership Tier", "user_profile", TIERS),
    _cat("device_os", _P, "Device", "user_profile", DEVICES),
    _cat("language", _P, "Language", "user_profile", LANGUAGES),
    Feature("account_age_days", "numerical", _P, "Account Age", "user_profile", unit="days"),
    Feature("orders_90d", "numerical", _P, "Orders In Last 90 Days", "user_profile"),
    Feature("avg_order_value", "numerical", _P, "Average Order Value", "user_profile", unit="USD"),
    Feature("return_rate_90d", "numerical", _P, "Return Rate (90 Days)", "user_profile"),
    Feature("cancel_rate_90d", "numerical", _P, "Cancellation Rate (90 Days)", "user_profile"),
    # interaction context: the current order (Feast view order_context) and the request itself
    _cat("entry_point", _C, "Entry Point", "request", ENTRY_POINTS),
    _cat("order_status", _C, "Current Order Status", "order_context", ORDER_STATUSES),
    Feature("status_updated_at", "timestamp", _C, "Status Updated At", "order_context"),
    Feature("days_in_status", "numerical", _C, "Days In Current Status", "request", unit="days"),
    _cat("payment_method", _C, "Payment Method", "order_context", SLOTS["payment"]),
    _cat("logistics_channel", _C, "Logistics Channel", "order_context", SLOTS["channel"]),
    _cat("product_category", _C, "Product Category", "order_context", SLOTS["category"]),
    _cat("promotion", _C, "Promotion Used", "order_context", SLOTS["promo"]),
    _cat("seller_type", _C, "Seller Type", "order_context", SELLER_TYPES),
    Feature("order_amount", "numerical", _C, "Order Amount", "order_context", unit="USD"),
    Feature("items_count", "numerical", _C, "Items In Order", "order_context"),
    Feature("expected_delivery_days", "numerical", _C, "Expected Delivery Time", "order_context", unit="days"),
    Feature("hour_of_day", "numerical", _C, "Local Hour", "request"),
    # behaviour sequence (Feast view behaviour_sequence; filtered to the 24 h before the request)
    Feature("recent_intents", "sequence", _B, "Clicked Intents In 24 Hours", "behaviour_sequence"),
    Feature("recent_click_ts", "sequence", _B, "Click Times", "behaviour_sequence"),
]}

# Feast views and the columns each serves (the world writes exactly these columns).
VIEW_FEATURES: dict[str, list[str]] = {
    view: [n for n, f in FEATURES.items() if f.source == view]
    for view in ("user_profile", "order_context", "behaviour_sequence")
}
REQUEST_FEATURES = ["entry_point"]  # sent with the request, not stored in Feast
DERIVED_FEATURES = ["days_in_status", "hour_of_day"]  # computed from the request time (features.context)
MAX_RECENT = 10  # length cap of the behaviour sequence
