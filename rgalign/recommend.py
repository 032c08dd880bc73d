"""Online recommendation (paper section 5.4): Feast online lookup -> verbalization (Table 1) -> reasoner LTP
(Eq. 2-3) -> QE-Rec scores against the precomputed intent index (Eq. 4) -> top-K intents.

This is the one place that turns a request into a ranked list; the KServe models in ``serving/`` and the bare
FastAPI endpoint of ``bench/serving.py`` are thin protocol layers over it. Every request field is validated
here and a bad one raises ``RequestError`` naming the field and the fix, so a server can answer 4xx.

Example::

    rec = Recommender.from_paths("artifacts/ranker", "artifacts/reasoner", "artifacts/worlds/ci-s0")
    rec.recommend([17, 42], requests=[{"channel": 2}, {}], k=3)   # the contract's request features (name -> id)
    # [{"user_id": 17, "intent_ids": [...], "scores": [...], "titles": [...], "fallback": False}, ...]
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

MAX_BATCH = 64  # requests per call; larger batches are refused (split them) so one call cannot starve others
MAX_K = 50


class RequestError(ValueError):
    """A request the models cannot answer as sent; ``field`` names the offending input."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"{field}: {problem}; {fix}")


def _int(value, field: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
            isinstance(value, float) and value.is_integer()):
        raise RequestError(field, f"expected an integer, got {type(value).__name__} {value!r}", "send an integer")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RequestError(field, f"{v} is out of range", f"use a value in [{lo}, {hi}]")
    return v


def _batch(items, field: str) -> list:
    if not isinstance(items, list):
        raise RequestError(field, f"expected a list, got {type(items).__name__}", "send a JSON array")
    if not items:
        raise RequestError(field, "is empty", "send at least one item")
    if len(items) > MAX_BATCH:
        raise RequestError(field, f"{len(items)} items exceed the batch limit {MAX_BATCH}", "split the batch")
    return items


def parse_k(k, field: str = "k") -> int:
    return 3 if k is None else _int(k, field, 1, MAX_K)


def parse_users(instances, request: dict[str, int]) -> tuple[list[int], list[dict]]:
    """``instances``: ``[{"user_id": int, <request feature>: int (optional), ...}, ...]`` -> (user ids, the
    request features of each). ``request`` maps each request feature of the data contract to its vocabulary
    size (ids 1..n; 0 or absent = none)."""
    users, values = [], []
    example = json.dumps({"user_id": 123, **{n: 1 for n in request}})
    for i, inst in enumerate(_batch(instances, "instances")):
        if not isinstance(inst, dict):
            raise RequestError(f"instances[{i}]", f"expected an object, got {type(inst).__name__}", f"send {example}")
        unknown = set(inst) - {"user_id", *request}
        if unknown:
            raise RequestError(f"instances[{i}].{sorted(unknown)[0]}", "is not a field of a recommend request",
                               f"send only user_id and the request features {sorted(request)}")
        if "user_id" not in inst:
            raise RequestError(f"instances[{i}].user_id", "is missing", "send the user's id")
        users.append(_int(inst["user_id"], f"instances[{i}].user_id", 0, 2**62))
        values.append({n: _int(inst[n], f"instances[{i}].{n}", 0, size) for n, size in request.items()
                       if inst.get(n) is not None})
    return users, values


