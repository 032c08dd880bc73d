"""The data contract: the paper's "predefined metadata dictionary" (section 3.2, Table 1) as data.

A project declares its dataset once, in ``contract.yaml`` next to its tables: the knowledge base, the session
log, the Feast feature views with every feature's kind, prompt label, id -> string vocabulary and unit, the
request features, the features derived at request time, and the prompt layout. Feast definitions, the
verbalizer, the ranker's inputs, serving's request checks and monitoring's drift columns all read it; the
benchmark world is one producer of a conforming dataset (``rgalign/world/contract.yaml``).

Categorical ids start at 1; id 0 means "unknown / not applicable" for every categorical feature.

Example (the contract ``rgalign data init`` scaffolds):
    >>> from rgalign.contract.contract import contract_from_yaml
    >>> from rgalign.contract.scaffold import TEMPLATE
    >>> c = contract_from_yaml(TEMPLATE.format(name="telco", folder="data/telco"))
    >>> c.features["account_status"].vocab[1]
    'Overdue'
    >>> c.categorical
    ['plan', 'channel', 'account_status']
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FILE = "contract.yaml"
KINDS = ("categorical", "numerical", "timestamp", "sequence")
OPS = ("days_since", "local_hour")
# the columns every project's tables carry besides its declared features (docs/data.md)
KB_COLUMNS = {"intent_id": "int", "title": "str", "description": "str"}
KB_OPTIONAL = {"family": "str", "launch_day": "int"}
SESSION_COLUMNS = {"session_id": "int", "user_id": "int", "event_timestamp": "time", "split": "str",
                   "shown_intents": "int list", "clicked_intent": "int"}
EVAL_COLUMNS = {"session_id": "int", "true_intent": "int"}
VIEW_KEYS = {"user_id": "int", "event_timestamp": "time"}
SPLITS = ("train", "eval")


class ContractError(ValueError):
    """A contract that cannot be used; the message names the file, the field and the fix."""

    def __init__(self, where: str, problem: str, fix: str):
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}. Fix: {fix}.")


@dataclass(frozen=True)
class Feature:
    """One feature: how it is stored (``kind``, ``dtype``), where it comes from (``source``: a view name,
    ``request`` or ``derived``), its prompt label and group, for categorical features the vocabulary
    (``vocab[id - 1]`` is id's string), and for derived ones the formula (``op`` over ``from_``)."""
    name: str
    kind: str
    label: str
    source: str
    vocab: tuple[str, ...] = ()
    unit: str = ""
    dtype: str = ""
    scale: str = ""
    group: str = ""
    op: str = ""
    from_: str = ""
    utc_offsets: tuple[int, ...] = ()

    def string(self, value_id: int) -> str:
        """Map a categorical id to its string (Table 1's "ID -> String" column)."""
        return self.vocab[value_id - 1]

    @property
    def storage(self) -> str:
        """The Feast / parquet type: int64 ids and times, int64 lists, float64 numbers unless declared."""
        return {"categorical": "int64", "timestamp": "int64", "sequence": "int64 list"}.get(self.kind) \
            or self.dtype or "float64"


@dataclass(frozen=True)
class View:
    """A Feast feature view: its offline table (``<table>.parquet``), time-to-live and features."""
    name: str
    table: str
    ttl_days: float
    features: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class DataContract:
    """A dataset's declaration (see the module docstring). Build it with ``load_contract``."""
    name: str
    features: dict[str, Feature]
    views: tuple[View, ...]
    prompt: tuple[tuple[str, tuple[str, ...]], ...]
    sequence: dict
    request: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    tables: dict[str, str] = field(default_factory=dict)
    eval_optional: bool = True
    entity: dict = field(default_factory=dict)
    critical: tuple[str, ...] = ()
    playbook: str = ""            # "module:Class" of the domain's playbook ("": rgalign.features.playbook's generic one)
    assistant: dict = field(default_factory=dict)   # the reasoner prompt's domain words: chatbot, information
    description: str = ""
    path: str = ""

    @property
    def verbalized(self) -> list[str]:
        """Features of the prompt, in prompt order."""
        return [n for _, names in self.prompt for n in names]

    @property
    def categorical(self) -> list[str]:
        """The ranker's categorical inputs (prompt order)."""
        return [n for n in self.verbalized if self.features[n].kind == "categorical"]

    @property
    def numerical(self) -> list[str]:
        """The ranker's numeric inputs (prompt order)."""
        return [n for n in self.verbalized if self.features[n].kind == "numerical"]

    @property
    def log1p(self) -> list[str]:
        return [n for n in self.numerical if self.features[n].scale == "log1p"]

    @property
    def max_recent(self) -> int:
        return int(self.sequence["max_len"])

    def prompt_words(self) -> dict:
        """The reasoner prompt's domain words (``ReasonerPrompt`` fields): the contract's ``assistant``, whose
        ``information`` defaults to the prompt groups' titles; {} keeps the paper's wording."""
        if not self.assistant:
            return {}
        titles = ", ".join(t for t, _ in self.prompt)
        return {"information": f"User Context Information, {titles}", **self.assistant}

    def view_features(self) -> dict[str, list[str]]:
        return {v.name: list(v.features) for v in self.views}

    def to_dict(self) -> dict:
        """The YAML form (``load_contract`` reads it back to an equal contract)."""
        def feat(n):
            f = self.features[n]
            d = {"name": f.name, "kind": f.kind, "label": f.label}
            for k in ("vocab", "unit", "dtype", "scale", "op", "from_", "utc_offsets"):
                v = getattr(f, k)
                if v:
                    d[k.rstrip("_")] = list(v) if isinstance(v, tuple) else v
            return d
        return {"version": 1, "name": self.name, "description": self.description, "entity": dict(self.entity),
                "kb": {"table": self.tables["kb"]}, "sessions": {"table": self.tables["sessions"]},
                "eval_labels": {"table": self.tables["eval_labels"], "optional": self.eval_optional},
                "sequence": dict(self.sequence),
                "views": [{"name": v.name, "table": v.table, "ttl_days": v.ttl_days, "description": v.description,
                           "features": [feat(n) for n in v.features]} for v in self.views],
                "request": [feat(n) for n in self.request], "derived": [feat(n) for n in self.derived],
                "prompt": [{"title": t, "features": list(ns)} for t, ns in self.prompt],
                "monitoring": {"critical": list(self.critical)}, **({"playbook": self.playbook} if self.playbook else {}),
                **({"assistant": dict(self.assistant)} if self.assistant else {})}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=110))
        return path


