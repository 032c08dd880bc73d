"""MLflow registry: lineage, aliases, the promotion gate, overrides, rollback, audit, bad input."""
import numpy as np
import pytest

from rgalign.registry import Registry, RegistryError, log_reasoner_model


@pytest.fixture
def reg(tmp_path):
    return Registry(root=tmp_path)


def _register(reg, path, mrr, run_id="run-1", vs_baseline_lo=0.01):
    """A version as the gated workflow registers it: its MRR and the paired lower bound vs its run's baseline."""
    uri = log_reasoner_model(path, reg.uri, reg.root)
    return reg.register("reasoner", "dev", uri, {"pipeline_run_id": run_id, "world_digest": "abc",
                                                  "feature_service": "intent_ranking_v1"},
                        {"MRR": mrr, "gate.vs_baseline.MRR.lo": vs_baseline_lo})


def test_registered_reasoner_reloads_to_identical_ltp_by_alias(reg, micro_reasoner):
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    v = _register(reg, micro_reasoner, 0.30)
    info = reg.show("dev", "reasoner", "candidate")
    assert info["version"] == v and info["tags"]["world_digest"] == "abc" and info["tags"]["eval.MRR"] == "0.300000"
    ctx = ["User Profile: User Gender: Female", "User Profile: Region: Brazil"]
    a = LTPEncoder(load_reasoner(micro_reasoner)).embed(ctx)
    b = LTPEncoder(load_reasoner("models:/dev.reasoner@candidate")).embed(ctx)
    np.testing.assert_array_equal(a, b)


def test_gate_refuses_a_regression_then_override_is_recorded_and_rollback_restores(reg, micro_reasoner):
    v1 = _register(reg, micro_reasoner, 0.30)
    assert reg.promote("dev", "reasoner", v1, "champion")["version"] == v1
    v2 = _register(reg, micro_reasoner, 0.20, run_id="run-2")
    with pytest.raises(RegistryError, match="inferior to champion v1"):
        reg.promote("dev", "reasoner", v2, "champion")
    assert reg.show("dev", "reasoner", "champion")["version"] == v1       # nothing moved
    out = reg.promote("dev", "reasoner", v2, "champion", override=True, reason="hotfix for a KB change")
    assert out["gate"] == "overridden" and out["previous"] == v1
    champ = reg.show("dev", "reasoner", "champion")
    assert champ["version"] == v2 and "hotfix" in champ["tags"]["gate_override"]
    assert reg.rollback("dev", "reasoner")["champion"] == v1
    assert reg.show("dev", "reasoner", "champion")["version"] == v1
    actions = [(a["action"], a["version"]) for a in reg.audit("dev", "reasoner")]
    assert actions == [("register", v1), ("promote", v1), ("register", v2), ("promote-refused", v2),
                       ("promote", v2), ("rollback", v1)]
    assert [a for a in reg.audit() if a["action"] == "promote" and a["version"] == v2][0]["override"] == "True"
    # a no-op promotion says so and writes no audit line; an override needs a reason
    again = reg.promote("dev", "reasoner", v1, "champion")
    assert again["changed"] is False and "already holds 'champion'" in again["note"]
    assert len(reg.audit("dev", "reasoner")) == len(actions)
    for reason in (None, "  "):
        with pytest.raises(RegistryError, match="--override needs --reason"):
            reg.promote("dev", "reasoner", v2, "champion", override=True, reason=reason)
    assert reg.show("dev", "reasoner", "champion")["version"] == v1 and len(reg.audit("dev", "reasoner")) == len(actions)
    with pytest.raises(RegistryError, match="replaced no earlier champion"):   # v1 was the first champion
        reg.rollback("dev", "reasoner", reason="try")
    assert [(a["action"], a["version"]) for a in reg.audit("dev", "reasoner")][-1] == ("rollback-refused", v1)
    assert reg.show("dev", "reasoner", "champion")["version"] == v1


