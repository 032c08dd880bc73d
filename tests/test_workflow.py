"""The training workflow written once: the pipeline's tasks are its steps, the layers stay apart, the gate
holds the popularity floor on the validation days, and (slow) a run that fails the gate registers nothing."""
import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from rgalign import workflow
from rgalign.workflow import STEPS, WorkflowConfig

ROOT = Path(__file__).resolve().parents[1]
OUTER = ("components", "pipelines", "serving", "monitoring")
ENTRY_POINTS = {"rgalign.cli"}   # the command line: allowed to import every layer


def _tasks(dag: dict, components: dict) -> list[str]:
    """Display names of the executed tasks of a compiled DAG, descending into exit handlers and conditions."""
    out = []
    for t in dag.get("tasks", {}).values():
        comp = components[t["componentRef"]["name"]]
        if "dag" in comp:
            out += _tasks(comp["dag"], components)
        else:
            out.append(t["taskInfo"]["name"])
    return out


def test_the_pipelines_tasks_are_the_workflow_steps(tmp_path):
    from pipelines.run import compile_pipeline
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", None).read_text()))
    tasks = _tasks(spec["root"]["dag"], spec["components"])
    # besides the steps: the exit handler (run status) and the manifests of what was registered
    assert sorted(set(tasks) - {"record-run-status", "render-manifests"}) == sorted(STEPS)
    assert len(tasks) == len(set(tasks)) == len(STEPS) + 2


# ---------------------------------------------------------------------------------------------- layering
def import_graph(root: Path, package: str = "rgalign") -> dict[str, set[str]]:
    """Every module of ``package`` under ``root`` -> the modules it imports (top level or inside functions)."""
    mods = {}
    for p in sorted((root / package).rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    graph = {}
    for name, p in mods.items():
        found = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                found |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                found |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
        graph[name] = found
    return graph


def layer_violations(root: Path) -> list[str]:
    """Core modules importing an outer layer, and import cycles among core modules."""
    graph = import_graph(root)
    bad = [f"{m} imports {i}" for m, imps in graph.items() if m not in ENTRY_POINTS
           for i in sorted(imps) if i.split(".")[0] in OUTER]
    core = {m: {i for i in imps if i in graph and i != m} for m, imps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(core[m]):
            if state.get(n) == 1:
                bad.append("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2
    for m in sorted(core):
        if m not in state:
            visit(m, [m])
    return bad


def test_the_core_imports_no_outer_layer_and_has_no_import_cycle():
    assert layer_violations(ROOT) == []


def test_the_layering_check_catches_a_forbidden_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "rgalign"
    (pkg / "ranker").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ranker" / "__init__.py").write_text("")
    (pkg / "ranker" / "a.py").write_text("def f():\n    from rgalign.ranker import b\n")
    (pkg / "ranker" / "b.py").write_text("from rgalign.ranker.a import f\n")
    (pkg / "steps.py").write_text("from serving.manifests import render\n")
    (pkg / "cli.py").write_text("import pipelines.run\n")      # the entry point may
    found = layer_violations(tmp_path)
    assert "rgalign.steps imports serving.manifests" in found
    assert any(v.startswith("import cycle") and "rgalign.ranker.a" in v and "rgalign.ranker.b" in v for v in found)
    assert not any("rgalign.cli" in v for v in found)


# ---------------------------------------------------------------------------------------------- the config
def test_workflow_config_survives_protobuf_struct_and_checks_values():
    assert WorkflowConfig(**{"max_train": 1000.0, "gate_margin": 0}).max_train == 1000
    with pytest.raises(ValueError, match="max_train must be an integer"):
        WorkflowConfig(max_train=10.5)
    with pytest.raises(ValueError, match="strategy"):
        WorkflowConfig(strategy="V7")
    with pytest.raises(ValueError, match="rga_method"):
        WorkflowConfig(rga_method="dpo")
    with pytest.raises(ValueError, match="gate_metric"):
        WorkflowConfig(gate_metric="AUC")


# ---------------------------------------------------------------------------------------------- the gate
def _ranker_folder(path: Path, val_ranks, pop_val, n=50, seed=0, **extra):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"n_intents": n}))
    m = len(val_ranks)
    np.savez(path / "ranks.npz", val=np.asarray(val_ranks), eval=rng.integers(0, n, 40), popularity_val=np.asarray(pop_val),
             popularity_eval=rng.integers(0, n, 40), users_val=np.arange(m) % 7, users_eval=np.arange(40) % 7,
             sessions_val=np.arange(m), sessions_eval=np.arange(40), **extra)
    return path


