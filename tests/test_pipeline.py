"""The Kubeflow pipeline: compiled YAML (strict protobuf parse + golden Kubernetes settings), submit against a
fake Pipelines API, bad input, and (slow) the full local run with a failure injected into a late step."""
import dataclasses
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipelines.run import compile_pipeline, submit
from rgalign.cli import main
from rgalign.workflow import WorkflowConfig

GOLDEN = Path(__file__).parent / "golden" / "pipeline_k8s.json"


def k8s_settings(path: Path) -> dict:
    """What the golden test pins: per executor, GPU / CPU / memory, node selector, tolerations, PVC, secrets."""
    docs = list(yaml.safe_load_all(path.read_text()))
    spec, platform = docs[0], docs[1]
    out = {}
    for name, ex in sorted(spec["deploymentSpec"]["executors"].items()):
        res = ex["container"].get("resources", {})
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(name, {})
        out[name] = {"image": ex["container"]["image"], "accelerator": res.get("accelerator"),
                     "cpuLimit": res.get("resourceCpuLimit"), "memoryLimit": res.get("resourceMemoryLimit"),
                     "nodeSelector": k8s.get("nodeSelector"), "tolerations": k8s.get("tolerations"),
                     "pvcMount": k8s.get("pvcMount"), "secretAsEnv": k8s.get("secretAsEnv")}
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("c") / "p.yaml", "gpu-a100")


