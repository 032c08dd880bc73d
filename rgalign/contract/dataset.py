"""A dataset folder: ``contract.yaml`` and its tables. What every stage asks of one, for any producer.

A generated benchmark world is a dataset with extras (``manifest.json``: its config digest and the Bayes /
popularity headroom report; ``hidden/``: the simulator's truth). Nothing here needs them: digests, time ranges
and the training days come from the tables when there is no manifest.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from rgalign.contract.contract import FILE, DataContract, load_contract


def check_dataset(folder: str | Path) -> Path:
    """``folder`` as a Path, or a FileNotFoundError saying how to make a dataset."""
    folder = Path(folder)
    if not (folder / FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a dataset (no {FILE}): generate the benchmark world with "
                                "`rgalign world generate --scale ci`, or scaffold your own with `rgalign data init DIR`")
    return folder


def manifest(folder: str | Path) -> dict:
    """The producer's manifest (a generated world's), or {}."""
    p = Path(folder) / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _tables(folder: Path, contract: DataContract) -> list[Path]:
    names = [contract.tables["kb"], contract.tables["sessions"], contract.tables["eval_labels"],
             *(v.table for v in contract.views)]
    return [folder / f"{n}.parquet" for n in names if (folder / f"{n}.parquet").is_file()]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(folder: str | Path) -> str:
    """Digest of a dataset's content (the contract and every table): caches built on it are keyed by it. A
    generated world's manifest already holds its files' digests."""
    folder = check_dataset(folder)
    m = manifest(folder)
    if "files" in m:
        return hashlib.sha256(json.dumps(m["files"], sort_keys=True).encode()).hexdigest()[:12]
    files = {p.name: _sha(p) for p in [folder / FILE, *_tables(folder, load_contract(folder))]}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


def dataset_digest(folder: str | Path) -> str:
    """What identifies a dataset in lineage tags and reuse keys: a generated world's config digest (its content
    follows from it), else the content digest."""
    return manifest(folder).get("config_digest") or content_digest(folder)


def column_range(path: Path, column: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(min, max) of ``column`` in a parquet file, from its row groups' statistics (no data read); a file
    written without them is scanned a batch at a time. None for an empty column."""
    import pyarrow.compute as pc
    f = pq.ParquetFile(path)
    i = f.schema_arrow.get_field_index(column)
    stats = [f.metadata.row_group(g).column(i).statistics for g in range(f.metadata.num_row_groups)]
    if stats and all(st is not None and st.has_min_max for st in stats):
        pairs = [(st.min, st.max) for st in stats]
    else:
        pairs = [(m["min"].as_py(), m["max"].as_py()) for b in f.iter_batches(columns=[column], batch_size=1 << 20)
                 for m in [pc.min_max(b.column(0))]]
    pairs = [(pd.Timestamp(lo), pd.Timestamp(hi)) for lo, hi in pairs if lo is not None]
    if not pairs:
        return None
    lo, hi = min(lo for lo, _ in pairs), max(hi for _, hi in pairs)
    return (lo.tz_localize("UTC"), hi.tz_localize("UTC")) if lo.tzinfo is None else (lo.tz_convert("UTC"), hi.tz_convert("UTC"))


def time_range(folder: str | Path, contract: DataContract) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(earliest feature row - 1 day, latest row + 1 day): the window ``materialize`` loads. Read from the
    tables' parquet statistics, so its memory does not grow with the tables."""
    ranges = [r for p in _tables(Path(folder), contract) if "event_timestamp" in pq.read_schema(p).names
              for r in [column_range(p, "event_timestamp")] if r is not None]
    if not ranges:
        raise ValueError(f"{folder}: no table has event_timestamp rows; run `rgalign data validate {folder}`")
    return (min(lo for lo, _ in ranges).floor("D") - pd.Timedelta(days=1),
            max(hi for _, hi in ranges).ceil("D") + pd.Timedelta(days=1))


def session_days(sessions: pd.DataFrame, day0: pd.Timestamp | None = None) -> pd.Series:
    """Each session's day index (0 = ``day0``, default the first session's UTC day; a part of the log passes
    the whole log's): the log's ``day`` column when it has one."""
    if "day" in sessions:
        return sessions["day"]
    d = pd.to_datetime(sessions.event_timestamp, utc=True).dt.floor("D")
    return ((d - (d.min() if day0 is None else day0)) // pd.Timedelta(days=1)).astype("int64")


def training_clicks(folder: str | Path, contract: DataContract | None = None) -> pd.DataFrame:
    """``user_id, clicked_intent`` of the session log's clicked training-week sessions (the popularity behind
    serving's fallback, the A/B segments and the user-history segments)."""
    contract = contract or load_contract(folder)
    s = pd.read_parquet(Path(folder) / f"{contract.tables['sessions']}.parquet",
                        columns=["user_id", "split", "clicked_intent"])
    return s.loc[(s.split == "train") & (s.clicked_intent > 0), ["user_id", "clicked_intent"]]


def headroom(folder: str | Path) -> dict:
    """Reference rows a producer measured on its own truth, ``{name: {metric: MetricValue}}``: a generated
    world's Bayes-optimal ceiling and popularity floor of the evaluation week; {} for other datasets."""
    from rgalign.metrics import MetricValue
    return {name: {k: MetricValue(**v) for k, v in r.items()}
            for name, r in manifest(folder).get("report", {}).items() if isinstance(r, dict)}


def load_kb(folder: str | Path, contract: DataContract | None = None) -> pd.DataFrame:
    """The knowledge base with its optional columns filled: ``family`` (default: each intent its own family)
    and ``launch_day`` (default 0: launched before training)."""
    contract = contract or load_contract(folder)
    kb = pd.read_parquet(Path(folder) / f"{contract.tables['kb']}.parquet")
    if "family" not in kb:
        kb["family"] = "intent-" + kb.intent_id.astype(str)
    if "launch_day" not in kb:
        kb["launch_day"] = 0
    return kb
