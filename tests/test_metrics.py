import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from rgalign import metrics as M


def test_ranks_count_ties_against_target():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3], [1.0, 1.0, 1.0]])
    assert M.ranks_from_scores(scores, np.array([2, 1, 0])).tolist() == [1, 0, 2]


def test_hand_worked_recall_ndcg_mrr():
    ranks = np.array([0, 1, 2, 3, 7])
    assert M.recall_at_k(ranks, 3) == pytest.approx(3 / 5)
    assert M.recall_at_k(ranks, 5) == pytest.approx(4 / 5)
    assert M.ndcg_at_k(ranks, 3) == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(4)) / 5)
    assert M.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 8) / 5)


def test_single_relevant_ndcg_matches_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 40))
    target = rng.integers(0, 40, 200)
    y = np.zeros_like(scores)
    y[np.arange(200), target] = 1
    ranks = M.ranks_from_scores(scores, target)
    for k in (3, 5):
        assert M.ndcg_at_k(ranks, k) == pytest.approx(ndcg_score(y, scores, k=k))


def test_graded_ndcg_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, (100, 20)).astype(float)
    s = rng.random((100, 20))
    for k in (3, 5):
        assert M.ndcg_graded(y, s, k) == pytest.approx(ndcg_score(y, s, k=k))


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.random(300) < 0.3
    assert M.auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(M.auc(s, np.ones(300)))


def test_gauc_is_impression_weighted_per_user_auc():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 30, 2000)
    s = rng.random(2000)
    y = rng.random(2000) < 0.2 + 0.3 * s
    expected_num = expected_den = 0.0
    for u in np.unique(users):
        m = users == u
        if y[m].all() or not y[m].any():
            continue
        expected_num += roc_auc_score(y[m], s[m]) * m.sum()
        expected_den += m.sum()
    assert M.gauc(users, s, y) == pytest.approx(expected_num / expected_den)


def test_gauc_from_ranks_equals_sessionwise_sklearn():
    rng = np.random.default_rng(4)
    n_sessions, n = 60, 50
    users = rng.integers(0, 10, n_sessions)
    scores = rng.random((n_sessions, n))
    target = rng.integers(0, n, n_sessions)
    a, w = M.gauc_from_ranks(users, M.ranks_from_scores(scores, target), n)
    for i, u in enumerate(np.unique(users)):
        sess = np.flatnonzero(users == u)
        per = [roc_auc_score(np.arange(n) == target[j], scores[j]) for j in sess]
        assert a[i] == pytest.approx(np.mean(per))
        assert w[i] == len(sess) * n


def test_evaluate_ranks_confidence_intervals():
    rng = np.random.default_rng(5)
    big = M.evaluate_ranks(rng.integers(0, 10, 5000), rng.integers(0, 500, 5000), 100)
    small = M.evaluate_ranks(rng.integers(0, 10, 200), rng.integers(0, 50, 200), 100)
    assert list(big) == list(M.METRICS)
    for m, v in big.items():
        assert v.lo <= v.value <= v.hi
        assert (v.hi - v.lo) < (small[m].hi - small[m].lo)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="scores must be"):
        M.ranks_from_scores(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="target must be"):
        M.ranks_from_scores(np.zeros((3, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="outside"):
        M.ranks_from_scores(np.zeros((3, 4)), np.array([0, 1, 4]))


def test_paired_difference_detects_a_shift_that_separate_intervals_miss():
    # B ranks every session's target one place lower than A: a small real gain for A, shared noise.
    rng = np.random.default_rng(0)
    b = rng.geometric(0.15, 4000) - 1
    a = np.where(rng.random(4000) < 0.15, np.maximum(b - 1, 0), b)
    d = M.paired_difference(a, b)
    sa, sb = M.evaluate_ranks(a), M.evaluate_ranks(b)
    assert d["MRR"].value == pytest.approx(sa["MRR"].value - sb["MRR"].value)
    assert d["MRR"].lo > 0                                   # the paired interval excludes 0 ...
    assert sa["MRR"].lo < sb["MRR"].hi                       # ... while the separate intervals overlap
    same = M.paired_difference(b, b)
    assert all(v.value == 0 and v.lo == 0 == v.hi for v in same.values())
    with pytest.raises(ValueError, match="same sessions"):
        M.paired_difference(a, b[:-1])


def test_across_seeds_is_a_student_t_interval_that_widens_with_the_seed_spread():
    v = M.across_seeds([0.10, 0.20, 0.30])
    # mean 0.2, sd 0.1, t(0.975, df=2) = 4.3027: half-width 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert v.value == pytest.approx(0.2)
    assert (v.lo, v.hi) == pytest.approx((0.2 - 0.24841, 0.2 + 0.24841), abs=1e-4)
    # the README's R@3 differences at 96k sessions, seeds 0-2: a paired-CI win at one seed is not a win
    mixed = M.across_seeds([0.0010, 0.0001, -0.0013])
    assert mixed.lo < 0 < mixed.hi
    assert M.across_seeds([0.0028, 0.0024, 0.0030]).lo > 0      # consistent small gains do exclude 0
    with pytest.raises(ValueError, match="2 or more seeds"):
        M.across_seeds([0.1])
    with pytest.raises(ValueError, match="non-finite"):
        M.across_seeds([0.1, float("nan")])


def test_power_script_matches_statsmodels_and_needs_sessions_when_they_dominate():
    """bench/power.py: without session noise the seeds needed are statsmodels' one-sample t-test solve; with it,
    more seeds cannot beat the per-session floor, more sessions can."""
    import importlib.util
    import math
    from pathlib import Path

    from statsmodels.stats.power import TTestPower
    spec = importlib.util.spec_from_file_location("power", Path(__file__).resolve().parents[1] / "bench" / "power.py")
    power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(power)
    for delta, sd in ((0.002, 0.003), (0.001, 0.004), (0.005, 0.002)):
        want = math.ceil(TTestPower().solve_power(effect_size=delta / sd, power=0.8, alpha=0.05))
        assert power.seeds_needed(delta, 10**12, sd, 0.0) == max(2, want)
    assert power.seeds_needed(0.0015, 5_000, 0.002, 0.4) is None           # 5k sessions can never see 0.15 points
    assert power.seeds_needed(0.0015, 2_000_000, 0.002, 0.4) is not None
    sd_train, sd_sess = power.spreads([{"R@3": {"value": v, "lo": v - 0.01, "hi": v + 0.01}} for v in (0.0, 0.002)],
                                      "R@3", 5_000)
    assert math.isclose(sd_train, math.sqrt(2) * 0.001) and math.isclose(sd_sess, 0.01 * math.sqrt(5_000) / 1.96)
