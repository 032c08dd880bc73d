"""Scale-out on the standard launchers: 2 ranks on CPU (gloo) against one process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgalign.distributed import DistEnv

from conftest import free_port


def test_a_global_batch_splits_into_contiguous_parts_whose_scaled_losses_average_to_the_global_mean():
    n = 7
    parts = [DistEnv(r, 3).part(n) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 5), (5, 7)]
    x = torch.arange(n, dtype=torch.float32)
    # each rank's part mean times its scale, averaged over the ranks (what DDP does) = the global mean
    assert np.mean([x[p].mean() * DistEnv(r, 3).loss_scale(n) for r, p in enumerate(parts)]) == pytest.approx(x.mean())
    assert DistEnv().loss_scale(n) == 1.0 and DistEnv().part(n) == slice(0, n)
    with pytest.raises(ValueError, match="need 0 <= rank < world"):
        DistEnv(2, 2)


def test_the_launcher_environment_is_read_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = DistEnv.from_env()
    assert (env.rank, env.world, env.enabled, env.main) == (1, 4, True, False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        DistEnv.from_env()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qe-rec", "baseline"])
def test_two_ddp_ranks_train_disjoint_shards_and_match_one_process(small_world, tmp_path, model):
    """``torchrun --nproc_per_node 2 rgalign train ranker``: each rank trains on a disjoint half of every
    epoch, together all of it, and the weights equal the one-process run's (dropout off: each rank draws its
    own masks) within float rounding of the gradient all-reduce."""
    args = ["train", "ranker", "--world", str(small_world), "--model", model, "--query-encoder", "hashing",
            "--intent-encoder", "hashing", "--dropout", "0", "--epochs", "3", "--patience", "5", "--no-tracking"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "rgalign.cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "rgalign.cli", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(2 ranks, DDP)" in two.stdout and two.stdout.count("train sessions") == 1   # rank 0 alone prints
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["ranks"] == 2

    ref = np.load(tmp_path / "one" / "shards" / "rank0.npz")
    r0, r1 = (np.load(tmp_path / "two" / "shards" / f"rank{r}.npz") for r in (0, 1))
    assert list(r0) == list(ref) == ["epoch1", "epoch2", "epoch3"]
    for e in ref:
        assert len(np.intersect1d(r0[e], r1[e])) == 0
        assert abs(len(r0[e]) - len(r1[e])) <= 1 and np.array_equal(np.union1d(r0[e], r1[e]), ref[e])

    a, b = (torch.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst
    # every epoch's global loss and validation MRR agree (the restored best epoch is only one of them), and
    # the loss fell: the two runs trained, not compared two initialisations
    def epochs(out):
        return [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"{model} epoch ")]
    assert epochs(one.stdout) == epochs(two.stdout) and len(epochs(one.stdout)) == 3, (one.stdout, two.stdout)
    losses = [float(e.split()[1]) for e in epochs(one.stdout)]
    assert losses[-1] < losses[0]


def test_the_step_command_offers_exactly_the_rank_steps_and_refuses_others():
    from rgalign.cli import build_parser
    from rgalign.workflow import launch_step, rank_steps
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "step" in a.choices)
    step = sub.choices["step"]
    name = next(a for a in step._actions if a.dest == "name")
    assert sorted(name.choices) == sorted(rank_steps())
    with pytest.raises(ValueError, match="unknown step 'gate'"):
        launch_step("gate", {})
