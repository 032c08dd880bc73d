"""Online A/B test of two recommenders (paper section 5.4, Table 5): sticky arms, a replayed window of world
sessions, the session log a deployment writes, and the statistics (CTR@3, CSAT, intent hit rate).

- ``assign_arm``: sticky per user (a salted hash), so a user sees one arm for the whole experiment.
- ``simulate_ab``: replays sessions through each arm's ``recommend`` (in process or over HTTP), turns the
  shown top-3 into clicks / CSAT / hits with ``rgalign.world.feedback`` and returns one log row per session.
- ``two_proportion_ztest``: the fixed-horizon test (equal to statsmodels' ``proportions_ztest``).
- ``msprt_pvalues``: an always-valid p-value sequence (mixture SPRT, Johari et al. 2017) that may be
  checked after every batch while the experiment runs without inflating the false-positive rate.
- ``ab_summary``: per-arm rates with both tests; CSAT is a guardrail that flags the challenger when its CSAT
  is significantly lower by the always-valid test (it is checked at every look), whatever CTR does.

Sessions without a click count in CTR@3 and in the hit rate (as 0), never dropped.
"""
from __future__ import annotations

from rgalign.errors import MissingInputError

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from rgalign.world.feedback import FeedbackConfig, respond

LOG_COLUMNS = ["session_id", "user_id", "event_timestamp", "arm", "shown", "fallback", "clicked_intent",
               "click_position", "click3", "hit3", "csat", "true_intent", "top_score"]  # + the request features
RATES = {"CTR@3": "click3", "intent hit rate": "hit3"}


def assign_arm(user_ids, share: float, salt: str = "rgalign-ab") -> np.ndarray:
    """``"challenger"`` for a stable ``share`` of users, ``"champion"`` for the rest."""
    if not 0 <= share <= 1:
        raise ValueError(f"share={share} must be within [0, 1]")
    h = np.array([int(hashlib.sha256(f"{salt}:{int(u)}".encode()).hexdigest()[:8], 16) for u in user_ids])
    return np.where(h % 10_000 < share * 10_000, "challenger", "champion")


def http_arm(url: str, timeout_s: float = 30.0) -> Callable:
    """An arm served by a ``recommend`` endpoint (V1): the production path."""
    import httpx
    client = httpx.Client(timeout=timeout_s)

    def call(users: list[int], requests: list[dict], k: int = 3) -> list[dict]:
        inst = [{"user_id": int(u), **{n: int(v) for n, v in r.items() if v}} for u, r in zip(users, requests)]
        r = client.post(url, json={"instances": inst, "k": k})
        if r.status_code != 200:
            raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
        return r.json()["predictions"]
    return call


