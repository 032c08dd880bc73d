"""The chatbot knowledge base (KB): >= 1,000 fine-grained intents in 27 Bitext families.

Each intent is a Bitext family (``track_order``, ``get_refund``, ...) made fine-grained by the slots a real
e-commerce KB has: logistics channel, payment method, product category, promotion and region. An intent's
text (title + description) names its slot values, which is what lets a text model match it to a user whose
order is, say, shipped by "Cross-Border Air" even when that exact intent is rare (the paper's semantic gap).

Example:
    >>> from rgalign.world.kb import build_kb, load_bitext
    >>> kb = build_kb(load_bitext(), seed=0)
    >>> len(kb) >= 1000 and kb.family.nunique() == 27
    True
"""
from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from rgalign.world.vocab import SLOTS

SLOT_DIMS = tuple(SLOTS)

# family -> (slot dims, title template, description template, base popularity weight)
FAMILIES: dict[str, tuple[tuple[str, ...], str, str, float]] = {
    "track_order": (("channel", "region"), "Track my {channel} parcel ({region})",
                    "Where is my order shipped by {channel}? Live tracking and status updates for {region}.", 3.0),
    "delivery_period": (("channel", "region"), "When will my {channel} delivery arrive ({region})",
                        "Expected delivery time for {channel} orders in {region}, and what to do if it is late.", 2.2),
    "delivery_options": (("channel", "region"), "{channel} delivery options in {region}",
                         "Shipping methods, fees and coverage of {channel} for buyers in {region}.", 1.0),
    "change_shipping_address": (("channel", "region"), "Change the address of a {channel} order ({region})",
                                "Update the delivery address of an order shipped by {channel} in {region}.", 1.0),
    "set_up_shipping_address": (("region",), "Add a shipping address in {region}",
                                "Save a new delivery address in your {region} account.", 0.5),
    "cancel_order": (("payment", "category"), "Cancel a {category} order paid by {payment}",
                     "How to cancel an unshipped {category} order and get the {payment} payment back.", 1.8),
    "change_order": (("category", "promo"), "Change items in a {category} order bought with {promo}",
                     "Swap size, colour or quantity of {category} items purchased in a {promo} promotion.", 0.8),
    "place_order": (("category", "promo"), "Buy {category} with a {promo} offer",
                    "How to place an order for {category} products and apply the {promo} promotion.", 0.7),
    "check_cancellation_fee": (("payment", "region"), "Cancellation fee for {payment} orders ({region})",
                               "Is there a fee to cancel an order paid by {payment} in {region}?", 0.6),
    "payment_issue": (("payment", "region"), "{payment} payment failed ({region})",
                      "Payment by {payment} was declined, charged twice or stuck pending in {region}.", 1.6),
    "check_payment_methods": (("payment", "region"), "Can I pay with {payment} in {region}",
                              "Accepted payment methods and {payment} limits for buyers in {region}.", 0.7),
    "get_refund": (("payment", "category"), "Get a refund for {category} paid by {payment}",
                   "Request a return and refund of {category} items back to your {payment}.", 1.5),
    "track_refund": (("payment", "region"), "Where is my {payment} refund ({region})",
                     "Status and timeline of a refund to {payment} for buyers in {region}.", 1.4),
    "check_refund_policy": (("category", "region"), "Return and refund policy for {category} ({region})",
                            "Which {category} items can be returned in {region}, and within how many days.", 0.7),
    "check_invoice": (("category", "payment"), "Check the invoice of a {category} order paid by {payment}",
                      "View the amounts and taxes on the invoice of a {category} purchase paid by {payment}.", 0.5),
    "get_invoice": (("category", "region"), "Download an invoice for {category} ({region})",
                    "Get an official tax invoice for a {category} order in {region}.", 0.6),
    "complaint": (("channel", "category"), "Complain about a late {channel} delivery of {category}",
                  "File a complaint about a delayed or damaged {category} parcel shipped by {channel}.", 1.0),
    "review": (("category", "region"), "Review a {category} purchase ({region})",
               "Rate the seller and leave a review for {category} items delivered in {region}.", 0.4),
    "contact_customer_service": (("region",), "Contact customer service in {region}",
                                 "Opening hours and channels of the {region} customer service team.", 0.6),
    "contact_human_agent": (("region", "category"), "Talk to a live agent about {category} ({region})",
                            "Reach a human agent in {region} about a {category} order problem.", 1.0),
    "create_account": (("region",), "Create an account in {region}",
                       "Sign up as a new buyer in {region}.", 0.3),
    "delete_account": (("region",), "Delete my {region} account",
                       "Close your account and erase your data in {region}.", 0.2),
    "edit_account": (("region",), "Edit my {region} account details",
                     "Change phone, e-mail or profile details of your {region} account.", 0.4),
    "recover_password": (("region",), "Reset my password ({region})",
                         "Recover access to your {region} account when you forgot the password.", 0.5),
    "registration_problems": (("region",), "Problems signing up in {region}",
                              "Verification code not received or sign-up rejected in {region}.", 0.3),
    "switch_account": (("region",), "Switch between accounts in {region}",
                       "Log in to another buyer account on the same device in {region}.", 0.2),
    "newsletter_subscription": (("promo", "region"), "Subscribe to {promo} alerts in {region}",
                                "Get notified about {promo} campaigns for buyers in {region}.", 0.4),
}
FAMILY_NAMES = tuple(FAMILIES)