def test_the_gate_reports_the_evaluation_week_by_segment(tmp_path, small_world):
    from rgalign.metrics import paired_difference, segment_masks
    rng = np.random.default_rng(1)
    clicks = np.r_[0, rng.integers(0, 900, 50)]
    clicks[1:11] = 0                                                # ten cold-start intents
    seg = dict(target_eval=rng.integers(1, 51, 40), user_clicks_eval=rng.integers(0, 2, 40), train_clicks=clicks)
    pop = rng.integers(0, 20, 100)
    cand = _ranker_folder(tmp_path / "cand", pop, pop, seed=1, **seg)
    base = _ranker_folder(tmp_path / "base", pop, pop, seed=2)
    g = workflow.evaluation_gate(small_world, cand, base, base, WorkflowConfig(tracking=False))
    masks = segment_masks(seg["target_eval"], clicks, seg["user_clicks_eval"])
    c, b = (np.load(f / "ranks.npz")["eval"] for f in (cand, base))
    for name in ("intent cold-start", "intent <= 100 clicks", "user without training clicks"):
        m = masks[name]
        key = f"{name} (n={m.sum():,}): candidate - baseline"
        assert g.segment_diffs[key]["MRR"].value == pytest.approx(paired_difference(c[m], b[m])["MRR"].value)
    assert "by segment" in g.markdown() and "segment_diffs" in g.to_json()
    from rgalign.metrics import segment_metrics
    assert "seg.intent_cold-start.candidate_vs_baseline.MRR" in segment_metrics(g.segment_diffs)


def test_the_gate_holds_the_popularity_floor_on_the_validation_days(tmp_path, small_world):
    rng = np.random.default_rng(0)
    pop = rng.integers(0, 20, 400)
    good = np.maximum(pop - rng.integers(2, 8, 400), 0)           # ranks the target higher in most sessions
    cfg = WorkflowConfig(tracking=False)
    base = _ranker_folder(tmp_path / "base", pop, pop)
    g = workflow.evaluation_gate(small_world, _ranker_folder(tmp_path / "good", good, pop), base, base, cfg)
    assert g.passed and "beats the floor" in g.reasons[0]
    assert g.val_diffs["candidate - Popularity (floor)"]["MRR"].lo > 0
    g = workflow.evaluation_gate(small_world, _ranker_folder(tmp_path / "same", pop, pop), base, base, cfg)
    assert not g.passed and "nothing is registered" in g.reasons[0]
    assert "Bayes-optimal (ceiling) (whole week)" in g.eval and "Evaluation gate: FAIL" in g.markdown()
    # the gate metric and the margin act
    r3 = workflow.evaluation_gate(small_world, tmp_path / "good", base, base, replace(cfg, gate_metric="R@3"))
    assert r3.reasons[0].startswith("R@3") and r3.metric == "R@3"
    assert "margin 0.50" in g.reasons[1] and "margin 5.00" in workflow.evaluation_gate(
        small_world, tmp_path / "good", base, base, replace(cfg, gate_margin=0.05)).reasons[1]
    other = _ranker_folder(tmp_path / "other", pop[:300], pop[:300])
    with pytest.raises(ValueError, match="other val sessions"):
        workflow.evaluation_gate(small_world, tmp_path / "good", other, base, cfg)


