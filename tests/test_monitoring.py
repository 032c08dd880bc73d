"""Monitoring: drift methods pinned per window size, the drift gate on the logistics-disruption scenario,
query-embedding drift, and clear errors on bad windows."""
import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DriftInputError, drift_gate, embedding_drift, feature_drift, pinned_methods, score_drift
from rgalign.world.scenarios import logistics_disruption


@pytest.fixture(scope="module")
def features(ci_world):
    """Point-in-time training-week features of the ci world (Feast, offline store)."""
    from rgalign.features.feast_io import FeatureStoreSession
    fs = FeatureStoreSession(ci_world)
    fs.apply()
    return fs.training_set("train").sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_methods_are_pinned_by_window_size():
    assert pinned_methods(999)["cat_method"] == "psi" and pinned_methods(1000)["cat_method"] == "jensenshannon"
    assert pinned_methods(500)["num_method"] == "ks" and pinned_methods(5000)["num_method"] == "wasserstein"


@pytest.mark.parametrize("n", [500, 5000])
def test_gate_fires_on_disruption_and_stays_quiet_on_the_same_distribution(features, ci_world, n):
    ref, same = features.iloc[:n], features.iloc[n:2 * n]
    assert len(same) == n
    from rgalign.contract import load_contract
    c = load_contract(ci_world)
    cols = (c.numerical, c.categorical)
    quiet = drift_gate(feature_drift(ref, same, *cols), critical=c.critical)
    assert not quiet.fired, quiet.reasons
    fired = drift_gate(feature_drift(ref, logistics_disruption(same, share=0.6), *cols), critical=c.critical)
    assert fired.fired and {"order_status", "entry_point"} <= set(feature_drift(ref, logistics_disruption(same, share=0.6), *cols).drifted)
    m = feature_drift(ref, same, *cols).methods
    assert m["cat_method"] == ("psi" if n < 1000 else "jensenshannon")


def test_score_drift_and_bad_windows():
    rng = np.random.default_rng(0)
    assert score_drift(rng.normal(0.2, 0.05, 3000), rng.normal(0.2, 0.05, 3000)).drifted == []
    assert score_drift(rng.normal(0.2, 0.05, 3000), rng.normal(0.3, 0.05, 3000)).drifted == ["top_score"]
    df = pd.DataFrame({"a": [1.0, 2.0]})
    with pytest.raises(DriftInputError, match="empty"):
        feature_drift(df, df.iloc[:0], numerical=["a"], categorical=[])
    with pytest.raises(DriftInputError, match="reference"):
        feature_drift(None, df, numerical=["a"], categorical=[])
    with pytest.raises(DriftInputError, match=r"lacks column\(s\) \['b'\]"):
        feature_drift(df, df, numerical=["a", "b"], categorical=[])
    with pytest.raises(DriftInputError, match="same d"):
        embedding_drift(np.zeros((50, 4)), np.zeros((50, 5)))


def test_embedding_drift_on_a_shifted_reasoner_not_on_a_reseeded_identical_one(features, ci_world, micro_reasoner, tmp_path):
    import torch

    from conftest import build_micro_reasoner
    from rgalign.contract import load_contract
    from rgalign.ranker.inputs import verbalize_frame
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import load_reasoner
    kb = pd.read_parquet(ci_world / "kb.parquet")
    ctx = verbalize_frame(features.iloc[:600], kb, load_contract(ci_world))
    base = LTPEncoder(load_reasoner(micro_reasoner), max_prompt_tokens=256)
    ref = base.embed(ctx[:300])
    twin = LTPEncoder(load_reasoner(build_micro_reasoner(tmp_path / "twin")), max_prompt_tokens=256)  # same seed
    same = twin.embed(ctx[300:])
    assert not embedding_drift(ref, same)["drift"]
    shifted = load_reasoner(micro_reasoner)
    with torch.no_grad():
        for p in shifted.model.model.layers[-1].parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert embedding_drift(ref, LTPEncoder(shifted, max_prompt_tokens=256).embed(ctx[300:]))["drift"]


@pytest.fixture(scope="module")
def baseline_ranker(ci_world, micro_reasoner, tmp_path_factory):
    """A production-baseline ranker (no query tower) trained briefly on the ci world."""
    from rgalign.workflow import WorkflowConfig, train_ranker
    out = tmp_path_factory.mktemp("baseline")
    train_ranker(ci_world, micro_reasoner, WorkflowConfig(max_train=400, max_val=50, max_eval=50, ranker_epochs=2,
                                                          tracking=False, check_reasoner=False), out, model="baseline")
    return out