def parse_feature_rows(instances, spec, d_e: int) -> tuple[list[dict], np.ndarray]:
    """The ranker's own request: ``[{"features": {column: value}, "query_embedding": [d_e floats]}, ...]``.

    Features are the model-facing columns of ``spec`` (a ``FeatureSpec``): the categorical ids, the numbers,
    the behaviour sequence's intent ids and click times (same length, at most ``spec.max_recent``, intent ids
    of the KB) and ``event_timestamp`` (ISO time, default now). Missing features take the training fallbacks.
    """
    rows, embs = [], []
    n_intents, si, st, cap = spec.n_intents, spec.seq_intents, spec.seq_times, spec.max_recent
    known = set(spec.categorical) | set(spec.numerical) | {"user_id", "event_timestamp", si, st}
    for i, inst in enumerate(_batch(instances, "instances")):
        where = f"instances[{i}]"
        if not isinstance(inst, dict) or not isinstance(inst.get("features"), dict):
            raise RequestError(f"{where}.features", "is missing or not an object",
                               'send {"features": {"user_id": 1, ...}, "query_embedding": [...]}')
        f = inst["features"]
        unknown = set(f) - known
        if unknown:
            raise RequestError(f"{where}.features.{sorted(unknown)[0]}", "is not a ranker feature",
                               f"use the columns of the intent_ranking feature service: {sorted(known)}")
        if "user_id" not in f:
            raise RequestError(f"{where}.features.user_id", "is missing", "send the user's id")
        row = {"user_id": _int(f["user_id"], f"{where}.features.user_id", 0, 2**62)}
        for c in spec.categorical:
            if f.get(c) is not None:
                row[c] = _int(f[c], f"{where}.features.{c}", 0, spec.cardinality[c] - 1)
        for c in spec.numerical:
            v = f.get(c)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                    raise RequestError(f"{where}.features.{c}", f"expected a finite number, got {v!r}", "send a number")
                row[c] = float(v)
        ids, ts = f.get(si) or [], f.get(st) or []
        for name, seq in ((si, ids), (st, ts)):
            if not isinstance(seq, list):
                raise RequestError(f"{where}.features.{name}", "expected a list of integers", "send a JSON array")
            if len(seq) > cap:
                raise RequestError(f"{where}.features.{name}", f"{len(seq)} items exceed the sequence cap {cap}",
                                   f"send the last {cap} clicks of the sequence window")
        if len(ids) != len(ts):
            raise RequestError(f"{where}.features.{st}", f"has {len(ts)} items for {len(ids)} intents",
                               "send one click time (epoch seconds) per intent")
        row[si] = [_int(x, f"{where}.features.{si}[{j}]", 1, n_intents) for j, x in enumerate(ids)]
        row[st] = [_int(x, f"{where}.features.{st}[{j}]", 0) for j, x in enumerate(ts)]
        try:
            row["event_timestamp"] = pd.Timestamp(f.get("event_timestamp") or pd.Timestamp.now(tz="UTC"))
        except (ValueError, TypeError):
            raise RequestError(f"{where}.features.event_timestamp", f"{f.get('event_timestamp')!r} is not a time",
                               "send an ISO 8601 time, e.g. 2026-11-22T10:00:00Z") from None
        rows.append(row)
        embs.append(parse_embedding(inst.get("query_embedding"), d_e, f"{where}.query_embedding"))
    return rows, np.stack(embs)


def parse_embedding(e, d_e: int, field: str) -> np.ndarray:
    if not isinstance(e, (list, np.ndarray)):
        raise RequestError(field, "is missing or not a list", f"send the reasoner's LTP: {d_e} floats")
    try:
        arr = np.asarray(e, np.float32)
    except (ValueError, TypeError):
        raise RequestError(field, "holds non-numbers", f"send {d_e} floats") from None
    if arr.shape != (d_e,):
        raise RequestError(field, f"has shape {list(arr.shape)}", f"send a flat list of {d_e} floats (the LTP size)")
    if not np.isfinite(arr).all():
        raise RequestError(field, "holds NaN or infinity", "send finite floats")
    return arr


def parse_contexts(instances) -> list[str]:
    """The reasoner's request: ``[{"context": "<verbalized user context>"}, ...]`` (or bare strings)."""
    out = []
    for i, inst in enumerate(_batch(instances, "instances")):
        text = inst.get("context") if isinstance(inst, dict) else inst
        if not isinstance(text, str) or not text.strip():
            raise RequestError(f"instances[{i}].context", "is missing, empty or not text",
                               "send the verbalized user context (rgalign.features.verbalize)")
        out.append(text)
    return out


class RemoteReasoner:
    """The reasoner behind a KServe V2 endpoint (the cluster path: the ranker pod calls the reasoner
    InferenceService). Same ``embed(contexts) -> (B, d)`` as ``LTPEncoder``.

    Args:
        url: the reasoner's V2 infer URL, e.g. ``http://rgalign-reasoner.ns.svc/v2/models/reasoner/infer``.
    """

    def __init__(self, url: str, timeout_s: float = 10.0):
        import httpx
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reasoner_url={url!r} must be an http(s) V2 infer URL")
        self.url, self.client = url, httpx.Client(timeout=timeout_s)

    def embed(self, contexts: list[str]) -> np.ndarray:
        body = {"inputs": [{"name": "context", "shape": [len(contexts)], "datatype": "BYTES", "data": contexts}]}
        r = self.client.post(self.url, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"reasoner at {self.url} answered {r.status_code}: {r.text[:200]}")
        out = next(o for o in r.json()["outputs"] if o["name"] == "ltp")
        return np.asarray(out["data"], np.float32).reshape(out["shape"])


