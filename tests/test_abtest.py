"""A/B statistics and the simulated user's feedback (paper Table 5 metrics)."""
import numpy as np
import pandas as pd
import pytest

from rgalign.abtest import ab_summary, assign_arm, msprt_pvalues, simulate_ab, two_proportion_ztest
from rgalign.world.feedback import respond


@pytest.mark.parametrize("x1,n1,x2,n2", [(120, 1000, 150, 1000), (30, 400, 31, 500), (0, 50, 3, 60), (500, 900, 480, 1000)])
def test_ztest_equals_statsmodels(x1, n1, x2, n2):
    from statsmodels.stats.proportion import proportions_ztest
    z, p = two_proportion_ztest(x1, n1, x2, n2)
    z_sm, p_sm = proportions_ztest([x2, x1], [n2, n1])
    assert z == pytest.approx(z_sm, rel=1e-9) and p == pytest.approx(p_sm, rel=1e-9)


def test_sequential_pvalue_stays_valid_under_peeking():
    """Under the null, checking the always-valid p-value at 100 looks rejects rarely; a naive z-test at every
    look rejects far more often (the reason the sequential test exists). A real effect is found."""
    rng = np.random.default_rng(0)
    seq = naive = 0
    for _ in range(200):
        a, b = rng.random(2000) < 0.2, rng.random(2000) < 0.2
        seq += msprt_pvalues(a, b).min() < 0.05
        naive += any(two_proportion_ztest(a[:n].sum(), n, b[:n].sum(), n)[1] < 0.05 for n in range(100, 2001, 100))
    assert seq / 200 <= 0.06 and naive / 200 > 0.15
    a, b = rng.random(4000) < 0.2, rng.random(4000) < 0.26
    assert msprt_pvalues(a, b)[-1] < 0.05
    assert np.all(np.diff(msprt_pvalues(a, b)) <= 0)       # monotone: a p-value never comes back up


def test_assignment_is_sticky_and_honours_the_share():
    users = np.arange(20_000)
    arms = assign_arm(users, 0.3)
    assert abs((arms == "challenger").mean() - 0.3) < 0.015
    assert (assign_arm(users[::-1], 0.3)[::-1] == arms).all()       # per user, not per position or call
    with pytest.raises(ValueError, match="share"):
        assign_arm(users, 1.5)


def test_feedback_counts_sessions_without_clicks_and_uses_common_random_numbers():
    B = 5000
    true = np.full(B, 7)
    ids = np.arange(B)
    hit = respond(np.tile([7, 1, 2], (B, 1)), true, ids)
    miss = respond(np.tile([1, 2, 3], (B, 1)), true, ids)
    assert (hit["hit3"] == 1).all() and (miss["hit3"] == 0).all()
    assert 0.7 < hit["click3"].mean() < 0.95 and miss["click3"].mean() == pytest.approx(0.10, abs=0.02)
    assert len(miss["click3"]) == B                                    # no-click sessions are rows (0), not dropped
    good = lambda r: (r["csat"] == "good").sum() / max(1, (r["csat"] != "none").sum())  # noqa: E731
    assert good(hit) > 0.8 > 0.2 > good(miss)
    again = respond(np.tile([7, 1, 2], (B, 1)), true, ids)
    assert (again["clicked_intent"] == hit["clicked_intent"]).all()  # same session -> same draws


def _sessions(n=4000):
    rng = np.random.default_rng(1)
    return pd.DataFrame({"session_id": np.arange(n), "user_id": rng.integers(0, 1500, n),
                         "event_timestamp": pd.date_range("2026-10-01", periods=n, freq="min", tz="UTC"),
                         "entry_point": rng.integers(1, 9, n), "true_intent": rng.integers(1, 40, n)})


def _oracle(truth: dict, wrong_popular: bool = False, seen: list | None = None):
    """An arm that shows the true intent first (or, for the clickbait arm, a popular wrong one first); ``seen``
    collects the request features it was called with."""
    def call(users, requests, k):
        if seen is not None:
            seen.extend(zip(users, requests))
        out = []
        for u in users:
            t = truth[u]
            ids = [99, 98, 97] if wrong_popular else [t, 98, 97]
            out.append({"intent_ids": ids, "scores": [0.9, 0.5, 0.1], "fallback": False})
        return out
    return call


