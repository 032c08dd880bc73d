"""The benchmark world's playbook: an e-commerce support team's rules of thumb (named by its contract).

Written independently of ``rgalign.world.intent_model``: order status, entry point, overdue delivery and the
order's slots, never a true intent or a click. See ``rgalign.features.playbook`` for the interface.
"""
from __future__ import annotations

import pandas as pd

from rgalign.world.vocab import ENTRY_POINTS, ORDER_STATUSES, SLOTS

_STATUS_TOPIC = {"TO_PAY": "payment", "TO_SHIP": "shipping", "TO_RECEIVE": "delivery", "COMPLETED": "after-sale",
                 "CANCELLED": "refund", "RETURN_REFUND": "refund", "NO_ACTIVE_ORDER": "account"}
_ENTRY_TOPIC = {"Payment Page": "payment", "Return/Refund Page": "refund", "Me Page": "account",
                "Shipping Page": "delivery"}
_TEMPLATES = {
    "payment": "Why did my {payment} payment for the {category} order not go through, and how can I pay now?",
    "shipping": "When will the seller ship my {category} order, and can I still change or cancel it?",
    "delivery": "Where is my {category} parcel sent by {channel}, it has been {days} days already?",
    "late": "My {channel} parcel is {late} days late, can you speed up the delivery or help me complain?",
    "after-sale": "How do I get an invoice or return the {category} items I received from this order?",
    "refund": "When will I get my refund back to my {payment} for the {category} order in {region}?",
    "account": "How can I update my account details or find deals for shoppers in {region} today?",
}


def _name(dim: str, value) -> str:
    v = int(value) if pd.notna(value) else 0
    return SLOTS[dim][v - 1] if 1 <= v <= len(SLOTS[dim]) else "my"


def _id(row: dict, name: str, n: int) -> int:
    v = row.get(name)
    return int(v) if v is not None and pd.notna(v) and 1 <= int(v) <= n else 0


def rule_question(row: dict) -> str:
    """A 10-20 word question from observed features only (a weak, label-free heuristic teacher)."""
    s = _id(row, "order_status", len(ORDER_STATUSES))
    status = ORDER_STATUSES[s - 1] if s else "NO_ACTIVE_ORDER"
    e = _id(row, "entry_point", len(ENTRY_POINTS))
    entry = ENTRY_POINTS[e - 1] if e else ""
    topic = _ENTRY_TOPIC.get(entry, _STATUS_TOPIC[status])
    days = int(row["days_in_status"]) if pd.notna(row.get("days_in_status")) else 0
    expected = int(row["expected_delivery_days"]) if pd.notna(row.get("expected_delivery_days")) else 0
    if topic == "delivery" and expected and days > expected:
        topic = "late"
    return _TEMPLATES[topic].format(
        payment=_name("payment", row.get("payment_method")), category=_name("category", row.get("product_category")),
        channel=_name("channel", row.get("logistics_channel")), region=_name("region", row.get("region")),
        days=days, late=max(days - expected, 0)).replace("my my", "my").replace("the my", "my")


class EcommercePlaybook:
    """``rgalign.features.playbook`` interface over the rules above."""

    def __init__(self, contract=None):
        self.contract = contract

    def question(self, row: dict) -> str:
        return rule_question(row)

    def status(self, row: dict) -> str:
        s = _id(row, "order_status", len(ORDER_STATUSES))
        return (ORDER_STATUSES[s - 1].replace("_", " ").lower() if s else "my") + " order"

    def retrieval_query(self, context: str, row: dict) -> str:
        """The context less its behaviour line, the entry point once and the order status three times."""
        words = [context.split("\nUser Historical")[0]]
        e = _id(row, "entry_point", len(ENTRY_POINTS))
        if e:
            words.append(ENTRY_POINTS[e - 1])
        s = _id(row, "order_status", len(ORDER_STATUSES))
        if s:
            words += [ORDER_STATUSES[s - 1].replace("_", " ").lower()] * 3
        return " ".join(words)
