"""KServe ``Model`` classes over ``rgalign.recommend.Recommender``: protocol only, no ML here.

| model     | V1 ``instances`` item                                  | V2 inputs -> outputs                                       |
|-----------|--------------------------------------------------------|------------------------------------------------------------|
| reasoner  | ``{"context": str}``                                   | ``context`` BYTES [B] -> ``ltp`` FP32 [B, d]                |
| ranker    | ``{"features": {...}, "query_embedding": [d floats]}``  | ``features`` BYTES [B] (JSON objects), ``query_embedding`` FP32 [B, d] -> ``intent_ids`` INT64 [B, k], ``scores`` FP32 [B, k] |
| recommend | ``{"user_id": int, <request feature>: int, ...}``     | ``user_id`` INT64 [B], one INT64 [B] per request feature (0 = none) -> ``intent_ids``, ``scores``, ``fallback`` BOOL [B], ``reason`` BYTES [B] |

The request features are the data contract's ``request``; V2 metadata lists them.

``k`` (default 3) is a top-level V1 field or a V2 request parameter. Every input problem becomes
``InvalidInput`` (HTTP 400 naming the field); the model work runs on one worker thread, off the event loop, so
health probes answer while a batch is scored.

A recommend answer from the popularity list has ``fallback`` true and a ``reason`` (``unknown user``, or the
online store / reasoner failure); ``/metrics`` counts them as ``rgalign_fallback_total{reason=...}``. While the
online store fails for longer than the server's ``unready_after_s`` the server is not ready (``/v2/health/ready``
503, so Kubernetes drains the pod) while requests that still arrive are answered with the fallback; a background
probe read notices the recovery.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rgalign.recommend import (MicroBatcher, RemoteReasoner, RequestError, Recommender, parse_contexts, parse_feature_rows, parse_k,
                               parse_users)
from serving import kserve_module

kserve = kserve_module()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from prometheus_client import Counter  # noqa: E402

FALLBACKS = Counter("rgalign_fallback_total", "recommend answers served from the popularity list, by reason",
                    ["reason"])


def reason_label(reason: str | None) -> str:
    """A bounded Prometheus label for a fallback reason (the free text stays in the answer and the log)."""
    r = reason or ""
    return ("unknown_user" if r == "unknown user" else "feature_store" if r.startswith("feature store")
            else "reasoner" if r.startswith("reasoner") else "other")


def _v2_tensor(req: InferRequest, name: str, datatype: str, ndim: int, required: bool = True):
    """A named V2 input as numpy, its declared shape and datatype checked against its data."""
    inp = next((i for i in req.inputs if i.name == name), None)
    if inp is None:
        if required:
            raise RequestError(f"inputs.{name}", "is missing",
                               f"send a {datatype} tensor named {name!r} (see GET /v2/models/<name>)")
        return None
    if inp.datatype != datatype:
        raise RequestError(f"inputs.{name}.datatype", f"is {inp.datatype}", f"send {datatype}")
    if len(inp.shape) != ndim or any(int(s) < 0 for s in inp.shape):
        raise RequestError(f"inputs.{name}.shape", f"{list(inp.shape)} has {len(inp.shape)} dimension(s)",
                           f"send {ndim} non-negative dimension(s)")
    if inp._raw_data is None:
        n = np.asarray(inp.data, dtype=object).size
        if n != int(np.prod(inp.shape)):
            raise RequestError(f"inputs.{name}.data", f"holds {n} values for shape {list(inp.shape)}",
                               "make the shape match the data")
    try:
        arr = inp.as_numpy()
    except (ValueError, TypeError) as e:
        raise RequestError(f"inputs.{name}.data", f"cannot be read as {datatype} ({e})", "send matching data") from None
    return arr


class _Base(kserve.Model):
    """One worker thread per model: torch uses the container's threads inside it."""

    def __init__(self, name: str, rec: Recommender):
        super().__init__(name)
        self.rec = rec
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.ready = True

    def dependencies_ready(self) -> bool:
        """The server's readiness asks every model; the model itself stays healthy (requests in flight are
        answered, with the fallback) while a dependency is down."""
        return True

    def unready_reason(self) -> str | None:
        """Why this model's dependencies are not ready (None when they are)."""
        return None

    async def _run(self, fn, *args):  # a RequestError raised in the worker is turned into a 400 by predict()
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def predict(self, payload, headers=None):
        try:
            if isinstance(payload, InferRequest):
                return await self.predict_v2(payload)
            if not isinstance(payload, dict):
                raise RequestError("body", "is not a JSON object", 'send {"instances": [...]}')
            if "instances" not in payload:
                raise RequestError("instances", "is missing", 'send {"instances": [...]} (V1) or use /v2/models/'
                                   f"{self.name}/infer")
            return await self.predict_v1(payload)
        except RequestError as e:
            raise InvalidInput(str(e)) from None

    inputs: list[tuple] = []   # (name, datatype, shape) of the V2 metadata; -1 = any size
    outputs: list[tuple] = []

    def get_input_types(self):
        return [{"name": n, "datatype": dt, "shape": sh} for n, dt, sh in self.inputs]

    def get_output_types(self):
        return [{"name": n, "datatype": dt, "shape": sh} for n, dt, sh in self.outputs]

    def _response(self, req: InferRequest, outputs: dict[str, tuple[str, np.ndarray]]) -> InferResponse:
        return InferResponse(req.id or str(uuid.uuid4()), self.name, [InferOutput(n, list(a.shape), dt, a.tolist())
                                                  for n, (dt, a) in outputs.items()])


