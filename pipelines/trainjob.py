"""Training steps on Kubeflow Trainer: a pipeline step that is given several nodes or processes submits a
``TrainJob`` (trainer.kubeflow.org/v1alpha1) against a ``ClusterTrainingRuntime`` and waits for it, instead of
training inside the pipeline's pod.

    spec = TrainJobSpec.from_profile(profile["training"], profile, image)   # compile time (pipelines/training.py)
    metrics = run_step("train-ranker", kwargs)                               # inside the component

``run_step`` trains in this process when the step has no ``RGALIGN_TRAINJOB`` (kfp.local, a one-GPU profile).
Otherwise it stages the step's input folders on the shared volume (the profile's ``model_cache_pvc``, mounted in
the pipeline pod and in every training node), creates the TrainJob whose command is
``torchrun -m rgalign.cli step <name> --args @<staged args>`` (the torch runtime sets torchrun's ``PET_*``
environment: nodes, processes per node, rendezvous), polls its ``Complete`` / ``Failed`` condition, and copies
the outputs back into the step's artifacts. A failed TrainJob fails the step with the job's message.
Every rendered TrainJob is validated against the vendored CRD schema (``schemas/kubeflow-trainer/``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

SCHEMAS = Path(__file__).parent / "schemas" / "kubeflow-trainer"
TRAINJOB_CRD = SCHEMAS / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_CRD = SCHEMAS / "trainer.kubeflow.org_clustertrainingruntimes.yaml"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
ENV = "RGALIGN_TRAINJOB"   # the step's TrainJobSpec as JSON, set on the task at compile time


class TrainJobError(RuntimeError):
    """A TrainJob that failed, timed out or could not be rendered: the step fails with this message."""


@dataclasses.dataclass
class TrainJobSpec:
    """How one kind of step (``llm``, ``training``) runs on Kubeflow Trainer; from a cluster profile's
    ``trainjob`` block (``nodes``, ``procs_per_node``, ``runtime``) and the kind's resources."""
    nodes: int = 1
    procs_per_node: int = 1
    runtime: str = "torch-distributed"
    image: str = ""
    namespace: str = ""
    resources: dict = dataclasses.field(default_factory=dict)     # per node: {"limits": {...}, "requests": {...}}
    node_selector: dict = dataclasses.field(default_factory=dict)
    tolerations: list = dataclasses.field(default_factory=list)
    pvc: dict = dataclasses.field(default_factory=dict)            # {"name": claim, "mount_path": path}
    secrets: dict = dataclasses.field(default_factory=dict)        # secret -> {key: env variable}
    timeout_s: int = 6 * 3600
    poll_s: float = 15.0

    def __post_init__(self):
        if self.nodes < 1 or self.procs_per_node < 1:
            raise ValueError(f"trainjob: nodes ({self.nodes}) and procs_per_node ({self.procs_per_node}) must be >= 1")
        if self.runtime != "torch-distributed":
            raise ValueError(f"trainjob: runtime {self.runtime!r} is not supported; use torch-distributed (torchrun "
                             f"launches every rank; DeepSpeed ZeRO-3 runs under it through the Hugging Face Trainer)")

    @classmethod
    def from_profile(cls, kind: dict, profile: dict, image: str) -> "TrainJobSpec | None":
        """The spec of a profile kind with a ``trainjob`` block (None without one: the step trains in its pod)."""
        tj = (kind or {}).get("trainjob")
        if not tj:
            return None
        if not profile.get("model_cache_pvc"):
            raise ValueError("trainjob: the profile needs model_cache_pvc, the volume the pipeline pod and the "
                             "training nodes share (inputs and outputs are staged there)")
        unknown = set(tj) - {"nodes", "procs_per_node", "runtime", "namespace", "timeout_s"}
        if unknown:
            raise ValueError(f"trainjob: unknown field(s) {sorted(unknown)}; known: nodes, procs_per_node, runtime, "
                             f"namespace, timeout_s")
        limits = {}
        if kind.get("accelerator_type"):
            limits[kind["accelerator_type"]] = int(kind.get("accelerator_count", 1))
        for k in ("cpu", "memory"):
            if kind.get(k):
                limits[k] = str(kind[k])
        return cls(nodes=int(tj.get("nodes", 1)), procs_per_node=int(tj.get("procs_per_node", 1)),
                   runtime=tj.get("runtime", "torch-distributed"), image=image, namespace=tj.get("namespace", ""),
                   resources={"limits": limits} if limits else {}, node_selector=dict(kind.get("node_selector") or {}),
                   tolerations=list(kind.get("tolerations") or []), pvc=dict(profile["model_cache_pvc"]),
                   secrets=dict(profile.get("secrets") or {}), timeout_s=int(tj.get("timeout_s", 6 * 3600)))


