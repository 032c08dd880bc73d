"""The local KServe server, for real: a subprocess on a free loopback port, V1 + V2, health, metadata, the
composed recommend path, bad input (4xx naming the field, never 5xx, connection kept), the cluster path
(ranker -> reasoner over V2) and a schemathesis run against the server's OpenAPI document."""
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
ROOT = Path(__file__).resolve().parents[1]


from conftest import free_port, start_server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, micro_reasoner):
    """A 300-user world with materialized online features and a QE-Rec trained on the micro reasoner's LTP."""
    from rgalign.config import WorldConfig
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.workflow import WorkflowConfig, train_ranker
    from rgalign.world.generate import generate_world
    root = tmp_path_factory.mktemp("serving")
    world = generate_world(WorldConfig(scale="ci", n_users=300), root / "worlds", progress=False)
    ranker = root / "ranker"
    train_ranker(world.parent, micro_reasoner, WorkflowConfig(max_train=200, max_val=50, max_eval=50, ranker_epochs=1,
                                                              tracking=False, check_reasoner=False), ranker)
    FeatureStoreSession(world).materialize()
    return {"world": world, "ranker": ranker, "reasoner": Path(micro_reasoner)}


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "server.log"
    cmd = [sys.executable, "-m", "serving.server", "--ranker", str(bundle["ranker"]), "--reasoner",
           str(bundle["reasoner"]), "--world", str(bundle["world"]), "--port", str(port), "--threads", "1",
           "--unready-after-s", "2", "--max-body-bytes", "200000"]
    proc, url = start_server(cmd, port, log)
    yield {"url": url, "log": log, "proc": proc, **bundle}
    proc.terminate()
    proc.wait(30)


def client(server):
    return httpx.Client(base_url=server["url"], timeout=120)


def known_user(world) -> int:
    import pandas as pd
    return int(pd.read_parquet(world / "profiles.parquet").user_id.iloc[0])


def test_binds_loopback_only(server):
    assert f"Uvicorn running on http://127.0.0.1:{server['url'].rsplit(':', 1)[1]}" in server["log"].read_text()


def test_health_and_metadata(server):
    c = client(server)
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    assert c.get("/v1/models/recommend").json()["ready"] is True
    meta = c.get("/v2/models/recommend").json()
    assert [i["name"] for i in meta["inputs"]] == ["user_id", "entry_point"]
    assert {o["name"] for o in c.get("/v2/models/reasoner").json()["outputs"]} == {"ltp"}
    assert c.get("/v2/models/recommend/ready").status_code == 200
    assert "request_predict_seconds" in c.get("/metrics").text or c.get("/metrics").status_code == 200


def test_recommend_v1_v2_known_and_unknown_user(server):
    c = client(server)
    u = known_user(server["world"])
    v1 = c.post("/v1/models/recommend:predict", json={"instances": [{"user_id": u, "entry_point": 2},
                                                                    {"user_id": 10**9}], "k": 3})
    assert v1.status_code == 200, v1.text
    known, unknown = v1.json()["predictions"]
    assert known["fallback"] is False and unknown["fallback"] is True
    assert len(known["intent_ids"]) == 3 and all(t for t in known["titles"])
    assert known["scores"] == sorted(known["scores"], reverse=True)
    v2 = c.post("/v2/models/recommend/infer", json={
        "inputs": [{"name": "user_id", "shape": [2], "datatype": "INT64", "data": [u, 10**9]},
                   {"name": "entry_point", "shape": [2], "datatype": "INT64", "data": [2, 0]}],
        "parameters": {"k": 3}})
    assert v2.status_code == 200, v2.text
    out = {o["name"]: o for o in v2.json()["outputs"]}
    assert out["intent_ids"]["shape"] == [2, 3] and out["fallback"]["data"] == [False, True]
    assert out["intent_ids"]["data"][:3] == known["intent_ids"]       # same ranking through both protocols
    assert out["intent_ids"]["data"][3:] == unknown["intent_ids"]


def test_reasoner_serves_the_library_ltp(server):
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    from conftest import MICRO_CTX
    c = client(server)
    want = LTPEncoder(load_reasoner(server["reasoner"])).embed([MICRO_CTX])[0]
    v1 = np.asarray(c.post("/v1/models/reasoner:predict", json={"instances": [{"context": MICRO_CTX}]}).json()["predictions"][0])
    r = c.post("/v2/models/reasoner/infer", json={"inputs": [{"name": "context", "shape": [1], "datatype": "BYTES",
                                                              "data": [MICRO_CTX]}]}).json()
    v2 = np.asarray(r["outputs"][0]["data"]).reshape(r["outputs"][0]["shape"])[0]
    np.testing.assert_allclose(v1, want, atol=1e-4)
    np.testing.assert_allclose(v2, want, atol=1e-4)


