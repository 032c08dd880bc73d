"""The data contract: it loads and round-trips, drives Feast and the ranker's inputs, and `rgalign data validate`
catches each class of bad input on a broken copy of the world, naming the table, the column and the fix,
while writing nothing."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rgalign.contract import ContractError, load_contract
from rgalign.contract.contract import contract_from_dict
from rgalign.contract.validate import validate_dataset
from rgalign.world import CONTRACT_PATH, bench_contract


def test_bench_contract_round_trips_and_orders_the_model_inputs():
    c = bench_contract()
    assert contract_from_dict(c.to_dict()) == contract_from_dict(yaml.safe_load(CONTRACT_PATH.read_text()))
    # the ranker's inputs follow the prompt order; every categorical one has a vocabulary
    assert c.categorical == [n for n in c.verbalized if c.features[n].kind == "categorical"]
    assert all(c.features[n].vocab for n in c.categorical)
    assert set(c.log1p) <= set(c.numerical)
    assert c.features["hour_of_day"].group == "Order Status and Interaction Context"


@pytest.mark.parametrize("edit, where, fix", [
    (lambda d: d["views"][0]["features"][0].update(kind="blob"), "views[0].features[0] (gender).kind", "use one of"),
    (lambda d: d["views"][0]["features"][0].pop("vocab"), " (gender).vocab", "list the strings"),
    (lambda d: d["prompt"][0]["features"].append("shoe_size"), "prompt[0].features", "declare it"),
    (lambda d: d["derived"][1].update(utc_offsets=[0, 1]), " (hour_of_day).utc_offsets", "give 9 offsets"),
    (lambda d: d.update(version=2), "version", "version: 1"),
    (lambda d: d["sequence"].update(times="nope"), "sequence", "point `sequence`"),
])
def test_a_bad_contract_names_the_field_and_the_fix(edit, where, fix):
    d = yaml.safe_load(CONTRACT_PATH.read_text())
    edit(d)
    with pytest.raises(ContractError) as e:
        contract_from_dict(d)
    assert where in str(e.value) and fix in str(e.value)


def test_the_init_scaffold_is_a_valid_contract_and_never_overwrites(tmp_path):
    from rgalign.contract.scaffold import init_project
    written = init_project(tmp_path / "telco")
    c = load_contract(tmp_path / "telco")
    assert c.name == "telco" and c.request == ("channel",) and c.derived == ("days_since_change",)
    assert {p.name for p in written} >= {"contract.yaml", "definitions.py", "feature_store.yaml", "README.md"}
    with pytest.raises(FileExistsError, match="never overwrites"):
        init_project(tmp_path / "telco")


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def broken(ci_world, tmp_path):
    """A copy of the world whose table ``name`` gets ``edit(df) -> df``."""
    def make(name, edit):
        d = tmp_path / "data"
        shutil.copytree(ci_world, d, ignore=shutil.ignore_patterns("hidden"))
        df = edit(pd.read_parquet(d / f"{name}.parquet"))
        df.to_parquet(d / f"{name}.parquet", index=False)
        return d
    return make


def _first_train(s):
    return s.index[s.split == "train"][0]


def _unorder(b):
    i = b.index[b.recent_click_ts.map(len) >= 2][0]
    b.at[i, "recent_click_ts"] = list(b.at[i, "recent_click_ts"])[::-1]
    return b


CASES = [  # (table, edit, "table.column" in the message, words of the problem, words of the fix)
    ("profiles", lambda df: df.drop(columns="region"), "profiles.region", "missing", "add column region"),
    ("profiles", lambda df: df.assign(favourite_colour=1), "profiles.favourite_colour", "not in the contract",
     "declare them"),
    ("sessions", lambda df: df.assign(user_id=df.user_id.astype(str)), "sessions.user_id", "has type", "integers"),
    ("profiles", lambda df: df.assign(gender=np.where(np.arange(len(df)) == 3, 99, df.gender)), "profiles.gender",
     "outside the vocabulary 0..3", "map the values"),
    ("sessions", lambda df: df.assign(clicked_intent=np.where(np.arange(len(df)) == 5, 99_999, df.clicked_intent)),
     "sessions.clicked_intent", "not in the KB", "add those intents"),
    ("behaviour", _unorder, "behaviour.recent_click_ts", "out of order", "oldest first"),
    ("profiles", lambda df: df.assign(event_timestamp=df.event_timestamp.where(
        np.arange(len(df)) != 0, pd.Timestamp("2099-01-01", tz="UTC"))), "profiles.event_timestamp", "in the future",
     "time zone"),
    ("sessions", lambda df: df.assign(split=np.where(df.index == _first_train(df), "eval", df.split)),
     "sessions.event_timestamp", "not after the last training session", "split by time"),
    ("sessions", lambda df: pd.concat([df, df.iloc[:2]]), "sessions.session_id", "share a key", "one row per key"),
    ("order_context", lambda df: df.iloc[:0], "order_context", "is empty", "at least one row"),
    ("kb", lambda df: df.assign(intent_id=df.intent_id + 1), "kb.intent_id", "not 1..", "renumber"),
]


@pytest.mark.parametrize("table, edit, where, problem, fix", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_validate_catches_bad_input_and_writes_nothing(broken, table, edit, where, problem, fix):
    d = broken(table, edit)
    before = _digest(d)
    report = validate_dataset(d)
    assert not report.ok
    hit = [p for p in report.errors if str(p).startswith(where) and problem in str(p)]
    assert hit, report.table()
    assert fix in hit[0].fix and (hit[0].sample or not hit[0].column or "missing" in problem
                                  or "type" in problem or "contract" in problem), hit[0]
    assert _digest(d) == before   # read only: nothing written, nothing removed


def test_the_world_follows_its_contract_and_the_cli_exit_codes(ci_world, broken, capsys):
    from rgalign.cli import main
    assert validate_dataset(ci_world).ok
    assert main(["data", "validate", str(ci_world)]) == 0
    assert "follows its data contract" in capsys.readouterr().out
    d = broken("sessions", lambda df: df.drop(columns="split"))
    assert main(["data", "validate", str(d)]) == 1
    assert "sessions.split: column is missing" in capsys.readouterr().out


def test_prepare_features_refuses_a_dataset_that_breaks_its_contract_and_writes_nothing(broken, tmp_path):
    from rgalign.workflow import WorkflowConfig, prepare_features
    d = broken("sessions", lambda df: df.assign(clicked_intent=df.clicked_intent.where(df.index != 0, 99_999)))
    out = tmp_path / "step"
    with pytest.raises(ValueError, match=r"sessions.clicked_intent: 1 row\(s\) name intents not in the KB"):
        prepare_features(WorkflowConfig(data=str(d), tracking=False), out)
    assert not out.exists() or not any(out.iterdir())


def test_the_telecom_example_follows_its_contract_and_differs_in_shape(telecom):
    c = load_contract(telecom)
    bench = bench_contract()
    assert validate_dataset(telecom).ok
    assert not set(c.features) & set(bench.features)          # no feature of the benchmark world
    assert c.request == ("opened_from",) and c.derived == ("days_since_change",)
    assert c.sequence["window_hours"] == 48 and c.max_recent == 6 and not c.playbook
    kb = pd.read_parquet(telecom / "kb.parquet")
    assert len(kb) < 100 and (kb.launch_day > 0).any()        # a small KB with cold-start intents


@pytest.mark.slow
def test_the_telecom_domain_runs_the_training_workflow_and_answers_through_the_kserve_server(telecom, tmp_path, two_threads):
    """The second domain through every step of the training workflow (in this process: the functions the KFP
    components call, whose kfp.local run on the benchmark world is tests/test_pipeline.py's; small settings: a
    40-step tiny reasoner built on the domain's own corpus, RG-SFT only, no reasoner check: a reasoner that
    short is near-constant), registered, and a recommend call through `rgalign serve`, which finds the dataset
    from the version's lineage: no code knows the domain, only its contract."""
    import httpx
    from conftest import free_port, start_server
    from rgalign import workflow
    from rgalign.registry import Registry
    cfg = workflow.WorkflowConfig(data=str(telecom), reasoner_steps=40, corpus_sessions=300, n_samples=48,
                                  min_samples=4, ranker_epochs=4, max_eval=500, rga_method="sft",
                                  check_reasoner=False, artifacts=str(tmp_path))
    res = workflow.run(cfg, tmp_path / "run", progress=False)
    assert res.gate.passed and res.registered, res.gate.reasons
    (ranker,) = Registry(root=tmp_path).versions("dev", "ranker")
    assert Path(ranker["tags"]["dataset"]).name == "telecom" and ranker["aliases"] == ["candidate"]
    port = free_port()
    cmd = [sys.executable, "-m", "rgalign.cli", "serve", "--env", "dev", "--alias", "candidate", "--artifacts",
           str(tmp_path), "--port", str(port), "--threads", "1"]
    proc, url = start_server(cmd, port, tmp_path / "serve.log")
    try:
        meta = httpx.get(f"{url}/v2/models/recommend", timeout=30).json()
        assert [i["name"] for i in meta["inputs"]] == ["user_id", "opened_from"]   # the contract's request
        user = int(pd.read_parquet(telecom / "subscriber_profile.parquet").user_id.iloc[0])
        r = httpx.post(f"{url}/v1/models/recommend:predict", timeout=60,
                       json={"instances": [{"user_id": user, "opened_from": 2}, {"user_id": 10**9}], "k": 3})
        assert r.status_code == 200, r.text
        known, unknown = r.json()["predictions"]
        assert not known["fallback"] and len(known["intent_ids"]) == 3 and unknown["reason"] == "unknown user"
        bad = httpx.post(f"{url}/v1/models/recommend:predict", timeout=30,
                         json={"instances": [{"user_id": user, "entry_point": 2}]})
        assert bad.status_code == 400 and "entry_point" in bad.text and "opened_from" in bad.text
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("stats", [True, False])
def test_time_range_reads_the_statistics_or_scans_and_agrees_with_the_data(tmp_path, stats):
    """The materialize window from parquet statistics (no data read), or a batched scan of a file written
    without them; naive timestamps are read as UTC; an empty table is skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rgalign.contract.dataset import column_range
    ts = pd.to_datetime(["2026-03-02 05:00", "2026-01-31 23:30", "2026-02-10 12:00"])
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"event_timestamp": ts, "x": [1, 2, 3]}), path, row_group_size=1, write_statistics=stats)
    lo, hi = column_range(path, "event_timestamp")
    assert (lo, hi) == (ts.min().tz_localize("UTC"), ts.max().tz_localize("UTC"))
    pq.write_table(pa.table({"event_timestamp": ts[:0], "x": pa.array([], pa.int64())}), path, write_statistics=stats)
    assert column_range(path, "event_timestamp") is None
