"""KServe InferenceService manifests for the registered reasoner and ranker, validated offline against the
vendored CRD schema (``serving/schemas/kserve``, Apache-2.0, see SOURCE.md there).

Built with the KServe SDK objects and serialized with ``ApiClient().sanitize_for_serialization``. Storage is
the registry version's real artifact URI (``s3://``, ``gs://``, ``pvc://``): KServe's storage initializer
cannot read ``models:/``.

A/B traffic split (champion vs challenger), and which deployment mode honours which field:

| mode                          | field                                                  | rendered as                      |
|-------------------------------|--------------------------------------------------------|----------------------------------|
| Standard (RawDeployment)      | ``spec.canary: [{predictor, trafficPercent}]`` (0.21)   | one ISVC: champion predictor + challenger canary |
| Serverless (Knative)          | ``spec.predictor.canaryTrafficPercent``                 | the challenger as the new predictor revision; Knative keeps the champion revision for the rest |

``canaryTrafficPercent`` is silently ignored in Standard mode, and ``spec.canary`` needs KServe >= 0.21, so
the renderer writes only the field the chosen mode honours.

The vLLM variant (paper section 5.4) renders the reasoner on KServe's Hugging Face runtime with the vLLM
backend as an embedding model with last-token pooling, unnormalised: vLLM then returns the final-norm hidden
state of the prompt's last token, which is the project's LTP (``rgalign.reasoner.ltp``) provided the client
sends the same chat-rendered prompt (``LTPEncoder.render``) without adding special tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from rgalign.config import DeployConfig
from serving import kserve_module

SCHEMA = Path(__file__).parent / "schemas" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
KSERVE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "hf://", "oci://")


class ManifestError(ValueError):
    """A manifest that cannot be rendered or does not validate."""


def storage_uri(artifact_uri: str, cfg: DeployConfig) -> str:
    """The registry's artifact URI as KServe storage; a local ``file://`` store is mapped onto the model PVC."""
    if artifact_uri.startswith("models:/"):
        raise ManifestError(f"storage URI {artifact_uri!r}: KServe cannot read models:/ URIs; pass the version's "
                            "artifact URI (Registry.serving_bundle gives it)")
    if artifact_uri.startswith(KSERVE_SCHEMES):
        return artifact_uri
    if artifact_uri.startswith("file://"):
        return f"pvc://{cfg.model_pvc}/{artifact_uri[len('file://'):].lstrip('/')}"
    raise ManifestError(f"storage URI {artifact_uri!r} has no scheme KServe can read ({', '.join(KSERVE_SCHEMES)})")


def _container(args: list[str], storage: str, cfg: DeployConfig, gpu: int, extra_env: dict | None = None):
    from kubernetes.client import (V1Container, V1EnvVar, V1HTTPGetAction, V1Probe, V1ResourceRequirements,
                                   V1VolumeMount)
    res = {"cpu": cfg.cpu, "memory": cfg.memory, **({"nvidia.com/gpu": str(gpu)} if gpu else {})}
    probe = lambda path, delay: V1Probe(http_get=V1HTTPGetAction(path=path, port=8080),  # noqa: E731
                                        initial_delay_seconds=delay, period_seconds=10, timeout_seconds=2)
    env = {"STORAGE_URI": storage, "RGALIGN_SERVE_THREADS": str(cfg.threads), **(extra_env or {})}
    return V1Container(
        name="kserve-container", image=cfg.image, command=["python", "-m", "serving.server"], args=args,
        env=[V1EnvVar(name=k, value=v) for k, v in env.items()],
        resources=V1ResourceRequirements(requests=res, limits=res),
        readiness_probe=probe("/v2/health/ready", 10), liveness_probe=probe("/v2/health/live", 30),
        volume_mounts=[V1VolumeMount(name="features", mount_path="/mnt/features", read_only=True)])


def _predictor(container, cfg: DeployConfig, gpu: int, canary_percent: int | None = None):
    k = kserve_module()
    from kubernetes.client import V1PersistentVolumeClaimVolumeSource, V1Toleration, V1Volume
    return k.V1beta1PredictorSpec(
        containers=[container], min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
        canary_traffic_percent=canary_percent, node_selector=cfg.node_selector or None,
        tolerations=[V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else None,
        volumes=[V1Volume(name="features", persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
            claim_name=cfg.features_pvc, read_only=True))])


def _isvc(name: str, predictor, cfg: DeployConfig, labels: dict, canary=None) -> dict:
    k = kserve_module()
    from kubernetes.client import V1ObjectMeta
    isvc = k.V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1", kind="InferenceService",
        metadata=V1ObjectMeta(name=name, namespace=cfg.namespace,
                              labels={"app.kubernetes.io/part-of": "rgalign-rec", "rgalign/alias": cfg.alias, **labels},
                              annotations={"serving.kserve.io/deploymentMode": cfg.mode}),
        spec=k.V1beta1InferenceServiceSpec(predictor=predictor, canary=canary))
    return k.ApiClient().sanitize_for_serialization(isvc)


def reasoner_isvc(bundle: dict, cfg: DeployConfig) -> dict:
    """The project's reasoner server (LTP over V1/V2) on a GPU node."""
    r = bundle["reasoner"]
    c = _container(["--reasoner", "/mnt/models", "--models", "reasoner", "--port", "8080", "--host", "0.0.0.0"],
                   storage_uri(r["artifact_uri"], cfg), cfg, cfg.reasoner_gpus)
    return _isvc(f"{cfg.env}-reasoner", _predictor(c, cfg, cfg.reasoner_gpus), cfg,
                 {"rgalign/kind": "reasoner", "rgalign/version": str(r["version"])})


