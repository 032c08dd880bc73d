import json
import subprocess
import sys

import pytest

from rgalign.cli import main


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rgalign.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_scale_is_refused():
    r = run("world", "generate", "--scale", "huge")
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr


def test_missing_bitext_names_the_file_and_writes_nothing(tmp_path, capsys):
    rc = main(["world", "generate", "--n-users", "20", "--out", str(tmp_path / "w"),
               "--bitext", str(tmp_path / "nope.csv")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Bitext dataset not found" in err and "nope.csv" in err
    assert not (tmp_path / "w").exists()


def test_world_generate_and_show(tmp_path, capsys):
    assert main(["world", "generate", "--n-users", "100", "--seed", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| Bayes-optimal (ceiling) |" in out and "| Popularity (floor) |" in out
    assert main(["world", "show", str(tmp_path / "ci-u100-s1")]) == 0
    assert "1016 intents" in capsys.readouterr().out
    assert main(["world", "show", str(tmp_path / "nothing")]) == 2
    assert "not a generated world" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_end_to_end_is_idempotent(tmp_path):
    first = run("quickstart", "--out", str(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "training set:" in first.stdout and "The user question is:" in first.stdout
    manifest = tmp_path / "worlds" / "ci-s0" / "manifest.json"
    online = tmp_path / "feast" / "ci-s0" / "online_store.db"
    before = (manifest.stat().st_mtime_ns, json.loads(manifest.read_text())["files"])
    assert online.stat().st_size > 0
    second = run("quickstart", "--out", str(tmp_path), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (manifest.stat().st_mtime_ns, json.loads(manifest.read_text())["files"]) == before
    # same world, same summary
    assert first.stdout.split("done in")[0].split("[4/4]")[1] == second.stdout.split("done in")[0].split("[4/4]")[1]


def test_user_errors_are_one_line_and_internal_errors_keep_their_traceback(monkeypatch, small_world, capsys):
    """A missing record the user asked for is a one-line exit 2; a KeyError from a bug is not swallowed."""
    import rgalign.cli as cli
    assert main(["features", "prompt", "--world", str(small_world), "--session-id", "999999999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "session_id 999999999 is not in the evaluation week" in err
    monkeypatch.setattr(cli, "cmd_world_show", lambda args: {}["a bug"])
    with pytest.raises(KeyError, match="a bug"):
        main(["world", "show", str(small_world)])


def test_the_next_steps_a_pipeline_run_prints_name_its_folders_and_real_commands(tmp_path):
    from rgalign.cli import _next_steps, build_parser
    from test_docs import check
    assert _next_steps(tmp_path, "dev") is None                      # no run yet: nothing to point at
    pf = tmp_path / "kfp" / "rgalign-training-2026-12-01" / "prepare-features"
    (pf / "world" / "ci-s0").mkdir(parents=True)
    (pf / "world" / "ci-s0" / "contract.yaml").write_text("version: 1")
    text = _next_steps(tmp_path, "staging")
    commands = [line.strip().split("   (")[0] for line in text.splitlines() if line.strip().startswith("rgalign ")]
    assert len(commands) == 3 and all(check(c, build_parser()) is None for c in commands)
    # serve finds the run's dataset from the version's lineage; the A/B replay names the run's folders
    assert commands[0].startswith("rgalign serve --env staging --alias candidate --artifacts") and "--world" not in commands[0]
    assert f"--world {pf / 'world' / 'ci-s0'} --feast-dir {pf / 'feast' / 'ci-s0'}" in commands[1]


def test_the_popularity_arm_reads_through_the_other_arms_version_so_a_candidate_needs_no_champion(monkeypatch):
    import argparse

    import rgalign.cli as cli
    from rgalign.recommend import Recommender
    asked = []

    class Fake:
        popularity, recommend = "popularity-list", "ranked"
        bundle = {"ranker": {"name": "dev.ranker", "version": "4"}}
    monkeypatch.setattr(Recommender, "from_registry", classmethod(lambda cls, reg, env, ref, *a: asked.append(ref) or Fake))
    args = argparse.Namespace(tracking_uri=None, artifacts="unused", env="dev", world="w", feast_dir=None)
    # each arm comes with what it serves (the A/B log's arm_target and the snapshots' metadata)
    assert cli._arm("popularity", args, "candidate") == ("popularity-list", "popularity (the training clicks of "
                                                        "dev.ranker v4)") and asked == ["candidate"]
    url = "http://127.0.0.1:8081/v1/models/recommend:predict"
    assert cli._arm("popularity", args, url)[0] == "popularity-list"
    assert cli._arm("candidate", args, "popularity") == ("ranked", "dev.ranker v4 (@candidate)")
    assert asked[1:] == ["champion", "candidate"]
    assert cli._arm(url, args) == (url, url) and cli._arm("4", args)[1] == "dev.ranker v4"


@pytest.mark.parametrize("omp", ["1", "3"])
def test_the_test_script_runs_one_worker_per_core_whatever_omp_num_threads_says(omp):
    """scripts/test.sh picks its pytest-xdist workers from the cores; env.sh sets OMP_NUM_THREADS=1 first, and
    GNU nproc counts that variable, so a plain $(nproc) ran the whole suite in one process."""
    import os
    from pathlib import Path
    lines = [ln for ln in (Path(__file__).resolve().parents[1] / "scripts" / "test.sh").read_text().splitlines()
             if ln.startswith(("cores=", "workers="))]
    assert lines and lines[-1].startswith("workers="), "scripts/test.sh: expected a workers= line"
    env = {k: v for k, v in os.environ.items() if k != "RGALIGN_TEST_WORKERS"} | {"OMP_NUM_THREADS": omp}
    got = subprocess.run(["bash", "-c", "\n".join(lines) + '\necho "$workers"'], capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert int(got) == min(len(os.sched_getaffinity(0)), 4)