@dataclass
class Ranked:
    intent_ids: np.ndarray  # (B, k) int64, KB ids (1-based)
    scores: np.ndarray      # (B, k) float32


class Recommender:
    """Reasoner + ranker + online features, loaded once; thread-safe for inference.

    Args:
        ranker_dir: a ranker checkpoint (``rgalign.ranker.checkpoint.save_ranker``); None for a reasoner-only server.
        reasoner_dir: the reasoner whose LTP the ranker was trained on (its digest must match the ranker's
            ``reasoner_digest``); None for a ranker without a query tower.
        world_dir: the world whose Feast repo serves the online features (None: ranker/reasoner only).
        feast_dir: the Feast registry/online-store folder (default next to the world).
        ltp_cache: an SQLite LTP cache file (repeat contexts skip the reasoner), or None.
        reasoner_url: instead of ``reasoner_dir``, a reasoner served over V2 (``RemoteReasoner``).
        feature_deadline_s, unready_after_s: the online reads' deadline and how long they may fail before
            ``ready`` is false (``rgalign.features.online_guard.OnlineGuard``).
    """

    def __init__(self, ranker_dir: str | Path | None, reasoner_dir: str | Path | None = None,
                 world_dir: str | Path | None = None, feast_dir: str | Path | None = None,
                 ltp_cache: str | Path | None = None, reasoner_url: str | None = None,
                 feature_deadline_s: float = 0.5, unready_after_s: float = 5.0):
        self.model, meta, self.d_e, self.titles, self._compiled = None, {}, 0, {}, None
        if ranker_dir is not None:
            from rgalign.ranker.checkpoint import load_ranker
            self.model, self.spec, self.cfg, self.intents = load_ranker(ranker_dir)
            meta = json.loads((Path(ranker_dir) / "meta.json").read_text())
            self.d_e = int(meta.get("d_e") or 0)
            self.titles = dict(zip(self.intents.intent_id.astype(int), self.intents.title))
            with torch.inference_mode():
                self.index = self.model.intent_index()
        self.encoder = None
        if reasoner_dir is not None:
            from rgalign.reasoner.ltp import LTPEncoder
            from rgalign.reasoner.sources import load_reasoner
            self.encoder = LTPEncoder(load_reasoner(reasoner_dir), cache=ltp_cache)
            want = meta.get("reasoner_digest")
            if want and want != self.encoder.reasoner.version:
                raise ValueError(f"reasoner {reasoner_dir} has digest {self.encoder.reasoner.version} but the ranker "
                                 f"was trained on {want}; serve the ranker with its parent_reasoner version")
            if self.d_e and self.encoder.dim != self.d_e:
                raise ValueError(f"reasoner LTP size {self.encoder.dim} != ranker query size {self.d_e}")
        elif reasoner_url is not None:
            self.encoder = RemoteReasoner(reasoner_url)
        from rgalign.features.online_guard import LogWindow
        self.store = self.online = None
        self._reasoner_log = LogWindow()
        if world_dir is not None:
            from rgalign.features.feast_io import FeatureStoreSession
            from rgalign.features.online_guard import OnlineGuard
            self.store = FeatureStoreSession(world_dir, feast_dir)
            self.online = OnlineGuard(self.store, feature_deadline_s, unready_after_s)
            from rgalign.contract.dataset import training_clicks
            clicks = training_clicks(world_dir, self.store.contract).clicked_intent.value_counts()
            self.popular = clicks.index.to_numpy(np.int64)
            self.popular_share = (clicks / clicks.sum()).to_numpy(np.float32)
            from rgalign.ranker.inputs import verbalizer_of
            c = self.contract = self.store.contract
            self.verbalizer = verbalizer_of(pd.read_parquet(Path(world_dir) / "kb.parquet"), c)
            # a user the store knows has a stored (non-sequence) feature; the request features and their sizes
            self._stored = [n for v in c.views for n in v.features if c.features[n].kind != "sequence"]
            self.request_features = {n: len(c.features[n].vocab) for n in c.request}

    @classmethod
    def from_registry(cls, registry, env: str, ref: str, world_dir=None, feast_dir=None, ltp_cache=None,
                      **kw) -> "Recommender":
        """``<env>.ranker@<ref>`` (alias or version) with its parent reasoner, from an ``rgalign.registry.Registry``.
        Without ``world_dir`` the online features come from the dataset and Feast store of the version's lineage
        (the pipeline run that trained it), when that folder is on this machine."""
        b = registry.serving_bundle(env, ref)
        if world_dir is None and b.get("dataset") and Path(b["dataset"], "contract.yaml").is_file():
            world_dir, feast_dir = b["dataset"], feast_dir or b.get("feast_dir") or None
        rec = cls(b["ranker"]["dir"], b.get("reasoner", {}).get("dir"), world_dir, feast_dir, ltp_cache, **kw)
        rec.bundle = b      # what was served: names, versions, artifact URIs
        return rec

    @property
    def n_intents(self) -> int:
        return self.spec.n_intents

    def embed(self, contexts: list[str]) -> np.ndarray:
        """LTP of verbalized contexts, (B, d)."""
        if self.encoder is None:
            raise RequestError("reasoner", "this server has no reasoner", "start it with a reasoner")
        return self.encoder.embed(contexts)

    def rank(self, features: pd.DataFrame | list[dict], query: np.ndarray | None, k: int = 3) -> Ranked:
        """Top-k of the KB for B feature rows (a frame, or dicts as ``online_rows`` gives them) and query
        embeddings ``query`` (B, d_e). A QE-Rec ranker (``d_e`` set) needs ``query``: scoring it with a zero
        query would silently rank by a third of Eq. 4's terms only, so None is a ``RequestError``."""
        if query is None and self.d_e:
            raise RequestError("query_embedding", f"this QE-Rec ranker needs a {self.d_e}-d query embedding and none "
                               "was given (no reasoner attached)", "start it with its parent reasoner (the registry "
                               "bundle has it) or send query_embedding with each instance")
        x, _ = self.spec.encode_rows(features) if isinstance(features, list) else self.spec.encode(features)
        e = torch.as_tensor(query) if query is not None else torch.zeros(len(features), 1)
        with torch.inference_mode():
            s = (self.model if self._compiled is None else self._compiled)(x, e, intent_index=self.index)
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        return Ranked((top.indices + 1).numpy().astype(np.int64), top.values.numpy().astype(np.float32))

    def recommend(self, user_ids: list[int], requests: list[dict] | None = None, k: int = 3,
                  request_ts: pd.Timestamp | None = None) -> list[dict]:
        """The composed path, on plain dicts end to end (no DataFrame: a batch of 8 costs a few ms). Users the
        online store does not know get the popularity list, ``fallback=True`` with ``reason="unknown user"``;
        so does everyone when the online store or the reasoner fails (the reason says which), so a broken
        dependency costs ranking quality, never an error answer. ``requests[i]`` holds user i's request
        features (the contract's ``request``: name -> id, absent = 0 "none")."""
        if self.store is None or self.model is None:
            raise RequestError("recommend", "this server has no feature store", "start it with --world")
        rows, reason = self.online.read(user_ids, request_ts, requests or [{}] * len(user_ids))
        if rows is None:
            return self.popularity(user_ids, k=k, reason=reason)
        known = [any(r.get(c) is not None for c in self._stored) for r in rows]
        served = [r for r, kn in zip(rows, known) if kn]
        ranked = None
        if served:
            try:
                query = self.embed([self.verbalizer.context(r) for r in served]) if self.encoder is not None else None
            except Exception as e:  # noqa: BLE001 (a local or remote reasoner failure degrades to the floor)
                return self.popularity(user_ids, k=k, reason=self._reasoner_failed(e))
            ranked = self.rank(served, query, k)
        out, j = [], 0
        for u, kn in zip(user_ids, known):
            if kn:
                out.append(self._item(u, ranked.intent_ids[j], ranked.scores[j], False))
                j += 1
            else:
                out.append(self.popularity([u], k=k, reason="unknown user")[0])
        return out

    def _reasoner_failed(self, e: Exception) -> str:
        from rgalign.features.online_guard import describe
        reason = f"reasoner error: {describe(e)}"
        self._reasoner_log.warn(reason)
        return reason

    def compile(self) -> "Recommender":
        """``torch.compile`` the ranker for serving (CPU: inductor, needs a C++ compiler). Shapes are dynamic in
        the batch size; ``warm_up`` compiles before the first request (~30-40 s on 2 cores). Scores equal the
        eager model's to float rounding (tests/test_serving.py)."""
        if self.model is not None:
            self._compiled = torch.compile(self.model, dynamic=True)
        return self

    def warm_up(self) -> None:
        """Run every stage once on placeholder inputs (an unknown user's Feast read, one LTP, rankings of 1 and 2
        rows), so lazy imports, first-call set-up and compilation happen before the first request (and before
        ``gc.freeze``)."""
        if self.store is not None:
            self.online.read([0])
        query = self.embed(["User Profile: warm-up"]) if self.encoder is not None else None
        if self.model is not None:
            for n in (1, 2):  # a compiled model specializes batch size 1; 2 gives the dynamic-shape kernel
                rows = [{"user_id": u, "event_timestamp": pd.Timestamp.now(tz="UTC")} for u in range(n)]
                q = (np.repeat(query, n, 0) if query is not None else np.zeros((n, self.d_e), np.float32)) \
                    if self.d_e else None   # placeholder inputs: warm-up only compiles and loads
                self.rank(rows, q)

    def prepare_to_serve(self, compile: bool = False) -> "Recommender":
        """What a server process does once before its first request: ``compile`` (optional), ``warm_up``, then
        ``gc.freeze``. Everything loaded so far (torch, transformers, Feast, the models: millions of objects)
        lives as long as the server; frozen, it leaves the collector's view, or each full collection walks it
        all (measured: 100-330 ms pauses under load, the whole p99 tail)."""
        import gc
        if compile:
            self.compile()
        self.warm_up()
        gc.collect()
        gc.freeze()
        return self

    def popularity(self, user_ids: list[int], requests=None, k: int = 3, reason: str = "popularity") -> list[dict]:
        """The popularity floor for everyone (the fallback, and an A/B arm), ``reason`` on each item."""
        return [self._item(u, self.popular[:k], self.popular_share[:k], True, reason) for u in user_ids]

    def _item(self, user: int, ids, scores, fallback: bool, reason: str | None = None) -> dict:
        ids = [int(x) for x in ids]
        return {"user_id": int(user), "intent_ids": ids, "scores": [round(float(s), 6) for s in scores],
                "titles": [self.titles.get(x, "") for x in ids], "fallback": fallback, "reason": reason}


