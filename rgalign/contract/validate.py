"""``rgalign data validate``: check a dataset against its data contract before anything runs.

Reads only; writes nothing. Every problem names the table, the column, a sample row and the fix:

- the contract itself (``ContractError``), a table file missing, an empty table;
- missing or extra columns, column types (ids and times are integers or timestamps, lists hold integers);
- categorical ids outside their vocabulary (1..n; 0 / null = unknown);
- intents not in the KB (clicked, shown, in the behaviour sequence, in the evaluation labels), KB ids that are
  not 1..N, split values other than train / eval;
- sequence times out of order or not one per intent, timestamps in the future, evaluation sessions that start
  before the last training session (the evaluation week must follow training);
- duplicate keys (intent id, session id, user id + time in a feature view, evaluation session).

Example:
    >>> from rgalign.contract.validate import validate_dataset
    >>> report = validate_dataset("artifacts/worlds/ci-s0")          # doctest: +SKIP
    >>> report.ok, report.errors[:1]                                  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rgalign.contract.contract import (EVAL_COLUMNS, KB_COLUMNS, KB_OPTIONAL, SESSION_COLUMNS, SPLITS, VIEW_KEYS,
                                       ContractError, DataContract, load_contract)

SESSION_OPTIONAL = {"click_position": "int", "day": "int"}
EVAL_OPTIONAL = {"user_id": "int", "event_timestamp": "time"}
FUTURE_SLACK = pd.Timedelta(days=1)  # clock skew allowed before a timestamp counts as "in the future"


@dataclass
class Problem:
    """One finding: where (``table.column``), what, an example row, and how to fix it."""
    table: str
    column: str
    problem: str
    fix: str
    sample: str = ""

    def __str__(self) -> str:
        at = f"{self.table}.{self.column}" if self.column else self.table
        return f"{at}: {self.problem}" + (f" (e.g. {self.sample})" if self.sample else "") + f". Fix: {self.fix}."


@dataclass
class ValidationReport:
    """The problems found in a dataset (empty when it follows its contract) and the rows of each table."""
    path: str
    errors: list[Problem] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self) -> str:
        head = f"{self.path}: " + ("follows its data contract" if self.ok else f"{len(self.errors)} problem(s)")
        counts = ", ".join(f"{t} {n:,}" for t, n in self.rows.items())
        return "\n".join([head, *(f"  - {p}" for p in self.errors), *([f"  rows: {counts}"] if counts else [])])


def _sample(df: pd.DataFrame, mask, cols: list[str]) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    if not len(idx):
        return ""
    r = df.iloc[idx[0]]

    def show(v):
        v = v.tolist() if hasattr(v, "tolist") else v
        return str(v) if not isinstance(v, str) else repr(v)
    return f"row {idx[0]}: " + ", ".join(f"{c}={show(r[c])}" for c in cols if c in df.columns)


def _type_ok(t: pa.DataType, want: str) -> bool:
    if want == "int":
        return pa.types.is_integer(t)
    if want in ("int64", "float64"):
        return pa.types.is_integer(t) or (want == "float64" and pa.types.is_floating(t))
    if want == "time":
        return pa.types.is_timestamp(t)
    if want in ("int list", "int64 list"):
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
    if want == "str":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    return True


_TYPE_FIX = {"int": "store integers (int64)", "int64": "store integer ids / counts (int64)",
             "float64": "store numbers (float64 or int64)", "time": "store a timestamp with time zone (UTC)",
             "int list": "store a list of int64", "int64 list": "store a list of int64", "str": "store text"}


class _Checker:
    def __init__(self, root: Path, contract: DataContract, report: ValidationReport):
        self.root, self.c, self.r = root, contract, report

    def err(self, table, column, problem, fix, sample=""):
        self.r.errors.append(Problem(table, column, problem, fix, sample))

    def load(self, table: str, file: str, required: dict, optional: dict, extra_ok: bool = False,
             must_exist: bool = True) -> pd.DataFrame | None:
        path = self.root / f"{file}.parquet"
        if not path.is_file():
            if must_exist:
                self.err(table, "", f"no table at {path}", f"write the {table} table as {file}.parquet")
            return None
        try:
            schema = pq.read_schema(path)
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as e:
            self.err(table, "", f"{path} is not a readable parquet file ({e})", "rewrite it with pandas/pyarrow")
            return None
        self.r.rows[table] = len(df)
        if df.empty:
            self.err(table, "", "is empty", f"write at least one row to {file}.parquet")
        for c, want in required.items():
            if c not in schema.names:
                self.err(table, c, "column is missing", f"add column {c} ({_TYPE_FIX[want]})")
        for c, want in {**required, **optional}.items():
            if c in schema.names and not _type_ok(schema.field(c).type, want):
                self.err(table, c, f"has type {schema.field(c).type}", _TYPE_FIX[want])
        extra = [c for c in schema.names if c not in required and c not in optional]
        if extra and not extra_ok:
            self.err(table, extra[0], f"column(s) {extra} are not in the contract",
                     "declare them in contract.yaml or drop them")
        return df

    def duplicates(self, table, df, keys: list[str]):
        if df is None or any(k not in df for k in keys):
            return
        dup = df.duplicated(keys, keep=False).to_numpy()
        if dup.any():
            self.err(table, "+".join(keys), f"{int(dup.sum())} rows share a key", "keep one row per key",
                     _sample(df, dup, keys))

    def in_kb(self, table, df, column, kb_ids: np.ndarray, allow=(-1, 0)):
        if df is None or column not in df or kb_ids is None:
            return
        col = df[column]
        if col.dtype == object:  # lists: flatten, keep the row of each value
            lens = col.map(lambda x: 0 if x is None else len(x)).to_numpy()
            rows = np.repeat(np.arange(len(df)), lens)
            vals = np.concatenate([np.asarray(x, np.int64) for x in col if x is not None and len(x)]) \
                if lens.sum() else np.zeros(0, np.int64)
        else:
            rows, vals = np.arange(len(df)), pd.to_numeric(col, errors="coerce").fillna(0).to_numpy(np.int64)
        bad = ~np.isin(vals, kb_ids) & ~np.isin(vals, allow)
        if bad.any():
            mask = np.zeros(len(df), bool)
            mask[rows[bad]] = True
            self.err(table, column, f"{int(mask.sum())} row(s) name intents not in the KB",
                     "add those intents to the KB or drop the rows", _sample(df, mask, ["session_id", "user_id", column]))

    def future(self, table, df, column="event_timestamp"):
        if df is None or column not in df or not pd.api.types.is_datetime64_any_dtype(df[column]):
            return
        ts = pd.to_datetime(df[column], utc=True)
        bad = (ts > pd.Timestamp.now(tz="UTC") + FUTURE_SLACK).to_numpy()
        if bad.any():
            self.err(table, column, f"{int(bad.sum())} row(s) lie in the future", "fix the clock or the time zone (UTC)",
                     _sample(df, bad, ["user_id", column]))


def validate_dataset(path: str | Path, contract: str | Path | DataContract | None = None) -> ValidationReport:
    """Check the dataset folder ``path`` against ``contract`` (default: ``path/contract.yaml``). Reads only."""
    root = Path(path)
    report = ValidationReport(str(root))
    if not root.is_dir():
        report.errors.append(Problem(str(root), "", "is not a folder", "pass the dataset folder"))
        return report
    try:
        c = contract if isinstance(contract, DataContract) else load_contract(contract or root)
    except ContractError as e:
        report.errors.append(Problem("contract", e.where, e.problem, e.fix))
        return report
    ch = _Checker(root, c, report)
    t = c.tables

    kb = ch.load("kb", t["kb"], KB_COLUMNS, KB_OPTIONAL, extra_ok=True)  # extra KB columns are kept, unused
    kb_ids = None
    if kb is not None and "intent_id" in kb:
        kb_ids = kb.intent_id.to_numpy()
        ch.duplicates("kb", kb, ["intent_id"])
        if len(kb) and not np.array_equal(np.sort(kb_ids), np.arange(1, len(kb) + 1)):
            ch.err("kb", "intent_id", f"ids are not 1..{len(kb)}", "renumber the intents 1..N (the ranker indexes by id)",
                   _sample(kb, ~np.isin(kb_ids, np.arange(1, len(kb) + 1)), ["intent_id", "title"]))
        for col in ("title", "description"):
            if col in kb:
                empty = kb[col].isna().to_numpy() | (kb[col].astype(str).str.strip() == "").to_numpy()
                if empty.any():
                    ch.err("kb", col, f"{int(empty.sum())} intent(s) have no {col}",
                           f"write a {col}: the intent tower and the teachers read it", _sample(kb, empty, ["intent_id"]))

    request = {n: c.features[n].storage for n in c.request}
    s = ch.load("sessions", t["sessions"], {**SESSION_COLUMNS, **request}, SESSION_OPTIONAL)
    if s is not None:
        ch.duplicates("sessions", s, ["session_id"])
        if "split" in s:
            bad = ~s.split.isin(SPLITS).to_numpy()
            if bad.any():
                ch.err("sessions", "split", f"{int(bad.sum())} row(s) have another split than {list(SPLITS)}",
                       "mark each session train or eval", _sample(s, bad, ["session_id", "split"]))
            elif not (s.split == "train").any():
                ch.err("sessions", "split", "no training session", "mark the sessions before the evaluation week train")
        ch.in_kb("sessions", s, "clicked_intent", kb_ids)
        ch.in_kb("sessions", s, "shown_intents", kb_ids, allow=())
        ch.future("sessions", s)
        if {"split", "event_timestamp"} <= set(s) and pd.api.types.is_datetime64_any_dtype(s.event_timestamp):
            tr, ev = s[s.split == "train"].event_timestamp, s[s.split == "eval"].event_timestamp
            if len(tr) and len(ev) and ev.min() <= tr.max():
                bad = ((s.split == "eval") & (s.event_timestamp <= tr.max())).to_numpy()
                ch.err("sessions", "event_timestamp", f"{int(bad.sum())} evaluation session(s) are not after the last "
                       f"training session ({tr.max()})", "split by time: every eval session after every train session",
                       _sample(s, bad, ["session_id", "event_timestamp", "split"]))

    view_tables = {}
    for v in c.views:
        cols = {**VIEW_KEYS, **{n: c.features[n].storage for n in v.features}}
        df = view_tables[v.name] = ch.load(v.table, v.table, cols, {})
        ch.duplicates(v.table, df, ["user_id", "event_timestamp"])
        ch.future(v.table, df)
    for name, f in c.features.items():
        if f.kind != "categorical":
            continue
        table, df = (t["sessions"], s) if f.source == "request" else \
            next(((v.table, view_tables.get(v.name)) for v in c.views if v.name == f.source), (None, None))
        if df is None or name not in df:
            continue
        x = pd.to_numeric(df[name], errors="coerce")
        bad = (x.notna() & ((x < 0) | (x > len(f.vocab)))).to_numpy()
        if bad.any():
            ch.err(table, name, f"{int(bad.sum())} id(s) outside the vocabulary 0..{len(f.vocab)}",
                   f"map the values to ids of the vocabulary of {name} in contract.yaml, or extend it",
                   _sample(df, bad, ["user_id", name]))
    seq = c.sequence
    bt = next(v.table for v in c.views if v.name == seq["view"])
    beh = view_tables.get(seq["view"])
    if beh is not None and {seq["intents"], seq["times"]} <= set(beh):
        ch.in_kb(bt, beh, seq["intents"], kb_ids, allow=())
        ids, ts = beh[seq["intents"]], beh[seq["times"]]
        n_i = ids.map(lambda x: 0 if x is None else len(x)).to_numpy()
        n_t = ts.map(lambda x: 0 if x is None else len(x)).to_numpy()
        if (n_i != n_t).any():
            ch.err(bt, seq["times"], f"{int((n_i != n_t).sum())} row(s) hold a different number of click "
                   "times than intents", "write one click time per intent", _sample(beh, n_i != n_t, ["user_id"]))
        unordered = ts.map(lambda x: x is not None and len(x) > 1 and bool((np.diff(np.asarray(x)) < 0).any())).to_numpy()
        if unordered.any():
            ch.err(bt, seq["times"], f"{int(unordered.sum())} row(s) have click times out of order",
                   "write each sequence oldest first", _sample(beh, unordered, ["user_id", seq["times"]]))

    ev = ch.load("eval_labels", t["eval_labels"], EVAL_COLUMNS, EVAL_OPTIONAL, must_exist=not c.eval_optional)
    if ev is not None:
        ch.duplicates("eval_labels", ev, ["session_id"])
        ch.in_kb("eval_labels", ev, "true_intent", kb_ids, allow=())
        if s is not None and {"session_id", "split"} <= set(s) and "session_id" in ev:
            eval_ids = s.session_id[s.split == "eval"].to_numpy()
            bad = ~ev.session_id.isin(eval_ids).to_numpy()
            if bad.any():
                ch.err("eval_labels", "session_id", f"{int(bad.sum())} label(s) are not of evaluation sessions",
                       "label only sessions with split = eval", _sample(ev, bad, ["session_id"]))
    return report
