"""MLflow model registry: register reasoner and ranker versions with lineage, promote them through aliases,
gate promotions on offline metrics, roll back, and keep an audit trail of every move.

- One registered model per environment and kind: ``<env>.reasoner`` and ``<env>.ranker`` (e.g.
  ``dev.ranker``); serving loads ``models:/<env>.ranker@champion``.
- Aliases: ``candidate`` (a pipeline registered it) -> ``challenger`` (in an A/B test) -> ``champion``
  (serves all traffic). Stages are deprecated in MLflow; aliases are not.
- Lineage tags on every version: ``pipeline_run_id``, ``world_digest``, ``feature_service``,
  ``parent_reasoner`` (ranker -> the reasoner version whose LTP it reads).
- Figures (``eval.<metric>``, ``val.<metric>``, ``gate.vs_baseline.<metric>.lo``) are metrics of the MLflow run
  behind the version: what the gate reads. Tags carry a copy for display; editing one changes no decision.
- The gate refuses to make a version ``champion`` unless it is non-inferior (within ``margin``) on the
  validation days to the champion, or with no champion to the production baseline of its own run (the
  paired lower bound the workflow's gate recorded); ``override=True`` forces it and the override is recorded.
- Every move is a run in the ``rgalign-registry-audit`` experiment (who, what, from, to, why).
- Every check happens before the first write: a refused or failed move leaves no partial state.
"""
from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass
from pathlib import Path

ALIASES = ("candidate", "challenger", "champion")
KINDS = ("reasoner", "ranker", "reasoner-base")  # reasoner-base: pre-trained reasoners runs start from
AUDIT_EXPERIMENT = "rgalign-registry-audit"


def metric_tag(metric: str) -> str:
    """Tag key of an offline metric (MLflow keys allow no '@'): ``R@3`` -> ``eval.R_at_3``."""
    return "eval." + metric.replace("@", "_at_")


def figure_key(key: str) -> str:
    """Key of a figure the gate reads: a bare metric is an evaluation-week one (``MRR`` -> ``eval.MRR``);
    ``val.*``, ``gate.*`` and ``eval.*`` keys stay as given (``@`` -> ``_at_``)."""
    return key.replace("@", "_at_") if key.startswith(("val.", "gate.", "eval.")) else metric_tag(key)


def run_of(model_uri: str, client=None) -> str | None:
    """The run behind a model URI: ``runs:/<id>/<path>``, or a logged model ``models:/m-<id>`` (its source run;
    needs ``client``); None for a path or a registry URI."""
    if model_uri.startswith("runs:/"):
        return model_uri.split("/")[1]
    tail = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    if client is not None and tail.startswith("m-") and "/" not in tail:
        return client.get_logged_model(tail).source_run_id
    return None


class RegistryError(ValueError):
    """A registry request that cannot be honoured (unknown model/version/alias, a gate refusal)."""


