"""Sharded LTP: the bulk embedding of every context a ranker trains and is evaluated on, cut into K shards that
run in parallel (a KFP ``ParallelFor`` over GPU workers on a cluster) and that a rerun finishes, not redoes.

A prompt belongs to shard ``int(key[:8], 16) % K`` of its LTP cache key (``LTPEncoder.key``: reasoner version,
truncation length, prompt), so the cut does not depend on session order and repeats of a context land in one
shard. A shard embeds its prompts through the LTP cache (a killed or retried shard re-embeds only what the
cache lacks) and writes ``vectors.parquet`` (``key``, ``vec``) in chunks, renamed into place when complete;
a shard whose file exists is done. ``load_shards`` puts the vectors into the cache the training step's encoder
reads, so training runs no forward pass for them.

    >>> splits = select_sessions(world, shard_rows=250_000)                              # doctest: +SKIP
    >>> embed_shard(LTPEncoder(reasoner, cache=ltp_cache(world)), splits, 0, 4, "out/0")  # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rgalign.reasoner.ltp import LTPCache, LTPEncoder

VECTORS = "vectors.parquet"
CHUNK = 2048   # prompts embedded and written at a time


def shard_of(key: str, shards: int) -> int:
    """The shard (0..shards-1) of an LTP cache key."""
    return int(key[:8], 16) % shards


def embed_shard(encoder: LTPEncoder, splits, shard: int, shards: int, out: str | Path,
                progress: bool = False) -> dict:
    """Embed shard ``shard`` of ``shards`` of the contexts of ``splits`` (``rgalign.ranker.inputs.SessionSplits``,
    one frame verbalized at a time) into ``out/vectors.parquet``; returns its summary (also ``out/shard.json``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rgalign.ranker.inputs import verbalize_frame
    if not 0 <= shard < shards:
        raise ValueError(f"shard={shard} must be within [0, shards={shards})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = out / "shard.json"
    if (out / VECTORS).is_file() and meta.is_file():
        return {**json.loads(meta.read_text()), "resumed": True}
    d = encoder.dim
    schema = pa.schema([("key", pa.string()), ("vec", pa.list_(pa.float32(), d))])
    tmp = out / f"{VECTORS}.tmp"
    seen: set[str] = set()
    contexts = 0
    hits0, misses0 = encoder.hits, encoder.misses
    with pq.ParquetWriter(tmp, schema) as writer:
        for name, df in splits.frames():
            keys, prompts = [], []
            for c in verbalize_frame(df, splits.kb, splits.contract):
                p = encoder.render(c)
                k = encoder.key(p)
                contexts += 1
                if k not in seen and shard_of(k, shards) == shard:
                    seen.add(k)
                    keys.append(k)
                    prompts.append(p)
            for i in tqdm(range(0, len(prompts), CHUNK), desc=f"LTP shard {shard}/{shards} {name}", unit="chunk",
                          disable=None if progress else True):
                v = encoder.embed_prompts(prompts[i:i + CHUNK])
                writer.write_table(pa.table({"key": keys[i:i + CHUNK],
                                             "vec": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), d)},
                                            schema=schema))
    tmp.replace(out / VECTORS)
    summary = {"shard": shard, "shards": shards, "reasoner_version": encoder.reasoner.version, "dim": d,
               "contexts": contexts, "prompts": len(seen), "cache_hits": encoder.hits - hits0,
               "forward": encoder.misses - misses0}
    meta.write_text(json.dumps(summary))
    return summary


def load_shards(folders: list[str | Path], cache: LTPCache, version: str | None = None) -> int:
    """Put the vectors of shard folders into ``cache`` (a batch at a time); returns how many. ``version``, when
    given, is checked against each shard's reasoner version (a shard of another reasoner is refused)."""
    import pyarrow.parquet as pq
    n = 0
    for f in folders:
        f = Path(f)
        if not (f / VECTORS).is_file():
            raise FileNotFoundError(f"{f} holds no {VECTORS}: the LTP shard did not finish; rerun it")
        meta = json.loads((f / "shard.json").read_text())
        if version is not None and meta["reasoner_version"] != version:
            raise ValueError(f"LTP shard {f} was embedded by reasoner {meta['reasoner_version']}, not {version}: "
                             "rerun the shards on this reasoner")
        for batch in pq.ParquetFile(f / VECTORS).iter_batches(batch_size=20_000):
            keys = batch.column("key").to_pylist()
            vecs = batch.column("vec").flatten().to_numpy().reshape(len(keys), -1)
            cache.put_many(dict(zip(keys, vecs.astype(np.float32))))
            n += len(keys)
    return n
