"""The data contract: it loads and round-trips, drives Feast and the ranker's inputs, and `rgalign data validate`
catches each class of bad input on a broken copy of the world, naming the table, the column and the fix,
while writing nothing."""
import hashlib
import shutil

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
    (lambda d: d["views"][0]["features"][0].update(kind="blob"), "views[0].features[0](gender).kind", "use one of"),
    (lambda d: d["views"][0]["features"][0].pop("vocab"), "(gender).vocab", "list the strings"),
    (lambda d: d["prompt"][0]["features"].append("shoe_size"), "prompt[0].features", "declare it"),
    (lambda d: d["derived"][1].update(utc_offsets=[0, 1]), "(hour_of_day).utc_offsets", "give 9 offsets"),
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
    assert c.name == "telco" and c.request == ("channel",) and c.derived == ("days_in_status",)
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