def test_ranker_v1_and_v2_agree(server):
    c = client(server)
    d = len(c.post("/v1/models/reasoner:predict", json={"instances": ["User Profile: x"]}).json()["predictions"][0])
    feats = {"user_id": 7, "entry_point": 2, "order_status": 3, "recent_intents": [1, 2], "recent_click_ts": [1, 2],
             "event_timestamp": "2026-11-22T10:00:00Z"}
    e = [0.1] * d
    v1 = c.post("/v1/models/ranker:predict", json={"instances": [{"features": feats, "query_embedding": e}], "k": 5})
    assert v1.status_code == 200, v1.text
    v2 = c.post("/v2/models/ranker/infer", json={"inputs": [
        {"name": "features", "shape": [1], "datatype": "BYTES", "data": [json.dumps(feats)]},
        {"name": "query_embedding", "shape": [1, d], "datatype": "FP32", "data": e}], "parameters": {"k": 5}})
    assert v2.status_code == 200, v2.text
    assert v1.json()["predictions"][0]["intent_ids"] == v2.json()["outputs"][0]["data"]


BAD = [  # (path, body, a word the error must name)
    ("/v1/models/recommend:predict", '{"instances": [{"user_id": 3', "format"),                 # malformed JSON
    ("/v1/models/recommend:predict", '{"instance": []}', "instances"),                          # missing field
    ("/v1/models/recommend:predict", '{"instances": [{}]}', "user_id"),
    ("/v1/models/recommend:predict", '{"instances": [{"user_id": "x"}]}', "user_id"),            # wrong type
    ("/v1/models/recommend:predict", '{"instances": [{"user_id": 3, "entry_point": 99}]}', "entry_point"),
    ("/v1/models/recommend:predict", '{"instances": [{"user_id": 3, "age": 4}]}', "age"),
    ("/v1/models/recommend:predict", '{"instances": [{"user_id": 3}], "k": 0}', "k"),
    ("/v1/models/recommend:predict", json.dumps({"instances": [{"user_id": 1}] * 65}), "batch"),  # oversized
    ("/v1/models/recommend:predict", '{"instances": []}', "instances"),
    ("/v1/models/recommend:predict", '[1, 2]', "body"),
    ("/v2/models/recommend/infer", '{"inputs": [{"name": "user_id", "shape": [3], "datatype": "INT64", "data": [1, 2]}]}', "shape"),
    ("/v2/models/recommend/infer", '{"inputs": [{"name": "user_id", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}', "datatype"),
    ("/v2/models/recommend/infer", '{"inputs": [{"name": "user_id", "shape": [2], "datatype": "INT64", "data": ["a", "b"]}]}', "user_id"),
    ("/v2/models/recommend/infer", '{"inputs": [{"name": "uid", "shape": [1], "datatype": "INT64", "data": [1]}]}', "user_id"),
    ("/v2/models/recommend/infer", '{"inputs": {"name": "user_id"}}', "inputs"),
    ("/v1/models/ranker:predict", '{"instances": [{"features": {"user_id": 1, "recent_intents": [99999], "recent_click_ts": [1]}, "query_embedding": [0.0]}]}', "recent_intents"),
    ("/v1/models/ranker:predict", json.dumps({"instances": [{"features": {"user_id": 1, "recent_intents": [1] * 11, "recent_click_ts": [1] * 11}}]}), "recent_intents"),
    ("/v1/models/ranker:predict", '{"instances": [{"features": {"user_id": 1}, "query_embedding": [0.0, 1.0]}]}', "query_embedding"),
    ("/v1/models/ranker:predict", '{"instances": [{"features": {"user_id": 1, "order_amount": "lots"}}]}', "order_amount"),
    ("/v1/models/reasoner:predict", '{"instances": [{"context": ""}]}', "context"),
    ("/v1/models/nope:predict", '{"instances": [1]}', "nope"),
]


