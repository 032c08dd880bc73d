"""Request-time features derived from Feast rows and the request time: one function for training and serving.

``derive_request_features`` turns the Feast feature-service output (historical for training, online for
serving) plus the request timestamp into the model-facing context: days in the current order status, the
local hour, and the behaviour sequence cut to the 24 hours before the request. Because the same code runs on
both paths, training/serving skew cannot come from here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DAY = 86_400
# UTC offsets of the 8 regions (metadata order): SG, MY, TH, ID, PH, VN, TW, BR
REGION_UTC_OFFSET = np.array([0, 8, 8, 7, 7, 8, 7, 8, -3])  # index 0 = unknown region -> UTC


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(ts, utc=True)
    return (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


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
        raise KeyError(f"cannot derive request features: missing column(s) {sorted(missing)}; fetch the "
                       "intent_ranking feature service from Feast first")
    out = df.copy()
    now = np.asarray(_epoch_seconds(out[ts_col]), np.int64)
    su = pd.to_numeric(out["status_updated_at"], errors="coerce").to_numpy(float)
    out["days_in_status"] = np.floor((now - su) / DAY)
    region = pd.to_numeric(out["region"], errors="coerce").fillna(0).astype(int).clip(0, 8).to_numpy()
    out["hour_of_day"] = ((now // 3600) + REGION_UTC_OFFSET[region]) % 24
    recent, recent_ts = [], []
    for ids, cts, t in zip(out["recent_intents"], out["recent_click_ts"], now):
        if ids is None or cts is None or (isinstance(ids, float) and np.isnan(ids)):
            ids, cts = [], []
        ids, cts = np.asarray(ids, np.int64), np.asarray(cts, np.int64)
        keep = (cts >= t - DAY) & (cts < t)
        recent.append(ids[keep].tolist())
        recent_ts.append(cts[keep].tolist())
    out["recent_intents"], out["recent_click_ts"] = recent, recent_ts
    return out