def test_without_a_champion_the_runs_baseline_is_the_reference(reg, micro_reasoner):
    """No champion yet: a version worse than the production baseline of its own run (paired lower bound below
    -margin) is refused; one registered without that figure is refused too; --override is recorded."""
    worse = _register(reg, micro_reasoner, 0.30, vs_baseline_lo=-0.02)
    with pytest.raises(RegistryError, match="inferior to the production baseline"):
        reg.promote("dev", "reasoner", worse, "champion")
    assert "champion" not in reg.show("dev", "reasoner", worse)["aliases"]
    assert reg.promote("dev", "reasoner", worse, "champion", margin=0.03)["gate"] == "passed"   # the margin acts
    reg2 = Registry(root=reg.root / "other")
    uri = log_reasoner_model(micro_reasoner, reg2.uri, reg2.root)
    bare = reg2.register("reasoner", "dev", uri, {"pipeline_run_id": "r"}, {"MRR": 0.3})
    with pytest.raises(RegistryError, match="not registered by the gated workflow"):
        reg2.promote("dev", "reasoner", bare, "champion")
    assert reg2.promote("dev", "reasoner", bare, "champion", override=True, reason="legacy")["gate"] == "overridden"


def test_a_better_candidate_passes_the_gate(reg, micro_reasoner):
    v1 = _register(reg, micro_reasoner, 0.30)
    reg.promote("dev", "reasoner", v1, "champion")
    v2 = _register(reg, micro_reasoner, 0.298)  # within the 0.005 tolerance
    assert reg.promote("dev", "reasoner", "candidate", "champion")["gate"] == "passed"
    assert reg.show("dev", "reasoner", "champion")["version"] == v2


def test_bad_requests_are_clear_and_leave_no_partial_state(reg, micro_reasoner):
    with pytest.raises(RegistryError, match="does not exist"):
        reg.versions("dev", "ranker")
    v1 = _register(reg, micro_reasoner, 0.30)
    before = reg.versions("dev", "reasoner")
    with pytest.raises(RegistryError, match="no version 7"):
        reg.promote("dev", "reasoner", "7", "champion")
    with pytest.raises(RegistryError, match="alias"):
        reg.promote("dev", "reasoner", v1, "gold")
    with pytest.raises(RegistryError, match="no champion"):
        reg.rollback("dev", "reasoner")
    with pytest.raises(RegistryError, match="kind"):
        reg.versions("dev", "ltp")
    assert reg.versions("dev", "reasoner") == before


def test_cli_errors_exit_non_zero_and_name_the_problem(tmp_path, capsys):
    from rgalign.cli import main
    assert main(["models", "promote", "--kind", "ranker", "--version", "9", "--to", "champion",
                 "--artifacts", str(tmp_path)]) == 3
    assert "dev.ranker' does not exist" in capsys.readouterr().err
    assert main(["models", "list", "--kind", "reasoner", "--artifacts", str(tmp_path)]) == 3
    assert main(["models", "rollback", "--kind", "reasoner", "--artifacts", str(tmp_path)]) == 3


def test_copy_promotes_across_environments_with_lineage(reg, micro_reasoner):
    v = _register(reg, micro_reasoner, 0.30)
    reg.promote("dev", "reasoner", v, "champion")
    pv = reg.copy("reasoner", "dev", "champion", "prod")
    prod = reg.show("prod", "reasoner", "candidate")
    assert prod["version"] == pv and prod["tags"]["copied_from"] == f"dev.reasoner/{v}"
    assert prod["tags"]["world_digest"] == "abc" and prod["tags"]["eval.MRR"] == "0.300000"
    assert reg.show("dev", "reasoner", "champion")["version"] == v          # the source is untouched
    with pytest.raises(RegistryError, match="both 'dev'"):
        reg.copy("reasoner", "dev", v, "dev")