@pytest.mark.parametrize("path,body,field", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, field):
    with client(server) as c:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert field in r.text
        # the keep-alive connection survives: the next request on it is served
        assert c.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("method,path,body,ctype,status,word", [
    ("POST", "/v1/models/recommend:predict", b'{"instances": [' + b'{"user_id": 1},' * 20_000 + b'{"user_id": 1}]}',
     "application/json", 413, "200,000 bytes"),
    ("GET", "/v1/models/recommend:predict", None, None, 405, "POST"),
    ("GET", "/v2/models/recommend/infer", None, None, 405, "POST"),
    ("POST", "/v1/models/recommend:predict", b'{"instances": [{"user_id": 1}]}', "text/plain", 415, "application/json"),
    ("POST", "/v2/repository/models/recommend/unload", b"", None, 404, "extension is off"),  # no client unloads a model
])
def test_requests_are_checked_before_they_are_parsed(server, method, path, body, ctype, status, word):
    with client(server) as c:
        r = c.request(method, path, content=body, headers={"content-type": ctype} if ctype else {})
        assert r.status_code == status and word in r.json()["error"], r.text
        if status == 405:
            assert r.headers["allow"] == "POST"
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/models/recommend:predict", json={"instances": [{"user_id": 1}]}).status_code == 200


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000
    r = httpx.post(f"{server['url']}/v1/models/recommend:predict", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "more than" in r.json()["error"]


def test_health_answers_while_a_batch_is_scored(server):
    """Model work runs off the event loop: liveness probes are answered while a long reasoner batch runs
    (with a blocking predict they would all wait for the batch)."""
    done = {}
    long_ctx = "User Profile: " + ", ".join(f"Feature {i}: value {i}" for i in range(120))

    def batch():  # 64 distinct contexts: identical ones are embedded once
        r = client(server).post("/v1/models/reasoner:predict", json={"instances": [f"{long_ctx} {i}" for i in range(64)]})
        done["status"], done["end"] = r.status_code, time.perf_counter()

    t = threading.Thread(target=batch)
    t.start()
    answered = []
    while t.is_alive():
        r = httpx.get(f"{server['url']}/v2/health/live", timeout=60)
        answered.append((r.status_code, time.perf_counter()))
        time.sleep(0.02)
    t.join()
    assert done["status"] == 200
    assert sum(code == 200 and at < done["end"] for code, at in answered) >= 3, answered


def test_ranker_calls_a_remote_reasoner_over_v2(server):
    """The cluster path: a recommender whose reasoner is another server's V2 endpoint ranks identically."""
    from rgalign.recommend import Recommender
    remote = Recommender(server["ranker"], world_dir=server["world"],
                         reasoner_url=f"{server['url']}/v2/models/reasoner/infer")
    u = known_user(server["world"])
    local = client(server).post("/v1/models/recommend:predict", json={"instances": [{"user_id": u}]}).json()
    assert remote.recommend([u], k=3)[0]["intent_ids"] == local["predictions"][0]["intent_ids"]


def test_schemathesis_finds_no_5xx(server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    schema = schemathesis.openapi.from_url(f"{server['url']}/openapi.json")
    failures = []
    for op in schema.get_all_operations():
        op = op.ok()

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            if "model_name" in (case.path_parameters or {}):
                case.path_parameters["model_name"] = "recommend"
            r = case.call(base_url=server["url"], timeout=60)
            if r.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:200]}")
        run()
    assert not failures, "\n".join(failures[:10])


# ---------------------------------------------------------------- manifests (offline, CRD-schema validated)
def _bundle(v: str, scheme: str = "s3://rgalign-models") -> dict:
    return {"ranker": {"version": v, "artifact_uri": f"{scheme}/ranker/{v}"},
            "reasoner": {"version": v, "artifact_uri": f"{scheme}/reasoner/{v}"}}