class ReasonerModel(_Base):
    inputs = [("context", "BYTES", [-1])]
    outputs = [("ltp", "FP32", [-1, -1])]

    async def predict_v1(self, payload):
        ctx = parse_contexts(payload["instances"])
        return {"predictions": (await self._run(self.rec.embed, ctx)).tolist()}

    async def predict_v2(self, req):
        arr = _v2_tensor(req, "context", "BYTES", 1)
        ctx = parse_contexts([x.decode() if isinstance(x, bytes) else str(x) for x in arr.tolist()])
        return self._response(req, {"ltp": ("FP32", await self._run(self.rec.embed, ctx))})


class RankerModel(_Base):
    inputs = [("features", "BYTES", [-1]), ("query_embedding", "FP32", [-1, -1])]
    outputs = [("intent_ids", "INT64", [-1, -1]), ("scores", "FP32", [-1, -1])]

    def _rank(self, instances, k):
        rows, emb = parse_feature_rows(instances, self.rec.spec, self.rec.d_e or 1)
        return self.rec.rank(rows, emb if self.rec.d_e else None, k)

    async def predict_v1(self, payload):
        k = parse_k(payload.get("k"))
        r = await self._run(self._rank, payload["instances"], k)
        return {"predictions": [{"intent_ids": i.tolist(), "scores": s.tolist(),
                                 "titles": [self.rec.titles.get(int(x), "") for x in i]}
                                for i, s in zip(r.intent_ids, r.scores)]}

    async def predict_v2(self, req):
        k = parse_k((req.parameters or {}).get("k"), "parameters.k")
        feats = _v2_tensor(req, "features", "BYTES", 1)
        emb = _v2_tensor(req, "query_embedding", "FP32", 2)
        if emb.shape[0] != len(feats):
            raise RequestError("inputs.query_embedding.shape", f"has {emb.shape[0]} rows for {len(feats)} feature rows",
                               "send one embedding per feature row")
        instances = []
        for i, f in enumerate(feats.tolist()):
            try:
                instances.append({"features": json.loads(f), "query_embedding": emb[i].tolist()})
            except (ValueError, TypeError):
                raise RequestError(f"inputs.features.data[{i}]", "is not a JSON object", "send one JSON object per row") from None
        r = await self._run(self._rank, instances, k)
        return self._response(req, {"intent_ids": ("INT64", r.intent_ids), "scores": ("FP32", r.scores)})