def test_the_champion_gate_compares_both_versions_on_the_same_split(reg, micro_reasoner):
    """A champion registered before the gate carries only eval.* tags: a candidate's val.* figure is not compared
    with it (a different split); both are read from eval.*."""
    v1 = _register(reg, micro_reasoner, 0.30)
    reg.promote("dev", "reasoner", v1, "champion")
    uri = log_reasoner_model(micro_reasoner, reg.uri, reg.root)
    v2 = reg.register("reasoner", "dev", uri, {"pipeline_run_id": "r2"}, {"val.MRR": 0.9, "MRR": 0.10})
    with pytest.raises(RegistryError, match="inferior to champion"):
        reg.promote("dev", "reasoner", v2, "champion")
    (refused,) = [a for a in reg.audit("dev", "reasoner") if a["action"] == "promote-refused"]
    assert refused["split"] == "eval" and refused["candidate_value"] == "0.1"


def test_editing_a_versions_figure_tags_does_not_change_the_gates_decision(reg, micro_reasoner):
    """The gate reads the figures from the run behind a version (metrics: append-only history); the tags are a
    display copy that anyone can edit in the MLflow UI."""
    v1 = _register(reg, micro_reasoner, 0.30)
    reg.promote("dev", "reasoner", v1, "champion")
    v2 = _register(reg, micro_reasoner, 0.20, run_id="run-2")
    assert reg.show("dev", "reasoner", v2)["tags"]["eval.MRR"] == "0.200000"      # the display copy
    reg.client.set_model_version_tag("dev.reasoner", v2, "eval.MRR", "0.99")
    reg.client.set_model_version_tag("dev.reasoner", v1, "eval.MRR", "0.01")
    with pytest.raises(RegistryError, match=r"MRR=0.2000 is inferior to champion v1 MRR=0.3000"):
        reg.promote("dev", "reasoner", v2, "champion")
    # no champion: the paired bound vs the run's baseline comes from the run too
    solo = Registry(root=reg.root / "solo")
    w = _register(solo, micro_reasoner, 0.30, vs_baseline_lo=-0.02)
    solo.client.set_model_version_tag("dev.reasoner", w, "gate.vs_baseline.MRR.lo", "0.5")
    with pytest.raises(RegistryError, match="inferior to the production baseline"):
        solo.promote("dev", "reasoner", w, "champion")
    with pytest.raises(RegistryError, match="logged in a run"):       # figures need a run to live in
        reg.register("reasoner", "dev", str(micro_reasoner), {}, {"MRR": 0.3})


def test_copying_a_ranker_brings_its_parent_reasoner(reg, micro_reasoner, tmp_path):
    from rgalign.registry import run_of
    rv = _register(reg, micro_reasoner, 0.30)
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "model.pt").write_bytes(b"weights")
    import mlflow

    class Stub(mlflow.pyfunc.PythonModel):   # a logged model holding a ranker-shaped folder (model.pt)
        def predict(self, context, model_input):
            return model_input
    from rgalign.tracking import experiment
    exp = experiment("ranker-copy", reg.uri, reg.root)   # in the registry's store, artifacts under its root
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="ranker", python_model=Stub(), artifacts={"ranker": str(tmp_path / "ranker")})
    kv = reg.register("ranker", "dev", info.model_uri,
                      {"parent_reasoner": f"dev.reasoner/{rv}"}, {"MRR": 0.3, "gate.vs_baseline.MRR.lo": 0.01})
    pv = reg.copy("ranker", "dev", kv, "prod")
    prod = reg.show("prod", "ranker", pv)
    assert prod["tags"]["parent_reasoner"] == "prod.reasoner/1"
    assert reg.show("prod", "reasoner", "1")["tags"]["copied_from"] == f"dev.reasoner/{rv}"
    assert reg.serving_bundle("prod", "candidate")["reasoner"]["name"] == "prod.reasoner"
    # the copy keeps the figures (the same run) and a second ranker on the same reasoner reuses its copy
    assert reg.figures("prod.ranker", pv)["eval.MRR"] == pytest.approx(0.3)
    assert run_of(info.model_uri, reg.client) == run.info.run_id == run_of(f"runs:/{run.info.run_id}/x")
    pv2 = reg.copy("ranker", "dev", kv, "prod", alias="challenger")
    assert reg.show("prod", "ranker", pv2)["tags"]["parent_reasoner"] == "prod.reasoner/1"
    assert len(reg.versions("prod", "reasoner")) == 1
