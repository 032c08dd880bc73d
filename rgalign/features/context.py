"""Request-time features derived from Feast rows and the request time: one function for training and serving.

``derive_request_features`` turns the Feast feature-service output (historical for training, online for
serving) plus the request timestamp into the model-facing context: days in the current order status, the
local hour, and the behaviour sequence cut to the 24 hours before the request. Because the same code runs on
both paths, training/serving skew cannot come from here.
"""
from __future__ import annotations

from rgalign.errors import MissingInputError

import numpy as np
import pandas as pd

DAY = 86_400
# UTC offsets of the 8 regions (metadata order): SG, MY, TH, ID, PH, VN, TW, BR
REGION_UTC_OFFSET = np.array([0, 8, 8, 7, 7, 8, 7, 8, -3])  # index 0 = unknown region -> UTC


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(ts, utc=True)
    return (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _days_in_status(now, status_updated_at):
    return np.floor((now - status_updated_at) / DAY)


def _hour_of_day(now, region):
    return (now // 3600 + REGION_UTC_OFFSET[region]) % 24


def _last_24h(ids, cts, now: int) -> tuple[list[int], list[int]]:
    """The clicks of the 24 hours before ``now`` (a missing sequence is empty)."""
    if ids is None or cts is None or (isinstance(ids, float) and np.isnan(ids)):
        return [], []
    ids, cts = np.asarray(ids, np.int64), np.asarray(cts, np.int64)
    keep = (cts >= now - DAY) & (cts < now)
    return ids[keep].tolist(), cts[keep].tolist()


def derive_request_features(df: pd.DataFrame, ts_col: str = "event_timestamp") -> pd.DataFrame:
    """Add ``days_in_status`` and ``hour_of_day``, and cut ``recent_intents`` / ``recent_click_ts`` to the
    24 hours before the request.

    Args:
        df: one row per request with ``ts_col`` (the request time), and the Feast features
            ``status_updated_at`` (epoch s), ``region``, ``recent_intents`` and ``recent_click_ts`` (lists).
    Returns:
        A copy of ``df`` with the derived columns (``days_in_status`` is NaN without an order row; the
        24-hour sequence is empty without clicks).
    """
    missing = {ts_col, "status_updated_at", "region", "recent_intents", "recent_click_ts"} - set(df.columns)
    if missing:
        raise MissingInputError(f"cannot derive request features: missing column(s) {sorted(missing)}; fetch the "
                       "intent_ranking feature service from Feast first")
    out = df.copy()
    now = np.asarray(_epoch_seconds(out[ts_col]), np.int64)
    su = pd.to_numeric(out["status_updated_at"], errors="coerce").to_numpy(float)
    out["days_in_status"] = _days_in_status(now, su)
    region = pd.to_numeric(out["region"], errors="coerce").fillna(0).astype(int).clip(0, 8).to_numpy()
    out["hour_of_day"] = _hour_of_day(now, region)
    cut = [_last_24h(ids, cts, t) for ids, cts, t in zip(out["recent_intents"], out["recent_click_ts"], now)]
    out["recent_intents"], out["recent_click_ts"] = [c[0] for c in cut], [c[1] for c in cut]
    return out


def derive_request_row(row: dict, now: int) -> dict:
    """``derive_request_features`` for one online row (a dict of Feast values, updated in place and returned)
    at request time ``now`` (epoch s): the serving path, with no DataFrame; the same formulas, and
    tests/test_feast.py checks both give the same values."""
    su = row.get("status_updated_at")
    row["days_in_status"] = float(_days_in_status(now, su)) if su is not None else float("nan")
    region = row.get("region")
    row["hour_of_day"] = int(_hour_of_day(now, min(max(int(region), 0), 8) if region is not None else 0))
    cut = _last_24h(row.get("recent_intents"), row.get("recent_click_ts"), now)
    row["recent_intents"], row["recent_click_ts"] = cut
    return row