def test_simulation_log_and_guardrail_flags_a_clickbait_challenger():
    s = _sessions()
    s["true_intent"] = s.user_id % 40 + 1                          # one intent per user, so the oracle can know it
    truth = dict(zip(s.user_id, s.true_intent))
    seen = []
    log = simulate_ab(s, {"champion": _oracle(truth, seen=seen), "challenger": _oracle(truth, wrong_popular=True)},
                      progress=False, request=["entry_point"])
    assert len(log) == len(s) and set(log.arm) == {"champion", "challenger"}
    # each arm gets the session's request features, and the log keeps them
    champ = s[log.set_index("session_id").loc[s.session_id, "arm"].to_numpy() == "champion"]
    assert sorted((u, r["entry_point"]) for u, r in seen) == sorted(zip(champ.user_id, champ.entry_point))
    assert (log.set_index("session_id").entry_point == s.set_index("session_id").entry_point).all()
    assert log.groupby("user_id").arm.nunique().max() == 1         # sticky
    summ = ab_summary(log)
    rows = {r.metric: r for r in summ["rows"]}
    assert rows["intent hit rate"].challenger == 0 and rows["intent hit rate"].champion == 1
    assert rows["CSAT"].challenger < rows["CSAT"].champion and summ["guardrail_breached"]


def test_bad_logs_get_clear_errors():
    with pytest.raises(KeyError, match="csat"):
        ab_summary(pd.DataFrame({"arm": ["champion"], "click3": [1]}))
    s = _sessions(50)
    with pytest.raises(ValueError, match="no sessions"):
        simulate_ab(s.iloc[:0], {"champion": None, "challenger": None}, progress=False)
    with pytest.raises(KeyError, match="true_intent"):
        simulate_ab(s.drop(columns="true_intent"), {"champion": None, "challenger": None}, progress=False)
    log = simulate_ab(s, {"champion": _oracle(dict.fromkeys(s.user_id, 1)), "challenger": _oracle(dict.fromkeys(s.user_id, 1))},
                      share=0.0, progress=False)
    with pytest.raises(ValueError, match="challenger"):
        ab_summary(log)


def test_llm_judge_against_a_local_fake_endpoint_and_agreement():
    from conftest import chat_reply, json_server
    from rgalign.chat import ChatClient
    from rgalign.judge import IntentJudge, agreement, judged_hit_rate
    kb = pd.DataFrame({"intent_id": [1, 2, 3], "title": ["Track my parcel", "Refund status", "Change address"]})
    calls = {"n": 0}

    def reply(path, body):
        text = body["messages"][-1]["content"]
        assert "1. Track my parcel" in text and "3. Change address" in text     # the KB is the answer space
        calls["n"] += 1
        if "flaky" in text and calls["n"] % 2:
            return 503, {"error": "busy"}                                     # retried
        if "parcel" in text.split("Transcript:")[1]:
            return 200, chat_reply("1")
        if "refund" in text.split("Transcript:")[1]:
            return 200, chat_reply("Intent 2.")
        return 200, chat_reply("I think it is 42")                             # not in the KB -> no answer
    with json_server(reply) as srv:
        judge = IntentJudge(ChatClient(f"{srv.url}/v1", "fake-judge", retries=2, timeout_s=5), kb)
        got = judge.judge(["user: where is my parcel", "user: flaky refund please", "user: hello"])
    assert got == [1, 2, None]
    assert agreement(got, [1, 3, 3]) == pytest.approx(1 / 3)
    rate, unlabelled = judged_hit_rate([[1, 2, 3], [3, 1, 5], [1, 2, 3]], got)
    assert rate == 0.5 and unlabelled == 1
    with pytest.raises(ValueError, match="non-empty"):
        judge.judge([""])
