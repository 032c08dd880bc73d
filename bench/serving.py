"""Load test of the local `recommend` endpoint with wrk: the server ``rgalign serve`` starts (KServe; LTP cache
off / on) next to a bare FastAPI endpoint doing the same work (``Recommender.recommend`` on one worker thread),
at 1 and 8 connections, in one run on the same machine.

    python bench/serving.py --artifacts artifacts --alias champion --world DIR [--feast-dir DIR] [--seconds 15]

Needs `wrk` (Debian package `wrk`). Each server is a fresh subprocess on a free loopback port; requests pick
one of ``--users`` known users at random; cache-on rows first send every user once (a warm cache: no misses,
unless the run crosses the top of an hour, which changes the verbalized local hour of every context).
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users = {%s}
request = function()
  return wrk.format(nil, nil, nil, '{"instances":[{"user_id":' .. users[math.random(#users)] .. '}]}')
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_app(args):
    """The same work behind a plain FastAPI route (no KServe data plane): the cost baseline."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request

    from rgalign.recommend import MicroBatcher, Recommender, RequestError, parse_k, parse_users
    torch.set_num_threads(args.threads)
    rec = Recommender(args.ranker, args.reasoner, args.world, args.feast_dir, args.ltp_cache)
    rec.prepare_to_serve(args.compile)  # as serving/server.py does
    pool, app = ThreadPoolExecutor(1), FastAPI()
    batcher = MicroBatcher(rec.recommend, pool)  # the same micro-batching as the KServe model

    @app.post("/recommend")
    async def recommend(request: Request):
        body = await request.json()
        try:
            users, eps = parse_users(body.get("instances"), rec.request_features)
            k = parse_k(body.get("k"))
        except RequestError as e:
            raise HTTPException(400, str(e)) from None
        return {"predictions": await batcher.submit(users, eps, k)}

    @app.get("/ready")
    def ready():
        return {"ready": True}
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def start(cmd: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    import httpx
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"server not ready: {log}")


def wrk(url: str, lua: Path, conns: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t", "1" if conns == 1 else "2", "-c", str(conns), "-d", f"{seconds}s", "--latency",
                          "--timeout", "10s",
                          "-s", str(lua), url], capture_output=True, text=True, check=True).stdout

    def ms(label):
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": ms("50"), "p99": ms("99"), "qps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non2xx": int(errors.group(1)) if errors else 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--env", default="dev")
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--world", required=True)
    ap.add_argument("--feast-dir", default=None)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per server (the machine's cores)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the ranker in both servers")
    ap.add_argument("--cache", choices=["on", "off", "both"], default="both", help="LTP cache rows to run")
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--reasoner", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ltp-cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare_app(args)
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    import pandas as pd

    from rgalign.registry import Registry
    b = Registry(args.tracking_uri, args.artifacts).serving_bundle(args.env, args.alias)
    users = pd.read_parquet(Path(args.world) / "profiles.parquet").user_id.drop_duplicates().head(args.users).tolist()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    lua = tmp / "recommend.lua"
    lua.write_text(LUA % ",".join(map(str, users)))
    common = ["--world", args.world, "--threads", str(args.threads)] + (["--compile"] if args.compile else [])
    common += ["--feast-dir", args.feast_dir] if args.feast_dir else []
    bare = ["--ranker", b["ranker"]["dir"], "--reasoner", b["reasoner"]["dir"]]
    registry = ["--artifacts", args.artifacts, "--env", args.env, "--alias", args.alias]
    registry += ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
    variants = {
        "bare FastAPI, cache off": ("bare", []),
        "KServe, cache off": ("kserve", []),
        "bare FastAPI, cache on": ("bare", ["--ltp-cache", str(tmp / "bare-ltp.sqlite")]),
        "KServe, cache on": ("kserve", ["--ltp-cache", str(tmp / "kserve-ltp.sqlite")]),
    }
    variants = {k: v for k, v in variants.items() if args.cache == "both" or k.endswith(f"cache {args.cache}")}
    rows = {}
    print(f"# {b['ranker']['name']} v{b['ranker']['version']} + {b['reasoner']['name']} v{b['reasoner']['version']}, "
          f"{len(users)} users, {args.seconds} s per cell, {os.cpu_count()} CPUs, torch threads {args.threads}", flush=True)
    for name, (kind, extra) in variants.items():
        port = free_port()
        if kind == "bare":
            cmd = [sys.executable, "bench/serving.py", "--bare", "--port", str(port)] + bare + common + extra
            url, ready = f"http://127.0.0.1:{port}/recommend", f"http://127.0.0.1:{port}/ready"
        else:   # the command users run, as the README writes it
            cmd = [sys.executable, "-m", "rgalign.cli", "serve", "--port", str(port)] + registry + common + extra
            url, ready = f"http://127.0.0.1:{port}/v1/models/recommend:predict", f"http://127.0.0.1:{port}/v2/health/ready"
        proc = start(cmd, ready, tmp / f"{kind}.log")
        try:
            # warm-up: one blocking request (the first Feast read and forward pass take seconds), then wrk
            import httpx
            httpx.post(url, json={"instances": [{"user_id": int(users[0])}]}, timeout=300).raise_for_status()
            if extra:  # cache on: every user's context once, so the timed runs measure a warm cache, no misses
                for i in range(0, len(users), 50):
                    body = {"instances": [{"user_id": int(u)} for u in users[i:i + 50]]}
                    httpx.post(url, json=body, timeout=300).raise_for_status()
            wrk(url, lua, 8, 3)
            time.sleep(2)  # let the server drain what the warm-up left in flight
            for c in (1, 8):
                rows[(name, c)] = r = wrk(url, lua, c, args.seconds)
                print(f"  {name:24s} c={c}: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['qps']:.0f} QPS, "
                      f"non-2xx {r['non2xx']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print("\n| endpoint | conns | p50 (ms) | p99 (ms) | QPS | p99 / bare | QPS / bare |\n|---|---:|---:|---:|---:|---:|---:|")
    for (name, c), r in rows.items():
        base = rows[(name.replace("KServe", "bare FastAPI"), c)]
        print(f"| {name} | {c} | {r['p50']:.1f} | {r['p99']:.1f} | {r['qps']:.0f} | {r['p99'] / max(base['p99'], 1e-9):.2f}x | "
              f"{r['qps'] / max(base['qps'], 1e-9):.2f}x |")
    (tmp / "result.json").write_text(json.dumps({f"{k[0]} c={k[1]}": v for k, v in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
