"""Ranker inputs of a world: Feast training sets, verbalized contexts, query and intent-text embeddings.

Everything expensive is cached under ``<artifacts>/cache/<world>-<content digest>/`` and keyed by what
produced it (the world's content, the feature service's definitions for the training set, the encoder's name
or the reasoner's version and LTP settings for embeddings), so Stage 1, Stage 3 and the benchmarks reuse one
another's work and never a stale copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rgalign.features.feast_io import FEATURE_SERVICE, FeatureStoreSession
from rgalign.features.text_encoders import TEXT_ENCODERS, get_encoder
from rgalign.contract import DataContract
from rgalign.features.verbalize import Verbalizer


@dataclass
class RankerInputs:
    """Frames of the three splits (train = clicked sessions before the validation days, val = clicked
    sessions of the last ``val_days`` training days, eval = the evaluation week with true intents), the KB,
    and per-split query embeddings (aligned with the frames' rows)."""
    train: pd.DataFrame
    val: pd.DataFrame
    eval: pd.DataFrame
    kb: pd.DataFrame
    semantic: np.ndarray                 # (n_intents, d_sem) intent-text embeddings
    query: dict[str, np.ndarray]         # split -> (rows, d_e)
    world: Path
    contract: DataContract | None = None  # the dataset's contract (features, prompt layout)
    query_encoder: str = ""              # what encoded ``query``: a text encoder's name, or ltp-<reasoner version>
    intent_encoder: str = ""             # what encoded ``semantic``
    train_clicks: np.ndarray | None = None  # (n_intents + 1,) clicks per intent id over *all* clicked sessions
                                            # before the validation days (before any max_train subsample): the
                                            # popularity floor every model is compared with

    @property
    def n_intents(self) -> int:
        return len(self.kb)


def _native(col: pd.Series, name: str, contract: DataContract) -> list:
    """A column as Python values (what ``to_dict("records")`` gives, ~10x faster on small frames); categorical
    ids stored as floats (a column with missing values) become ints / None, as the verbalizer requires."""
    values = col.tolist()
    f = contract.features.get(name)
    if f is not None and f.kind == "categorical" and col.dtype.kind == "f":
        return [None if x != x else int(x) for x in values]
    return values


def verbalizer_of(kb: pd.DataFrame, contract: DataContract) -> Verbalizer:
    """The verbalizer of a dataset: its KB titles (for the behaviour sequence) and its contract."""
    return Verbalizer(dict(zip(kb.intent_id.tolist(), kb.title.tolist())), contract)


def verbalize_frame(df: pd.DataFrame, kb: pd.DataFrame | None, contract: DataContract | None = None,
                    progress: bool = False, verbalizer: Verbalizer | None = None) -> list[str]:
    """The user context C (Table 1) of every row of a Feast feature frame (pass ``verbalizer`` to reuse one
    across calls, as the server does; otherwise one is built from ``kb`` and ``contract``)."""
    if verbalizer is None and contract is None:
        raise TypeError("verbalize_frame needs the dataset's contract (rgalign.contract.load_contract(world)) "
                        "or a Verbalizer")
    v = verbalizer or verbalizer_of(kb, contract)
    cols = {c: _native(df[c], c, v.contract) for c in df.columns}
    rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())] if cols else []
    return [v.context(r) for r in tqdm(rows, desc="verbalize", unit="ctx", disable=None if progress else True, mininterval=2)]


def eval_labels(world: Path, contract: DataContract, full: pd.DataFrame) -> pd.DataFrame:
    """``session_id, true_intent`` of the evaluation sessions: the refined labels (``eval_labels``) when the
    dataset has them, else the logged clicks (a session without a click is not evaluated)."""
    path = Path(world) / f"{contract.tables['eval_labels']}.parquet"
    if path.is_file():
        return pd.read_parquet(path)[["session_id", "true_intent"]]
    ev = full[(full.split == "eval") & (full.clicked_intent > 0)]
    return ev[["session_id"]].assign(true_intent=ev.clicked_intent.to_numpy())


def intent_texts(kb: pd.DataFrame) -> list[str]:
    return (kb.title + ". " + kb.description).tolist()


def world_digest(world: Path) -> str:
    """Content digest of a dataset (a world regenerated under the same name with other knobs, replaced with
    ``--force``, or a dataset whose tables changed, gets another digest, so no cache built on the old one is
    reused)."""
    from rgalign.contract.dataset import content_digest
    return content_digest(world)


def feature_service_digest(repo: Path, contract: str | Path) -> str:
    """Digest of the Feast definitions the training set is read through (views, service, sources): the
    repo's ``definitions.py`` and the data contract that declares the views."""
    import hashlib
    return hashlib.sha256((Path(repo) / "definitions.py").read_bytes() + Path(contract).read_bytes()).hexdigest()[:12]


def cache_dir(world: Path) -> Path:
    """``<worlds root>/../cache/<world name>-<content digest>``: every cached input of a world."""
    d = Path(world).resolve().parent.parent / "cache" / f"{Path(world).name}-{world_digest(world)}"
    d.mkdir(parents=True, exist_ok=True)
    return d


SIZED_ENCODERS = ("hashing", "lsa")   # encoders whose output size is a choice (--query-dim)
FITTED_ENCODERS = ("lsa",)            # encoders fitted on a corpus before they encode
LSA_FIT_CONTEXTS = 50_000             # training contexts a fitted query encoder learns from


def _encoder_key(name: str, dim: int) -> str:
    """Cache name of a text encoder's output (the size of a sized encoder is part of it)."""
    return f"{name}-{dim}" if name in SIZED_ENCODERS else name