def test_score_drift_fires_on_a_scenario_that_shifts_scores_and_stays_quiet_on_the_same_week(ci_world, baseline_ranker,
                                                                                           tmp_path):
    from monitoring import jobs
    from monitoring.workspace import project
    quiet = jobs.run_drift(ci_world, window=1000, ranker=str(baseline_ranker), workspace=tmp_path / "ws",
                           models={"ranker": "dev.ranker v7"})
    assert not quiet["scores"].drifted, quiet["scores"].per_column
    shifted = jobs.run_drift(ci_world, window=1000, scenario="logistics", ranker=str(baseline_ranker),
                             workspace=tmp_path / "ws")
    assert shifted["scores"].drifted == ["top_score"], shifted["scores"].per_column
    assert any("ranker score drift" in r for r in shifted["gate"].reasons)
    # every snapshot is named and tagged with its world and scenario, so real and simulated runs plot apart
    ws, p = project(tmp_path / "ws")
    runs = [ws.get_run(p.id, r) for r in ws.list_runs(p.id)]
    names = sorted(r.name for r in runs)
    assert len(names) == 4 and all(ci_world.name in n for n in names), names
    assert sum("logistics scenario" in n for n in names) == 2
    tags = {t for r in runs for t in r.tags}
    assert {"score-drift", "scenario:none", "scenario:logistics", f"world:{ci_world.name}"} <= tags
    assert any(r.metadata.get("ranker") == "dev.ranker v7" for r in runs)


def test_ab_job_log_judge_workspace_and_bad_input(small_world, tmp_path):
    from conftest import chat_reply, json_server
    from monitoring import jobs
    from monitoring.workspace import project, publish
    from rgalign.chat import ChatClient
    from rgalign.judge import IntentJudge
    kb = pd.read_parquet(small_world / "kb.parquet")
    by_desc = dict(zip(kb.description, kb.intent_id))

    def arm(users, eps, k):  # a popularity arm: the same three intents for everyone
        return [{"intent_ids": [1, 2, 3], "scores": [0.3, 0.2, 0.1], "fallback": False} for _ in users]

    def reply(path, body):   # a judge that reads the transcript right
        said = body["messages"][-1]["content"].split("user: ")[1].split("\nassistant")[0]
        return 200, chat_reply(str(by_desc[said]))
    ws, out = tmp_path / "ws", tmp_path / "ab.parquet"
    with json_server(reply) as srv:
        judge = IntentJudge(ChatClient(f"{srv.url}/v1", "fake"), kb)
        res = jobs.run_ab(small_world, arm, arm, days=7, max_sessions=300, out=out, workspace=ws, progress=False, judge=judge)
    log = pd.read_parquet(out)
    assert len(log) == len(res["log"]) and (log.judged_intent == log.true_intent).all()
    assert "agreement with the true intent 1.000" in res["table"]
    # segments: the true intent's and the user's training clicks, and the hit rate per arm in each
    s = pd.read_parquet(small_world / "sessions.parquet")
    clicks = s[(s.split == "train") & (s.clicked_intent > 0)].clicked_intent.value_counts()
    assert (log.seg_cold == ~log.true_intent.isin(clicks.index)).all() and log.seg_tail.sum() >= log.seg_cold.sum()
    tail = log[log.seg_tail & (log.arm == "champion")]
    assert f"| intents with <= 100 training clicks | {len(tail):,} |" in res["table"]
    from monitoring.workspace import ab_snapshots
    snap = ab_snapshots(log)[0].dict()
    cols = {m["config"].get("column") for m in snap["metrics"] if "column" in m.get("config", {})}
    assert {"hit3_seg_tail_champion", "hit3_seg_tail_challenger"} <= cols
    wsp, p = project(ws)
    before = len(wsp.list_runs(p.id))
    assert before > 0
    with pytest.raises(FileExistsError, match="never overwritten"):
        jobs.run_ab(small_world, arm, arm, out=out, progress=False)
    with pytest.raises(ValueError, match="empty"):
        publish(ws, jobs.publish_inputs(log.iloc[:0]))
    assert len(wsp.list_runs(p.id)) == before                       # a failed publish loses no snapshot


def test_cli_bad_logs_and_missing_workspace_are_clear_errors(tmp_path, capsys):
    from rgalign.cli import main
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"session_id": [1], "arm": ["champion"]}).to_parquet(bad)
    assert main(["monitor", "publish", "--log", str(bad), "--workspace", str(tmp_path / "ws")]) == 2
    assert "lacks column(s)" in capsys.readouterr().err
    assert main(["ui", "--workspace", str(tmp_path / "nope")]) == 2
    assert "publish to it first" in capsys.readouterr().err
