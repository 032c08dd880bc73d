"""Stage 1 end to end at ci scale: Feast -> verbalize -> encoders -> train -> evaluate -> MLflow -> reload."""
import dataclasses

import mlflow
import numpy as np
import pytest
import torch

from rgalign.config import RankerConfig
from rgalign.ranker.inputs import load_ranker_inputs
from rgalign.ranker.ranker_trainer import RankerTrainer, score_all
from rgalign.ranker.stage1 import run_ranker
from rgalign.world.generate import load_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(ci_world):
    return load_ranker_inputs(ci_world, progress=False)


def test_inputs_are_aligned_and_leak_free(inputs):
    assert len(inputs.query["train"]) == len(inputs.train) and len(inputs.query["eval"]) == len(inputs.eval)
    assert inputs.semantic.shape == (len(inputs.kb), 384)  # all-MiniLM-L6-v2 from the wheel
    assert (inputs.train.clicked_intent > 0).all() and (inputs.train.day < 25).all()
    assert (inputs.val.day >= 25).all() and (inputs.val.day < 28).all()
    assert (inputs.eval.day >= 28).all() and "true_intent" in inputs.eval
    assert "true_intent" not in inputs.train and "true_intent" not in inputs.val


@pytest.mark.parametrize("model", ["qe-rec", "baseline"])
def test_trained_ranker_beats_the_popularity_floor(inputs, ci_world, model):
    run = run_ranker(RankerConfig(model=model, epochs=6), ci_world, tracking=False, inputs=inputs, progress=False)
    row = next(iter(run.table.values()))
    floor = load_manifest(ci_world)["report"]["Popularity (floor)"]
    for m in ("R@3", "MRR"):
        assert row[m].lo > floor[m]["hi"], (m, row[m], floor[m])
    assert len(run.result.history) >= 1 and run.result.samples_per_s > 0


def test_training_is_deterministic_per_seed(inputs):
    cfg = RankerConfig(epochs=1, max_train_sessions=600)
    a = RankerTrainer(cfg, inputs, progress=False).train().model.state_dict()
    b = RankerTrainer(cfg, inputs, progress=False).train().model.state_dict()
    c = RankerTrainer(RankerConfig(epochs=1, seed=1), inputs, progress=False).train().model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_trainer_refuses_inputs_its_config_does_not_describe(inputs):
    with pytest.raises(ValueError, match="query_encoder='lsa', but the inputs were encoded with 'hashing'"):
        RankerTrainer(RankerConfig(query_encoder="lsa"), inputs, progress=False)
    with pytest.raises(ValueError, match="intent_encoder='hashing', but the inputs were encoded with 'minilm'"):
        RankerTrainer(RankerConfig(intent_encoder="hashing"), inputs, progress=False)
    with pytest.raises(ValueError, match="query_dim=64, but the inputs hold 256-d hashing"):
        RankerTrainer(RankerConfig(query_dim=64), inputs, progress=False)
    RankerTrainer(RankerConfig(model="baseline", query_encoder="lsa"), inputs, progress=False)  # reads no text
    RankerTrainer(RankerConfig(query_encoder="lsa"), dataclasses.replace(inputs, query_encoder="ltp-v1"),
                  progress=False)  # a reasoner's query embedding is not a text-encoder choice


