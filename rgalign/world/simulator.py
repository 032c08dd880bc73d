"""Simulate one chunk of users over five weeks: profiles, orders, chatbot sessions, true intents and clicks.

Vectorized across the users of a chunk and sequential over each user's sessions (a session's 24-hour click
history depends on the earlier ones). Every observed feature is written before, and independently of, the
session's true intent: the only thing a session's intent influences is its own click, which becomes part of
*later* sessions' behaviour sequence.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rgalign.config import WorldConfig
from rgalign.world.vocab import (AGE_BANDS, DEVICES, ENTRY_POINTS, GENDERS, LANGUAGES, MAX_RECENT,
                                       ORDER_STATUSES, SELLER_TYPES, SLOTS, TIERS)
from rgalign.world.intent_model import RETURN_MEAN, RETURN_STD, IntentModel, ST, overdue_of

DAY, HOUR = 86_400, 3_600
N_CH, N_PAY, N_CAT, N_PROMO, N_REG = (len(SLOTS[d]) for d in ("channel", "payment", "category", "promo", "region"))
REGION_P = np.array([.08, .12, .14, .20, .12, .12, .08, .14])
# status prior of a new current order
STATUS_P = np.array([.12, .18, .30, .15, .07, .08, .10])
# P(entry point | status): rows follow ORDER_STATUSES, columns ENTRY_POINTS
ENTRY_GIVEN_STATUS = np.array([
    [.15, .02, .20, .45, .02, .04, .07, .05],
    [.20, .25, .30, .05, .02, .04, .04, .10],
    [.15, .40, .20, .02, .02, .03, .03, .15],
    [.25, .05, .30, .03, .15, .07, .10, .05],
    [.20, .02, .25, .08, .35, .04, .04, .02],
    [.15, .05, .20, .02, .45, .05, .03, .05],
    [.35, .05, .02, .05, .03, .30, .18, .02]])
# channel mix by region (Brazil and Taiwan buy cross-border more often)
CHANNEL_BY_REGION = np.tile([.35, .20, .12, .10, .15, .08], (N_REG, 1))
CHANNEL_BY_REGION[[6, 7], 3] = .30
PAYMENT_BY_REGION = np.tile([.25, .12, .13, .25, .15, .10], (N_REG, 1))
PAYMENT_BY_REGION[[3, 4, 5], 4] = .40  # cash on delivery in Indonesia, Philippines, Vietnam
EXPECTED_DAYS = np.array([3, 7, 1, 12, 4, 6])  # by channel
CATEGORY_AOV = np.array([180, 35, 60, 25, 20, 10, 18, 55], float)


def _norm(m):
    return m / m.sum(-1, keepdims=True)


def _cat(rng, p, size=None):
    """Sample 0-based category indices; ``p`` is (K,) or (B, K) probabilities."""
    p = _norm(np.asarray(p, float))
    if p.ndim == 1:
        return rng.choice(len(p), size=size, p=p)
    u = rng.random(len(p))[:, None]
    return np.minimum((np.cumsum(p, 1) < u).sum(1), p.shape[1] - 1)


def simulate_chunk(cfg: WorldConfig, model: IntentModel, user_offset: int, n_users: int,
                   chunk_index: int) -> dict[str, pd.DataFrame]:
    """Simulate users ``user_offset + 1 .. user_offset + n_users``.

    Returns tables ``profiles``, ``order_context``, ``behaviour``, ``sessions`` (observed) and ``hidden``
    (true intent, persona, Bayes rank: never a model input).
    """
    rng = np.random.default_rng([cfg.seed, chunk_index])
    start = int(pd.Timestamp(cfg.start_date, tz="UTC").timestamp())
    U, K = n_users, cfg.max_sessions_per_user
    uid = np.arange(user_offset + 1, user_offset + U + 1, dtype=np.int64)

    # ---- users: observed profile and hidden traits --------------------------------------------------
    region = _cat(rng, REGION_P, U)
    gender = _cat(rng, [.55, .40, .05], U)
    age = _cat(rng, [.20, .35, .25, .12, .08], U)
    tier = _cat(rng, [.50, .28, .15, .07], U)
    device = _cat(rng, [.62, .30, .08], U)
    native = np.array([0, 1, 2, 3, 4, 5, 6, 7])[region]
    language = np.where(rng.random(U) < .85, native, 0)
    persona_logit = np.random.default_rng([cfg.seed, 11]).normal(0, 1, (len(AGE_BANDS), cfg.n_personas))
    persona = _cat(rng, np.exp(persona_logit[age]))
    pref_cat = _norm(rng.dirichlet(np.ones(N_CAT) * .5, U) + .05)
    pref_pay = _cat(rng, PAYMENT_BY_REGION[region])
    account_age0 = np.where(rng.random(U) < .15, rng.integers(0, 30, U), rng.integers(30, 2500, U))
    base_orders = rng.gamma(2.0, 3.0, U) * (1 + tier)
    base_aov = CATEGORY_AOV[pref_cat.argmax(1)] * rng.lognormal(0, .4, U)
    base_return = rng.beta(1.5, 20, U) * (1 + (persona % 3 == 0))
    base_cancel = rng.beta(1.2, 25, U)

    # weekly profile snapshots at days -7, 0, 7, ... (what Feast's point-in-time join reads)
    n_snap = (cfg.days - 1) // 7 + 2  # the last snapshot falls inside the simulated window
    snap_day = np.arange(n_snap) * 7 - 7
    orders_90d = rng.poisson(base_orders[:, None], (U, n_snap))
    aov = np.round(base_aov[:, None] * rng.lognormal(0, .1, (U, n_snap)), 2)
    ret = np.round(np.clip(base_return[:, None] + rng.normal(0, .01, (U, n_snap)), 0, 1), 3)
    canc = np.round(np.clip(base_cancel[:, None] + rng.normal(0, .01, (U, n_snap)), 0, 1), 3)
    acc_age = np.maximum(account_age0[:, None] + snap_day[None], 0)
    profiles = pd.DataFrame({
        "user_id": np.repeat(uid, n_snap),
        "event_timestamp": pd.to_datetime(np.tile(start + snap_day * DAY, U), unit="s", utc=True),
        "gender": np.repeat(gender + 1, n_snap), "age_band": np.repeat(age + 1, n_snap),
        "region": np.repeat(region + 1, n_snap), "membership_tier": np.repeat(tier + 1, n_snap),
        "device_os": np.repeat(device + 1, n_snap), "language": np.repeat(language + 1, n_snap),
        "account_age_days": acc_age.ravel(), "orders_90d": orders_90d.ravel(),
        "avg_order_value": aov.ravel(), "return_rate_90d": ret.ravel(), "cancel_rate_90d": canc.ravel()})

    # ---- session times ------------------------------------------------------------------------------
    n_sess = np.minimum(1 + rng.poisson(rng.lognormal(np.log(cfg.mean_sessions) - .3, .8, U)), K)
    gaps = np.where(rng.random((U, K)) < .4, rng.integers(HOUR, 20 * HOUR, (U, K)),
                    HOUR + rng.exponential(3 * DAY, (U, K)).astype(np.int64))
    t0 = rng.integers(0, cfg.days * DAY - HOUR, U)
    t = t0[:, None] + np.concatenate([np.zeros((U, 1), np.int64), np.cumsum(gaps[:, 1:], 1)], 1)
    valid = (np.arange(K)[None] < n_sess[:, None]) & (t < cfg.days * DAY)

    # ---- per-session state, filled step by step -----------------------------------------------------
    click = np.zeros((U, K), np.int64)          # clicked intent id (0 = no click)
    click_t = np.zeros((U, K), np.int64)
    order = {k: np.zeros(U, np.int64) for k in ("status", "su", "channel", "payment", "category", "promo",
                                                 "seller", "items", "expected")}
    order["amount"] = np.zeros(U)
    rows_s, rows_o, rows_b, rows_h = [], [], [], []
    for k in range(K):
        a = np.flatnonzero(valid[:, k])
        if len(a) == 0:
            break
        tk = t[a, k]
        day = tk // DAY
        # the current order: a follow-up within 24 h keeps the order (and may advance its status)
        follow = (k > 0) & (tk - t[a, k - 1] < DAY) & (rng.random(len(a)) < .8) if k else np.zeros(len(a), bool)
        new = a[~follow]
        nn = len(new)
        status = _cat(rng, STATUS_P, nn)
        ch = _cat(rng, CHANNEL_BY_REGION[region[new]])
        order["channel"][new] = ch + 1
        order["payment"][new] = np.where(rng.random(nn) < .6, pref_pay[new], _cat(rng, PAYMENT_BY_REGION[region[new]])) + 1
        cat = np.where(rng.random(nn) < .6, _cat(rng, pref_cat[new]), rng.integers(0, N_CAT, nn))
        order["category"][new] = cat + 1
        order["promo"][new] = np.where(rng.random(nn) < .5, 0, rng.integers(1, N_PROMO + 1, nn))
        order["seller"][new] = _cat(rng, [.2, .3, .4, .1], nn) + 1
        order["amount"][new] = np.round(CATEGORY_AOV[cat] * rng.lognormal(0, .6, nn), 2)
        order["items"][new] = 1 + rng.poisson(.8, nn)
        order["expected"][new] = EXPECTED_DAYS[ch] + (region[new] == 7) * 3
        exp_ = order["expected"][new]
        days_in = np.select(
            [status == ST["TO_PAY"], status == ST["TO_SHIP"], status == ST["TO_RECEIVE"],
             status == ST["RETURN_REFUND"], status == ST["NO_ACTIVE_ORDER"]],
            [rng.geometric(.6, nn) - 1, rng.poisson(1.5, nn),
             np.where(rng.random(nn) < .2, exp_ + rng.geometric(.3, nn), rng.poisson(exp_ * .6)),
             rng.poisson(4, nn), 0], rng.integers(0, 20, nn))
        order["status"][new] = status + 1
        order["su"][new] = tk[~follow] - days_in * DAY - rng.integers(0, DAY - HOUR, nn)
        none = new[status == ST["NO_ACTIVE_ORDER"]]
        for key in ("channel", "payment", "category", "promo", "seller", "items", "expected"):
            order[key][none] = 0
        order["amount"][none] = 0.0
        # follow-ups: with p=.25 the status moved on between the two sessions
        fu = a[follow]
        adv = fu[(rng.random(len(fu)) < .25) & np.isin(order["status"][fu] - 1,
                                                        [ST["TO_PAY"], ST["TO_SHIP"], ST["TO_RECEIVE"]])]
        order["status"][adv] += 1
        kk = np.searchsorted(a, adv)
        order["su"][adv] = rng.integers(t[adv, k - 1] + 1, tk[kk] - HOUR // 2) if len(adv) else order["su"][adv]

        st = order["status"][a]
        days_in_status = (tk - order["su"][a]) // DAY
        entry = _cat(rng, ENTRY_GIVEN_STATUS[st - 1]) + 1
        overdue = overdue_of(st, days_in_status, order["expected"][a])
        snap = np.searchsorted(snap_day, day, side="right") - 1

        # behaviour sequence: clicks of this user in the 24 h before the session, oldest first, <= MAX_RECENT
        lo = max(0, k - MAX_RECENT)
        hist, hist_t = click[a, lo:k], click_t[a, lo:k]
        keep = (hist > 0) & (hist_t >= tk[:, None] - DAY)
        recent = np.where(keep, hist, 0)
        last = np.where(keep.any(1), recent[np.arange(len(a)), np.where(keep, np.arange(k - lo), -1).max(1)], 0) \
            if k > lo else np.zeros(len(a), np.int64)
        ctx = {"order_status": st, "entry_point": entry, "overdue": overdue,
               "last_family": np.where(last > 0, model.fam_of[last - 1], len(model.fam_base)),
               "persona": persona[a], "new_account": acc_age[a, snap] < 30,
               "return_z": (ret[a, snap] - RETURN_MEAN) / RETURN_STD, "platinum": tier[a] == 3,
               "slot_channel": order["channel"][a], "slot_payment": order["payment"][a],
               "slot_category": order["category"][a], "slot_promo": order["promo"][a],
               "slot_region": region[a] + 1, "recent": recent if k > lo else np.zeros((len(a), 1), np.int64)}
        p = model.probs(ctx, day)
        true = _cat(rng, p) + 1
        p_true = p[np.arange(len(a)), true - 1]
        bayes_rank = (p > p_true[:, None]).sum(1)

        # logging policy (a noisy production ranker) shows shown_k intents; position-biased clicks
        with np.errstate(divide="ignore"):
            pol = .8 * np.log(p) + .2 * model.log_pop[None] + .5 * rng.gumbel(size=p.shape)
        top = np.argpartition(-pol, cfg.shown_k, 1)[:, :cfg.shown_k]
        shown = np.take_along_axis(top, np.argsort(-np.take_along_axis(pol, top, 1), 1), 1) + 1
        pos = np.where(shown == true[:, None], np.arange(cfg.shown_k)[None], cfg.shown_k).min(1)
        examine = 1 / (1 + pos) ** cfg.position_bias
        hit = (pos < cfg.shown_k) & (rng.random(len(a)) < cfg.click_prob * examine)
        noise_pos = _cat(rng, 1 / (1 + np.arange(cfg.shown_k)) ** cfg.position_bias, len(a))
        noise = ~hit & (rng.random(len(a)) < cfg.noise_click_rate)
        cpos = np.where(hit, pos, np.where(noise, noise_pos, -1))
        clicked = np.where(cpos >= 0, shown[np.arange(len(a)), np.maximum(cpos, 0)], 0)
        click[a, k] = clicked
        click_t[a, k] = tk + rng.integers(5, 300, len(a))

        ts = start + tk
        sid = uid[a] * 100 + k
        rows_s.append(pd.DataFrame({
            "session_id": sid, "user_id": uid[a], "event_timestamp": ts, "entry_point": entry,
            "shown_intents": list(shown), "clicked_intent": np.where(clicked > 0, clicked, -1),
            "click_position": cpos, "day": day,
            "split": np.where(day >= cfg.train_days, "eval", "train")}))
        rows_o.append(pd.DataFrame({
            "user_id": uid[a], "event_timestamp": ts - rng.integers(60, 1800, len(a)),
            "order_status": st, "status_updated_at": start + order["su"][a],
            "payment_method": order["payment"][a], "logistics_channel": order["channel"][a],
            "product_category": order["category"][a], "promotion": order["promo"][a],
            "seller_type": order["seller"][a], "order_amount": order["amount"][a],
            "items_count": order["items"][a], "expected_delivery_days": order["expected"][a]}))
        c = np.flatnonzero(clicked > 0)
        if len(c):
            # the behaviour row written at click time: this click plus the earlier ones within 24 h
            ct = click_t[a[c], k, None]
            keep_c = (hist[c] > 0) & (hist_t[c] >= ct - DAY)  # the window of the row's own timestamp
            seq = np.concatenate([np.where(keep_c, hist[c], 0), clicked[c, None]], 1)[:, -MAX_RECENT:]
            seq_t = np.concatenate([np.where(keep_c, hist_t[c], 0), ct], 1)[:, -MAX_RECENT:]
            m = seq > 0
            rows_b.append(pd.DataFrame({
                "user_id": uid[a[c]], "event_timestamp": start + click_t[a[c], k],
                "recent_intents": [r[mm] for r, mm in zip(seq, m)],
                "recent_click_ts": [start + r[mm] for r, mm in zip(seq_t, m)]}))
        rows_h.append(pd.DataFrame({
            "session_id": sid, "true_intent": true, "persona": persona[a], "bayes_rank": bayes_rank,
            "p_true": p_true, "days_in_status": days_in_status,
            "n_recent": (recent > 0).sum(1)}))

    def cat(rows, ts_col="event_timestamp"):
        df = pd.concat(rows, ignore_index=True)
        df[ts_col] = pd.to_datetime(df[ts_col], unit="s", utc=True)
        return df

    sessions = cat(rows_s).sort_values("session_id", kind="stable").reset_index(drop=True)
    hidden = pd.concat(rows_h, ignore_index=True).sort_values("session_id", kind="stable").reset_index(drop=True)
    behaviour = cat(rows_b) if rows_b else pd.DataFrame(
        {"user_id": pd.Series([], "int64"), "event_timestamp": pd.Series([], "datetime64[ns, UTC]"),
         "recent_intents": [], "recent_click_ts": []})
    return {"profiles": profiles, "order_context": cat(rows_o), "behaviour": behaviour,
            "sessions": sessions, "hidden": hidden}


__all__ = ["simulate_chunk", "ORDER_STATUSES", "ENTRY_POINTS", "GENDERS", "TIERS", "DEVICES", "LANGUAGES",
           "SELLER_TYPES"]