class MicroBatcher:
    """Adaptive micro-batching: requests that arrive while a batch is being scored are scored together in the
    next one (one Feast read, one LTP batch, one ranker call), so 8 concurrent users cost about one batch of 8
    (measured 17.8 ms) instead of 8 x 14.6 ms. No fixed wait: a lone request goes at once."""

    def __init__(self, fn, pool, max_batch: int = MAX_BATCH):
        self.fn, self.pool, self.max_batch = fn, pool, max_batch
        self.queue: asyncio.Queue | None = None

    async def submit(self, users: list[int], requests: list[dict], k: int) -> list[dict]:
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((users, requests, k, fut))
        return await fut

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty() and sum(len(i[0]) for i in items) < self.max_batch:
                items.append(self.queue.get_nowait())
            k = max(i[2] for i in items)
            users = [u for i in items for u in i[0]]
            requests = [e for i in items for e in i[1]]
            try:
                out = await loop.run_in_executor(self.pool, self.fn, users, requests, k)
            except Exception as e:  # noqa: BLE001 (handed to every waiting request)
                for *_, fut in items:
                    fut.set_exception(e)
                continue
            at = 0
            for u, _, ki, fut in items:
                res = out[at:at + len(u)]
                at += len(u)
                fut.set_result([{**r, "intent_ids": r["intent_ids"][:ki], "scores": r["scores"][:ki],
                                 "titles": r["titles"][:ki]} for r in res])
