"""Generate a benchmark world to a folder, in chunks of users with bounded memory, atomically.

Layout of ``<root>/<name>/`` (``name`` like ``ci-s0``):

    kb.parquet              the knowledge base (intent id, family, slots, title, description, popularity)
    profiles.parquet        Feast source of view ``user_profile``      (weekly snapshots)
    order_context.parquet   Feast source of view ``order_context``     (order state pushed before a session)
    behaviour.parquet       Feast source of view ``behaviour_sequence`` (a row per click: last clicks <= 24 h)
    sessions.parquet        the session log: entity rows + click labels (train) ; split = train | eval
    eval_labels.parquet     the evaluation week's true intents (the paper's human-refined labels)
    contract.yaml           the data contract these tables follow (a copy of rgalign/world/contract.yaml)
    hidden/sessions.parquet true intent, persona, Bayes rank of every session: never a model input
    manifest.json           config, counts, file digests, and the Bayes-optimal vs popularity report

A world is written to ``<name>.tmp-<pid>`` and renamed into place only when complete: a failure leaves no
half-written world, and an existing world with the same config digest is reused (idempotent).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from rgalign.config import WorldConfig
from rgalign.metrics import evaluate_ranks
from rgalign.world import CONTRACT_PATH
from rgalign.world.intent_model import IntentModel
from rgalign.world.kb import build_kb, load_bitext
from rgalign.world.simulator import simulate_chunk

TABLES = ("profiles", "order_context", "behaviour", "sessions", "hidden", "eval_labels")
_LIST_TYPES = {"shown_intents": pa.list_(pa.int64()), "recent_intents": pa.list_(pa.int64()),
               "recent_click_ts": pa.list_(pa.int64())}


def _to_arrow(df: pd.DataFrame, schema: pa.Schema | None) -> pa.Table:
    """Arrow table with int64 list columns (Feast maps them to Array(Int64)) and a schema fixed by the first
    chunk, so every chunk of a table has the same schema."""
    if schema is None:
        base = pa.Table.from_pandas(df, preserve_index=False).schema
        schema = pa.schema([pa.field(f.name, _LIST_TYPES.get(f.name, f.type)) for f in base])
    return pa.Table.from_pandas(df, schema=schema, preserve_index=False)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def world_dir(cfg: WorldConfig, root: str | Path) -> Path:
    return Path(root) / cfg.name


def generate_world(cfg: WorldConfig, root: str | Path = "artifacts/worlds", bitext: str | Path | None = None,
                   force: bool = False, progress: bool = True) -> Path:
    """Generate (or reuse) the world of ``cfg`` under ``root`` and return its folder."""
    dest = world_dir(cfg, root)
    manifest = dest / "manifest.json"
    if manifest.is_file() and not force:
        old = json.loads(manifest.read_text())
        if old.get("config_digest") == cfg.digest():
            if not (dest / "contract.yaml").is_file():  # a world written before contracts: add its contract
                shutil.copyfile(CONTRACT_PATH, dest / "contract.yaml")
            return dest
        raise FileExistsError(f"{dest} holds a world with a different config (digest {old.get('config_digest')} "
                              f"!= {cfg.digest()}); pass --force to replace it or choose another --out.")
    kb = build_kb(load_bitext(bitext), cfg.seed, cfg.cold_start_frac)  # validates the Bitext file first
    kb.loc[kb.launch_day < 0, "launch_day"] = cfg.train_days
    model = IntentModel.build(kb, cfg)

    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "hidden").mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        kb.to_parquet(tmp / "kb.parquet", index=False)
        shutil.copyfile(CONTRACT_PATH, tmp / "contract.yaml")
        writers: dict[str, pq.ParquetWriter] = {}
        counts = dict.fromkeys(TABLES, 0)
        clicks_train = np.zeros(len(kb) + 1, np.int64)
        eval_ranks, eval_users, eval_true = [], [], []
        n_chunks = -(-cfg.users // cfg.chunk_users)
        bar = tqdm(total=cfg.users, unit="user", desc=f"world {cfg.name}", disable=None if progress else True)
        for c in range(n_chunks):
            n = min(cfg.chunk_users, cfg.users - c * cfg.chunk_users)
            tables = simulate_chunk(cfg, model, c * cfg.chunk_users, n, c)
            s, h = tables["sessions"], tables["hidden"]
            train = s.split.to_numpy() == "train"
            clicked = s.clicked_intent.to_numpy()
            np.add.at(clicks_train, clicked[train & (clicked > 0)], 1)
            ev = ~train
            eval_ranks.append(h.bayes_rank.to_numpy()[ev])
            eval_users.append(s.user_id.to_numpy()[ev])
            eval_true.append(h.true_intent.to_numpy()[ev])
            # the evaluation set: true intents of the last week (the paper's human-refined labels)
            tables["eval_labels"] = s.loc[ev, ["session_id", "user_id", "event_timestamp"]].assign(
                true_intent=h.true_intent.to_numpy()[ev])
            for name, df in tables.items():
                path = tmp / ("hidden/sessions.parquet" if name == "hidden" else f"{name}.parquet")
                if name not in writers:
                    table = _to_arrow(df, None)
                    writers[name] = pq.ParquetWriter(path, table.schema)
                else:
                    table = _to_arrow(df, writers[name].schema)
                writers[name].write_table(table)
                counts[name] += len(df)
            bar.update(n)
        bar.close()
        for w in writers.values():
            w.close()
        report = headroom_report(np.concatenate(eval_ranks), np.concatenate(eval_users),
                                 np.concatenate(eval_true), clicks_train, kb)
        meta = {
            "name": cfg.name, "config": cfg.to_dict(), "config_digest": cfg.digest(),
            "intents": len(kb), "cold_start_intents": int((kb.launch_day > 0).sum()),
            "rows": counts, "eval_sessions": counts["eval_labels"], "seconds": round(time.perf_counter() - t0, 1),
            "report": report,
            "files": {p.relative_to(tmp).as_posix(): _sha(p) for p in sorted(tmp.rglob("*.parquet"))},
            "contract": _sha(tmp / "contract.yaml"),
        }
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def popularity_ranks(clicks_train: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Rank of each true intent under the training-click popularity order (ties against the target)."""
    counts = np.sort(clicks_train[1:])
    c = clicks_train[true]
    return len(counts) - np.searchsorted(counts, c, side="left") - 1


def headroom_report(bayes_ranks: np.ndarray, users: np.ndarray, true: np.ndarray, clicks_train: np.ndarray,
                    kb: pd.DataFrame) -> dict:
    """Table 2 metrics of the Bayes-optimal ranking and of the popularity floor on the evaluation week."""
    n = len(kb)
    rows = {"Bayes-optimal (ceiling)": evaluate_ranks(bayes_ranks, users, n),
            "Popularity (floor)": evaluate_ranks(popularity_ranks(clicks_train, true), users, n)}
    cold = np.isin(true, kb.intent_id[kb.launch_day > 0].to_numpy())
    return {name: {m: vars(v) for m, v in r.items()} for name, r in rows.items()} | {
        "eval_sessions_with_cold_start_intent": int(cold.sum())}


def load_manifest(path: str | Path) -> dict:
    """Read a world's manifest.json, with a clear error when the folder is not a complete world."""
    m = Path(path) / "manifest.json"
    if not m.is_file():
        raise FileNotFoundError(f"{path} is not a generated world (no manifest.json); run "
                                "`rgalign world generate --scale ci` first.")
    return json.loads(m.read_text())
