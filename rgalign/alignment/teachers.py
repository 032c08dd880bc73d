"""The teacher pool of Stage 2 (paper section 4.2, "Multi-LLM Sample Generation"): ``context -> one query``.

Every teacher reads only the verbalized user context C (Table 1) inside the section 3.2 prompt; none sees a
click, a true intent or a parameter of the world's hidden model. Backends:

- ``OpenAITeacher``: any OpenAI-compatible ``/chat/completions`` endpoint (GPT-class APIs, vLLM, a KServe
  HF runtime): base URL, model and key from config/env, batched with a thread pool, retries, timeouts.
- ``HFTeacher``: a local Hugging Face causal LM directory (e.g. the ``smollm2`` reasoner), greedy decoding.
- Offline teachers for tests and benchmarks, of deliberately different quality:
  * ``PlaybookTeacher`` ("playbook"): the domain playbook's rule of thumb (``rgalign.features.playbook``;
    for the benchmark world order status, entry point and overdue delivery: the same heuristic the
    reasoner's pre-training corpus uses). Medium quality.
  * ``RetrievalTeacher`` ("kb-retrieval"): lexical retrieval of the KB intent whose title and description
    best match the context (its values, plus the playbook's topic words), phrased as a question. The
    strongest offline teacher: it names KB-like intents.
  * ``FollowUpTeacher`` ("follow-up"): asks again about the most recently clicked intent of the behaviour
    sequence, else a generic status question. Weak: right only for follow-up sessions.
- The reasoner itself is the 4th candidate (``rgalign.reasoner.generate``), added by the caller.

``TeacherPool.generate`` validates every answer (empty, over-long): a bad answer is retried, then dropped
with a counted warning; a context keeps its sample only with ``min_candidates`` valid queries, and the run
fails with a clear message if too few samples remain.
"""
from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from rgalign.chat import ChatClient, EndpointUnreachable
from rgalign.contract import DataContract
from rgalign.features.playbook import load_playbook
from rgalign.features.prompt import ReasonerPrompt


def _label_re(contract: DataContract):
    if getattr(contract, "_label_re", None) is None:
        labels = {f.label: name for name, f in contract.features.items() if f.group}
        pattern = re.compile(r"(?:^|, |: )(" + "|".join(re.escape(lbl) for lbl in sorted(labels, key=len, reverse=True))
                             + r"): ")
        object.__setattr__(contract, "_label_re", (labels, pattern))   # cached on the (frozen) contract
    return contract._label_re


def parse_context(context: str, contract: DataContract) -> dict:
    """Inverse of ``Verbalizer.context`` for the fields a teacher may read: ``{feature name: id or number}``
    (categoricals back to ids, numbers without units, the behaviour sequence as a list of titles)."""
    labels, pattern = _label_re(contract)
    row: dict = {}
    for line in context.splitlines():
        hits = list(pattern.finditer(line))
        for a, b in zip(hits, hits[1:] + [None]):
            name = labels[a.group(1)]
            value = line[a.end():b.start() if b else len(line)].strip()
            feat = contract.features[name]
            if feat.kind == "categorical":
                row[name] = feat.vocab.index(value) + 1 if value in feat.vocab else 0
            elif feat.kind == "numerical":
                m = re.match(r"-?\d+(\.\d+)?", value)
                row[name] = float(m.group()) if m else float("nan")
            elif feat.kind == "sequence":
                row[name] = re.findall(r"'([^']*)'", value)
    return row


class Teacher:
    """``generate(contexts) -> queries`` (one per context; '' or None when it has nothing to say)."""
    name: str = "teacher"

    def generate(self, contexts: list[str]) -> list[str | None]:
        raise NotImplementedError


class _ContextTeacher(Teacher):
    """A teacher that reads the context back into features (``parse_context``) and asks the domain playbook."""

    def __init__(self, contract: DataContract, playbook=None):
        self.contract, self.playbook = contract, playbook or load_playbook(contract)

    def rows(self, contexts):
        return [parse_context(c, self.contract) for c in contexts]


class PlaybookTeacher(_ContextTeacher):
    name = "playbook"

    def generate(self, contexts):
        return [self.playbook.question(r) for r in self.rows(contexts)]


class FollowUpTeacher(_ContextTeacher):
    name = "follow-up"

    def generate(self, contexts):
        out, seq = [], self.contract.sequence["intents"]
        for row in self.rows(contexts):
            recent = row.get(seq) or []
            if recent:
                out.append(f"I asked about '{recent[-1]}' earlier today and still need help with it, what now?")
            else:
                out.append(f"I have a question about my {self.playbook.status(row)}, can someone from "
                           "support help me please?")
        return out


class RetrievalTeacher(_ContextTeacher):
    """Lexical KB retrieval: TF-IDF over word unigrams and bigrams of the intent texts; the playbook's
    ``retrieval_query`` of the context is the query. Deterministic, no training, no labels."""
    name = "kb-retrieval"

    def __init__(self, intent_texts: list[str], titles: list[str], contract: DataContract, playbook=None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        super().__init__(contract, playbook)
        if len(intent_texts) != len(titles) or not titles:
            raise ValueError("RetrievalTeacher needs one title per intent text (and at least one intent)")
        self.titles = titles
        self.vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, stop_words="english")
        self.index = self.vec.fit_transform(intent_texts)

    def generate(self, contexts):
        queries = [self.playbook.retrieval_query(c, row) for c, row in zip(contexts, self.rows(contexts))]
        sims = (self.vec.transform(queries) @ self.index.T).toarray()
        best = sims.argmax(1)
        return [f"Can you help me with this: {self.titles[i].lower()}, what should I do next?" for i in best]


