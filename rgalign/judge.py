"""Intent hit rate by an LLM judge (paper section 5.1): in production nobody labels the true intent of a
session, so an LLM reads the session transcript and names the KB intent the user actually wanted; a session
is a hit when that intent was among the shown top-3.

The judge is any OpenAI-compatible chat endpoint (``rgalign.chat.ChatClient``: model, retries, timeouts
configurable); the answer space is the KB, as numbered titles, and the reply must be one of those numbers
(anything else counts as "no answer", never as a guess). In simulation the world's true intent is the
reference; ``agreement`` reports judge-vs-truth agreement whenever a real judge is configured.

Example::

    judge = IntentJudge(ChatClient("http://127.0.0.1:8000/v1", "gpt-5-mini"), kb)
    judge.judge(["user: my parcel has not moved for a week ..."])   # -> [intent_id or None]
"""
from __future__ import annotations

from rgalign.errors import MissingInputError

import re

import numpy as np
import pandas as pd

from rgalign.chat import ChatClient

SYSTEM = ("You label customer-support chat sessions of an e-commerce platform. Read the transcript and answer "
          "with the number of the single intent from the list that the user actually wanted, and nothing else. "
          "Answer 0 if none fits.")


class IntentJudge:
    """Args:
        client: the chat endpoint.
        kb: the knowledge base (``intent_id``, ``title``): the answer space.
        max_intents: titles listed in the prompt (the whole KB by default; a retrieval shortlist on very large KBs).
    """

    def __init__(self, client: ChatClient, kb: pd.DataFrame, max_intents: int | None = None):
        missing = {"intent_id", "title"} - set(kb.columns)
        if missing:
            raise MissingInputError(f"kb lacks column(s) {sorted(missing)}")
        kb = kb.head(max_intents) if max_intents else kb
        self.client, self.ids = client, kb.intent_id.astype(int).tolist()
        self.menu = "\n".join(f"{i}. {t}" for i, t in zip(self.ids, kb.title))

    def messages(self, transcript: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Intents:\n{self.menu}\n\nTranscript:\n{transcript}\n\nIntent number:"}]

    def parse(self, reply: str | None) -> int | None:
        m = re.search(r"\d+", reply or "")
        v = int(m.group()) if m else None
        return v if v in self.ids else None

    def judge(self, transcripts: list[str]) -> list[int | None]:
        if any(not isinstance(t, str) or not t.strip() for t in transcripts):
            raise ValueError("every transcript must be non-empty text")
        return [self.parse(r) for r in self.client.complete_many([self.messages(t) for t in transcripts])]


def judged_hit_rate(shown: list[list[int]], judged: list[int | None]) -> tuple[float, int]:
    """Hit rate over sessions the judge labelled, and how many it could not label."""
    ok = [(s, j) for s, j in zip(shown, judged) if j is not None]
    return (float(np.mean([j in s[:3] for s, j in ok])) if ok else float("nan")), len(judged) - len(ok)


def agreement(judged: list[int | None], truth) -> float:
    """Share of sessions where the judge names the true intent (unlabelled sessions count as disagreement)."""
    truth = list(truth)
    if len(judged) != len(truth) or not truth:
        raise ValueError(f"judged ({len(judged)}) and truth ({len(truth)}) must be non-empty and aligned")
    return float(np.mean([j == int(t) for j, t in zip(judged, truth)]))
