"""Feature verbalization (paper section 3.2, Table 1): id -> category string -> prompt fragment.

Only values of the data contract (``rgalign.contract``, the paper's metadata dictionary) ever enter a prompt: categorical
features must be integer ids, numbers must be numbers, the behaviour sequence must be intent ids. An id the
dictionary does not know becomes an explicit placeholder (``[unknown Region id 42]``) and is counted; free
text is refused with an error naming the feature.

Example:
    >>> from rgalign.contract.contract import contract_from_yaml
    >>> from rgalign.contract.scaffold import TEMPLATE
    >>> from rgalign.features.verbalize import Verbalizer
    >>> v = Verbalizer({21: "Pay an overdue bill"}, contract_from_yaml(TEMPLATE.format(name="telco", folder=".")))
    >>> v.fragment("plan", 3)
    'Plan: Premium'
    >>> v.fragment("recent_topics", [21])
    "Recent Help Topics: ('Pay an overdue bill')"
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np

from rgalign.contract import DataContract, Feature

NONE_STRING = "None"  # what id 0 ("unknown / not applicable") reads as


class VerbalizationError(ValueError):
    """A feature value that cannot be verbalized (free text, wrong type); the message names the feature."""


def _is_int(x) -> bool:
    return isinstance(x, (Integral, np.integer)) and not isinstance(x, bool)


class Verbalizer:
    """Turns a feature row (name -> id / number / id list) into the grouped user-context text C.

    Args:
        intent_titles: intent id -> KB title, used to verbalize the behaviour sequence.
        contract: the dataset's contract: labels, vocabularies, units and the prompt layout (groups in order).
        max_recent: how many recent intents to verbalize (most recent last; default: the contract's cap).
    """

    def __init__(self, intent_titles: Mapping[int, str], contract: DataContract, max_recent: int | None = None):
        if not isinstance(contract, DataContract):
            raise TypeError(f"Verbalizer needs the dataset's DataContract, got {type(contract).__name__}; load it "
                            "with rgalign.contract.load_contract(dataset_dir)")
        max_recent = contract.max_recent if max_recent is None else max_recent
        if max_recent < 1:
            raise ValueError(f"max_recent must be >= 1, got {max_recent}")
        self.intent_titles = {int(k): str(v) for k, v in intent_titles.items()}
        self.contract = contract
        self.max_recent = max_recent
        self.unknown = Counter()  # feature name -> placeholders emitted

    def value_string(self, feat: Feature, value) -> str:
        name = feat.name
        if isinstance(value, str):
            raise VerbalizationError(
                f"feature '{name}' got free text {value!r}; only values of the data contract may enter a "
                f"prompt: pass the integer id (the vocabulary of '{name}' in {self.contract.path or 'the contract'}).")
        if feat.kind == "categorical":
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return NONE_STRING
            if not _is_int(value):
                raise VerbalizationError(f"feature '{name}' must be an integer id, got {type(value).__name__} "
                                         f"{value!r}.")
            if value == 0:
                return NONE_STRING
            if not 1 <= value <= len(feat.vocab):
                self.unknown[name] += 1
                return f"[unknown {feat.label} id {int(value)}]"
            return feat.string(int(value))
        if feat.kind == "numerical":
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return "Unknown"
            if not isinstance(value, (Real, np.number)) or isinstance(value, bool):
                raise VerbalizationError(f"feature '{name}' must be a number, got {type(value).__name__} "
                                         f"{value!r}.")
            text = f"{int(value)}" if float(value).is_integer() else f"{float(value):.2f}"
            return f"{text} {feat.unit}".strip()
        if feat.kind == "sequence":
            if value is None:
                value = []
            if isinstance(value, (bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
                raise VerbalizationError(f"feature '{name}' must be a list of intent ids, got "
                                         f"{type(value).__name__}.")
            titles = []
            for v in list(value)[-self.max_recent:]:
                if not _is_int(v):
                    raise VerbalizationError(f"feature '{name}' must hold integer intent ids, got {v!r}.")
                if int(v) in self.intent_titles:
                    titles.append(self.intent_titles[int(v)])
                else:
                    self.unknown[name] += 1
                    titles.append(f"[unknown intent id {int(v)}]")
            return "(" + ", ".join(f"'{t}'" for t in titles) + ")" if titles else NONE_STRING
        raise VerbalizationError(f"feature '{name}' of kind {feat.kind} is not verbalized")

    def fragment(self, name: str, value) -> str:
        """One Table 1 prompt fragment, e.g. ``Entry Point: Shipping Page``."""
        feats = self.contract.features
        if name not in feats:
            raise VerbalizationError(f"feature '{name}' is not in the data contract; known features: "
                                     f"{sorted(feats)}")
        feat = feats[name]
        return f"{feat.label}: {self.value_string(feat, value)}"

    def context(self, row: Mapping) -> str:
        """The user context C: a line per prompt group of the contract (for the benchmark world: User Profile,
        Order Status and Interaction Context, User Historical Behaviour). Missing features are skipped; unknown
        keys are ignored."""
        def group(names):
            return ", ".join(self.fragment(n, row[n]) for n in names if n in row)
        parts = [(title, group(names)) for title, names in self.contract.prompt]
        text = "\n".join(f"{title}: {body}" for title, body in parts if body)
        if not text:
            raise VerbalizationError("the feature row has none of the verbalized features; expected keys such "
                                     f"as {self.contract.verbalized[:5]}")
        return text