def test_the_gate_fails_when_the_aligned_reasoner_fails_its_check(tmp_path, small_world):
    """A candidate that beats the floor is still refused when its reasoner's latent query carries no meaning
    (the Stage-3 ranker carries the check of the reasoner it read); its query half is reported."""
    rng = np.random.default_rng(0)
    pop = rng.integers(0, 20, 400)
    good = np.maximum(pop - rng.integers(2, 8, 400), 0)
    cfg = WorkflowConfig(tracking=False)
    base = _ranker_folder(tmp_path / "base", pop, pop)
    cand = _ranker_folder(tmp_path / "good", good, pop)
    r = dict(np.load(cand / "ranks.npz"))
    np.savez(cand / "ranks.npz", **r, query_val=good, query_eval=r["eval"])
    for passed in (True, False):
        (cand / "meta.json").write_text(json.dumps({"n_intents": 50, "reasoner_check": {
            "passed": passed, "failures": [] if passed else ["LTP mean pairwise cosine 0.9996 > 0.9 (near-constant)"]}}))
        g = workflow.evaluation_gate(small_world, cand, base, base, cfg)
        assert g.passed is passed and "beats the floor" in g.reasons[0]
        assert any(x.startswith("reasoner check") and ("PASS" if passed else "near-constant") in x for x in g.reasons)
        assert workflow.QUERY_ROW in g.val and workflow.QUERY_ROW in g.eval
        assert any("query half alone" in x for x in g.reasons)


def test_build_reasoner_registers_a_base_and_the_next_run_starts_from_it(tmp_path, small_world, monkeypatch):
    """The first build registers <env>.reasoner-base (keyed by its settings and the world); the next run with
    the same settings copies it instead of pre-training; other settings build anew; reuse_base=False never reads it."""
    from rgalign.reasoner import sources
    from rgalign.registry import Registry
    cfg = WorkflowConfig(reasoner_steps=1, pretrain_batch=1, corpus_sessions=20, distil_teacher="hashing",
                         check_reasoner=False, artifacts=str(tmp_path / "a"))
    builds = []
    real = sources.build_reasoner
    monkeypatch.setattr(sources, "build_reasoner", lambda *a, **k: builds.append(a[0]) or real(*a, **k))
    first = workflow.build_reasoner(small_world, cfg, tmp_path / "r1")
    second = workflow.build_reasoner(small_world, cfg, tmp_path / "r2")
    assert (first["reused_base"], second["reused_base"]) == (0.0, 1.0) and len(builds) == 1
    digest = lambda p: json.loads((p / "rgalign_reasoner.json").read_text())["digest"]  # noqa: E731
    assert digest(tmp_path / "r1") == digest(tmp_path / "r2")
    (v,) = Registry(root=cfg.root).versions("dev", "reasoner-base")
    assert v["aliases"] == ["current"] and v["tags"]["base_key"] == workflow.base_key(cfg.reasoner(), small_world)
    # a checked build carries its figures as tags (MLflow tag keys allow no '@')
    (tmp_path / "r1" / workflow.CHECK_FILE).write_text(json.dumps({"metrics": {"check.reasoner.R@3": 0.5}}))
    v2 = workflow.register_base(tmp_path / "r1", small_world, cfg)
    assert Registry(root=cfg.root).show("dev", "reasoner-base", v2)["tags"]["check.reasoner.R_at_3"] == "0.500000"
    assert workflow.build_reasoner(small_world, replace(cfg, reasoner_steps=2), tmp_path / "r3")["reused_base"] == 0.0
    assert workflow.build_reasoner(small_world, replace(cfg, reuse_base=False), tmp_path / "r4")["reused_base"] == 0.0
    assert len(builds) == 3 and len(Registry(root=cfg.root).versions("dev", "reasoner-base")) == 3


