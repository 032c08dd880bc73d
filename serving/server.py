"""The local KServe server: a real ``kserve.ModelServer`` (V1, V2, health, metadata, /metrics) on loopback.

    python -m serving.server --ranker DIR [--reasoner DIR] [--world DIR] [--port 8080]
    rgalign serve [--env dev] [--alias champion] --world DIR          # the same, loaded from the registry

KServe binds 0.0.0.0 with no host option; a laptop or CI server must not listen on every interface, so the
REST server's uvicorn config is pointed at ``--host`` (127.0.0.1 by default) and gRPC is off locally. In a
cluster the container runs the same models behind KServe's own server (manifests: ``serving/manifests.py``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os


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


def serve(rec, port: int = 8080, host: str = "127.0.0.1", names=("reasoner", "ranker", "recommend"),
          threads: int | None = None, request_logs: bool = False, compile: bool = False) -> None:
    """Serve ``rec`` (a ``Recommender``) until SIGINT/SIGTERM.

    ``request_logs``: KServe's per-request log lines (uvicorn access line, the timing middleware's wall and CPU
    lines, a latency line: four lines a request, and the middleware's two getrusage calls). Off by default:
    request counts and latency histograms are in ``/metrics`` (Prometheus) either way; turn them on to debug."""
    import logging

    import torch

    from serving import kserve_module
    kserve_module()
    from kserve import model_server
    from kserve.protocol.rest import server as rest

    from serving.models import build_models
    torch.set_num_threads(threads or container_threads())

    class LoopbackRESTServer(rest.RESTServer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.config.host = host

        def _add_middlewares(self, app):
            if request_logs:  # KServe's timing middleware only feeds the per-request log lines
                super()._add_middlewares(app)

        def _add_exception_handlers(self, app):
            super()._add_exception_handlers(app)
            # KServe answers a versioned path (/v2/models/N/versions/V/...) with 501; versions live in the
            # registry, one per server, so asking for one is a client error: 400 naming the field.
            app.add_exception_handler(NotImplementedError, _versioning_is_a_client_error)

    model_server.RESTServer = LoopbackRESTServer  # ModelServer.start() builds its REST server from this name
    server = model_server.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=request_logs)
    if not request_logs:  # set after ModelServer() configured KServe's logging
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        # ModelServer.start() runs asyncio.run() itself, so uvicorn's loop="auto" never picks uvloop: set the
        # policy first (the bare FastAPI endpoint of bench/serving.py gets uvloop from uvicorn.run)
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # KServe's setup_event_loop() asks for the current one
    models = build_models(rec, names)
    rec.prepare_to_serve(compile)
    server.start(models)


def main(argv=None):
    from rgalign.recommend import Recommender
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranker", default=None, help="ranker checkpoint directory (omit for a reasoner-only server)")
    ap.add_argument("--reasoner", default=None, help="reasoner directory (the ranker's parent reasoner)")
    ap.add_argument("--reasoner-url", default=None, help="or: the reasoner's V2 infer URL (cluster path)")
    ap.add_argument("--world", default=None, help="world whose Feast online store serves the features")
    ap.add_argument("--feast-dir", default=None)
    ap.add_argument("--ltp-cache", default=None, help="SQLite LTP cache file (default: no cache)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="reasoner,ranker,recommend", help="comma-separated models to host")
    ap.add_argument("--compile", action="store_true", help="torch.compile the ranker (slower start, faster requests)")
    ap.add_argument("--request-logs", action="store_true",
                    help="log every request (access + timing lines); off: latency is in /metrics only")
    a = ap.parse_args(argv)
    if not a.ranker and not a.reasoner:
        ap.error("give --ranker and/or --reasoner")
    serve(Recommender(a.ranker, a.reasoner, a.world, a.feast_dir, a.ltp_cache, a.reasoner_url), a.port, a.host,
          names=tuple(a.models.split(",")), threads=a.threads, request_logs=a.request_logs,
          compile=a.compile)


if __name__ == "__main__":
    main()