def job_name(step: str, kwargs: dict) -> str:
    """A DNS-1035 name, the same for the same step and arguments (a retried step finds its own job)."""
    digest = hashlib.sha256(json.dumps([step, kwargs], sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"rgalign-{step}-{digest}"[:63]


def render(step: str, args_file: str, spec: TrainJobSpec, name: str, result_file: str) -> dict:
    """The TrainJob of ``rgalign step <step> --args @<args_file>`` on ``spec.nodes`` x ``spec.procs_per_node``."""
    env = [{"name": "OMP_NUM_THREADS", "value": "1"}]
    for secret, keys in spec.secrets.items():
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key, var in keys.items()]
    trainer = {"image": spec.image, "command": ["torchrun", "-m", "rgalign.cli", "step", step, "--args", f"@{args_file}",
                                                "--result", result_file],
               "numNodes": spec.nodes, "numProcPerNode": spec.procs_per_node, "env": env}
    if spec.resources:
        trainer["resourcesPerNode"] = spec.resources
    pod = {"volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": spec.pvc["name"]}}],
           "containers": [{"name": "node", "volumeMounts": [{"name": "model-cache", "mountPath": spec.pvc["mount_path"]}]}]}
    if spec.node_selector:
        pod["nodeSelector"] = spec.node_selector
    if spec.tolerations:
        pod["tolerations"] = spec.tolerations
    job = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob",
           "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "rgalign", "rgalign/step": step}},
           "spec": {"runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": spec.runtime},
                    "trainer": trainer,
                    "runtimePatches": [{"manager": "rgalign.dev/pipeline", "trainingRuntimeSpec": {"template": {"spec": {
                        "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": pod}}}}]}}}}]}}
    if spec.namespace:
        job["metadata"]["namespace"] = spec.namespace
    validate(job)
    return job


def validate(job: dict) -> None:
    """Raise ``TrainJobError`` naming the first field that violates the TrainJob CRD schema."""
    from rgalign.crd import violations
    errors = violations(job, TRAINJOB_CRD, VERSION)
    if errors:
        raise TrainJobError(f"TrainJob {job.get('metadata', {}).get('name')}: {errors[0]} "
                            f"({len(errors)} violation(s) of the Kubeflow Trainer CRD schema)")


def _namespace(spec: TrainJobSpec) -> str:
    sa = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return spec.namespace or os.environ.get("RGALIGN_NAMESPACE") or (sa.read_text().strip() if sa.is_file() else "kubeflow")


def _api():
    from kubernetes import client, config
    try:
        config.load_incluster_config()
    except config.ConfigException:   # outside a cluster: $KUBECONFIG or ~/.kube/config
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.CustomObjectsApi()


def condition(job: dict) -> tuple[str | None, str]:
    """``("Complete" | "Failed" | None, message)`` from a TrainJob's status conditions."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return c["type"], c.get("message") or c.get("reason") or ""
    return None, ""


def run_step(step: str, kwargs: dict, spec: TrainJobSpec | None = None, api=None) -> dict:
    """Run ``rgalign.workflow.launch_step(step, kwargs)``: here, or (``spec`` / ``$RGALIGN_TRAINJOB`` given) as a
    TrainJob on the shared volume, with its outputs copied back to the paths in ``kwargs``."""
    from rgalign.workflow import launch_step, rank_steps
    if spec is None and os.environ.get(ENV):
        spec = TrainJobSpec(**json.loads(os.environ[ENV]))
    if spec is None:
        return launch_step(step, kwargs)
    _, ins, outs = rank_steps()[step]
    name = job_name(step, kwargs)
    stage = Path(spec.pvc["mount_path"]) / "rgalign-trainjobs" / name
    staged = dict(kwargs)
    for key in ins:                         # the pipeline pod's artifacts are not visible to the training nodes
        if kwargs.get(key) is None:
            continue
        many = isinstance(kwargs[key], (list, tuple))   # a list of folders (the sharded LTP's)
        staged[key] = []
        for i, src in enumerate(kwargs[key] if many else [kwargs[key]]):
            dst = stage / "in" / (f"{key}-{i}" if many else key)
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst)
            staged[key].append(str(dst))
        staged[key] = staged[key] if many else staged[key][0]
    for key in outs:
        staged[key] = str(stage / "out" / key)
    (stage / "args.json").write_text(json.dumps(staged, default=str))
    result = stage / "result.json"
    job = render(step, str(stage / "args.json"), spec, name, str(result))
    api = api or _api()
    ns = _namespace(spec)
    from kubernetes.client.exceptions import ApiException
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job)
        print(f"TrainJob {ns}/{name}: {spec.nodes} node(s) x {spec.procs_per_node} process(es), runtime {spec.runtime}")
    except ApiException as e:
        if e.status != 409:                 # 409: a retried step finds the job it created before
            raise TrainJobError(f"TrainJob {ns}/{name} could not be created: {e.status} {e.reason}: {e.body}") from None
    deadline = time.monotonic() + spec.timeout_s
    while True:
        state, message = condition(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
        if state == "Failed":
            raise TrainJobError(f"TrainJob {ns}/{name} failed: {message or 'no message'} (kubectl logs -n {ns} "
                                f"-l trainer.kubeflow.org/trainjob-name={name})")
        if state == "Complete":
            break
        if time.monotonic() > deadline:
            raise TrainJobError(f"TrainJob {ns}/{name} did not finish within {spec.timeout_s} s")
        time.sleep(spec.poll_s)
    for key in outs:
        src, dst = Path(staged[key]), Path(kwargs[key])
        if not src.exists():
            raise TrainJobError(f"TrainJob {ns}/{name} completed without writing its output {key} ({src})")
        shutil.copytree(src, dst, dirs_exist_ok=True)
    return json.loads(result.read_text()) if result.is_file() else {}