def test_a_shipped_base_is_rebuilt_identically_then_copied_and_registered_instead_of_built(tmp_path, small_world,
                                                                                           monkeypatch):
    """``rgalign reasoner base`` writes the package's shipped base for a key and says whether a rebuild matches it;
    a fresh machine (empty registry) copies the shipped base instead of pre-training and registers it."""
    from rgalign.reasoner import sources
    from rgalign.registry import Registry
    monkeypatch.setattr(workflow, "SHIPPED_BASES", tmp_path / "bases")
    cfg = WorkflowConfig(reasoner_steps=2, pretrain_batch=1, corpus_sessions=20, distil_teacher="hashing",
                         check_reasoner=False, artifacts=str(tmp_path / "a"))
    first = workflow.build_base(small_world, cfg)
    key = workflow.base_key(cfg.reasoner(), small_world)
    assert first["shipped_digest"] is None and first["path"] == str(tmp_path / "bases" / key)
    again = workflow.build_base(small_world, cfg)
    assert again["matches"] and again["shipped_digest"] == first["digest"]      # the build is deterministic
    builds = []
    real = sources.build_reasoner
    monkeypatch.setattr(sources, "build_reasoner", lambda *a, **k: builds.append(a[0]) or real(*a, **k))
    res = workflow.build_reasoner(small_world, cfg, tmp_path / "r1")
    assert res["reused_base"] == 1.0 and not builds
    assert json.loads((tmp_path / "r1" / "rgalign_reasoner.json").read_text())["digest"] == first["digest"]
    (v,) = Registry(root=cfg.root).versions("dev", "reasoner-base")
    assert v["tags"]["base_key"] == key and v["tags"]["reasoner_digest"] == first["digest"]
    assert workflow.build_reasoner(small_world, replace(cfg, reasoner_steps=3), tmp_path / "r2")["reused_base"] == 0.0
    assert len(builds) == 1                                                     # other settings: no shipped base


def test_the_package_ships_the_main_jobs_base_reasoner_for_the_default_world(ci_world):
    cfg = WorkflowConfig()
    key = workflow.base_key(cfg.reasoner(), ci_world)
    shipped = workflow.shipped_base(key)
    assert shipped is not None, (f"no shipped base for key {key}: the main job's reasoner settings changed; rebuild it "
                                 f"with `rgalign reasoner base --world <ci world>` and commit rgalign/reasoner/bases/{key}")
    meta = json.loads((shipped / "rgalign_reasoner.json").read_text())
    check = json.loads((shipped / workflow.CHECK_FILE).read_text())
    assert meta["config_digest"] == cfg.reasoner().digest() and meta["world"] == ci_world.name
    assert check["passed"] and check["digest"] == meta["digest"]          # checked, and the check is of these weights
    assert sorted(p.name for p in workflow.SHIPPED_BASES.iterdir() if p.is_dir()) == [key]   # nothing stale ships


def test_register_refuses_a_candidate_the_gate_did_not_pass(tmp_path):
    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "gate.json").write_text(json.dumps({"passed": False, "reasons": ["MRR below the floor"]}))
    with pytest.raises(ValueError, match="did not pass: MRR below the floor"):
        workflow.register(tmp_path, tmp_path, tmp_path, tmp_path / "gate", WorkflowConfig(artifacts=str(tmp_path)),
                          "run-1")
    assert not (tmp_path / "mlflow.db").exists()


