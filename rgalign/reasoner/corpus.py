"""Pre-training text of a locally built reasoner: what the project ships or generates, never a label.

- Bitext customer-support utterances and responses (real phrasings of user concerns), less the held-out
  utterances (``rgalign.world.kb.heldout_mask``) that ``rgalign reasoner check`` retrieves with;
- KB intent titles and descriptions;
- verbalized contexts of training-week sessions inside the section 3.2 prompt, each followed by the
  domain playbook's question (``rgalign.features.playbook``) written from the *observed* features only: no
  true intent, no click, no parameter of a world's hidden model is read.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rgalign.features.prompt import ReasonerPrompt


def pretraining_bitext(bitext: pd.DataFrame) -> pd.DataFrame:
    """The Bitext rows a reasoner may learn from: all but the held-out utterances."""
    from rgalign.world.kb import heldout_mask
    return bitext[~heldout_mask(bitext)] if "instruction" in bitext else bitext


def context_query(row: dict, titles: dict[int, str], playbook, seq: str) -> str:
    """The latent query a context calls for, in words, from observed features only: the playbook's question,
    then what the user last asked about (the title of the most recent intent of the behaviour sequence ``seq``),
    when there is one."""
    q = playbook.question(row)
    recent = [int(i) for i in (row.get(seq) if row.get(seq) is not None else []) if int(i) > 0]
    return q + (f" Last time I asked: {titles[recent[-1]]}." if recent and recent[-1] in titles else "")


def distil_pairs(bitext: pd.DataFrame, kb: pd.DataFrame, contexts: list[str], rows: list[dict], n_texts: int,
                 seed: int, playbook=None, seq: str = "") -> list[tuple[str, str]]:
    """``(reasoner input, teacher text)`` pairs of the LTP distillation: up to ``n_texts`` Bitext utterances
    and every KB intent text read as themselves, and every context read as the query it calls for
    (``context_query`` with the domain ``playbook``, needed when there are contexts), so a context's latent
    query lands where the embedding of that query does."""
    rng = np.random.default_rng(seed)
    utt = pretraining_bitext(bitext)["instruction"].astype(str).drop_duplicates().tolist()
    utt = [utt[i] for i in rng.permutation(len(utt))[:n_texts]]
    kb_texts = (kb.title + ". " + kb.description).tolist()
    titles = dict(zip(kb.intent_id.astype(int), kb.title))
    return [(t, t) for t in utt + kb_texts] + [(c, context_query(r, titles, playbook, seq)) for c, r in zip(contexts, rows)]


def build_corpus(bitext: pd.DataFrame, kb: pd.DataFrame, contexts: list[str], rows: list[dict], seed: int,
                 tokenizer=None, playbook=None, prompt_words: dict | None = None) -> list[tuple[str, str]]:
    """``(prompt, completion)`` documents for tokenizer training and pre-training, shuffled by ``seed``.

    Plain text (Bitext, KB) has an empty prompt: every token is learned. A context document is the section
    3.2 prompt (rendered by the ``tokenizer``'s chat template with the generation prompt, as LTP sees it)
    and its ``playbook`` question as the completion: only the completion is learned, so the last prompt
    token, the LTP position, is trained to summarise the context into what the question needs.
    """
    prompt = ReasonerPrompt(**(prompt_words or {}))
    bitext = pretraining_bitext(bitext)
    docs = [("", t) for t in bitext["instruction"].astype(str)]
    if "response" in bitext:
        docs += [("", t) for t in bitext["response"].astype(str)]
    docs += [("", t) for t in (kb.title + ". " + kb.description)]
    for ctx, row in zip(contexts, rows):
        q = playbook.question(row)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            docs.append((tokenizer.apply_chat_template(prompt.messages(ctx), tokenize=False,
                                                       add_generation_prompt=True), q + "<|im_end|>"))
        else:
            docs.append((prompt.plain(ctx) + " ", q))
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]