def test_mlflow_pyfunc_reloads_to_identical_scores(inputs, ci_world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ltp_named = dataclasses.replace(inputs, query_encoder="ltp-v1")   # as Stage 3 passes a reasoner's LTP
    run = run_ranker(RankerConfig(epochs=1), ci_world, tracking_uri=uri, root=tmp_path, inputs=ltp_named,
                     progress=False)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    r = client.get_run(run.run_id)
    assert r.data.params["ranker.w"] == "0.7" and r.data.tags["feature_service"] == "intent_ranking_v1"
    assert r.data.params["ranker.query_encoder"] == "ltp-v1"      # what built the inputs, not the config default
    assert [m.step for m in client.get_metric_history(run.run_id, "val_mrr")] == [1]
    assert "evaluation/table.md" in [a.path for a in client.list_artifacts(run.run_id, "evaluation")]
    loaded = mlflow.pyfunc.load_model(run.model_uri)
    rows = inputs.eval.head(16).copy()
    rows["query_embedding"] = list(inputs.query["eval"][:16])
    out = loaded.predict(rows, params={"k": 1016})
    trainer_scores = score_all(run.result.model, _data(run, inputs, 16))
    for i in range(16):
        ids, scores = np.asarray(out.intent_ids[i]), np.asarray(out.scores[i])
        np.testing.assert_array_equal(scores, trainer_scores[i, ids - 1])
        assert (np.diff(scores) <= 0).all()


def test_eval_compares_logged_rankers_session_by_session(inputs, ci_world, tmp_path, capsys):
    from rgalign.cli import main
    from rgalign.metrics import paired_difference
    from rgalign.ranker.ranker_trainer import model_ranks
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = [run_ranker(RankerConfig(model=m, epochs=1), ci_world, tracking_uri=uri, root=tmp_path, inputs=inputs,
                       progress=False) for m in ("baseline", "qe-rec")]
    assert main(["eval", "--world", str(ci_world), "--tracking-uri", uri, "--artifacts", str(tmp_path),
                 "--model-uri", runs[0].model_uri, runs[1].model_uri]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(f"| qe-rec ({runs[1].model_uri}) - baseline"))
    ranks = [model_ranks(r.result.model, _data(r, inputs, len(inputs.eval))) for r in runs]
    want = paired_difference(ranks[1], ranks[0])
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    assert cells[0] == want["R@3"].fmt() and cells[-1] == want["MRR"].fmt()   # columns: R@3 ... MRR
    assert want["MRR"].value != 0                                             # two different models
    # by segment: the same paired difference on the sessions whose true intent had <= 100 training clicks
    from rgalign.metrics import segment_masks
    from rgalign.workflow import user_training_clicks
    users = user_training_clicks(ci_world).reindex(inputs.eval.user_id).fillna(0).to_numpy()
    m = segment_masks(inputs.eval.true_intent.to_numpy(), inputs.train_clicks, users)["intent <= 100 clicks"]
    seg = next(line for line in out.splitlines() if line.startswith(f"| intent <= 100 clicks (n={m.sum():,}): qe-rec"))
    assert seg.rstrip(" |").endswith(paired_difference(ranks[1][m], ranks[0][m])["MRR"].fmt())


def _data(run, inputs, n):
    from rgalign.ranker.data import RankerData
    return RankerData.build(inputs.eval.head(n), run.result.spec, inputs.query["eval"][:n], "true_intent")


def test_lsa_query_encoder_is_fitted_on_training_contexts_and_cached(ci_world, inputs):
    from rgalign.ranker.inputs import cache_dir
    a = load_ranker_inputs(ci_world, query_encoder="lsa", query_dim=32, progress=False)
    for split in ("train", "val", "eval"):
        e = a.query[split]
        assert e.shape == (len(getattr(inputs, split)), 32)
        assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert len(list(cache_dir(ci_world).glob("query-lsa-32-fit*.npy"))) == 3
    b = load_ranker_inputs(ci_world, query_encoder="lsa", query_dim=32, progress=False)  # from the cache
    assert all(np.array_equal(a.query[s], b.query[s]) for s in a.query)
    # contexts that differ in their order status are further apart than two with the same status
    st = inputs.eval.order_status.to_numpy()
    same = a.query["eval"][st == st[0]][:50] @ a.query["eval"][st == st[0]][:50].T
    diff = a.query["eval"][st == st[0]][:50] @ a.query["eval"][st != st[0]][:50].T
    assert same.mean() > diff.mean()