def test_run_chains_the_steps_in_order_and_every_round_aligns_the_last(monkeypatch, tmp_path):
    """The orchestration alone (steps replaced by recorders): order, rounds, the gate, register on/off."""
    calls = []

    def rec(name, ret=None):
        def f(*a, **k):
            calls.append((name, [str(x) for x in a if isinstance(x, (str, Path))]))
            return ret
        return f
    for name in ("prepare_features", "build_reasoner", "embed_ltp", "teacher_queries", "reward_best_of_n", "rga_step"):
        monkeypatch.setattr(workflow, name, rec(name, {}))
    monkeypatch.setattr(workflow, "train_ranker", lambda *a, **k: calls.append((f"train_ranker:{a[4]}", [str(a[1])])))
    monkeypatch.setattr(workflow, "gate_step", lambda *a, **k: calls.append(("gate", [str(a[1])])) or
                        workflow.GateDecision(True, [], {}, {}, {}, "MRR", 0.005))
    monkeypatch.setattr(workflow, "register", rec("register", {"reasoner_version": "1", "ranker_version": "1"}))
    res = workflow.run(WorkflowConfig(rounds=2), tmp_path, world=tmp_path, reasoner=tmp_path / "raw", progress=False)
    names = [c[0] for c in calls]
    assert names == ["embed_ltp", "train_ranker:Stage 1", "train_ranker:Baseline"] + [
        "teacher_queries", "reward_best_of_n", "rga_step", "rga_step", "embed_ltp", "train_ranker:Stage 3"] * 2 + [
        "gate", "register"]
    ltp = [c[1] for c in calls if c[0] == "embed_ltp"]
    assert ltp[0][:2] == [str(tmp_path), str(tmp_path / "raw")] and ltp[2][1] == str(tmp_path / "round2" / "aligned")
    round2 = [c for c in calls if c[0] == "teacher_queries"][1]
    assert str(tmp_path / "round1" / "aligned") in round2[1]                # round 2 aligns round 1's reasoner
    assert calls[-2][1] == [str(tmp_path / "round2" / "stage3")] and res.registered
    calls.clear()
    res = workflow.run(WorkflowConfig(register=False), tmp_path, world=tmp_path, reasoner=tmp_path / "raw",
                       progress=False)
    assert "register" not in [c[0] for c in calls] and res.registered is None


@pytest.mark.slow
def test_a_run_that_fails_the_gate_registers_nothing_and_logs_every_step(ci_world, micro_reasoner, tmp_path):
    """Two closed-loop rounds on a tiny training set (the micro reasoner, 1 epoch): every step leaves an MLflow
    run, round 2 aligns round 1's reasoner, the gate fails on the validation days and nothing is registered."""
    import mlflow

    from rgalign.registry import Registry, RegistryError
    from rgalign.tracking import experiment
    cfg = WorkflowConfig(max_train=150, max_val=120, max_eval=100, ranker_epochs=1, n_samples=16, strategy="V1",
                         rounds=2, sft_epochs=0.5, cl_epochs=1.0, rga_max_length=1024, artifacts=str(tmp_path),
                         check_reasoner=False)   # orchestration only: the check's own tests are test_reasoner*
    res = workflow.run(cfg, tmp_path / "run", world=ci_world, reasoner=micro_reasoner, progress=False)
    assert not res.gate.passed and res.registered is None
    assert "does NOT beat the floor" in res.gate.reasons[0]
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(root=tmp_path).versions("dev", "ranker")
    meta = json.loads((res.reasoner / "rgalign_reasoner.json").read_text())
    assert res.reasoner == tmp_path / "run" / "round2" / "aligned" and meta["source"] == "rg-cl"
    assert "round1" in json.loads((Path(meta["parent"]) / "rgalign_reasoner.json").read_text())["parent"]
    runs = mlflow.search_runs([experiment(workflow.WORKFLOW_EXPERIMENT, None, tmp_path)])
    steps = runs["tags.step"].dropna().tolist() if "tags.step" in runs else []
    labels = runs["tags.stage"].dropna().tolist() if "tags.stage" in runs else []
    assert steps.count("rg-sft") == 2 and steps.count("rg-cl") == 2 and "evaluation-gate" in steps
    assert sorted(labels) == ["Baseline", "Stage 1", "Stage 3", "Stage 3"]
    cl = runs[runs["tags.step"] == "rg-cl"].iloc[0]
    assert cl["params.rg-cl.epochs"] == "1.0" and np.isfinite(cl["metrics.train_loss"])