def bitext_path() -> Path:
    """Path of the vendored Bitext CSV (CDLA-Sharing-1.0, see rgalign/data/BITEXT_PROVENANCE.md)."""
    return Path(str(resources.files("rgalign") / "data" / "bitext_customer_support.csv"))


def load_bitext(path: str | Path | None = None) -> pd.DataFrame:
    """Load the Bitext customer-support dataset with columns ``instruction, intent, category``.

    Raises:
        FileNotFoundError: the file is missing, with the fix.
        ValueError: the file lacks a required column or does not cover the 27 families.
    """
    path = Path(path) if path is not None else bitext_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"Bitext dataset not found at {path}. It ships inside the rgalign package "
            "(rgalign/data/bitext_customer_support.csv): reinstall with `pip install -e .`, or pass "
            "--bitext PATH to a copy of Bitext_Sample_Customer_Support_Training_Dataset.csv.")
    df = pd.read_csv(path)
    missing = {"instruction", "intent", "category"} - set(df.columns)
    if missing:
        raise ValueError(f"Bitext file {path} lacks column(s) {sorted(missing)}; expected the Bitext "
                         "customer-support CSV with instruction,intent,category columns.")
    absent = set(FAMILY_NAMES) - set(df.intent)
    if absent:
        raise ValueError(f"Bitext file {path} has no rows for intent famil(ies) {sorted(absent)}.")
    return df[["instruction", "intent", "category"]]


HELDOUT_BUCKETS = 5  # one utterance in five is held out of every pre-training and alignment corpus


def kb_utterances(bitext: pd.DataFrame) -> dict[str, str]:
    """The one real phrasing per family that ``build_kb`` quotes in its intent descriptions."""
    return {f: sorted((u for u in bitext.loc[bitext.intent == f, "instruction"] if len(u.split()) >= 4),
                      key=lambda u: (len(u), u))[0] for f in FAMILIES}


def heldout_mask(bitext: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the held-out Bitext utterances: a stable hash of the text puts one in
    ``HELDOUT_BUCKETS`` aside (the same rows on every machine and seed), never one the KB quotes. No reasoner is
    pre-trained or aligned on them; ``rgalign reasoner check`` retrieves KB intents for them."""
    import hashlib
    quoted = set(kb_utterances(bitext).values())
    text = bitext["instruction"].astype(str)
    return np.array([int(hashlib.sha1(t.encode()).hexdigest()[:8], 16) % HELDOUT_BUCKETS == 0 and t not in quoted
                     for t in text])


def build_kb(bitext: pd.DataFrame, seed: int, cold_start_frac: float = 0.03,
             zipf_s: float = 1.1) -> pd.DataFrame:
    """Build the KB table, one row per intent.

    Columns: ``intent_id`` (1..N; 0 is reserved for "unknown"), ``family``, ``category``, one ``slot_<dim>``
    column per slot dimension (value id, 0 where the intent has no such slot), ``title``, ``description``,
    ``popularity`` (long-tail prior, sums to 1), ``launch_day`` (0, or the first day of the evaluation week
    for cold-start intents that are never clickable in training).
    """
    rng = np.random.default_rng(seed)
    cat_of = bitext.groupby("intent")["category"].first()
    rows = []
    quoted = kb_utterances(bitext)
    for family, (dims, title_t, desc_t, weight) in FAMILIES.items():
        # one real phrasing per family, the most typical (shortest with >= 4 words) for readability
        utter = quoted[family]
        combos = list(itertools.product(*(range(1, len(SLOTS[d]) + 1) for d in dims)))
        # long tail inside the family: a random Zipf ranking of its slot combinations
        ranks = rng.permutation(len(combos))
        for combo, rank in zip(combos, ranks):
            values = {d: SLOTS[d][v - 1] for d, v in zip(dims, combo)}
            row = {"family": family, "category": cat_of[family],
                   "title": title_t.format(**values),
                   "description": desc_t.format(**values) + f' Users ask: "{utter}"',
                   "popularity": weight / (rank + 1) ** zipf_s / sum(1 / (r + 1) ** zipf_s for r in ranks)}
            row.update({f"slot_{d}": dict(zip(dims, combo)).get(d, 0) for d in SLOT_DIMS})
            rows.append(row)
    kb = pd.DataFrame(rows)
    kb.insert(0, "intent_id", np.arange(1, len(kb) + 1, dtype=np.int64))
    kb["popularity"] /= kb["popularity"].sum()
    # cold start: a few tail intents (never a family's head) launch with the evaluation week
    tail = kb.index[kb.groupby("family")["popularity"].rank(ascending=False) > 2]
    cold = rng.choice(tail, size=int(round(cold_start_frac * len(kb))), replace=False)
    kb["launch_day"] = 0
    kb.loc[cold, "launch_day"] = -1  # filled with the evaluation week's first day by the simulator
    return kb
