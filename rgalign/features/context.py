"""Request-time features derived from Feast rows and the request time: one function for training and serving.

``derive_request_features`` turns the Feast feature-service output (historical for training, online for
serving) plus the request timestamp into the model-facing context: the contract's derived features (``op``
``days_since`` a timestamp feature, ``local_hour`` by a categorical feature's UTC offsets) and the behaviour
sequence cut to its window before the request. Because the same code runs on both paths, training/serving
skew cannot come from here.
"""
from __future__ import annotations

from rgalign.contract import DataContract
from rgalign.errors import MissingInputError

import numpy as np
import pandas as pd

DAY = 86_400


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(ts, utc=True)
    return (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _days_since(now, then):
    return np.floor((now - then) / DAY)


def _local_hour(now, ids, offsets: np.ndarray):
    return (now // 3600 + offsets[ids]) % 24


def _window(ids, cts, now: int, seconds: int) -> tuple[list[int], list[int]]:
    """The clicks of the ``seconds`` before ``now`` (a missing sequence is empty)."""
    if ids is None or cts is None or (isinstance(ids, float) and np.isnan(ids)):
        return [], []
    ids, cts = np.asarray(ids, np.int64), np.asarray(cts, np.int64)
    keep = (cts >= now - seconds) & (cts < now)
    return ids[keep].tolist(), cts[keep].tolist()


def _derived(contract: DataContract):
    """(feature, op, source, UTC offsets as an array or None) of each derived feature."""
    out = []
    for name in contract.derived:
        f = contract.features[name]
        out.append((name, f.op, f.from_, np.asarray(f.utc_offsets) if f.op == "local_hour" else None))
    return out


def derive_request_features(df: pd.DataFrame, contract: DataContract, ts_col: str = "event_timestamp") -> pd.DataFrame:
    """Add the contract's derived features and cut the behaviour sequence to its window before the request.

    Args:
        df: one row per request with ``ts_col`` (the request time) and the Feast features the derivations
            read (each derived feature's ``from``) and the sequence's two lists.
        contract: the dataset's contract.
    Returns:
        A copy of ``df`` with the derived columns (``days_since`` is NaN without its timestamp; an unknown
        categorical id reads the offset of id 0; the windowed sequence is empty without clicks).
    """
    seq = contract.sequence
    derived = _derived(contract)
    missing = ({ts_col, seq["intents"], seq["times"]} | {src for _, _, src, _ in derived}) - set(df.columns)
    if missing:
        raise MissingInputError(f"cannot derive request features: missing column(s) {sorted(missing)}; fetch the "
                                "intent_ranking feature service from Feast first")
    out = df.copy()
    now = np.asarray(_epoch_seconds(out[ts_col]), np.int64)
    for name, op, src, offsets in derived:
        x = pd.to_numeric(out[src], errors="coerce")
        if op == "days_since":
            out[name] = _days_since(now, x.to_numpy(float))
        else:
            ids = x.fillna(0).astype(int).to_numpy()
            out[name] = _local_hour(now, np.where((ids < 0) | (ids >= len(offsets)), 0, ids), offsets)
    window = int(seq["window_hours"] * 3600)
    cut = [_window(ids, cts, t, window) for ids, cts, t in zip(out[seq["intents"]], out[seq["times"]], now)]
    out[seq["intents"]], out[seq["times"]] = [c[0] for c in cut], [c[1] for c in cut]
    return out


def derive_request_row(row: dict, now: int, contract: DataContract) -> dict:
    """``derive_request_features`` for one online row (a dict of Feast values, updated in place and returned)
    at request time ``now`` (epoch s): the serving path, with no DataFrame; the same formulas, and
    tests/test_feast.py checks both give the same values."""
    for name, op, src, offsets in _derived(contract):
        v = row.get(src)
        if op == "days_since":
            row[name] = float(_days_since(now, v)) if v is not None else float("nan")
        else:
            i = int(v) if v is not None else 0
            row[name] = int(_local_hour(now, i if 0 <= i < len(offsets) else 0, offsets))
    seq = contract.sequence
    cut = _window(row.get(seq["intents"]), row.get(seq["times"]), now, int(seq["window_hours"] * 3600))
    row[seq["intents"]], row[seq["times"]] = cut
    return row