def _req(d: dict, key: str, where: str, kind=str, fix: str = ""):
    if not isinstance(d, dict) or key not in d or d[key] in (None, ""):
        raise ContractError(f"{where}.{key}", "is missing", fix or f"add `{key}:`")
    v = d[key]
    if kind is not None and not isinstance(v, kind):
        raise ContractError(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {v!r}",
                            fix or f"write `{key}` as a {getattr(kind, '__name__', kind)}")
    return v


def _feature(d: dict, where: str, source: str) -> Feature:
    name = _req(d, "name", where)
    where = f"{where} ({name})"
    kind = _req(d, "kind", where)
    if kind not in KINDS:
        raise ContractError(f"{where}.kind", f"{kind!r} is not a kind", f"use one of {list(KINDS)}")
    known = {"name", "kind", "label", "vocab", "unit", "dtype", "scale", "op", "from", "utc_offsets"}
    extra = set(d) - known
    if extra:
        raise ContractError(f"{where}.{sorted(extra)[0]}", "is not a feature field", f"use only {sorted(known)}")
    vocab = tuple(str(v) for v in d.get("vocab") or ())
    if kind == "categorical" and not vocab:
        raise ContractError(f"{where}.vocab", "a categorical feature needs its id -> string vocabulary",
                            "list the strings of ids 1..n (id 0 is 'unknown')")
    if len(set(vocab)) != len(vocab):
        raise ContractError(f"{where}.vocab", "has duplicate strings", "give each id its own string")
    if d.get("dtype") not in (None, "int64", "float64"):
        raise ContractError(f"{where}.dtype", f"{d['dtype']!r} is not a storage type", "use int64 or float64")
    if d.get("scale") not in (None, "", "log1p"):
        raise ContractError(f"{where}.scale", f"{d['scale']!r} is not a scale", "use log1p or leave it out")
    op = d.get("op", "")
    if source == "derived" and op not in OPS:
        raise ContractError(f"{where}.op", f"{op!r} is not a derivation", f"use one of {list(OPS)}")
    return Feature(name=name, kind=kind, label=str(_req(d, "label", where)), source=source, vocab=vocab,
                   unit=str(d.get("unit") or ""), dtype=d.get("dtype") or "", scale=d.get("scale") or "",
                   op=op, from_=d.get("from", ""), utc_offsets=tuple(int(x) for x in d.get("utc_offsets") or ()))


def _assistant(d, path: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict) or set(d) - {"chatbot", "information"}:
        raise ContractError(f"{path}: assistant", f"{d!r} is not a mapping of chatbot / information",
                            'write e.g. `assistant: {chatbot: "a telecom support Chatbot", information: "..."}`')
    return {k: str(v) for k, v in d.items()}