class HFTeacher(Teacher):
    """A local causal LM directory (loaded with ``load_reasoner``), greedy decoding of the section 3.2 prompt."""

    def __init__(self, path: str, name: str | None = None, max_new_tokens: int = 40, batch_size: int = 16):
        from rgalign.reasoner.ltp import LTPEncoder
        from rgalign.reasoner.sources import load_reasoner
        self.encoder = LTPEncoder(load_reasoner(path))
        self.name = name or f"hf:{os.path.basename(str(path).rstrip('/'))}"
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def generate(self, contexts):
        from rgalign.reasoner.generate import generate_queries
        return generate_queries(self.encoder, contexts, max_new_tokens=self.max_new_tokens,
                                batch_size=self.batch_size)


TeacherUnreachable = EndpointUnreachable


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat endpoint (``rgalign.chat.ChatClient``) asked with the section 3.2 prompt."""

    def __init__(self, base_url: str, model: str, name: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 30.0, retries: int = 2, concurrency: int = 8, max_tokens: int = 64,
                 temperature: float = 0.0, prompt: ReasonerPrompt | None = None):
        self.client = ChatClient(base_url, model, api_key_env, timeout_s, retries, concurrency, max_tokens, temperature)
        self.name = name or f"openai:{model}"
        self.prompt = prompt or ReasonerPrompt()   # the dataset's domain words (``DataContract.prompt_words``)

    @property
    def failures(self):
        return self.client.failures

    def check(self) -> None:
        self.client.check(f"teacher {self.name}", "alignment.teacher_url")

    def generate(self, contexts):
        return self.client.complete_many([self.prompt.messages(c) for c in contexts])


@dataclass
class PoolResult:
    """Candidates of the kept samples: ``queries[i][k]`` from teacher ``names[k]`` ('' = dropped)."""
    names: list[str]
    queries: list[list[str]]
    kept: np.ndarray                          # indices of the input contexts that kept their sample
    dropped: Counter = field(default_factory=Counter)   # teacher -> answers dropped after retries


class TeacherPool:
    """Runs several teachers, validates and retries their answers.

    Args:
        teachers: the candidates' sources (the reasoner can be one of them).
        max_words: an answer with more words is over-long (the prompt asks for 10-20).
        retries: extra attempts for the contexts whose answer was empty or over-long.
        min_candidates: valid queries a sample needs to stay (best-of-N needs at least 2).
        min_samples: the run fails if fewer samples remain.
    """

    def __init__(self, teachers: list[Teacher], max_words: int = 40, retries: int = 1, min_candidates: int = 2,
                 min_samples: int = 8):
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        if min_candidates < 2:
            raise ValueError(f"min_candidates must be >= 2 (best-of-N compares candidates), got {min_candidates}")
        self.teachers, self.max_words, self.retries = teachers, max_words, retries
        self.min_candidates, self.min_samples = min_candidates, min_samples

    def _valid(self, q) -> bool:
        return isinstance(q, str) and bool(q.strip()) and len(q.split()) <= self.max_words

    def generate(self, contexts: list[str]) -> PoolResult:
        dropped = Counter()
        columns = []
        for t in self.teachers:
            try:
                out = list(t.generate(contexts))
            except TeacherUnreachable:
                raise
            except Exception as e:  # a teacher that crashes counts as all-empty, like one that times out
                warnings.warn(f"teacher {t.name} failed ({type(e).__name__}: {e}); its answers are dropped")
                out = [None] * len(contexts)
            if len(out) != len(contexts):
                raise RuntimeError(f"teacher {t.name} returned {len(out)} answers for {len(contexts)} contexts")
            for _ in range(self.retries):
                bad = [i for i, q in enumerate(out) if not self._valid(q)]
                if not bad:
                    break
                try:
                    again = t.generate([contexts[i] for i in bad])
                except Exception:
                    again = [None] * len(bad)
                for i, q in zip(bad, again):
                    out[i] = q
            n_bad = sum(not self._valid(q) for q in out)
            if n_bad:
                dropped[t.name] = n_bad
                warnings.warn(f"teacher {t.name}: {n_bad} of {len(out)} answers empty, over-long "
                              f"(> {self.max_words} words) or failed after {self.retries} retries; dropped")
            columns.append([" ".join(q.split()) if self._valid(q) else "" for q in out])
        rows = list(zip(*columns)) if columns else []
        kept = np.array([i for i, r in enumerate(rows) if sum(bool(q) for q in r) >= self.min_candidates], int)
        if len(kept) < self.min_samples:
            raise RuntimeError(f"only {len(kept)} of {len(contexts)} contexts kept >= {self.min_candidates} valid "
                               f"candidate queries (need {self.min_samples}); dropped answers per teacher: "
                               f"{dict(dropped)}. Check the teachers' endpoints or lower alignment.min_candidates.")
        return PoolResult([t.name for t in self.teachers], [list(rows[i]) for i in kept], kept, dropped)