def eval_window(world: str | Path, days: int | None = None, max_sessions: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Evaluation-week sessions with their true intent (the contract's refined evaluation labels), in time order."""
    from rgalign.contract import load_contract
    world = Path(world)
    c = load_contract(world)
    s = pd.read_parquet(world / f"{c.tables['sessions']}.parquet")
    s = s[s.split == "eval"]
    if days is not None:
        day = pd.to_datetime(s.event_timestamp, utc=True).dt.floor("D")  # calendar days (UTC) of the window
        s = s[day < day.min() + pd.Timedelta(days=days)]
    h = pd.read_parquet(world / f"{c.tables['eval_labels']}.parquet", columns=["session_id", "true_intent"])
    s = s.merge(h, on="session_id")
    if max_sessions is not None and len(s) > max_sessions:
        s = s.sample(max_sessions, random_state=seed)
    return s.sort_values("event_timestamp").reset_index(drop=True)


def simulate_ab(sessions: pd.DataFrame, arms: dict[str, Callable], share: float = 0.5, batch: int = 32,
                feedback: FeedbackConfig = FeedbackConfig(), progress: bool = True,
                request: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Replay ``sessions`` through ``arms`` (``{"champion": fn, "challenger": fn}``, each
    ``fn(user_ids, requests, k) -> [{"intent_ids", "scores", "fallback"}, ...]`` with ``requests[i]`` the
    session's ``request`` features, name -> id); one log row per session."""
    from tqdm.auto import tqdm
    request = list(request)
    missing = {"session_id", "user_id", "event_timestamp", "true_intent", *request} - set(sessions.columns)
    if missing:
        raise MissingInputError(f"sessions lack column(s) {sorted(missing)}; use rgalign.abtest.eval_window(world)")
    if set(arms) != {"champion", "challenger"}:
        raise ValueError(f"arms must be champion and challenger, got {sorted(arms)}")
    if sessions.empty:
        raise ValueError("the replay window holds no sessions; widen --days or check the world")
    s = sessions.reset_index(drop=True).copy()
    s["arm"] = assign_arm(s.user_id, share)
    shown, scores, fallback = [None] * len(s), np.zeros(len(s)), np.zeros(len(s), bool)
    bar = tqdm(total=len(s), desc="A/B replay", unit="session", disable=None if progress else True, mininterval=2)
    for arm, idx in s.groupby("arm").indices.items():
        for i in range(0, len(idx), batch):
            j = idx[i:i + batch]
            req = s[request].iloc[j].to_dict("records") if request else [{}] * len(j)
            out = arms[arm](s.user_id.iloc[j].tolist(), req, feedback.top_k)
            for t, o in zip(j, out):
                shown[t], scores[t], fallback[t] = o["intent_ids"][:feedback.top_k], o["scores"][0], o["fallback"]
            bar.update(len(j))
    bar.close()
    shown_arr = np.array([list(x) + [0] * (feedback.top_k - len(x)) for x in shown])
    r = respond(shown_arr, s.true_intent.to_numpy(), s.session_id.to_numpy(), feedback)
    log = s[["session_id", "user_id", "event_timestamp", "arm", "true_intent", *request]].assign(
        shown=shown, fallback=fallback, top_score=scores, **r)
    return log[LOG_COLUMNS + request]


AB_SEGMENTS = {"seg_cold": "cold-start intents", "seg_tail": "intents with <= 100 training clicks",
               "seg_new_user": "users without training clicks"}   # where the query path should pay


def ab_segments(log: pd.DataFrame, world: str | Path) -> pd.DataFrame:
    """``log`` with a boolean column per ``AB_SEGMENTS`` entry: the true intent's and the user's clicked
    training sessions in the dataset (the segments of ``rgalign.metrics.segment_masks``)."""
    from rgalign.contract.dataset import training_clicks
    from rgalign.metrics import segment_masks
    clicked = training_clicks(world)
    true = log.true_intent.to_numpy(np.int64)
    n = int(max(clicked.clicked_intent.max() if len(clicked) else 0, true.max() if len(true) else 0)) + 1
    m = segment_masks(true, np.bincount(clicked.clicked_intent.to_numpy(np.int64), minlength=n),
                      clicked.user_id.value_counts().reindex(log.user_id).fillna(0).to_numpy(np.int64))
    return log.assign(seg_cold=m["intent cold-start"], seg_tail=m["intent <= 100 clicks"],
                      seg_new_user=m["user without training clicks"])


def segment_table(log: pd.DataFrame) -> str:
    """Intent hit rate per arm in each ``AB_SEGMENTS`` segment of ``log`` (``ab_segments``), with n and the
    two-proportion z-test's p (fixed horizon: read it once, at the end of the test)."""
    lines = ["| segment | n champion | n challenger | hit rate champion | hit rate challenger | p (fixed) |",
             "|---|---:|---:|---:|---:|---:|"]
    for col, name in AB_SEGMENTS.items():
        if col not in log:
            continue
        seg = log[log[col].astype(bool)]
        a, b = (seg[seg.arm == arm].hit3 for arm in ("champion", "challenger"))
        if len(a) and len(b):
            _, p = two_proportion_ztest(int(a.sum()), len(a), int(b.sum()), len(b))
            lines.append(f"| {name} | {len(a):,} | {len(b):,} | {a.mean():.4f} | {b.mean():.4f} | {p:.3f} |")
    return "\n".join(lines)


def two_proportion_ztest(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-sided z-test of p2 - p1 (statsmodels ``proportions_ztest([x2, x1], [n2, n1])``)."""
    if min(n1, n2) <= 0:
        raise ValueError(f"both arms need sessions (got n1={n1}, n2={n2})")
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def msprt_pvalues(y1: np.ndarray, y2: np.ndarray, tau2: float = 1e-3) -> np.ndarray:
    """Always-valid p-values of p2 != p1 after each of the cumulative looks given by the two 0/1 sequences
    (looks at every 1% of the data). Normal-mixture SPRT with mixing variance ``tau2`` on the difference:
    Lambda = sqrt(V / (V + tau2)) * exp(tau2 * d^2 / (2 V (V + tau2))), p_t = min(p_{t-1}, 1 / Lambda_t)."""
    y1, y2 = np.asarray(y1, float), np.asarray(y2, float)
    looks = np.unique(np.linspace(0.01, 1, 100) * min(len(y1), len(y2))).astype(int)
    p, out = 1.0, []
    for n in looks[looks >= 10]:
        n1 = max(10, int(round(n * len(y1) / min(len(y1), len(y2)))))
        n2 = max(10, int(round(n * len(y2) / min(len(y1), len(y2)))))
        a, b = y1[:n1].mean(), y2[:n2].mean()
        v = max(a * (1 - a) / n1 + b * (1 - b) / n2, 1e-12)
        lam = math.sqrt(v / (v + tau2)) * math.exp(min(700.0, tau2 * (b - a) ** 2 / (2 * v * (v + tau2))))
        p = min(p, 1 / lam)
        out.append(p)
    return np.asarray(out if out else [1.0])


@dataclass
class ABRow:
    metric: str
    champion: float
    challenger: float
    n_champion: int
    n_challenger: int
    z: float
    p_value: float
    p_sequential: float

    @property
    def lift(self) -> float:
        return self.challenger / self.champion - 1 if self.champion else float("nan")


def _row(name: str, y1: np.ndarray, y2: np.ndarray) -> ABRow:
    z, p = two_proportion_ztest(int(y1.sum()), len(y1), int(y2.sum()), len(y2))
    return ABRow(name, float(y1.mean()), float(y2.mean()), len(y1), len(y2), z, p, float(msprt_pvalues(y1, y2)[-1]))


def ab_summary(log: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Per-arm CTR@3, intent hit rate and CSAT (good / rated) with both tests, and the guardrail verdict."""
    missing = set(LOG_COLUMNS) - set(log.columns)
    if missing:
        raise MissingInputError(f"the A/B log lacks column(s) {sorted(missing)}; it must be written by simulate_ab or "
                       f"carry {LOG_COLUMNS}")
    log = log.sort_values("event_timestamp")
    arms = {a: log[log.arm == a] for a in ("champion", "challenger")}
    empty = [a for a, d in arms.items() if d.empty]
    if empty:
        raise ValueError(f"the A/B log has no sessions for arm(s) {empty}; check the traffic share")
    rows = [_row(name, arms["champion"][col].to_numpy(), arms["challenger"][col].to_numpy()) for name, col in RATES.items()]
    rated = {a: (d.csat[d.csat != "none"] == "good").to_numpy(int) for a, d in arms.items()}
    if min(len(v) for v in rated.values()) > 0:
        rows.append(_row("CSAT", rated["champion"], rated["challenger"]))
    csat = next((r for r in rows if r.metric == "CSAT"), None)
    # the guardrail is read at every look while the experiment runs, so it uses the always-valid p-value:
    # with the fixed-horizon one, daily looks flagged an A/A-like challenger on day 3 (docs/dashboard.png run)
    guard = csat is not None and csat.challenger < csat.champion and csat.p_sequential < alpha
    return {"rows": rows, "guardrail_breached": guard, "alpha": alpha,
            "verdict": "challenger flagged: CSAT is significantly lower (guardrail, sequential test)" if guard else
            "no guardrail breach"}


def summary_table(summary: dict) -> str:
    head = "| metric | champion | challenger | lift | z | p (fixed) | p (sequential) | n champion | n challenger |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        lines.append(f"| {r.metric} | {r.champion:.4f} | {r.challenger:.4f} | {r.lift:+.2%} | {r.z:+.2f} | "
                     f"{r.p_value:.4f} | {r.p_sequential:.4f} | {r.n_champion:,} | {r.n_challenger:,} |")
    return "\n".join(lines + ["", f"Guardrail: {summary['verdict']}"])