def model_name(env: str, kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(f"kind={kind!r}; use one of {KINDS}")
    if not env or not env.replace("-", "").replace("_", "").isalnum():
        raise RegistryError(f"env={env!r} must be a simple name such as dev, staging or prod")
    return f"{env}.{kind}"


def _client(uri: str | None, root):
    import mlflow

    from rgalign.tracking import tracking_uri, use
    use(tracking_uri(uri, root))
    return mlflow.MlflowClient()


@dataclass
class Registry:
    """Registry operations against one tracking URI (SQLite under ``root`` by default)."""
    uri: str | None = None
    root: str | Path = "artifacts"

    @property
    def client(self):
        return _client(self.uri, self.root)

    # ------------------------------------------------------------------ register
    def register(self, kind: str, env: str, model_uri: str, lineage: dict, metrics: dict | None = None,
                 alias: str | None = "candidate") -> str:
        """Register ``model_uri`` as a new version of ``<env>.<kind>`` with lineage tags and ``alias`` (None:
        no alias yet, e.g. until the other half of a pair is registered too). ``metrics`` are the figures the
        gate reads (``figure_key``: ``{"MRR": ...}`` is the evaluation week's, ``val.MRR`` the validation days',
        ``gate.vs_baseline.MRR.lo`` the paired bound); they are logged as metrics of the run behind
        ``model_uri`` (``run_of``; before any registry write) and copied as tags."""
        import mlflow
        name = model_name(env, kind)
        client = self.client
        figures = {figure_key(k): float(v) for k, v in (metrics or {}).items()}
        run_id = run_of(model_uri, client)
        if figures and run_id is None:
            raise RegistryError(f"metrics need a model logged in a run (runs:/... or models:/m-...: the run keeps "
                                f"them), got {model_uri!r}")
        for k, v in figures.items():
            client.log_metric(run_id, k, v)
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name, description=f"rgalign {kind} ({env})")
        tags = {k: str(v) for k, v in lineage.items() if v is not None}
        tags.update({k: f"{v:.6f}" for k, v in figures.items()})
        mv = mlflow.register_model(model_uri, name, tags=tags)
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
        self._audit("register", name, mv.version, None, alias or "", {"model_uri": model_uri})
        return str(mv.version)

    def unregister(self, kind: str, env: str, version: str, reason: str) -> None:
        """Delete a version that must not stay (compensation of a half-finished registration)."""
        name = model_name(env, kind)
        self.client.delete_model_version(name, str(version))
        self._audit("unregister", name, version, None, "", {"reason": reason})

    # ------------------------------------------------------------------ read
    def versions(self, env: str, kind: str) -> list[dict]:
        name = model_name(env, kind)
        client = self.client
        self._require_model(name)
        aliases = client.get_registered_model(name).aliases  # alias -> version
        by_version: dict[str, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(str(v), []).append(a)
        out = []
        for mv in client.search_model_versions(f"name='{name}'"):
            out.append({"name": name, "version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
                        "source": mv.source, "created": mv.creation_timestamp, "tags": dict(mv.tags)})
        return sorted(out, key=lambda r: int(r["version"]))

    def find(self, env: str, kind: str, tags: dict) -> dict | None:
        """The newest version of ``<env>.<kind>`` whose tags include all of ``tags``; None when there is none
        (or no such model yet)."""
        import mlflow
        try:
            found = self.versions(env, kind)
        except (RegistryError, mlflow.exceptions.MlflowException):
            return None
        match = [v for v in found if all(v["tags"].get(k) == str(t) for k, t in tags.items())]
        return match[-1] if match else None

    def download(self, env: str, kind: str, ref: str, marker: str) -> Path:
        """Local folder (downloaded from the artifact store when remote) of a version, the one holding ``marker``."""
        name = model_name(env, kind)
        return Path(self._artifact(name, self._resolve(name, ref), marker)["dir"])

    def show(self, env: str, kind: str, ref: str) -> dict:
        """A version by number or alias."""
        version = self._resolve(model_name(env, kind), ref)
        return next(v for v in self.versions(env, kind) if v["version"] == version)

    def audit(self, env: str | None = None, kind: str | None = None) -> list[dict]:
        client = self.client
        exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=10_000)
        rows = [dict(r.data.tags) for r in runs]
        name = model_name(env, kind) if env and kind else None
        return [{k: v for k, v in r.items() if not k.startswith("mlflow.")} for r in rows
                if name is None or r.get("model") == name]

    # ------------------------------------------------------------------ move
    def promote(self, env: str, kind: str, ref: str, alias: str, gate_metric: str = "MRR", margin: float = 0.005,
                override: bool = False, reason: str | None = None) -> dict:
        """Point ``alias`` at version ``ref`` (a number or an alias). To ``champion`` the version must be
        non-inferior, on the validation days, to the current champion (``val.<gate_metric>`` no lower than the
        champion's minus ``margin``) or, when there is none, to the production baseline its run trained on the
        same sessions (the gate's paired 95% lower bound of candidate - baseline >= -``margin``). A refusal
        (or a missing figure) raises unless ``override``, which is recorded with its ``reason``."""
        if alias not in ALIASES:
            raise RegistryError(f"alias={alias!r}; use one of {ALIASES}")
        if margin < 0:
            raise RegistryError(f"margin must be >= 0, got {margin}")
        if override and not (reason or "").strip():
            raise RegistryError("--override needs --reason '...': why the gate is set aside (kept in the audit trail)")
        name = model_name(env, kind)
        client = self.client
        version = self._resolve(name, ref)
        current = client.get_registered_model(name).aliases.get(alias)
        if current is not None and str(current) == version:   # nothing moves: said, not audited as a change
            return {"model": name, "version": version, "alias": alias, "previous": version, "changed": False,
                    "note": f"{name} v{version} already holds '{alias}': nothing changed"}
        gate = {}
        if alias == "champion":
            gate = self._champion_gate(name, version, None if current is None else str(current), gate_metric, margin)
            if gate["gate"] != "passed":
                if not override:
                    self._audit("promote-refused", name, version, current, alias, {**gate, "reason": reason or ""})
                    raise RegistryError(f"gate: {name} v{version} {gate['why']}; pass --override --reason '...' to "
                                        "promote anyway (it is recorded)")
                gate["gate"] = "overridden"
        if alias == "champion" and current is not None:
            client.set_model_version_tag(name, version, "previous_champion", str(current))
        client.set_registered_model_alias(name, alias, version)
        if gate.get("gate") == "overridden":
            client.set_model_version_tag(name, version, "gate_override", json.dumps({**gate, "reason": reason or ""}))
        self._audit("promote", name, version, current, alias, {**gate, "override": override, "reason": reason or ""})
        return {"model": name, "version": version, "alias": alias, "previous": None if current is None else str(current),
                "changed": True, **gate}

    def _champion_gate(self, name: str, version: str, champion: str | None, metric: str, margin: float) -> dict:
        """The non-inferiority check of a promotion to champion (see ``promote``); ``gate`` is passed, refused
        or no metric, ``why`` says it in words."""
        key = metric.replace("@", "_at_")
        gate = {"gate_metric": metric, "margin": margin}
        if champion is not None:
            split, new, old = self._paired_metric(name, version, champion, metric)
            gate.update(reference=f"champion v{champion}", candidate_value=new, champion_value=old, split=split)
            if new is None or old is None:
                gate.update(gate="no metric", why=f"or champion v{champion} has no {metric} in its run to compare")
            elif new < old - margin:
                gate.update(gate="refused", why=f"{metric}={new:.4f} is inferior to champion v{champion} "
                                                f"{metric}={old:.4f} beyond margin {margin}")
            else:
                gate["gate"] = "passed"
            return gate
        lo = self.figures(name, version).get(f"gate.vs_baseline.{key}.lo")
        gate["reference"] = "the run's production baseline (no champion yet)"
        if lo is None:
            gate.update(gate="no metric", why=f"carries no paired difference to its run's baseline on {metric} "
                                              "(gate.vs_baseline.*): it was not registered by the gated workflow")
        elif float(lo) < -margin:
            gate.update(gate="refused", vs_baseline_lower_bound=float(lo),
                        why=f"is inferior to the production baseline of its run: {metric} difference lower bound "
                            f"{float(lo):+.4f} < -margin {margin} (no champion exists, so the baseline is the reference)")
        else:
            gate.update(gate="passed", vs_baseline_lower_bound=float(lo))
        return gate

    def copy(self, kind: str, from_env: str, ref: str, to_env: str, alias: str = "candidate") -> str:
        """Promote across environments: copy version ``ref`` of ``<from_env>.<kind>`` (tags included; its figures
        stay in the run behind it) into ``<to_env>.<kind>`` as a new version with ``alias``; returns the new
        version. A ranker brings its parent reasoner along (copied once into ``<to_env>.reasoner`` with the
        same alias, or the copy made before), and its ``parent_reasoner`` names that copy: the target
        environment serves without reading the source one."""
        src, dst = model_name(from_env, kind), model_name(to_env, kind)
        if src == dst:
            raise RegistryError(f"from_env and env are both {from_env!r}; use promote to move an alias")
        if alias not in ALIASES:
            raise RegistryError(f"alias={alias!r}; use one of {ALIASES}")
        version = self._resolve(src, ref)
        tags = dict(self.client.get_model_version(src, version).tags)
        parent = tags.get("parent_reasoner")
        if kind == "ranker" and parent:
            pname, _, pv = parent.partition("/")
            self._require_version(pname, pv)
            tags["parent_reasoner"] = f"{model_name(to_env, 'reasoner')}/{self._copy_once(pname, pv, to_env, alias)}"
        return self._copy_version(src, version, dst, tags, alias)

    def _copy_once(self, src: str, version: str, to_env: str, alias: str) -> str:
        """``src`` v``version`` in ``<to_env>.reasoner``: the copy made earlier, else a new one."""
        dst = model_name(to_env, "reasoner")
        with_tag = f"{src}/{version}"
        try:
            for mv in self.client.search_model_versions(f"name='{dst}'"):
                if mv.tags.get("copied_from") == with_tag:
                    return str(mv.version)
        except Exception:  # noqa: BLE001 (no such model yet)
            pass
        return self._copy_version(src, version, dst, dict(self.client.get_model_version(src, version).tags), alias)

    def _copy_version(self, src: str, version: str, dst: str, tags: dict, alias: str) -> str:
        import mlflow
        client = self.client
        try:
            client.get_registered_model(dst)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(dst, description=f"rgalign {dst.split('.', 1)[1]} ({dst.split('.', 1)[0]})")
        mv = client.copy_model_version(f"models:/{src}/{version}", dst)
        for k, v in {**tags, "copied_from": f"{src}/{version}"}.items():
            client.set_model_version_tag(dst, mv.version, k, v)
        client.set_registered_model_alias(dst, alias, mv.version)
        self._audit("copy", dst, mv.version, f"{src}/{version}", alias, {})
        return str(mv.version)

    def rollback(self, env: str, kind: str, reason: str | None = None) -> dict:
        """Point ``champion`` back at the version it replaced (``previous_champion`` of the current one)."""
        name = model_name(env, kind)
        client = self.client
        self._require_model(name)
        current = client.get_registered_model(name).aliases.get("champion")
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        prev = client.get_model_version(name, str(current)).tags.get("previous_champion")
        if not prev:
            self._audit("rollback-refused", name, str(current), current, "champion",
                        {"reason": reason or "", "why": "replaced no earlier champion"})
            raise RegistryError(f"{name} champion v{current} replaced no earlier champion; nothing to roll back to")
        self._require_version(name, prev)
        client.set_registered_model_alias(name, "champion", prev)
        self._audit("rollback", name, prev, current, "champion", {"reason": reason or ""})
        return {"model": name, "champion": prev, "rolled_back": str(current)}

    # ------------------------------------------------------------------ helpers
    def serving_bundle(self, env: str, ref: str = "champion") -> dict:
        """What a server needs for ``<env>.ranker@<ref>``: per kind the version, its local directory and its
        real artifact URI (``s3://``, ``gs://``, ``file://``, for manifests; KServe cannot read ``models:/``).
        The reasoner is the ranker's ``parent_reasoner`` (the LTP it was trained on), never a guess."""
        ranker = model_name(env, "ranker")
        version = self._resolve(ranker, ref)
        tags = self.client.get_model_version(ranker, version).tags
        out = {"ranker": self._artifact(ranker, version, "model.pt")}
        parent = tags.get("parent_reasoner")
        if parent:
            name, _, pv = parent.partition("/")
            self._require_version(name, pv)
            out["reasoner"] = self._artifact(name, pv, "config.json")
        out["alias"] = ref
        out["world_digest"] = tags.get("world_digest", "")
        out["dataset"], out["feast_dir"] = tags.get("dataset", ""), tags.get("feast_dir", "")  # training lineage
        return out

    def _artifact(self, name: str, version: str, marker: str) -> dict:
        """Download (a no-op for local stores) a version and find the folder holding ``marker``."""
        import mlflow
        uri = self.client.get_model_version_download_uri(name, version)
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
        hits = sorted(p.parent for p in root.rglob(marker))
        if not hits:
            raise RegistryError(f"{name} v{version} holds no {marker}; it was not registered by rgalign")
        rel = hits[0].relative_to(root).as_posix()
        return {"name": name, "version": version, "dir": str(hits[0]),
                "artifact_uri": uri.rstrip("/") + ("/" + rel if rel != "." else "")}

    def _require_model(self, name: str) -> None:
        import mlflow
        try:
            self.client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            raise RegistryError(f"registered model {name!r} does not exist; run the pipeline (rgalign pipeline "
                                "run) or check --env/--kind") from None

    def _require_version(self, name: str, version: str) -> None:
        import mlflow
        try:
            self.client.get_model_version(name, version)
        except mlflow.exceptions.MlflowException:
            raise RegistryError(f"{name} has no version {version}; see `rgalign models list`") from None

    def _resolve(self, name: str, ref: str) -> str:
        self._require_model(name)
        ref = str(ref)
        if ref.isdigit():
            self._require_version(name, ref)
            return ref
        aliases = self.client.get_registered_model(name).aliases
        if ref not in aliases:
            raise RegistryError(f"{name} has no version with alias {ref!r} (aliases: {dict(aliases) or 'none'})")
        return str(aliases[ref])

    def figures(self, name: str, version: str) -> dict[str, float]:
        """The figures of a version: metrics of the MLflow run behind it (not its editable tags)."""
        import mlflow
        run_id = self.client.get_model_version(name, version).run_id
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except mlflow.exceptions.MlflowException:
            return {}

    def _paired_metric(self, name: str, a: str, b: str, metric: str) -> tuple[str, float | None, float | None]:
        """``metric`` of versions ``a`` and ``b`` on the same split: the validation days (``val.<metric>``) when
        both carry it, else the evaluation week (``eval.<metric>``, versions registered before the gate)."""
        ta, tb = (self.figures(name, v) for v in (a, b))
        val = "val." + metric.replace("@", "_at_")
        key, split = (val, "val") if val in ta and val in tb else (metric_tag(metric), "eval")
        get = lambda t: float(t[key]) if key in t else None  # noqa: E731
        return split, get(ta), get(tb)

    def _audit(self, action: str, name: str, version, previous, alias: str, extra: dict) -> None:
        import mlflow

        from rgalign.tracking import experiment
        exp = experiment(AUDIT_EXPERIMENT, self.uri, self.root)
        tags = {"action": action, "model": name, "version": str(version), "previous": str(previous or ""),
                "alias": alias, "user": getpass.getuser(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **{k: str(v) for k, v in extra.items()}}
        with mlflow.start_run(experiment_id=exp, run_name=f"{action} {name} v{version}", nested=mlflow.active_run() is not None):
            mlflow.set_tags(tags)


def log_reasoner_model(path: str | Path, uri: str | None = None, root: str | Path = "artifacts",
                       lineage: dict | None = None) -> str:
    """Log a reasoner directory (and its LoRA adapter ``<dir>.adapter`` when there is one) as an MLflow
    models-from-code pyfunc that returns LTP for a ``context`` column; returns the model URI.
    ``load_reasoner(models:/<env>.reasoner@champion)`` reloads the same weights (identical LTP)."""
    import mlflow

    from rgalign.tracking import experiment
    path = Path(path)
    meta = json.loads((path / "rgalign_reasoner.json").read_text()) if (path / "rgalign_reasoner.json").is_file() else {}
    artifacts = {"reasoner": str(path)}
    adapter = path.with_name(path.name + ".adapter")
    if adapter.is_dir():
        artifacts["adapter"] = str(adapter)
    exp = experiment("rgalign-reasoner", uri, root)
    with mlflow.start_run(experiment_id=exp, run_name=f"register {path.name}",
                          nested=mlflow.active_run() is not None):
        mlflow.set_tags({"source": meta.get("source", "hf-dir"), "digest": meta.get("digest", ""),
                         **{k: str(v) for k, v in (lineage or {}).items()}})
        info = mlflow.pyfunc.log_model(name="reasoner", python_model=str(Path(__file__).parent / "reasoner" / "pyfunc_model.py"),
                                       artifacts=artifacts, pip_requirements=["rgalign-rec"])
    return info.model_uri
