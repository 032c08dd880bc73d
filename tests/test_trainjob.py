"""Kubeflow Trainer: rendered TrainJobs against the vendored CRD schema, and submission against a fake
Kubernetes API whose controller runs the job's own command (torchrun, 2 processes) on this machine."""
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import free_port, json_server
from pipelines.trainjob import RUNTIME_CRD, SCHEMAS, TRAINJOB_CRD, TrainJobError, TrainJobSpec, render, run_step
from rgalign.crd import violations

PROFILE = {"training": {"accelerator_type": "nvidia.com/gpu", "accelerator_count": 4, "cpu": "16", "memory": "64Gi",
                        "node_selector": {"pool": "a100"}, "trainjob": {"nodes": 2, "procs_per_node": 4}},
           "model_cache_pvc": {"name": "cache", "mount_path": "/models"},
           "secrets": {"mlflow-credentials": {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}}}


def test_a_profile_renders_a_trainjob_that_validates_and_carries_nodes_gpus_and_the_image():
    spec = TrainJobSpec.from_profile(PROFILE["training"], PROFILE, "registry.example/rgalign:1")
    job = render("train-ranker", "/models/x/args.json", spec, "rgalign-train-ranker-x", "/models/x/result.json")
    assert violations(job, TRAINJOB_CRD, "v1alpha1") == []
    t = job["spec"]["trainer"]
    assert (t["numNodes"], t["numProcPerNode"], t["image"]) == (2, 4, "registry.example/rgalign:1")
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    assert t["command"][:5] == ["torchrun", "-m", "rgalign.cli", "step", "train-ranker"]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = pod["template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cache" and pod["nodeSelector"] == {"pool": "a100"}
    # the schema is really applied: a wrong type and an unknown runtime kind are named
    bad = json.loads(json.dumps(job))
    bad["spec"]["trainer"]["numNodes"] = "two"
    assert any(v.startswith("spec.trainer.numNodes") for v in violations(bad, TRAINJOB_CRD, "v1alpha1"))
    with pytest.raises(ValueError, match="model_cache_pvc"):
        TrainJobSpec.from_profile(PROFILE["training"], {}, "img")
    with pytest.raises(ValueError, match="unknown field"):
        TrainJobSpec.from_profile({"trainjob": {"gpus": 2}}, PROFILE, "img")
    assert TrainJobSpec.from_profile({"cpu": "4"}, PROFILE, "img") is None   # no block: trains in its pod


def test_the_vendored_reference_runtimes_validate_against_their_crd():
    for name in ("runtime_torch_distributed.yaml", "runtime_deepspeed_distributed.yaml"):
        rt = yaml.safe_load((SCHEMAS / name).read_text())
        assert violations(rt, RUNTIME_CRD, "v1alpha1") == [], name
    assert "Apache License" in (SCHEMAS / "LICENSE").read_text()


def test_compile_with_a_multi_gpu_profile_writes_validated_trainjobs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rgalign.cli", "pipeline", "compile", "--profile", "gpu-a100-multi",
                          "--output", str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = list(yaml.safe_load_all((tmp_path / "p.trainjobs.yaml").read_text()))
    assert [j["metadata"]["labels"]["rgalign/step"] for j in jobs] == ["train-ranker", "rga"]
    assert [(j["spec"]["trainer"]["numNodes"], j["spec"]["trainer"]["numProcPerNode"]) for j in jobs] == [(1, 4), (2, 4)]
    assert all(violations(j, TRAINJOB_CRD, "v1alpha1") == [] for j in jobs)
    pipeline = (tmp_path / "p.yaml").read_text()
    assert pipeline.count("RGALIGN_TRAINJOB") == 5   # Stage 1, baseline, Stage 3, RG-SFT, RG-refine
    single = subprocess.run([sys.executable, "-m", "rgalign.cli", "pipeline", "compile", "--profile", "gpu-a100",
                             "--output", str(tmp_path / "s.yaml")], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0 and not (tmp_path / "s.trainjobs.yaml").exists()
    assert "RGALIGN_TRAINJOB" not in (tmp_path / "s.yaml").read_text()


class FakeKubernetes:
    """The TrainJob endpoints of a Kubernetes API server (create with CRD validation, get, 409 on a repeat)
    and a controller that runs each job's command with torchrun's ``PET_*`` environment, as the torch runtime
    sets it, then marks the job Complete or Failed."""

    def __init__(self):
        self.jobs, self.created = {}, []
        self.server = json_server(self.create, self.get).__enter__()
        self.url = self.server.url

    def create(self, path, job):
        errors = violations(job, TRAINJOB_CRD, "v1alpha1")
        if errors:
            return 422, {"kind": "Status", "message": errors[0], "reason": "Invalid", "code": 422}
        name = job["metadata"]["name"]
        if name in self.jobs:
            return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
        self.jobs[name] = job
        self.created.append(name)
        threading.Thread(target=self.controller, args=(name,), daemon=True).start()
        return 201, job

    def get(self, path):
        name = path.rstrip("/").split("/")[-1]
        if name not in self.jobs:
            return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
        return 200, self.jobs[name]

    def controller(self, name):
        t = self.jobs[name]["spec"]["trainer"]
        assert t["command"][0] == "torchrun" and t["numNodes"] == 1   # one machine here
        env = {**os.environ, **{e["name"]: e["value"] for e in t["env"] if "value" in e},
               "PET_NNODES": "1", "PET_NPROC_PER_NODE": str(t["numProcPerNode"]), "PET_NODE_RANK": "0",
               "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
        cmd = [sys.executable, "-m", "torch.distributed.run", *t["command"][1:]]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        ok = p.returncode == 0
        self.jobs[name]["stderr"] = p.stderr
        self.jobs[name]["status"] = {"conditions": [
            {"type": "Complete" if ok else "Failed", "status": "True", "reason": "JobSucceeded" if ok else "JobFailed",
             "message": "" if ok else f"trainer exited {p.returncode}: {p.stderr.strip().splitlines()[-1][:300]}"}]}

    def api(self):
        from kubernetes import client
        conf = client.Configuration(host=self.url)
        return client.CustomObjectsApi(client.ApiClient(conf))


@pytest.fixture
def fake_k8s():
    k = FakeKubernetes()
    yield k
    k.server.__exit__()


@pytest.mark.slow
def test_a_ranker_step_runs_as_a_two_process_trainjob_and_returns_its_outputs(fake_k8s, small_world, micro_reasoner,
                                                                              tmp_path):
    from rgalign.workflow import WorkflowConfig
    spec = TrainJobSpec(nodes=1, procs_per_node=2, image="img", namespace="ml", pvc={"name": "c", "mount_path": str(tmp_path / "pvc")},
                        poll_s=0.5, timeout_s=900)
    cfg = dataclasses.asdict(WorkflowConfig(tracking=False, check_reasoner=False, ranker_epochs=2, max_eval=200))
    kwargs = {"world_folder": str(small_world), "reasoner": str(micro_reasoner), "cfg": cfg,
              "out": str(tmp_path / "ranker"), "label": "Stage 1", "model": "qe-rec"}
    metrics = run_step("train-ranker", kwargs, spec, api=fake_k8s.api())
    assert len(fake_k8s.created) == 1, fake_k8s.created
    job = fake_k8s.jobs[fake_k8s.created[0]]
    assert job["status"]["conditions"][0]["type"] == "Complete", job.get("stderr", "")[-3000:]
    assert job["spec"]["trainer"]["numProcPerNode"] == 2 and "--args" in job["spec"]["trainer"]["command"]
    # the outputs came back to the step's own path: the checkpoint, its ranks and each rank's shard
    assert (tmp_path / "ranker" / "model.pt").is_file() and (tmp_path / "ranker" / "ranks.npz").is_file()
    assert sorted(p.name for p in (tmp_path / "ranker" / "shards").iterdir()) == ["rank0.npz", "rank1.npz"]
    assert metrics["val_MRR"] > 0 and "eval_MRR" in metrics
    # inputs were staged on the shared volume: the training nodes never read the pipeline pod's paths
    args = json.loads(Path(job["spec"]["trainer"]["command"][job["spec"]["trainer"]["command"].index("--args") + 1][1:]).read_text())
    assert args["world_folder"].startswith(str(tmp_path / "pvc")) and args["reasoner"].startswith(str(tmp_path / "pvc"))
    # a retried step finds its own job (409) instead of training twice
    run_step("train-ranker", kwargs, spec, api=fake_k8s.api())
    assert len(fake_k8s.created) == 1


@pytest.mark.slow
def test_a_failed_trainjob_fails_the_pipeline_step_with_its_message(fake_k8s, tmp_path, micro_reasoner, monkeypatch):
    import components as c
    from rgalign.workflow import WorkflowConfig
    spec = TrainJobSpec(nodes=1, procs_per_node=2, image="img", namespace="ml",
                        pvc={"name": "c", "mount_path": str(tmp_path / "pvc")}, poll_s=0.5, timeout_s=600)
    monkeypatch.setenv("RGALIGN_TRAINJOB", json.dumps(dataclasses.asdict(spec)))
    kubeconfig = tmp_path / "kubeconfig"   # the component finds the API as a pod would find its cluster
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake_k8s.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    (tmp_path / "empty-world").mkdir()   # no tables: every rank fails

    class Art:
        def __init__(self, path):
            self.path, self.metadata = str(path), {}
    with pytest.raises(TrainJobError, match=r"TrainJob ml/rgalign-train-ranker-\w+ failed: trainer exited"):
        c.train_ranker.python_func(config=dataclasses.asdict(WorkflowConfig(tracking=False)), label="Stage 1",
                                   model="qe-rec", world=Art(tmp_path / "empty-world"), reasoner=Art(micro_reasoner),
                                   ltp=[], ranker=Art(tmp_path / "out"), metrics=Art(tmp_path / "m"))
    assert not (tmp_path / "out").exists()   # nothing half-written where the step's artifact goes