def test_compiled_yaml_parses_strictly_as_pipeline_and_platform_spec(compiled):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    docs = list(yaml.safe_load_all(compiled.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())        # raises on unknown fields
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    tasks = set(spec.root.dag.tasks["exit-handler-1"].component_ref.name and spec.components)
    assert {"comp-rg-sft", "comp-rg-refine", "comp-evaluation-gate", "comp-register-models",
            "comp-record-run-status"} <= tasks
    execs = docs[0]["deploymentSpec"]["executors"]
    assert all("pip install" not in " ".join(e["container"].get("command", [])) for e in execs.values())


def test_golden_gpu_and_kubernetes_settings(compiled):
    got = k8s_settings(compiled)
    if not GOLDEN.is_file():  # first run writes the golden file; review it and commit it
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True))
    assert got == json.loads(GOLDEN.read_text())
    gpu = [n for n, s in got.items() if s["accelerator"]]
    assert "exec-rg-refine" in gpu and "exec-train-ranker" in gpu and "exec-evaluation-gate" not in gpu
    assert got["exec-rg-refine"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert got["exec-rg-refine"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert got["exec-register-models"]["secretAsEnv"][0]["secretName"] == "mlflow-credentials"


def test_the_bulk_ltp_fans_out_over_the_profiles_shards_into_every_ranker(compiled, tmp_path):
    """gpu-a100 says ``ltp_shards: 4``: one ParallelFor of 4 LTP shards per reasoner (raw, aligned), whose
    collected vectors feed Stage 1 + the baseline, and Stage 3; kfp.local gets one shard."""
    def loops(path):
        spec = next(yaml.safe_load_all(path.read_text()))
        tasks = {n: t for c in spec["components"].values() for n, t in c.get("dag", {}).get("tasks", {}).items()}
        items = {n: json.loads(t["parameterIterator"]["items"]["raw"]) for n, t in tasks.items()
                 if "parameterIterator" in t}
        feeds = {n: t["inputs"]["artifacts"]["ltp"]["taskOutputArtifact"]["producerTask"] for n, t in tasks.items()
                 if "ltp" in t.get("inputs", {}).get("artifacts", {})}
        return items, feeds
    items, feeds = loops(compiled)
    assert list(items.values()) == [[0, 1, 2, 3]] * 2
    assert sorted(feeds) == ["train-ranker", "train-ranker-2", "train-ranker-3"] and set(feeds.values()) == set(items)
    local, _ = loops(compile_pipeline(tmp_path / "local.yaml", None))
    assert list(local.values()) == [[0]] * 2


def test_compile_is_deterministic(compiled, tmp_path):
    again = compile_pipeline(tmp_path / "again.yaml", "gpu-a100")
    assert again.read_text() == compiled.read_text()


def test_unknown_profile_is_a_clear_error(tmp_path, capsys):
    assert main(["pipeline", "compile", "--profile", "tpu-pod", "--output", str(tmp_path / "x.yaml")]) == 2
    assert "cluster profile 'tpu-pod'" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()


class FakeKFP(BaseHTTPRequestHandler):
    calls: list = []

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        FakeKFP.calls.append(("GET", self.path.split("?")[0], None))
        self._send({"experiments": [{"experiment_id": "exp-1", "display_name": "rgalign"}], "total_size": 1})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        FakeKFP.calls.append(("POST", self.path.split("?")[0], body))
        self._send({"run_id": "run-42", "display_name": body.get("display_name"), "experiment_id": "exp-1"})

    def log_message(self, *a):
        pass


def test_submit_against_a_fake_pipelines_api(compiled):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFP)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        run_id = submit(compiled, f"http://127.0.0.1:{srv.server_address[1]}", WorkflowConfig(n_samples=99))
    finally:
        srv.shutdown()
    assert run_id == "run-42"
    post = [c for c in FakeKFP.calls if c[0] == "POST" and c[1].endswith("/runs")][0][2]
    assert post["experiment_id"] == "exp-1"
    assert post["runtime_config"]["parameters"]["config"]["n_samples"] == 99
    spec = post["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "rgalign-training" and "exec-rg-refine" in spec["deploymentSpec"]["executors"]


def test_submit_to_an_unreachable_host_fails_clearly(compiled, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert main(["pipeline", "submit", "--package", str(compiled), "--host", f"http://127.0.0.1:{port}"]) == 4
    assert "could not submit" in capsys.readouterr().err


def _digest(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_full_pipeline_locally_then_a_failed_late_step_leaves_registry_and_features_intact(tmp_path, monkeypatch,
                                                                                         two_threads, built_reasoner,
                                                                                         ci_world):
    """The product's main job through kfp.local with RG-DPO (4 ranker epochs, 300 evaluation sessions and 48
    Stage-2 contexts instead of 10 / 1,000 / 160, for time; the rankers' training and validation sessions are the
    default's, so the gate sees what a user's run sees), starting from the registered base reasoner (built
    once per test session with the main job's settings: the build step finds it and copies it); the ranker step
    run in one process on the pipeline's world and the RG-DPO-aligned reasoner gives Stage 3's numbers (Stage 1
    is the same step on the raw reasoner; the in-process chain of every step is tests/test_workflow.py's); then a
    re-run whose registration fails."""
    from pipelines.run import run_local
    from rgalign import workflow
    from rgalign.registry import Registry
    from rgalign.tracking import experiment
    from rgalign.workflow import WORKFLOW_EXPERIMENT
    cfg = WorkflowConfig(ranker_epochs=4, max_eval=300, n_samples=48, rga_method="sft-dpo", artifacts=str(tmp_path))
    workflow.register_base(built_reasoner, ci_world, cfg)
    run_local(cfg)
    # the ranker step in one process on the pipeline's world and reasoners: the same Stage-1 and Stage-3 numbers,
    # so the KFP components add nothing and lose nothing (the checks only read)
    (run0,) = sorted((tmp_path / "kfp").glob("rgalign-training-*"))
    raw = json.loads((run0 / "build-reasoner" / "reasoner" / "rgalign_reasoner.json").read_text())
    assert raw["digest"] == json.loads((built_reasoner / "rgalign_reasoner.json").read_text())["digest"]  # the base
    gate = json.loads((run0 / "evaluation-gate" / "gate" / "gate.json").read_text())
    assert any(r.startswith("reasoner check of the aligned reasoner") for r in gate["reasons"])
    metas = {json.loads(p.read_text())["label"]: p.parent for p in run0.glob("*/ranker/meta.json")}
    quiet = dataclasses.replace(cfg, register=False, tracking=False, check_reasoner=False)
    world = workflow.world_of(run0 / "prepare-features" / "world")
    folder = tmp_path / "inproc" / "Stage3"   # the Stage-3 step in one process, on the pipeline's inputs
    workflow.train_ranker(world, run0 / "rg-refine" / "aligned", quiet, folder, label="Stage 3")
    want = json.loads((metas["Stage 3"] / "meta.json").read_text())
    got = json.loads((folder / "meta.json").read_text())
    assert got["eval"] == pytest.approx(want["eval"], abs=1e-9) and got["val"] == pytest.approx(want["val"], abs=1e-9)
    reg = Registry(root=tmp_path)
    before = {k: reg.versions("dev", k) for k in ("reasoner", "ranker")}
    for kind in before:
        (v,) = before[kind]
        assert v["aliases"] == ["candidate"] and v["tags"]["feature_service"] == "intent_ranking_v1"
        assert v["tags"]["pipeline_run_id"].startswith("rgalign-training") and "eval.MRR" in v["tags"]
        assert float(v["tags"]["gate.vs_popularity.MRR.lo"]) > 0          # registered because it beat the floor
    ranker = before["ranker"][0]["tags"]
    assert ranker["parent_reasoner"] == "dev.reasoner/1" and ranker["rga_method"] == "sft-dpo"
    assert before["reasoner"][0]["tags"]["method"] == "rg-dpo"             # --rga-method sft-dpo ran RG-DPO
    import mlflow
    steps = mlflow.search_runs([experiment(WORKFLOW_EXPERIMENT, None, tmp_path)])
    assert {"build-reasoner", "rg-sft", "rg-dpo", "reward-best-of-n", "evaluation-gate"} <= set(steps["tags.step"].dropna())
    assert mlflow.get_run(ranker["stage3_run_id"]).data.params["ranker.epochs"] == str(cfg.ranker_epochs)
    reg.promote("dev", "ranker", "1", "champion", override=True, reason="pin a champion for the failure check")
    online = sorted(tmp_path.glob("kfp/**/feast/*/online_store.db"))
    assert online, "the local run materialized no online store"
    digests = {p: _digest(p) for p in online}

    monkeypatch.setenv("RGALIGN_INJECT_FAILURE", "register:ranker")
    with pytest.raises(RuntimeError, match="register-models"):
        run_local(cfg)  # cached up to the registration, which fails
    runs = sorted((tmp_path / "kfp").glob("rgalign-training-*"))
    assert len(runs) == 2 and (runs[0] / "rg-refine").is_dir()
    assert not (runs[1] / "rg-cl").exists() and not (runs[1] / "train-ranker").exists()   # kfp.local cache hits
    after = {k: reg.versions("dev", k) for k in ("reasoner", "ranker")}
    assert [(v["version"], v["aliases"]) for v in after["ranker"]] == [("1", ["candidate", "champion"])]
    assert [(v["version"], v["aliases"]) for v in after["reasoner"]] == [("1", ["candidate"])]
    assert {p: _digest(p) for p in online} == digests
    assert [a["action"] for a in reg.audit("dev", "reasoner")][-2:] == ["register", "unregister"]
    runs = mlflow.search_runs([experiment("rgalign-pipeline-runs", None, tmp_path)], order_by=["attributes.start_time ASC"])
    assert runs["tags.state"].tolist() == ["SUCCEEDED", "FAILED"]


def test_monitoring_pipeline_compiles_strictly(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    out = compile_pipeline(tmp_path / "m.yaml", "gpu-a100", pipeline="monitoring")
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert {"comp-drift-gate", "comp-request-retraining"} <= set(spec.components)
    with pytest.raises(ValueError, match="pipeline="):
        compile_pipeline(tmp_path / "x.yaml", "gpu-a100", pipeline="serving")


@pytest.mark.slow
def test_monitoring_pipeline_requests_retraining_only_on_drift(tmp_path, two_threads):
    """kfp.local: the drift gate fires on the logistics-disruption scenario and records a retraining request;
    on the undisturbed evaluation week it stays quiet and requests nothing."""
    import mlflow

    from pipelines.run import run_monitoring_local
    from rgalign.workflow import WorkflowConfig
    from rgalign.tracking import default_uri, use

    def requests():
        use(default_uri(tmp_path))
        exp = mlflow.get_experiment_by_name("rgalign-monitoring")
        return 0 if exp is None else len(mlflow.search_runs([exp.experiment_id]))
    cfg = WorkflowConfig(artifacts=str(tmp_path))
    run_monitoring_local(cfg, scenario="logistics", window=1500)
    assert requests() == 1
    run_monitoring_local(cfg, scenario="", window=1500)
    assert requests() == 1
    reports = list((tmp_path / "kfp").rglob("report_md"))
    assert any("FIRED" in p.read_text() for p in reports) and any("quiet" in p.read_text() for p in reports)


def test_step_metrics_leave_out_what_kfp_metadata_cannot_hold(tmp_path):
    """A teacher without one valid query has a NaN mean NDCG: the step's KFP metrics leave it out (protobuf
    refuses NaN, which failed the telecom example's run) and keep the finite values."""
    from pipelines.artifacts import report

    class Metrics:
        path, logged = str(tmp_path / "m" / "metrics"), {}

        def log_metric(self, k, v):
            self.logged[k] = v
    m = Metrics()
    report(m, {"kept": 48, "mean_ndcg_reasoner": float("nan"), "inf": float("inf"), "name": "x", "ndcg": 0.46})
    assert m.logged == {"kept": 48.0, "ndcg": 0.46} and json.loads(Path(m.path).read_text()) == m.logged