def test_manifests_validate_and_request_gpus(tmp_path):
    from rgalign.config import DeployConfig
    from serving.manifests import render
    paths = render(_bundle("3"), DeployConfig(), tmp_path)
    import yaml
    docs = {p.name: yaml.safe_load(p.read_text()) for p in paths}
    assert set(docs) == {"reasoner.yaml", "ranker.yaml", "reasoner-vllm.yaml"}
    c = docs["reasoner.yaml"]["spec"]["predictor"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {"name": "STORAGE_URI", "value": "s3://rgalign-models/reasoner/3"} in c["env"]
    vllm = docs["reasoner-vllm.yaml"]["spec"]["predictor"]["model"]
    assert vllm["modelFormat"]["name"] == "huggingface" and "--backend=vllm" in vllm["args"]
    assert any('"pooling_type": "LAST"' in a and '"normalize": false' in a for a in vllm["args"])
    assert "canary" not in docs["ranker.yaml"]["spec"]


def test_ab_split_uses_the_field_each_mode_honours(tmp_path):
    from rgalign.config import DeployConfig
    from serving.manifests import ranker_isvc, validate
    std = ranker_isvc(_bundle("3"), DeployConfig(challenger="challenger", canary_percent=20), _bundle("4"))
    validate(std)
    assert std["spec"]["canary"][0]["trafficPercent"] == 20
    assert "canaryTrafficPercent" not in std["spec"]["predictor"]          # ignored in Standard mode: not written
    assert "/ranker/4" in json.dumps(std["spec"]["canary"][0]) and "/ranker/3" in json.dumps(std["spec"]["predictor"])
    sls = ranker_isvc(_bundle("3"), DeployConfig(challenger="challenger", canary_percent=20, mode="Serverless"), _bundle("4"))
    validate(sls)
    assert sls["spec"]["predictor"]["canaryTrafficPercent"] == 20 and "canary" not in sls["spec"]
    assert "/ranker/4" in json.dumps(sls["spec"]["predictor"])


def test_manifest_errors_are_clear_and_write_nothing(tmp_path):
    from rgalign.config import DeployConfig
    from serving.manifests import ManifestError, render, storage_uri, validate
    with pytest.raises(ManifestError, match="models:/"):
        render({"ranker": {"version": "1", "artifact_uri": "models:/dev.ranker/1"}, "reasoner": _bundle("1")["reasoner"]},
               DeployConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert storage_uri("file:///srv/mlruns/x", DeployConfig()) == "pvc://rgalign-models/srv/mlruns/x"
    from serving.manifests import reasoner_isvc
    bad = reasoner_isvc(_bundle("1"), DeployConfig())
    bad["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(ManifestError, match="spec.predictor.minReplicas"):
        validate(bad)
    with pytest.raises(ValueError, match="challenger"):
        DeployConfig(canary_percent=10)
    with pytest.raises(ValueError, match="mode"):
        DeployConfig(mode="Knative")


def test_compiled_ranker_ranks_like_the_eager_one(bundle):
    """``Recommender.compile`` (torch.compile, dynamic batch size; what ``--compile`` serves) must give the eager
    model's scores and top-k for batch sizes it was and was not warmed up on, and the same recommend output."""
    import pandas as pd
    import torch

    from rgalign.recommend import Recommender
    eager = Recommender(bundle["ranker"], bundle["reasoner"], bundle["world"])
    fast = Recommender(bundle["ranker"], bundle["reasoner"], bundle["world"]).compile()
    fast.warm_up()
    users = pd.read_parquet(bundle["world"] / "profiles.parquet").user_id.drop_duplicates().head(40).tolist()
    at = pd.Timestamp.now(tz="UTC")
    for n in (1, 3, 8, 40):
        rows = eager.store.online_rows(users[:n], at)
        q = eager.embed([eager.verbalizer.context(r) for r in rows])
        a, b = eager.rank(rows, q, k=10), fast.rank(rows, q, k=10)
        assert (a.intent_ids == b.intent_ids).all(), n
        torch.testing.assert_close(torch.from_numpy(a.scores), torch.from_numpy(b.scores), atol=1e-5, rtol=1e-5)
    assert fast._compiled is not None
    for x, y in zip(eager.recommend(users[:5], request_ts=at), fast.recommend(users[:5], request_ts=at)):
        assert x["intent_ids"] == y["intent_ids"] and x["fallback"] == y["fallback"]
        assert x["scores"] == pytest.approx(y["scores"], abs=1e-5)


def test_a_qe_rec_ranker_without_a_query_is_an_explicit_error(bundle):
    """No reasoner attached: ranking a QE-Rec ranker with a zero query would silently drop Eq. 4's query term;
    it is a RequestError naming query_embedding. With a query it ranks."""
    from rgalign.recommend import Recommender, RequestError
    rec = Recommender(bundle["ranker"], None, bundle["world"])
    rows = [{"user_id": 1, "event_timestamp": pd.Timestamp.now(tz="UTC")}]
    with pytest.raises(RequestError, match="query_embedding"):
        rec.rank(rows, None)
    assert rec.rank(rows, np.ones((1, rec.d_e), np.float32)).intent_ids.shape == (1, 3)


def test_the_registered_rankers_run_records_its_config_and_validation_metrics(bundle, tmp_path):
    """The run behind a registered ranker version shows what trained it (it used to show Parameters (0))."""
    import mlflow

    from rgalign.tracking import experiment, log_ranker_checkpoint
    log_ranker_checkpoint(bundle["ranker"], None, tmp_path, {"pipeline_run_id": "r1"})
    run = mlflow.search_runs([experiment("rgalign-ranker", None, tmp_path)]).iloc[0]
    assert run["params.ranker.epochs"] == "1" and run["params.ranker.model"] == "qe-rec"
    assert np.isfinite(run["metrics.val_MRR"]) and np.isfinite(run["metrics.eval_MRR"])


def test_a_reasoner_failure_serves_the_flagged_popularity_list(bundle):
    from rgalign.recommend import Recommender
    rec = Recommender(bundle["ranker"], bundle["reasoner"], bundle["world"])

    def broken(contexts):
        raise RuntimeError("CUDA error: device-side assert")
    rec.encoder.embed = broken
    out = rec.recommend([known_user(bundle["world"]), 10**9])
    assert [o["fallback"] for o in out] == [True, True]
    assert out[0]["reason"] == "reasoner error: RuntimeError: CUDA error: device-side assert"
    assert out[0]["intent_ids"] == rec.popularity([1])[0]["intent_ids"]


def test_a_broken_online_store_degrades_under_load_and_recovers_without_a_restart(server):
    """Truncated in place, removed, locked by another process: under 4 concurrent clients no answer is a 5xx,
    the known user gets the flagged popularity list with the store's reason, readiness turns false within the
    set time (2 s), and after the store is restored (the same bytes) the user is ranked again and the server is
    ready, with the same process."""
    import hashlib
    import sqlite3
    world = server["world"]
    db = world.parent.parent / "feast" / world.name / "online_store.db"
    original = db.read_bytes()
    log_from = len(server["log"].read_text())      # earlier tests' 4xx are logged with KServe's tracebacks
    u = known_user(world)
    statuses, seen, stop = [], [], threading.Event()

    def load():
        with client(server) as c:
            while not stop.is_set():
                r = c.post("/v1/models/recommend:predict", json={"instances": [{"user_id": u}, {"user_id": 10**9}]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    seen.append((time.monotonic(), r.json()["predictions"][0]))

    def ready() -> int:
        return httpx.get(f"{server['url']}/v2/health/ready", timeout=10).status_code

    def wait_for(cond, what, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.1)
        pytest.fail(f"{what} within {timeout} s; last answers {seen[-2:]}; statuses {sorted(set(statuses))}")

    def ranked_since(t):
        return any(at > t and not p["fallback"] for at, p in seen)

    lock = {}
    faults = {
        "truncate": (lambda: open(db, "r+b").truncate(0), lambda: db.write_bytes(original), "feature store error"),
        "remove": (lambda: db.rename(db.with_suffix(".moved")), lambda: db.with_suffix(".moved").rename(db),
                   "feature store missing"),
        "lock": (lambda: lock.update(c=sqlite3.connect(db, isolation_level=None)) or lock["c"].execute("BEGIN EXCLUSIVE"),
                 lambda: lock["c"].close(), "feature store slow"),
    }
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: ranked_since(0), "a ranked answer before any fault")
        for name, (brk, restore, reason) in faults.items():
            t0 = time.monotonic()
            brk()
            try:
                wait_for(lambda: any(at > t0 and p["fallback"] and p["reason"].startswith(reason) for at, p in seen),
                         f"{name}: a fallback answer naming '{reason}'")
                wait_for(lambda: ready() == 503, f"{name}: readiness false", timeout=2 + 8)
                assert "not ready: recommend: feature store" in httpx.get(f"{server['url']}/v2/health/ready").text
                assert httpx.get(f"{server['url']}/v2/health/live").status_code == 200
            finally:
                restore()
            t1 = time.monotonic()
            wait_for(lambda: ranked_since(t1), f"{name}: ranked answers after the restore")
            wait_for(lambda: ready() == 200, f"{name}: readiness true after the restore")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if not db.exists() and db.with_suffix(".moved").exists():
            db.with_suffix(".moved").rename(db)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == hashlib.sha256(original).hexdigest()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert server["proc"].poll() is None
    metrics = httpx.get(f"{server['url']}/metrics").text
    assert 'rgalign_fallback_total{reason="feature_store"}' in metrics
    log = server["log"].read_text()[log_from:]
    assert log.count("Traceback") == 0 and 0 < log.count("served the popularity list since the last line") <= 6, log[-3000:]