def ranker_isvc(champion: dict, cfg: DeployConfig, challenger: dict | None = None) -> dict:
    """The ranker + recommend server; it reads online features from Feast (Redis, production store) and calls
    the reasoner InferenceService over V2. With a challenger, the A/B split of ``cfg.mode`` (table above)."""
    url = f"http://{cfg.env}-reasoner.{cfg.namespace}.svc.cluster.local/v2/models/reasoner/infer"

    def predictor(b, canary_percent=None):
        c = _container(["--ranker", "/mnt/models", "--reasoner-url", url, "--world", "/mnt/features/world",
                        "--feast-dir", "/mnt/features/feast", "--models", "ranker,recommend", "--port", "8080",
                        "--host", "0.0.0.0"], storage_uri(b["ranker"]["artifact_uri"], cfg), cfg, cfg.ranker_gpus,
                       {"RGALIGN_FEAST_CONFIG": "feature_store.production.yaml"})
        return _predictor(c, cfg, cfg.ranker_gpus, canary_percent)

    labels = {"rgalign/kind": "ranker", "rgalign/version": str(champion["ranker"]["version"])}
    if challenger is None or cfg.canary_percent == 0:
        return _isvc(f"{cfg.env}-ranker", predictor(champion), cfg, labels)
    labels["rgalign/challenger"] = str(challenger["ranker"]["version"])
    if cfg.mode == "Serverless":
        return _isvc(f"{cfg.env}-ranker", predictor(challenger, cfg.canary_percent), cfg, labels)
    k = kserve_module()
    canary = [k.V1beta1CanarySpec(predictor=predictor(challenger), traffic_percent=cfg.canary_percent)]
    return _isvc(f"{cfg.env}-ranker", predictor(champion), cfg, labels, canary)


def reasoner_vllm_isvc(bundle: dict, cfg: DeployConfig) -> dict:
    """The reasoner on KServe's Hugging Face runtime, vLLM backend, as an embedding model with last-token
    pooling (no normalisation) and 8-bit weights: the same LTP as ``reasoner_isvc`` for the same prompt."""
    k = kserve_module()
    from kubernetes.client import V1ResourceRequirements, V1Toleration
    res = {"cpu": cfg.cpu, "memory": cfg.memory, "nvidia.com/gpu": str(max(1, cfg.reasoner_gpus))}
    model = k.V1beta1ModelSpec(
        name="kserve-container", model_format=k.V1beta1ModelFormat(name="huggingface"), storage_uri=storage_uri(bundle["reasoner"]["artifact_uri"], cfg),
        args=["--model_name=reasoner", "--backend=vllm", "--task=text_embedding", "--dtype=bfloat16",
              "--quantization=fp8",  # 8-bit weights (paper section 5.4); bitsandbytes on GPUs without FP8
              "--override-pooler-config=" + json.dumps({"pooling_type": "LAST", "normalize": False}),
              f"--max-model-len={cfg.max_prompt_tokens}"],
        resources=V1ResourceRequirements(requests=res, limits=res))
    pred = k.V1beta1PredictorSpec(model=model, min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
                                  node_selector=cfg.node_selector or None,
                                  tolerations=[V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    return _isvc(f"{cfg.env}-reasoner-vllm", pred, cfg,
                 {"rgalign/kind": "reasoner", "rgalign/version": str(bundle["reasoner"]["version"]), "rgalign/runtime": "vllm"})


def crd_schema() -> dict:
    """The vendored InferenceService v1beta1 schema."""
    from rgalign.crd import schema
    return schema(SCHEMA, "v1beta1")


def validate(manifest: dict) -> None:
    """Raise ``ManifestError`` naming the path of the first violation of the InferenceService CRD schema."""
    from rgalign.crd import violations
    errors = violations(manifest, SCHEMA, "v1beta1")
    if errors:
        raise ManifestError(f"{manifest.get('metadata', {}).get('name')}: {errors[0]} "
                            f"({len(errors)} violation(s) of the KServe CRD schema)")


def render(champion: dict, cfg: DeployConfig, out: str | Path, challenger: dict | None = None) -> list[Path]:
    """Write reasoner.yaml, ranker.yaml and reasoner-vllm.yaml to ``out`` after validating all of them (nothing
    is written when one fails)."""
    docs = {"reasoner.yaml": reasoner_isvc(champion, cfg), "ranker.yaml": ranker_isvc(champion, cfg, challenger),
            "reasoner-vllm.yaml": reasoner_vllm_isvc(champion, cfg)}
    for d in docs.values():
        validate(d)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, d in docs.items():
        (out / name).write_text(yaml.safe_dump(d, sort_keys=False))
        paths.append(out / name)
    return paths


def render_registered(env: str, alias: str, tracking_uri: str | None, root: str | Path, out: str | Path) -> dict:
    """The KServe InferenceServices of the versions behind ``alias`` (the pipeline's last step; CRD-validated)."""
    from rgalign.registry import Registry
    bundle = Registry(tracking_uri, root).serving_bundle(env, alias)
    paths = render(bundle, DeployConfig(env=env, alias=alias), out)
    return {"manifests": len(paths), "ranker_version": int(bundle["ranker"]["version"])}