def contract_from_dict(d: dict, path: str = FILE) -> DataContract:
    """Validate the YAML form and build the contract; every error names the field and the fix."""
    if not isinstance(d, dict):
        raise ContractError(path, "is not a mapping", "start from `rgalign data init`")
    if d.get("version") != 1:
        raise ContractError(f"{path}: version", f"{d.get('version')!r} is not a supported version",
                            "write `version: 1`")
    features: dict[str, Feature] = {}

    def add(f: Feature, where: str):
        if f.name in features:
            raise ContractError(where, f"feature {f.name!r} is declared twice", "give every feature one home")
        if f.name in VIEW_KEYS or f.name in SESSION_COLUMNS:
            raise ContractError(where, f"{f.name!r} is a reserved column", "rename the feature")
        features[f.name] = f

    views = []
    for i, v in enumerate(_req(d, "views", path, list)):
        w = f"{path}: views[{i}]"
        name = _req(v, "name", w)
        fs = [_feature(f, f"{w}.features[{j}]", name) for j, f in enumerate(_req(v, "features", w, list))]
        for j, f in enumerate(fs):
            add(f, f"{w}.features[{j}]")
        ttl = _req(v, "ttl_days", w, (int, float))
        views.append(View(name, str(v.get("table") or name), float(ttl), tuple(f.name for f in fs),
                          str(v.get("description") or "")))
    request = [_feature(f, f"{path}: request[{j}]", "request") for j, f in enumerate(d.get("request") or [])]
    derived = [_feature(f, f"{path}: derived[{j}]", "derived") for j, f in enumerate(d.get("derived") or [])]
    for j, f in enumerate(request):
        add(f, f"{path}: request[{j}]")
    for j, f in enumerate(derived):
        add(f, f"{path}: derived[{j}]")
        src = features.get(f.from_)
        need = "timestamp" if f.op == "days_since" else "categorical"
        if src is None or src.kind != need:
            raise ContractError(f"{path}: derived[{j}] ({f.name}).from", f"{f.from_!r} is not a {need} feature",
                                f"name the {need} feature {f.op} reads")
        if f.op == "local_hour" and len(f.utc_offsets) != len(src.vocab) + 1:
            raise ContractError(f"{path}: derived[{j}] ({f.name}).utc_offsets",
                                f"{len(f.utc_offsets)} offsets for {len(src.vocab)} ids of {src.name}",
                                f"give {len(src.vocab) + 1} offsets: one for id 0 (unknown), then one per id")

    seq = dict(_req(d, "sequence", path, dict))
    for k in ("view", "intents", "times"):
        _req(seq, k, f"{path}: sequence")
    view = next((v for v in views if v.name == seq["view"]), None)
    if view is None or seq["intents"] not in view.features or seq["times"] not in view.features:
        raise ContractError(f"{path}: sequence", f"view {seq['view']!r} must declare {seq['intents']!r} and "
                            f"{seq['times']!r}", "point `sequence` at the behaviour view and its two list features")
    seq.setdefault("window_hours", 24)
    seq.setdefault("max_len", 10)
    if not (isinstance(seq["max_len"], int) and seq["max_len"] >= 1):
        raise ContractError(f"{path}: sequence.max_len", f"{seq['max_len']!r} is not a positive integer",
                            "write e.g. `max_len: 10`")

    prompt, seen = [], set()
    for i, g in enumerate(_req(d, "prompt", path, list)):
        w = f"{path}: prompt[{i}]"
        names = tuple(_req(g, "features", w, list))
        for n in names:
            if n not in features:
                raise ContractError(f"{w}.features", f"{n!r} is not a declared feature",
                                    f"declare it under views, request or derived, or drop it (known: {sorted(features)})")
            if n in seen:
                raise ContractError(f"{w}.features", f"{n!r} appears twice in the prompt", "list it once")
            if features[n].kind == "timestamp":
                raise ContractError(f"{w}.features", f"{n!r} is a timestamp", "verbalize a feature derived from it")
            seen.add(n)
            features[n] = dataclasses.replace(features[n], group=str(_req(g, "title", w)))
        prompt.append((str(g["title"]), names))
    critical = tuple((d.get("monitoring") or {}).get("critical") or ())
    for n in critical:
        if n not in features or features[n].kind not in ("categorical", "numerical"):
            raise ContractError(f"{path}: monitoring.critical", f"{n!r} is not a categorical or numerical feature",
                                "name features of the ranker's inputs")
    tables = {k: str((d.get(k) or {}).get("table") or k) for k in ("kb", "sessions", "eval_labels")}
    return DataContract(name=str(_req(d, "name", path)), features=features, views=tuple(views),
                        prompt=tuple(prompt), sequence=seq, request=tuple(f.name for f in request),
                        derived=tuple(f.name for f in derived), tables=tables,
                        eval_optional=bool((d.get("eval_labels") or {}).get("optional", True)),
                        entity=dict(d.get("entity") or {"name": "user"}), critical=critical,
                        playbook=str(d.get("playbook") or ""), assistant=_assistant(d.get("assistant"), path),
                        description=str(d.get("description") or ""), path=path)


def contract_from_yaml(text: str, path: str = FILE) -> DataContract:
    """The contract of a YAML text."""
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ContractError(path, f"is not valid YAML ({e})", "fix the YAML syntax") from None
    return contract_from_dict(d, path)


def load_contract(path: str | Path) -> DataContract:
    """Read ``contract.yaml`` (``path`` is the file or the dataset folder that holds it)."""
    p = Path(path)
    if p.is_dir():
        p = p / FILE
    if not p.is_file():
        raise ContractError(str(p), "no data contract here",
                            "run `rgalign data init DIR` for a new project, or regenerate the world")
    return contract_from_yaml(p.read_text(), str(p))
