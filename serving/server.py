"""The local KServe server: a real ``kserve.ModelServer`` (V1, V2, health, metadata, /metrics) on loopback.

    rgalign serve [--env dev] [--alias champion] --world DIR [--feast-dir DIR]   # a registry alias
    python -m serving.server --ranker DIR [--reasoner DIR] [--world DIR]           # checkpoint folders
Both take the same ``ServeConfig`` flags (--port, --threads, --ltp-cache, --compile, --request-logs, ...).

KServe binds 0.0.0.0 with no host option; a laptop or CI server must not listen on every interface, so the
REST server's uvicorn config is pointed at ``--host`` (127.0.0.1 by default) and gRPC is off locally. In a
cluster the container runs the same models behind KServe's own server (manifests: ``serving/manifests.py``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re

from rgalign.config import ServeConfig


def container_threads() -> int:
    """Threads for torch: ``RGALIGN_SERVE_THREADS``, else the CPUs this process may use (the container's
    cgroup quota is visible through ``sched_getaffinity`` on Kubernetes with static CPU management)."""
    env = os.environ.get("RGALIGN_SERVE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


async def _versioning_is_a_client_error(request, exc):
    from fastapi.responses import JSONResponse
    return JSONResponse(status_code=400, content={"error": f"model_version: {exc}; omit the version (this server "
                                                           "hosts the registry alias it was started with)"})


PREDICT_PATH = re.compile(r"^/v1/models/[^/]+:(predict|explain)$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
BODY_TYPES = ("application/json", "application/octet-stream")   # JSON, or the V2 binary extension


class RequestGuard:
    """ASGI middleware in front of KServe's routes: a body size limit (413 naming it, before the body is
    parsed), 405 for a method other than POST on a predict / infer path (KServe would read ``GET
    .../recommend:predict`` as a model named ``recommend:predict``: 404), 415 for a body that is not JSON, and
    404 for the model-repository extension (load / unload)."""

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if path.startswith("/v2/repository/"):
            # KServe's model-repository extension (POST /v2/repository/models/<name>/load|unload) would let any
            # client unload a hosted model (404 on every later call until a restart); a server holds the
            # registry versions it was started with
            return await _answer(send, 404, f"{path}: the model repository extension is off; a server hosts the "
                                 "registry versions it was started with (restart it to change them)")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if PREDICT_PATH.match(path):
            if method != "POST":
                return await _answer(send, 405, f"{method} {path}: this path takes POST with a JSON body",
                                     [(b"allow", b"POST")])
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype and ctype not in BODY_TYPES and not ctype.endswith("+json"):
                return await _answer(send, 415, f"Content-Type {ctype}: send the body as application/json "
                                     "(curl -H 'Content-Type: application/json')")
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await _answer(send, 413, self._too_large(int(length)))
        body, more = b"", True            # a body without Content-Length (chunked) is counted as it arrives
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await _answer(send, 413, self._too_large(len(body), at_least=True))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)

    def _too_large(self, n: int, at_least: bool = False) -> str:
        return (f"body: {'more than ' if at_least else ''}{n:,} bytes exceeds the server's limit of "
                f"{self.max_body_bytes:,} bytes (max_body_bytes); send fewer instances per request")


async def _answer(send, status: int, error: str, extra: list | None = None) -> None:
    import json
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _not_ready(request, exc):   # 503 without KServe's traceback per probe while a dependency is down
    from fastapi.responses import JSONResponse
    return JSONResponse(status_code=503, content={"error": "not ready: " + "; ".join(
        m for m in getattr(request.app.state, "unready_reasons", lambda: [])()) or "not ready"})


def serve(rec, cfg: ServeConfig | None = None) -> None:
    """Serve ``rec`` (a ``Recommender``) with ``cfg`` (``ServeConfig``) until SIGINT/SIGTERM.

    ``cfg.request_logs``: KServe's per-request log lines (uvicorn access line, the timing middleware's wall and
    CPU lines, a latency line: four lines a request, and the middleware's two getrusage calls). Off by default:
    request counts and latency histograms are in ``/metrics`` (Prometheus) either way; turn them on to debug.
    ``/v2/health/ready`` is false while a hosted model is not healthy (the online store failing for longer
    than ``cfg.unready_after_s``); ``/v2/health/live`` only says the process answers."""
    import logging

    import torch

    from serving import kserve_module
    kserve_module()
    from kserve import model_server
    from kserve.errors import ServerNotReady
    from kserve.protocol.rest import server as rest

    from serving.models import build_models
    cfg = cfg or ServeConfig()
    torch.set_num_threads(cfg.threads or container_threads())
    models = build_models(rec, cfg.model_names)

    class LoopbackRESTServer(rest.RESTServer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.config.host = cfg.host

        def _add_middlewares(self, app):
            app.add_middleware(RequestGuard, max_body_bytes=cfg.max_body_bytes)
            app.state.unready_reasons = lambda: [m.unready_reason() for m in models if m.unready_reason()]
            if cfg.request_logs:  # KServe's timing middleware only feeds the per-request log lines
                super()._add_middlewares(app)

        def _add_exception_handlers(self, app):
            super()._add_exception_handlers(app)
            # KServe answers a versioned path (/v2/models/N/versions/V/...) with 501; versions live in the
            # registry, one per server, so asking for one is a client error: 400 naming the field.
            app.add_exception_handler(NotImplementedError, _versioning_is_a_client_error)
            app.add_exception_handler(ServerNotReady, _not_ready)

    model_server.RESTServer = LoopbackRESTServer  # ModelServer.start() builds its REST server from this name
    server = model_server.ModelServer(http_port=cfg.port, enable_grpc=False, workers=1,
                                      enable_latency_logging=cfg.request_logs)
    server_ready = server.dataplane.ready

    async def ready() -> bool:    # the server is ready when KServe is and every hosted model's dependencies are
        return await server_ready() and all([m.dependencies_ready() for m in models])
    server.dataplane.ready = ready
    if not cfg.request_logs:  # set after ModelServer() configured KServe's logging
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        # ModelServer.start() runs asyncio.run() itself, so uvicorn's loop="auto" never picks uvloop: set the
        # policy first (the bare FastAPI endpoint of bench/serving.py gets uvloop from uvicorn.run)
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # KServe's setup_event_loop() asks for the current one
    rec.prepare_to_serve(cfg.compile)
    server.start(models)


def main(argv=None):
    from rgalign.cli import add_config_args, config_from_args
    from rgalign.recommend import Recommender
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranker", default=None, help="ranker checkpoint directory (omit for a reasoner-only server)")
    ap.add_argument("--reasoner", default=None, help="reasoner directory (the ranker's parent reasoner)")
    ap.add_argument("--reasoner-url", default=None, help="or: the reasoner's V2 infer URL (cluster path)")
    ap.add_argument("--world", default=None, help="world whose Feast online store serves the features")
    ap.add_argument("--feast-dir", default=None)
    add_config_args(ap, ServeConfig)
    a = ap.parse_args(argv)
    if not a.ranker and not a.reasoner:
        ap.error("give --ranker and/or --reasoner")
    cfg = config_from_args(ServeConfig, a)
    kw = cfg.recommender_kw()
    serve(Recommender(a.ranker, a.reasoner, a.world, a.feast_dir, kw.pop("ltp_cache"), a.reasoner_url, **kw), cfg)


if __name__ == "__main__":
    main()
