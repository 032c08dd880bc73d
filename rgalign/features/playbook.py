"""Playbooks: a support team's label-free common sense about what a context calls for, per domain.

A playbook reads only observed features (a context row: feature name -> id / number / list) and writes:

- ``question(row)``: a 10-20 word question (the ``playbook`` teacher, and the questions of the reasoner's
  pre-training corpus);
- ``status(row)``: a short noun phrase of the context's state, read after "my" (the ``follow-up`` teacher's
  fallback: "I have a question about my <status>");
- ``retrieval_query(context, row)``: the text the ``kb-retrieval`` teacher matches against the KB.

``ContractPlaybook`` works for any dataset from its contract: it speaks about the contract's critical
features (``monitoring.critical``, the context that moves intents most). A domain with its own playbook names
it in the contract (``playbook: module:Class``); the benchmark world's is ``rgalign.world.playbook``.
"""
from __future__ import annotations

import importlib
import math

from rgalign.contract import ContractError, DataContract


class ContractPlaybook:
    """The generic playbook: questions about the contract's critical categorical features (else the first
    categorical features of the prompt after its first group)."""

    def __init__(self, contract: DataContract):
        self.contract = contract
        f = contract.features
        focus = [n for n in contract.critical if f[n].kind == "categorical"]
        rest = [n for _, names in contract.prompt[1:] for n in names if f[n].kind == "categorical"]
        self.focus = (focus or rest or contract.categorical)[:3]

    def _values(self, row: dict) -> list[tuple[str, str]]:
        out = []
        for n in self.focus:
            v, feat = row.get(n), self.contract.features[n]
            if isinstance(v, float) and math.isnan(v):
                continue
            if isinstance(v, (int, float)) and 1 <= int(v) <= len(feat.vocab):
                out.append((feat.label.lower(), feat.vocab[int(v) - 1]))
        return out

    def question(self, row: dict) -> str:
        vals = self._values(row)
        if not vals:
            return "I have a question about my account, can someone from support help me please?"
        about = " and ".join(f"my {label} is {value}" for label, value in vals[:2])
        return f"I need help because {about}, what should I do next?"

    def status(self, row: dict) -> str:
        vals = self._values(row)
        return f"{vals[0][0]} ({vals[0][1]})" if vals else "account"

    def retrieval_query(self, context: str, row: dict) -> str:
        """The context's categorical values (the labels would match the same KB words in every context), the
        focus features' values three times."""
        f = self.contract.features
        values = [f[n].vocab[int(row[n]) - 1] for n in self.contract.verbalized
                  if f[n].kind == "categorical" and isinstance(row.get(n), (int, float)) and row[n] == row[n]
                  and 1 <= int(row[n]) <= len(f[n].vocab)]
        return " ".join(values + [value for _, value in self._values(row)] * 3)


def load_playbook(contract: DataContract):
    """The contract's playbook (``playbook: module:Class``, built with the contract), else ``ContractPlaybook``."""
    ref = contract.playbook
    if not ref:
        return ContractPlaybook(contract)
    module, _, name = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ContractError(f"{contract.path}: playbook", f"{ref!r} cannot be imported ({e})",
                            "name an importable module:Class, or drop `playbook:` for the generic one") from None
    return cls(contract)
