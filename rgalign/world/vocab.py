"""The benchmark world's vocabularies, read from its data contract (``rgalign/world/contract.yaml``).

The simulator, the KB builder and the e-commerce playbook (``rgalign.reasoner.corpus``, the template teachers)
speak this domain; everything else reads a ``DataContract``.

Example:
    >>> from rgalign.world.vocab import ORDER_STATUSES
    >>> ORDER_STATUSES[2]
    'TO_RECEIVE'
"""
from __future__ import annotations

from rgalign.world import bench_contract

_C = bench_contract()
FEATURES = _C.features
# the five slot dimensions of the KB, each the vocabulary of an observed feature
SLOTS: dict[str, list[str]] = {dim: list(FEATURES[name].vocab) for dim, name in [
    ("channel", "logistics_channel"), ("payment", "payment_method"), ("category", "product_category"),
    ("promo", "promotion"), ("region", "region")]}
ORDER_STATUSES = list(FEATURES["order_status"].vocab)
ENTRY_POINTS = list(FEATURES["entry_point"].vocab)
GENDERS = list(FEATURES["gender"].vocab)
AGE_BANDS = list(FEATURES["age_band"].vocab)
TIERS = list(FEATURES["membership_tier"].vocab)
DEVICES = list(FEATURES["device_os"].vocab)
LANGUAGES = list(FEATURES["language"].vocab)
SELLER_TYPES = list(FEATURES["seller_type"].vocab)
MAX_RECENT = _C.max_recent
