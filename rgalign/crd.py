"""Offline validation of Kubernetes custom resources against a vendored CRD's OpenAPI v3 schema (KServe
InferenceServices in ``serving/``, Kubeflow Trainer TrainJobs in ``pipelines/``): what the API server would
check on create, without a cluster. Webhook and CEL rules are not part of a CRD schema."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml


@functools.lru_cache(maxsize=8)
def schema(path: str | Path, version: str) -> dict:
    """The ``openAPIV3Schema`` of ``version`` in the CRD file ``path`` (parsed once per process)."""
    crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


@functools.lru_cache(maxsize=8)
def _validator(path: str, version: str):
    import jsonschema
    return jsonschema.Draft7Validator(schema(path, version))


def violations(manifest: dict, path: str | Path, version: str) -> list[str]:
    """``"<field path>: <message>"`` for every violation, in field order (empty when valid)."""
    errors = sorted(_validator(str(path), version).iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