class RecommendModel(_Base):
    """Feast online lookup -> verbalization -> reasoner -> ranker, in process (the local and single-pod path),
    with concurrent requests micro-batched."""

    def __init__(self, name: str, rec: Recommender):
        super().__init__(name, rec)
        self.batcher = MicroBatcher(rec.recommend, self.pool)
        self._probing = None
        self.inputs = [("user_id", "INT64", [-1])] + [(n, "INT64", [-1]) for n in rec.request_features]
    outputs = [("intent_ids", "INT64", [-1, -1]), ("scores", "FP32", [-1, -1]), ("fallback", "BOOL", [-1]),
               ("reason", "BYTES", [-1])]

    def dependencies_ready(self) -> bool:
        """False while the online store has failed for longer than its ``unready_after_s``. Only reads state
        (every readiness probe calls it); a probe read runs in the background while reads fail, since a pod out
        of rotation gets no traffic to notice the recovery with."""
        guard = self.rec.online
        if guard.failing_since is not None and (self._probing is None or self._probing.done()):
            self._probing = asyncio.get_running_loop().run_in_executor(None, guard.probe)
        return guard.ready

    def unready_reason(self) -> str | None:
        return None if self.rec.online.ready else f"{self.name}: {self.rec.online.last_error}"

    async def _submit(self, users, requests, k):
        res = await self.batcher.submit(users, requests, k)
        for r in res:
            if r["fallback"]:
                FALLBACKS.labels(reason_label(r["reason"])).inc()
        return res

    async def predict_v1(self, payload):
        k = parse_k(payload.get("k"))
        users, requests = parse_users(payload["instances"], self.rec.request_features)
        return {"predictions": await self._submit(users, requests, k)}

    async def predict_v2(self, req):
        k = parse_k((req.parameters or {}).get("k"), "parameters.k")
        users = _v2_tensor(req, "user_id", "INT64", 1)
        inst = [{"user_id": int(u)} for u in users.tolist()]
        for n in self.rec.request_features:
            col = _v2_tensor(req, n, "INT64", 1, required=False)
            if col is None:
                continue
            if len(col) != len(users):
                raise RequestError(f"inputs.{n}.shape", f"has {len(col)} values for {len(users)} users",
                                   f"send one {n} per user (0 = none)")
            for i, v in enumerate(col.tolist()):
                if v:
                    inst[i][n] = int(v)
        uid, requests = parse_users(inst, self.rec.request_features)
        res = await self._submit(uid, requests, k)
        pad = lambda xs, fill: [x + [fill] * (k - len(x)) for x in xs]  # noqa: E731 (fewer intents than k)
        return self._response(req, {
            "intent_ids": ("INT64", np.asarray(pad([r["intent_ids"] for r in res], 0), np.int64)),
            "scores": ("FP32", np.asarray(pad([r["scores"] for r in res], 0.0), np.float32)),
            "fallback": ("BOOL", np.asarray([r["fallback"] for r in res], bool)),
            "reason": ("BYTES", np.asarray([r["reason"] or "" for r in res], object))})


def build_models(rec: Recommender, names=("reasoner", "ranker", "recommend")) -> list:
    """The KServe models a server hosts (the reasoner only when the recommender has one)."""
    classes = {"reasoner": ReasonerModel, "ranker": RankerModel, "recommend": RecommendModel}
    unknown = set(names) - set(classes)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {sorted(classes)}")
    skip = {"reasoner"} if rec.encoder is None or isinstance(rec.encoder, RemoteReasoner) else set()
    skip |= {"recommend"} if rec.store is None or rec.model is None else set()
    skip |= {"ranker"} if rec.model is None else set()
    return [classes[n](n, rec) for n in names if n not in skip]
