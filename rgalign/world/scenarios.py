"""Drifted scenarios of the world, for exercising monitoring and the drift gate.

``logistics_disruption``: a carrier outage. A share of users now has a parcel stuck in transit: their order
status becomes TO_RECEIVE, it has been in that status for days, the expected delivery time doubles and they
open the chatbot from the shipping page, which shifts their intents towards tracking and late-delivery
questions (through the world's status / entry / overdue effects).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rgalign.world.vocab import ENTRY_POINTS, ORDER_STATUSES

TO_RECEIVE = ORDER_STATUSES.index("TO_RECEIVE") + 1
SHIPPING_PAGE = ENTRY_POINTS.index("Shipping Page") + 1


def logistics_disruption(frame: pd.DataFrame, share: float = 0.5, extra_days: float = 6.0, seed: int = 0) -> pd.DataFrame:
    """A copy of a feature frame (Feast columns + derived ones) with ``share`` of its rows disrupted."""
    if not 0 < share <= 1:
        raise ValueError(f"share={share} must be within (0, 1]")
    out = frame.copy()
    hit = np.random.default_rng(seed).random(len(out)) < share
    out.loc[hit, "order_status"] = TO_RECEIVE
    out.loc[hit, "entry_point"] = SHIPPING_PAGE
    for col, fn in (("days_in_status", lambda x: x.fillna(0) + extra_days),
                    ("expected_delivery_days", lambda x: x.fillna(x.median()) * 2)):
        if col in out:
            out.loc[hit, col] = fn(pd.to_numeric(out.loc[hit, col], errors="coerce"))
    return out
