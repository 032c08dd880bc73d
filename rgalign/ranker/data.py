"""From a Feast training set to ranker tensors: feature encoding, candidate lists and labels.

A ``FeatureSpec`` is fitted on the training weeks (vocabulary sizes, numeric standardisation) and saved with
every model, so serving encodes a request exactly as training did. Fallbacks, all documented and counted in
``FeatureSpec.encode``'s ``oov`` report rather than silently wrong: a categorical id outside the dictionary
becomes 0 ("unknown"); an intent id in the behaviour sequence that the KB does not know becomes the reserved
out-of-vocabulary id ``n_intents + 1``; a missing number becomes the training mean (0 after standardising).
"""
from __future__ import annotations

from rgalign.errors import MissingInputError

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from rgalign.contract import DataContract
from rgalign.ranker.towers import InputShape

AGE_EDGES_H = [1, 3, 6, 12, 24]  # behaviour-sequence click age buckets (hours): ids 1..5, 0 = padding


def as_float(col: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for missing or non-numeric values (fast path for numeric dtypes)."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(np.float64)


@dataclass
class FeatureSpec:
    """Everything needed to encode a feature row the way the model was trained: the contract's model inputs
    (categorical and numeric columns in prompt order, the log1p-scaled ones, the behaviour-sequence columns),
    vocabulary sizes, and the numeric standardisation fitted on the training weeks."""
    n_intents: int
    categorical: list[str]
    numerical: list[str]
    cardinality: dict[str, int]
    seq_intents: str               # the behaviour sequence: intent ids and their click times (epoch s)
    seq_times: str
    log1p: list[str] = field(default_factory=list)
    max_recent: int = 10
    user_buckets: int = 50_000
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, contract: DataContract, n_intents: int, **kw) -> "FeatureSpec":
        """The (unfitted) spec of a contract's model inputs."""
        f = contract.features
        return cls(n_intents=n_intents, categorical=contract.categorical, numerical=contract.numerical,
                   cardinality={c: len(f[c].vocab) + 1 for c in contract.categorical}, log1p=contract.log1p,
                   seq_intents=contract.sequence["intents"], seq_times=contract.sequence["times"],
                   max_recent=contract.max_recent, **kw)

    @classmethod
    def fit(cls, train, n_intents: int, contract: DataContract, **kw) -> "FeatureSpec":
        """Fit the standardisation on ``train``: a frame, or ``parts(cols) -> iterable of frames`` (a training
        split on disk, read twice, a part at a time, only the numeric columns). Two passes of exact sums, so
        one part gives the same floats as ``mean`` / ``std`` of the whole column."""
        spec = cls.of(contract, n_intents, **kw)
        parts = (lambda cols: [train]) if isinstance(train, pd.DataFrame) else train
        n = len(spec.numerical)

        def columns():  # (rows,) finite log-scaled values of each numeric column, part by part
            for df in parts(spec.numerical):
                scaled = spec._log_scale(_frame_matrix(df, spec.numerical))
                yield [scaled[:, j][np.isfinite(scaled[:, j])] for j in range(n)]
        count, total, sq = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
        for cols in columns():
            for j, x in enumerate(cols):
                count[j] += len(x)
                total[j] += x.sum()
        mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
        for cols in columns():
            for j, x in enumerate(cols):
                d = x - mean[j]
                sq[j] += (d * d).sum()
        for j, c in enumerate(spec.numerical):
            spec.mean[c] = float(mean[j])
            std = float(np.sqrt(sq[j] / count[j])) if count[j] else 0.0
            spec.std[c] = std if std > 1e-12 else 1.0  # constant or absent column: centre only
        return spec

    @property
    def shape(self) -> InputShape:
        """What the towers are built for: vocabulary sizes (id 0 included), numeric inputs, sequence length."""
        return InputShape(tuple(self.cardinality[c] for c in self.categorical), len(self.numerical), self.max_recent)

    def _log_scale(self, num_raw: np.ndarray) -> np.ndarray:
        """(B, N) numbers on the model's scale: log1p of the heavy-tailed columns (``log1p``)."""
        return np.where(self._log1p, np.log1p(np.maximum(num_raw, 0)), num_raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        d = json.loads(text)
        if "categorical" not in d:
            raise ValueError("spec.json predates data contracts (no 'categorical' inputs): retrain the ranker")
        return cls(**d)

    def __post_init__(self):
        missing = [c for c in self.categorical if c not in self.cardinality]
        if missing:
            raise ValueError(f"FeatureSpec: no cardinality for categorical input(s) {missing}")
        self._card = np.array([self.cardinality[c] for c in self.categorical], np.int64)
        self._log1p = np.array([c in self.log1p for c in self.numerical], bool)

    @property
    def oov_intent(self) -> int:
        return self.n_intents + 1

    def encode(self, df: pd.DataFrame) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Encode a feature frame (one row per request) into model inputs.

        Returns ``(inputs, oov)`` where inputs has ``cat`` (B, C) int64, ``user`` (B,) int64, ``num`` (B, N)
        float32, ``seq`` (B, L) int64 intent ids (0 = padding, most recent last), ``seq_age`` (B, L) int64
        click-age buckets; ``oov`` counts the fallbacks applied per feature.
        """
        if "user_id" not in df:
            raise MissingInputError("feature frame lacks 'user_id'")
        B = len(df)
        now = ((pd.to_datetime(df["event_timestamp"], utc=True) - pd.Timestamp(0, tz="UTC"))
               // pd.Timedelta(seconds=1)).to_numpy() if "event_timestamp" in df else np.zeros(B, np.int64)
        si, st = self.seq_intents, self.seq_times
        return self._encode(_frame_matrix(df, self.categorical), _frame_matrix(df, self.numerical),
                            pd.to_numeric(df["user_id"]).to_numpy(np.int64), now,
                            df[si] if si in df else [[]] * B, df[st] if st in df else [[]] * B)

    def encode_rows(self, rows: list[dict]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """``encode`` for feature rows as dicts (the serving path: no DataFrame, ~10x faster for a few rows).
        A key absent from every row is an absent column; ``None`` is a missing value. Same tensors as
        ``encode(pd.DataFrame(rows))`` (tests/test_ranker.py)."""
        missing = [i for i, r in enumerate(rows) if "user_id" not in r]
        if missing:
            raise MissingInputError(f"feature row {missing[0]} lacks 'user_id'")
        present = set().union(*rows) if rows else set()

        def matrix(cols):
            return _floats([[r.get(c) for c in cols] for r in rows]).reshape(len(rows), len(cols))

        def epoch(t):
            t = pd.Timestamp(t)
            return (t.tz_localize("UTC") if t.tzinfo is None else t).value // 1_000_000_000
        now = np.array([epoch(r["event_timestamp"]) for r in rows] if "event_timestamp" in present
                       else [0] * len(rows), np.int64)
        users = np.array([int(r["user_id"]) for r in rows], np.int64)
        return self._encode(matrix(self.categorical), matrix(self.numerical), users, now,
                            [r.get(self.seq_intents) for r in rows], [r.get(self.seq_times) for r in rows])

    def _encode(self, cat_raw, num_raw, user_ids, now, recents, times):
        """The one encoding behind ``encode`` and ``encode_rows``: ``cat_raw`` (B, C) and ``num_raw`` (B, N)
        float64 with NaN for missing values (an absent column is all NaN)."""
        B, oov = len(cat_raw), {}
        cat = np.nan_to_num(cat_raw, nan=0.0).astype(np.int64)
        bad = (cat < 0) | (cat >= self._card)
        for j in np.flatnonzero(bad.any(0)):
            oov[self.categorical[j]] = int(bad[:, j].sum())
        cat[bad] = 0
        user = user_ids % self.user_buckets + 1
        mean, std = (np.array([d[c] for c in self.numerical]) for d in (self.mean, self.std))
        num = np.nan_to_num((self._log_scale(num_raw) - mean) / std, nan=0.0).astype(np.float32)
        seq = np.zeros((B, self.max_recent), np.int64)
        age = np.zeros((B, self.max_recent), np.int64)
        n_oov = 0
        for b, (ids, ts) in enumerate(zip(recents, times)):
            ids = np.asarray([] if ids is None else ids, np.int64)[-self.max_recent:]
            ts = np.asarray([] if ts is None else ts, np.int64)[-self.max_recent:]
            if len(ids) == 0:
                continue
            bad = (ids < 1) | (ids > self.n_intents)
            n_oov += int(bad.sum())
            seq[b, -len(ids):] = np.where(bad, self.oov_intent, ids)
            hours = (now[b] - ts) / 3600 if len(ts) == len(ids) else np.full(len(ids), 24.0)
            age[b, -len(ids):] = np.searchsorted(AGE_EDGES_H, hours, side="left").clip(0, len(AGE_EDGES_H) - 1) + 1
        if n_oov:
            oov[self.seq_intents] = n_oov
        return ({"cat": torch.from_numpy(cat), "user": torch.from_numpy(user), "num": torch.from_numpy(num),
                 "seq": torch.from_numpy(seq), "seq_age": torch.from_numpy(age)}, oov)


def _frame_matrix(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Columns of ``df`` as (B, len(cols)) float64, NaN for missing values and absent columns."""
    cols = [as_float(df[c]) if c in df else np.full(len(df), np.nan) for c in cols]
    return np.column_stack(cols).reshape(len(df), len(cols))


def _floats(rows: list[list]) -> np.ndarray:
    """Python values (B, C) as float64, NaN for None and for non-numbers (``pd.to_numeric(errors="coerce")``)."""
    try:
        return np.array([[np.nan if v is None else v for v in r] for r in rows], np.float64)
    except (TypeError, ValueError):
        return np.array([pd.to_numeric(pd.Series(r, dtype=object), errors="coerce").to_numpy(np.float64) for r in rows])


@dataclass
class RankerData:
    """Encoded sessions with query embeddings and labels.

    ``clicked`` is the clicked intent id (training weeks) or the true intent (evaluation week), 0 when the
    session has no label; ``shown`` (B, K) the logged list; ``click_pos`` (B,) the clicked position or -1.
    """
    inputs: dict[str, torch.Tensor]
    query: torch.Tensor          # (B, d_e) float32
    clicked: torch.Tensor        # (B,)
    shown: torch.Tensor          # (B, K)
    click_pos: torch.Tensor      # (B,)
    user_ids: np.ndarray         # (B,) raw user ids (GAUC groups)
    session_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.clicked)

    def subset(self, idx) -> "RankerData":
        idx = torch.as_tensor(idx)
        return RankerData({k: v[idx] for k, v in self.inputs.items()}, self.query[idx], self.clicked[idx],
                          self.shown[idx], self.click_pos[idx], self.user_ids[idx.numpy()],
                          self.session_ids[idx.numpy()])

    @classmethod
    def build(cls, df: pd.DataFrame, spec: FeatureSpec, query: np.ndarray, label: str = "clicked_intent") -> "RankerData":
        if len(query) != len(df):
            raise ValueError(f"query embeddings have {len(query)} rows for {len(df)} sessions")
        inputs, _ = spec.encode(df)
        shown = np.stack(df["shown_intents"].map(lambda x: np.asarray(x, np.int64)).to_numpy()) \
            if "shown_intents" in df and len(df) else np.zeros((len(df), 0), np.int64)
        clicked = pd.to_numeric(df[label]).fillna(0).clip(lower=0).to_numpy(np.int64)
        pos = df["click_position"].to_numpy(np.int64) if "click_position" in df else np.full(len(df), -1)
        return cls(inputs, torch.as_tensor(np.asarray(query, np.float32)), torch.from_numpy(clicked),
                   torch.from_numpy(shown), torch.from_numpy(pos), df["user_id"].to_numpy(),
                   df["session_id"].to_numpy())


def family_ids(kb: pd.DataFrame) -> np.ndarray:
    """(n_intents,) each KB intent's family as a 1-based id (0 is left for padding), in KB order."""
    return kb.family.astype("category").cat.codes.to_numpy() + 1


def candidate_lists(clicked: torch.Tensor, shown: torch.Tensor, n_neg: int, neg_probs: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training lists: the logged ``shown`` intents plus ``n_neg`` sampled negatives per session.

    Returns ``(cand (B, N) intent ids, y (B, N) click labels, mask (B, N) valid)``; a sampled negative equal to
    the clicked intent is masked out so each list has exactly one positive.
    """
    B = len(clicked)
    neg = torch.multinomial(neg_probs, B * n_neg, replacement=True, generator=generator).view(B, n_neg) + 1
    cand = torch.cat([shown, neg], 1)
    y = (cand == clicked[:, None]).float()
    mask = torch.ones_like(cand, dtype=torch.bool)
    mask[:, shown.shape[1]:] = neg != clicked[:, None]
    return cand, y * mask, mask
