"""Pre-training text of a locally built reasoner: what the project ships or generates, never a label.

- Bitext customer-support utterances and responses (real phrasings of user concerns), less the held-out
  utterances (``rgalign.world.kb.heldout_mask``) that ``rgalign reasoner check`` retrieves with;
- KB intent titles and descriptions;
- verbalized contexts of training-week sessions inside the section 3.2 prompt, each followed by a
  rule-of-thumb question written from the *observed* features only (order status, entry point, overdue
  delivery, slots): no true intent, no click, no parameter of the world's hidden model is read.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rgalign.world.vocab import ENTRY_POINTS, ORDER_STATUSES, SLOTS
from rgalign.features.prompt import ReasonerPrompt

# common sense of a support team, written independently of rgalign.world.intent_model
_STATUS_TOPIC = {"TO_PAY": "payment", "TO_SHIP": "shipping", "TO_RECEIVE": "delivery", "COMPLETED": "after-sale",
                 "CANCELLED": "refund", "RETURN_REFUND": "refund", "NO_ACTIVE_ORDER": "account"}
_ENTRY_TOPIC = {"Payment Page": "payment", "Return/Refund Page": "refund", "Me Page": "account",
                "Shipping Page": "delivery"}
_TEMPLATES = {
    "payment": "Why did my {payment} payment for the {category} order not go through, and how can I pay now?",
    "shipping": "When will the seller ship my {category} order, and can I still change or cancel it?",
    "delivery": "Where is my {category} parcel sent by {channel}, it has been {days} days already?",
    "late": "My {channel} parcel is {late} days late, can you speed up the delivery or help me complain?",
    "after-sale": "How do I get an invoice or return the {category} items I received from this order?",
    "refund": "When will I get my refund back to my {payment} for the {category} order in {region}?",
    "account": "How can I update my account details or find deals for shoppers in {region} today?",
}


def _name(dim: str, value) -> str:
    v = int(value) if pd.notna(value) else 0
    return SLOTS[dim][v - 1] if 1 <= v <= len(SLOTS[dim]) else "my"


def rule_question(row: dict) -> str:
    """A 10-20 word question from observed features only (a weak, label-free heuristic teacher)."""
    status = ORDER_STATUSES[int(row["order_status"]) - 1] if pd.notna(row.get("order_status")) and \
        1 <= int(row["order_status"]) <= len(ORDER_STATUSES) else "NO_ACTIVE_ORDER"
    entry = ENTRY_POINTS[int(row["entry_point"]) - 1] if 1 <= int(row.get("entry_point", 0)) <= len(ENTRY_POINTS) else ""
    topic = _ENTRY_TOPIC.get(entry, _STATUS_TOPIC[status])
    days = int(row["days_in_status"]) if pd.notna(row.get("days_in_status")) else 0
    expected = int(row["expected_delivery_days"]) if pd.notna(row.get("expected_delivery_days")) else 0
    if topic == "delivery" and expected and days > expected:
        topic = "late"
    return _TEMPLATES[topic].format(
        payment=_name("payment", row.get("payment_method")), category=_name("category", row.get("product_category")),
        channel=_name("channel", row.get("logistics_channel")), region=_name("region", row.get("region")),
        days=days, late=max(days - expected, 0)).replace("my my", "my").replace("the my", "my")


def pretraining_bitext(bitext: pd.DataFrame) -> pd.DataFrame:
    """The Bitext rows a reasoner may learn from: all but the held-out utterances."""
    from rgalign.world.kb import heldout_mask
    return bitext[~heldout_mask(bitext)] if "instruction" in bitext else bitext


def context_query(row: dict, titles: dict[int, str]) -> str:
    """The latent query a context calls for, in words, from observed features only: the ``rule_question`` of
    its order state, then what the user last asked about (the title of the most recent intent in its history),
    when there is one."""
    q = rule_question(row)
    recent = [int(i) for i in (row.get("recent_intents") if row.get("recent_intents") is not None else []) if int(i) > 0]
    return q + (f" Last time I asked: {titles[recent[-1]]}." if recent and recent[-1] in titles else "")


def distil_pairs(bitext: pd.DataFrame, kb: pd.DataFrame, contexts: list[str], rows: list[dict], n_texts: int,
                 seed: int) -> list[tuple[str, str]]:
    """``(reasoner input, teacher text)`` pairs of the LTP distillation: up to ``n_texts`` Bitext utterances
    and every KB intent text read as themselves, and every context read as the query it calls for
    (``context_query``), so a context's latent query lands where the embedding of that query does."""
    rng = np.random.default_rng(seed)
    utt = pretraining_bitext(bitext)["instruction"].astype(str).drop_duplicates().tolist()
    utt = [utt[i] for i in rng.permutation(len(utt))[:n_texts]]
    kb_texts = (kb.title + ". " + kb.description).tolist()
    titles = dict(zip(kb.intent_id.astype(int), kb.title))
    return [(t, t) for t in utt + kb_texts] + [(c, context_query(r, titles)) for c, r in zip(contexts, rows)]


def build_corpus(bitext: pd.DataFrame, kb: pd.DataFrame, contexts: list[str], rows: list[dict], seed: int,
                 tokenizer=None) -> list[tuple[str, str]]:
    """``(prompt, completion)`` documents for tokenizer training and pre-training, shuffled by ``seed``.

    Plain text (Bitext, KB) has an empty prompt: every token is learned. A context document is the section
    3.2 prompt (rendered by the ``tokenizer``'s chat template with the generation prompt, as LTP sees it)
    and its question as the completion: only the completion is learned, so the last prompt token, the LTP
    position, is trained to summarise the context into what the question needs.
    """
    prompt = ReasonerPrompt()
    bitext = pretraining_bitext(bitext)
    docs = [("", t) for t in bitext["instruction"].astype(str)]
    if "response" in bitext:
        docs += [("", t) for t in bitext["response"].astype(str)]
    docs += [("", t) for t in (kb.title + ". " + kb.description)]
    for ctx, row in zip(contexts, rows):
        q = rule_question(row)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            docs.append((tokenizer.apply_chat_template(prompt.messages(ctx), tokenize=False,
                                                       add_generation_prompt=True), q + "<|im_end|>"))
        else:
            docs.append((prompt.plain(ctx) + " ", q))
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]