def _encoder(name: str, dim: int, corpus=None):
    """The encoder ``name``; a fitted one is fitted on ``corpus()`` (called only then)."""
    enc = get_encoder(name, **({"dim": dim} if name in SIZED_ENCODERS else {}))
    return enc.fit(corpus()) if name in FITTED_ENCODERS else enc


def _cached_npy(path: Path, make) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = make()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def load_ranker_inputs(world: str | Path, query_encoder: str = "hashing", query_dim: int = 256,
                       intent_encoder: str = "minilm", val_days: int = 3, max_train_sessions: int | None = None,
                       seed: int = 0, progress: bool = True, query_fn=None, max_val_sessions: int | None = None,
                       max_eval_sessions: int | None = None) -> RankerInputs:
    """Build (or load from cache) everything Stage 1 needs for ``world``.

    ``query_fn(texts) -> (N, d_e)``, when given, replaces the text encoder for the query embedding (the
    reasoner's LTP plugs in here); its name must then be part of ``query_encoder`` for caching.
    """
    world = Path(world)
    fs = FeatureStoreSession(world)
    cache = cache_dir(world)
    ts_path = cache / f"training_set-{FEATURE_SERVICE}-{feature_service_digest(fs.repo, fs.contract.path)}.parquet"
    if ts_path.is_file():
        full = pd.read_parquet(ts_path)
    else:
        fs.apply()
        full = fs.training_set()
        full.to_parquet(ts_path.with_suffix(".tmp"), index=False)
        ts_path.with_suffix(".tmp").replace(ts_path)
    contract = fs.contract
    from rgalign.contract.dataset import load_kb
    kb = load_kb(world, contract)
    labels = eval_labels(world, contract, full)
    train_days = int(full.day[full.split == "train"].max()) + 1
    clicked = full[(full.split == "train") & (full.clicked_intent > 0)]
    val = clicked[clicked.day >= train_days - val_days]
    train = clicked[clicked.day < train_days - val_days]
    train_clicks = np.bincount(train.clicked_intent.to_numpy(), minlength=len(kb) + 1)
    if max_train_sessions is not None and len(train) > max_train_sessions:
        train = train.sample(max_train_sessions, random_state=seed).sort_values("session_id")
    ev = full[full.split == "eval"].merge(labels, on="session_id")
    if max_val_sessions is not None and len(val) > max_val_sessions:
        val = val.sample(max_val_sessions, random_state=seed).sort_values("session_id")
    if max_eval_sessions is not None and len(ev) > max_eval_sessions:
        ev = ev.sample(max_eval_sessions, random_state=seed).sort_values("session_id")
    frames = {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True),
              "eval": ev.reset_index(drop=True)}

    semantic = _cached_npy(cache / f"intent_text-{_encoder_key(intent_encoder, query_dim)}.npy",
                           lambda: _encoder(intent_encoder, query_dim, lambda: intent_texts(kb))
                           .encode(intent_texts(kb)))
    texts: dict[str, list[str]] = {}   # verbalized contexts of the split being encoded (+ train while fitting)

    def split_texts(split: str) -> list[str]:
        if split not in texts:
            texts[split] = verbalize_frame(frames[split], kb, contract, progress)
        return texts[split]

    def fit_corpus() -> list[str]:  # a fitted query encoder (LSA) learns from training-week contexts only
        corpus = split_texts("train")
        # a fixed draw: the frozen encoder is a function of the training contexts (its cache key), not of the seed
        pick = np.random.default_rng(0).permutation(len(corpus))[:LSA_FIT_CONTEXTS]
        return [corpus[i] for i in np.sort(pick)]

    enc = None

    def encode(split: str) -> np.ndarray:
        nonlocal enc
        if query_fn is not None:
            return query_fn(split_texts(split))
        enc = enc or _encoder(query_encoder, query_dim, fit_corpus)
        return enc.encode(split_texts(split))

    def signature(df: pd.DataFrame) -> str:
        return f"{len(df)}-{int(df.session_id.sum()) % 10**12}"

    query = {}
    key = query_encoder if query_fn is not None else _encoder_key(query_encoder, query_dim)
    if query_fn is None and query_encoder in FITTED_ENCODERS:  # the fitting corpus is part of the key
        key += f"-fit{signature(frames['train'])}"
    for split, df in frames.items():
        query[split] = _cached_npy(cache / f"query-{key}-{split}-{signature(df)}.npy", lambda s=split: encode(s))
        texts.clear()  # one split's contexts in memory at a time
    return RankerInputs(frames["train"], frames["val"], frames["eval"], kb, semantic, query, world, contract, query_encoder,
                        intent_encoder, train_clicks)


def check_encoders(cfg, inputs: RankerInputs) -> None:
    """Raise if ``cfg`` (a ``RankerConfig``) names other text encoders than the ones that built ``inputs``: the
    model would train on embeddings its config, and so its MLflow parameters, do not describe. A query built
    by a reasoner (``ltp-...``, ``gen-...``) is not a config choice, and is not checked; nor is the baseline,
    which reads no text."""
    if cfg.model == "baseline":
        return
    for name in ("query_encoder", "intent_encoder"):
        built, want = getattr(inputs, name), getattr(cfg, name)
        if built in TEXT_ENCODERS and built != want:
            raise ValueError(f"{name}={want!r}, but the inputs were encoded with {built!r}: build them with "
                             f"load_ranker_inputs(world, {name}={want!r}, ...) or set {name}={built!r}")
    d = inputs.query["train"].shape[1]
    if inputs.query_encoder in SIZED_ENCODERS and d != cfg.query_dim:
        raise ValueError(f"query_dim={cfg.query_dim}, but the inputs hold {d}-d {inputs.query_encoder} query "
                         f"embeddings: set query_dim={d} or rebuild the inputs with query_dim={cfg.query_dim}")
