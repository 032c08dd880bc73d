"""How a simulated user reacts to the top-3 a policy shows: click, CSAT rating, and whether the true intent
was shown (the paper's online metrics, section 5.4 / Table 5).

Same click model as the logging policy of the world (``simulator.py``): the true intent at position r is
examined with probability 1 / (1 + r)^eta and then clicked with ``click_prob``; otherwise a noise click lands
on a shown intent with ``noise_click_rate``. CSAT follows the click: a click on the true intent is rated good
with ``p_good_hit``; a noise click (a wrong intent, e.g. a catchy popular one) is rated bad with
``p_bad_noise``; with no click the user rates with ``p_rate_no_click`` and mostly bad. So a policy that
wins clicks with popular but wrong intents raises CTR@3 and lowers CSAT, the pattern of the paper's A/B.

Randomness is drawn per session from ``(seed, session_id)``, the same for every arm (common random numbers),
so arm differences come from what was shown, not from the draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeedbackConfig:
    top_k: int = 3                 # shown intents (CTR@3 / hit@3)
    position_bias: float = 0.8     # eta
    click_prob: float = 0.85       # P(click | true intent shown and examined)
    noise_click_rate: float = 0.10
    p_good_hit: float = 0.75       # P(rating good | clicked the true intent); else no rating
    p_bad_noise: float = 0.50      # P(rating bad | clicked a wrong intent); else no rating
    p_rate_no_click: float = 0.20  # P(rating | no click); 80% of those are bad
    seed: int = 0


def respond(shown: np.ndarray, true_intent: np.ndarray, session_ids: np.ndarray,
            cfg: FeedbackConfig = FeedbackConfig()) -> dict[str, np.ndarray]:
    """Users' reactions to ``shown`` (B, >= top_k) intent ids given their ``true_intent`` (B,).

    Returns arrays of length B: ``clicked_intent`` (0 = none), ``click_position`` (-1 = none), ``click3``
    (0/1), ``hit3`` (0/1: the true intent is in the top-k, clicked or not), ``csat`` ("good" | "bad" | "none").
    """
    shown = np.asarray(shown)[:, :cfg.top_k]
    B, k = shown.shape
    u = np.stack([np.random.default_rng([cfg.seed, int(s)]).random(5) for s in session_ids]) if B else np.zeros((0, 5))
    pos = np.where(shown == np.asarray(true_intent)[:, None], np.arange(k)[None], k).min(1)
    hit = pos < k
    examine = 1 / (1 + pos) ** cfg.position_bias
    true_click = hit & (u[:, 0] < cfg.click_prob * examine)
    w = 1 / (1 + np.arange(k)) ** cfg.position_bias
    noise_pos = np.searchsorted(np.cumsum(w / w.sum()), u[:, 2] * (1 - 1e-12))
    noise = ~true_click & (u[:, 1] < cfg.noise_click_rate)
    cpos = np.where(true_click, pos, np.where(noise, noise_pos, -1))
    clicked = np.where(cpos >= 0, shown[np.arange(B), np.maximum(cpos, 0)], 0)
    csat = np.full(B, "none", dtype=object)
    csat[true_click & (u[:, 3] < cfg.p_good_hit)] = "good"
    wrong = (cpos >= 0) & ~true_click & (clicked != np.asarray(true_intent))
    csat[wrong & (u[:, 3] < cfg.p_bad_noise)] = "bad"
    rate = (cpos < 0) & (u[:, 3] < cfg.p_rate_no_click)
    csat[rate] = np.where(u[rate, 4] < 0.8, "bad", "good")
    return {"clicked_intent": clicked.astype(np.int64), "click_position": cpos.astype(np.int64),
            "click3": (cpos >= 0).astype(np.int8), "hit3": hit.astype(np.int8), "csat": csat}
