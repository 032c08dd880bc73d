"""The world's hidden generative model p(true intent | observed context).

    logit(i | x) = F[fam(i)](x)                       collaborative, family level
                 + log pop(i)                          long-tail popularity prior
                 + slot_strength * sum_d beta_d * [slot_d(i) == x_d]   semantic: the intent text names
                                                       the user's channel / payment / category / promo / region
                 + repeat * [i clicked in the last 24 h]
                 - inf * [i not launched yet]
    p(i | x) = softmax(logit / temperature)

F[f](x) adds family effects of order status, entry point, overdue delivery, the family of the last click
(follow-ups), new accounts, return habits, membership tier, and the user's hidden persona. The persona is a
fixed function of ``user_id`` (an observed feature), so p(i | x) conditions on observed data only and the
Bayes-optimal ranking of the evaluation week is exactly ``argsort(-p)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rgalign.config import WorldConfig
from rgalign.world.vocab import ENTRY_POINTS, MAX_RECENT, ORDER_STATUSES
from rgalign.world.kb import FAMILIES, FAMILY_NAMES, SLOT_DIMS

FAM = {f: k for k, f in enumerate(FAMILY_NAMES)}
ST = {s: k for k, s in enumerate(ORDER_STATUSES)}
EP = {e: k for k, e in enumerate(ENTRY_POINTS)}
ACCOUNT = ["create_account", "delete_account", "edit_account", "recover_password", "registration_problems",
           "switch_account", "set_up_shipping_address"]

# order status -> family effects (hand-set: how a real support team would describe its traffic)
STATUS_EFFECTS = {
    "TO_PAY": {"payment_issue": 2.5, "check_payment_methods": 2.0, "cancel_order": 1.0, "change_order": 1.0,
               "check_cancellation_fee": 0.5},
    "TO_SHIP": {"track_order": 1.5, "delivery_period": 1.5, "cancel_order": 1.5, "change_shipping_address": 1.8,
                "change_order": 1.0, "check_cancellation_fee": 1.0},
    "TO_RECEIVE": {"track_order": 2.5, "delivery_period": 2.0, "complaint": 0.5, "change_shipping_address": 0.5,
                   "delivery_options": 0.8},
    "COMPLETED": {"review": 1.5, "get_invoice": 1.5, "check_invoice": 1.0, "get_refund": 1.5,
                  "check_refund_policy": 1.0, "complaint": 1.0},
    "CANCELLED": {"track_refund": 2.5, "get_refund": 1.5, "check_cancellation_fee": 1.5, "place_order": 1.0},
    "RETURN_REFUND": {"track_refund": 3.0, "get_refund": 2.0, "check_refund_policy": 1.5,
                      "contact_human_agent": 1.0},
    "NO_ACTIVE_ORDER": {"place_order": 1.5, "newsletter_subscription": 1.0, "delivery_options": 1.0,
                        "check_payment_methods": 0.5, **{f: 1.0 for f in ACCOUNT}},
}
ENTRY_EFFECTS = {
    "Home Page": {"contact_customer_service": 0.5, "place_order": 0.5},
    "Shipping Page": {"track_order": 1.2, "delivery_period": 1.0, "delivery_options": 1.0,
                      "change_shipping_address": 1.0, "set_up_shipping_address": 0.8},
    "Order Detail": {"cancel_order": 0.8, "change_order": 0.8, "get_invoice": 0.8, "check_invoice": 0.6,
                     "track_order": 0.5},
    "Payment Page": {"payment_issue": 1.5, "check_payment_methods": 1.2},
    "Return/Refund Page": {"get_refund": 1.2, "track_refund": 1.2, "check_refund_policy": 1.2},
    "Me Page": {"newsletter_subscription": 0.8, **{f: 1.5 for f in ACCOUNT}},
    "Product Page": {"place_order": 1.0, "delivery_options": 0.8, "review": 0.5},
    "Push Notification": {"track_order": 0.8, "payment_issue": 0.5, "newsletter_subscription": 0.5},
}
OVERDUE_EFFECTS = {"complaint": 2.0, "contact_human_agent": 1.5, "delivery_period": 1.0, "cancel_order": 0.6}
FOLLOW_UPS = {  # family of the last click in 24 h -> likely next families
    "track_order": {"delivery_period": 0.8, "complaint": 0.8},
    "delivery_period": {"complaint": 1.0, "contact_human_agent": 0.6},
    "cancel_order": {"track_refund": 1.0, "check_cancellation_fee": 1.0},
    "get_refund": {"track_refund": 1.2},
    "payment_issue": {"contact_human_agent": 0.8, "check_payment_methods": 0.6},
    "complaint": {"contact_human_agent": 1.2},
    "registration_problems": {"create_account": 1.0, "contact_customer_service": 0.6},
}
SLOT_BETA = {"channel": 1.6, "payment": 1.6, "category": 1.3, "promo": 1.0, "region": 2.0}
SAME_FAMILY_AGAIN = 1.2
REPEAT_INTENT = 0.8
RETURN_MEAN, RETURN_STD = .075, .06  # population return rate: return_z = (rate - mean) / std


def overdue_of(status: np.ndarray, days_in_status: np.ndarray, expected_days: np.ndarray) -> np.ndarray:
    """How overdue a waiting order is (0..1.5): days in TO_SHIP / TO_RECEIVE beyond the promised delivery
    days, in units of 3 days; 0 for every other status."""
    waiting = np.isin(status - 1, [ST["TO_SHIP"], ST["TO_RECEIVE"]])
    return np.where(waiting, np.clip((days_in_status - expected_days) / 3, 0, 1.5), 0)


def _matrix(effects: dict[str, dict[str, float]], index: dict[str, int]) -> np.ndarray:
    m = np.zeros((len(index), len(FAM)), np.float32)
    for row, eff in effects.items():
        for fam, v in eff.items():
            m[index[row], FAM[fam]] = v
    return m


@dataclass
class IntentModel:
    """Parameters of p(intent | context); built from (kb, config), all hidden from models."""
    fam_base: np.ndarray        # (F,)
    status: np.ndarray          # (S, F)
    entry: np.ndarray           # (E, F)
    overdue: np.ndarray         # (F,)
    follow: np.ndarray          # (F + 1, F), row F = no click in 24 h
    persona: np.ndarray         # (P, F)
    fam_of: np.ndarray          # (I,) family index of each intent (intent_id - 1)
    log_pop: np.ndarray         # (I,)
    slots: np.ndarray           # (I, D) slot value ids, 0 = none
    slot_beta: np.ndarray       # (D,)
    launch_day: np.ndarray      # (I,)
    temperature: float

    @classmethod
    def build(cls, kb, cfg: WorldConfig) -> "IntentModel":
        rng = np.random.default_rng([cfg.seed, 7])
        n_f = len(FAM)
        weights = np.array([FAMILIES[f][3] for f in FAMILY_NAMES], np.float32)
        follow = _matrix(FOLLOW_UPS, {**FAM, "none": n_f})
        follow[np.arange(n_f), np.arange(n_f)] += SAME_FAMILY_AGAIN
        fam_of = kb.family.map(FAM).to_numpy()
        # the family base popularity enters through log pop(i), which already sums the family weight
        return cls(
            fam_base=rng.normal(0, 0.3, n_f).astype(np.float32),
            status=_matrix(STATUS_EFFECTS, ST) + rng.normal(0, 0.2, (len(ST), n_f)).astype(np.float32),
            entry=_matrix(ENTRY_EFFECTS, EP),
            overdue=_matrix({"x": OVERDUE_EFFECTS}, {"x": 0})[0],
            follow=follow,
            persona=cfg.persona_strength * rng.normal(0, 0.8, (cfg.n_personas, n_f)).astype(np.float32),
            fam_of=fam_of,
            log_pop=np.log(kb.popularity.to_numpy(np.float32)) - np.log(weights[fam_of].mean()),
            slots=kb[[f"slot_{d}" for d in SLOT_DIMS]].to_numpy(np.int64),
            slot_beta=cfg.slot_strength * np.array([SLOT_BETA[d] for d in SLOT_DIMS], np.float32),
            launch_day=kb.launch_day.to_numpy(),
            temperature=cfg.temperature,
        )

    def probs(self, ctx: dict[str, np.ndarray], day: np.ndarray) -> np.ndarray:
        """p(intent | context) for a batch.

        Args:
            ctx: arrays of length B: ``order_status``, ``entry_point`` (ids, 1-based), ``overdue`` (float
                0..1.5), ``last_family`` (family index or F for none), ``persona``, ``new_account`` (bool),
                ``return_z`` (float), ``platinum`` (bool), one ``slot_<dim>`` id per slot dimension, and
                ``recent`` (B, H) intent ids clicked in the last 24 h (0 = padding).
            day: (B,) day index of each session (cold-start intents are masked before their launch).
        Returns:
            (B, I) float64 probabilities, rows sum to 1.
        """
        fam = (self.fam_base[None] + self.status[ctx["order_status"] - 1] + self.entry[ctx["entry_point"] - 1]
               + ctx["overdue"][:, None] * self.overdue[None] + self.follow[ctx["last_family"]]
               + self.persona[ctx["persona"]])
        acc = {FAM[f] for f in ACCOUNT}
        fam[:, sorted(acc)] += 1.2 * ctx["new_account"][:, None]
        fam[:, [FAM["get_refund"], FAM["check_refund_policy"]]] += 0.5 * ctx["return_z"][:, None]
        fam[:, FAM["contact_human_agent"]] += 0.5 * ctx["platinum"]
        logit = fam[:, self.fam_of] + self.log_pop[None]
        for d, dim in enumerate(SLOT_DIMS):
            match = (self.slots[None, :, d] == ctx[f"slot_{dim}"][:, None]) & (self.slots[None, :, d] > 0)
            logit += self.slot_beta[d] * match
        rows = np.arange(len(logit))
        for c in range(ctx["recent"].shape[1]):
            ids = ctx["recent"][:, c]
            logit[rows, ids - 1] += REPEAT_INTENT * (ids > 0)
        logit = logit.astype(np.float64) / self.temperature
        logit[self.launch_day[None, :] > day[:, None]] = -np.inf
        logit -= logit.max(1, keepdims=True)
        p = np.exp(logit)
        return p / p.sum(1, keepdims=True)


def context_arrays(ev: pd.DataFrame, m: IntentModel) -> dict[str, np.ndarray]:
    """The intent model's context, rebuilt from a Feast training frame of the world (its observed features) and
    the hidden persona (``bench/headroom_ablation.py`` ablates the model on it; checked against p_true)."""
    st = ev.order_status.to_numpy()
    recent = np.zeros((len(ev), MAX_RECENT), np.int64)   # right-aligned: the last click in the last column
    for r, seq in enumerate(ev.recent_intents):
        s = list(seq)[-MAX_RECENT:]
        recent[r, MAX_RECENT - len(s):] = s
    last = recent[:, -1]
    return {"order_status": st, "entry_point": ev.entry_point.to_numpy(),
            "overdue": overdue_of(st, ev.days_in_status.to_numpy(), ev.expected_delivery_days.to_numpy()),
            "last_family": np.where(last > 0, m.fam_of[np.maximum(last, 1) - 1], len(m.fam_base)),
            "persona": ev.persona.to_numpy(), "new_account": ev.account_age_days.to_numpy() < 30,
            "return_z": (ev.return_rate_90d.to_numpy() - RETURN_MEAN) / RETURN_STD,
            "platinum": ev.membership_tier.to_numpy() == 4,
            "slot_channel": ev.logistics_channel.to_numpy(), "slot_payment": ev.payment_method.to_numpy(),
            "slot_category": ev.product_category.to_numpy(), "slot_promo": ev.promotion.to_numpy(),
            "slot_region": ev.region.to_numpy(), "recent": recent}
