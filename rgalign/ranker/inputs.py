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
from rgalign.memory import release_memory
from rgalign.features.verbalize import Verbalizer


@dataclass
class RankerInputs:
    """Frames of the three splits (train = clicked sessions before the validation days, val = clicked
    sessions of the last ``val_days`` training days, eval = the evaluation week with true intents), the KB,
    and per-split query embeddings (aligned with the frames' rows)."""
    train: "pd.DataFrame | TrainParts"  # TrainParts: on disk, read a part at a time (``shard_rows``)
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

    def train_sample(self, n: int, seed: int) -> pd.DataFrame:
        """Training sessions to sample ``n`` from: the whole split when it is in memory, else ``n`` of them
        drawn over all parts (``TrainParts.sample``)."""
        return self.train.sample(n, seed) if isinstance(self.train, TrainParts) else self.train

    @property
    def d_e(self) -> int:
        """Size of the query embedding e."""
        return self.train.dim if isinstance(self.train, TrainParts) else int(self.query["train"].shape[1])


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


def eval_labels(world: Path, contract: DataContract, full: pd.DataFrame | None) -> pd.DataFrame:
    """``session_id, true_intent`` of the evaluation sessions: the refined labels (``eval_labels``) when the
    dataset has them, else the logged clicks of ``full`` (a session without a click is not evaluated)."""
    path = Path(world) / f"{contract.tables['eval_labels']}.parquet"
    if path.is_file():
        return pd.read_parquet(path, columns=["session_id", "true_intent"])
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


@dataclass
class TrainParts:
    """The training split held on disk (``load_ranker_inputs(..., shard_rows=N)``): parquet parts of sessions
    and their query embeddings (``.npy``, (rows, d_e)), read one part at a time, so memory is set by the part
    size, not by the number of sessions. ``len`` is the number of sessions of all parts."""
    frames: list[Path]
    queries: list[Path]
    sizes: list[int]

    def __len__(self) -> int:
        return sum(self.sizes)

    def part(self, i: int) -> tuple[pd.DataFrame, np.ndarray]:
        """Part ``i``: its sessions and (rows, d_e) query embeddings."""
        return pd.read_parquet(self.frames[i]), np.load(self.queries[i])

    def columns(self, cols: list[str]) -> pd.DataFrame:
        """Some columns of every part, concatenated (cheap scalar columns: clicks, numeric features)."""
        return pd.concat([pd.read_parquet(f, columns=cols) for f in self.frames], ignore_index=True)

    @property
    def dim(self) -> int:
        return int(np.load(self.queries[0], mmap_mode="r").shape[1])

    def sample(self, n: int, seed: int) -> pd.DataFrame:
        """``n`` sessions drawn uniformly over all parts (all of them if there are fewer), in part order."""
        pick = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        out, start = [], 0
        for f, size in zip(self.frames, self.sizes):
            local = pick[(pick >= start) & (pick < start + size)] - start
            if len(local):
                out.append(pd.read_parquet(f).iloc[local])
            start += size
        return pd.concat(out, ignore_index=True)


def train_parts(inputs: "RankerInputs") -> list:
    """The training split as loaders ``load(cols=None) -> (frame, query)``, one part when it is held in memory;
    with ``cols`` only those columns are read and ``query`` is None."""
    t = inputs.train
    if isinstance(t, TrainParts):
        import pyarrow.parquet as pq

        def load(cols=None, i=0):
            if cols is None:
                return t.part(i)
            names = set(pq.read_schema(t.frames[i]).names)
            return pd.read_parquet(t.frames[i], columns=[c for c in cols if c in names]), None
        return [lambda cols=None, i=i: load(cols, i) for i in range(len(t.frames))]
    return [lambda cols=None: (t, inputs.query["train"]) if cols is None else (t[[c for c in cols if c in t]], None)]


def _signature(df: pd.DataFrame) -> str:
    return f"{len(df)}-{int(df.session_id.sum()) % 10**12}"


def _sample_ids(ids: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """``ids`` (in their order) or, beyond ``n``, the ``n`` that ``DataFrame.sample(n, random_state=seed)`` of
    their rows keeps, in session-id order."""
    if n is None or len(ids) <= n:
        return ids
    return np.sort(pd.Series(ids).sample(n, random_state=seed).to_numpy())


@dataclass
class SessionSplits:
    """The sessions of each split before any embedding (``select_sessions``): ``train`` whole in memory, or
    its parquet parts on disk (several parts); ``train_ids`` the kept training session ids, in row order."""
    train: pd.DataFrame | list[Path]
    val: pd.DataFrame
    eval: pd.DataFrame
    kb: pd.DataFrame
    contract: DataContract
    train_clicks: np.ndarray
    train_ids: np.ndarray
    cache: Path

    @property
    def on_disk(self) -> bool:
        return not isinstance(self.train, pd.DataFrame)

    @property
    def train_signature(self) -> str:
        return f"{len(self.train_ids)}-{int(self.train_ids.sum()) % 10**12}"

    def train_frames(self) -> list:
        """Loaders of the training split's frames (one when it is in memory)."""
        if self.on_disk:
            return [lambda p=p: pd.read_parquet(p) for p in self.train]
        return [lambda t=self.train: t]

    def frames(self):
        """``(name, frame)`` of every training part (``train`` or ``train-part00003``), then ``val`` and ``eval``:
        what ``load_ranker_inputs`` embeds, one frame in memory at a time."""
        for i, load in enumerate(self.train_frames()):
            yield (f"train-part{i:05d}" if self.on_disk else "train"), load()
        yield "val", self.val
        yield "eval", self.eval


def _read_part(path: Path, columns: list[str] | None = None, ids: np.ndarray | None = None) -> pd.DataFrame:
    """The rows of a training-set part (of sessions ``ids`` only), filtered in Arrow so only those become
    Python objects. The id set goes to Arrow as one array: a parquet ``filters`` list of the training split's
    ids is turned into Python objects first (+0.9 GB for the paper world's 7.75M ids)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=columns)
    if ids is not None:
        t = t.filter(pc.is_in(t["session_id"], value_set=pa.array(ids, type=t.schema.field("session_id").type)))
    return t.to_pandas()


def select_sessions(world: str | Path, val_days: int = 3, max_train_sessions: int | None = None, seed: int = 0,
                    max_val_sessions: int | None = None, max_eval_sessions: int | None = None, shard_rows: int = 0,
                    progress: bool = False) -> SessionSplits:
    """The Feast training set of ``world`` (cached beside it) split into training / validation / evaluation
    sessions, each subsampled to its cap with ``seed``. ``shard_rows`` > 0 reads the training set in parts of
    that many sessions (``FeatureStoreSession.training_set_parts``) and leaves the training split's parts on
    disk, so memory is bounded at any scale; one part equals the whole split, row for row."""
    world = Path(world)
    fs = FeatureStoreSession(world)
    cache = cache_dir(world)
    ts_name = f"training_set-{FEATURE_SERVICE}-{feature_service_digest(fs.repo, fs.contract.path)}"
    if shard_rows:
        fs.apply()
        paths = fs.training_set_parts(cache / f"{ts_name}-r{shard_rows}", shard_rows, progress)
        sources = [lambda cols=None, ids=None, p=p: _read_part(p, cols, ids) for p in paths]
    else:
        ts_path = cache / f"{ts_name}.parquet"
        if not ts_path.is_file():
            fs.apply()
            fs.training_set().to_parquet(ts_path.with_suffix(".tmp"), index=False)
            ts_path.with_suffix(".tmp").replace(ts_path)
        whole = pd.read_parquet(ts_path)
        sources = [lambda cols=None, ids=None: (whole if cols is None else whole[cols]) if ids is None
                   else whole[whole.session_id.isin(ids)]]
    contract = fs.contract
    from rgalign.contract.dataset import load_kb
    kb = load_kb(world, contract)

    # pass 1, over the parts' label columns, one part at a time: which sessions each split holds (ids only)
    def metas():
        for src in sources:
            yield src(["session_id", "split", "day", "clicked_intent"])
            release_memory()
    labels = eval_labels(world, contract, pd.concat([m.loc[m.split == "eval", ["session_id", "split", "clicked_intent"]]
                                                     for m in metas()], ignore_index=True)
                         if not (world / f"{contract.tables['eval_labels']}.parquet").is_file() else None)
    train_days = max(int(m.day[m.split == "train"].max()) for m in metas() if (m.split == "train").any()) + 1
    train_clicks = np.zeros(len(kb) + 1, np.int64)
    ids = {"train": [], "val": [], "eval": []}
    for m in metas():
        clicked = m[(m.split == "train") & (m.clicked_intent > 0)]
        late = clicked.day >= train_days - val_days
        ids["val"].append(clicked.session_id[late].to_numpy())
        ids["train"].append(clicked.session_id[~late].to_numpy())
        train_clicks += np.bincount(clicked.clicked_intent[~late].to_numpy(), minlength=len(kb) + 1)
        ev = m[m.split == "eval"]
        ids["eval"].append(ev.session_id[ev.session_id.isin(labels.session_id)].to_numpy())
    caps = {"train": max_train_sessions, "val": max_val_sessions, "eval": max_eval_sessions}
    keep = {s: _sample_ids(np.concatenate(v), caps[s], seed) for s, v in ids.items()}

    # pass 2: the rows of each split; the training split's parts stay on disk when there are several
    on_disk = len(sources) > 1
    pieces: dict[str, list] = {"train": [], "val": [], "eval": []}
    part_dir = cache / f"train-{ts_name}-r{shard_rows}-v{val_days}-{len(keep['train'])}-" \
                       f"{int(keep['train'].sum()) % 10**12}"
    for i, src in enumerate(sources):
        for split in ("val", "eval", "train"):
            rows = src(ids=keep[split])
            if split == "eval":
                rows = rows.merge(labels, on="session_id")
            if split == "train" and on_disk:
                part_dir.mkdir(parents=True, exist_ok=True)
                path = part_dir / f"part-{i:05d}.parquet"
                if not path.is_file():
                    rows.reset_index(drop=True).to_parquet(path.with_suffix(".tmp"), index=False)
                    path.with_suffix(".tmp").replace(path)
                pieces["train"].append(path)
                continue
            pieces[split].append(rows)
        del rows
        release_memory()
    frames = {s: pd.concat(pieces[s], ignore_index=True).sort_values("session_id").reset_index(drop=True)
              if len(pieces[s]) > 1 else pieces[s][0].reset_index(drop=True) for s in ("val", "eval")}
    train = pieces["train"] if on_disk else pieces["train"][0].reset_index(drop=True)
    return SessionSplits(train, frames["val"], frames["eval"], kb, contract, train_clicks, keep["train"], cache)


def load_ranker_inputs(world: str | Path, query_encoder: str = "hashing", query_dim: int = 256,
                       intent_encoder: str = "minilm", val_days: int = 3, max_train_sessions: int | None = None,
                       seed: int = 0, progress: bool = True, query_fn=None, max_val_sessions: int | None = None,
                       max_eval_sessions: int | None = None, shard_rows: int = 0) -> RankerInputs:
    """Build (or load from cache) everything Stage 1 needs for ``world``: the sessions of each split
    (``select_sessions``; ``shard_rows`` > 0 keeps the training split on disk as ``TrainParts``), the intent-text
    embeddings and every session's query embedding.

    ``query_fn(texts) -> (N, d_e)``, when given, replaces the text encoder for the query embedding (the
    reasoner's LTP plugs in here); its name must then be part of ``query_encoder`` for caching.
    """
    world = Path(world)
    sp = select_sessions(world, val_days, max_train_sessions, seed, max_val_sessions, max_eval_sessions, shard_rows,
                         progress)
    kb, contract, cache = sp.kb, sp.contract, sp.cache
    semantic = _cached_npy(cache / f"intent_text-{_encoder_key(intent_encoder, query_dim)}.npy",
                           lambda: _encoder(intent_encoder, query_dim, lambda: intent_texts(kb))
                           .encode(intent_texts(kb)))

    def fit_corpus() -> list[str]:  # a fitted query encoder (LSA) learns from training-week contexts only
        # a fixed draw: the frozen encoder is a function of the training contexts (its cache key), not of the seed
        pick = np.sort(np.random.default_rng(0).permutation(len(sp.train_ids))[:LSA_FIT_CONTEXTS])
        corpus, start = [], 0
        for load in sp.train_frames():
            df = load()
            local = pick[(pick >= start) & (pick < start + len(df))] - start
            corpus += verbalize_frame(df.iloc[local], kb, contract, progress)
            start += len(df)
        return corpus

    enc = None

    def encode(df: pd.DataFrame) -> np.ndarray:
        nonlocal enc
        texts = verbalize_frame(df, kb, contract, progress)   # one split's (or part's) contexts in memory at a time
        if query_fn is not None:
            return query_fn(texts)
        enc = enc or _encoder(query_encoder, query_dim, fit_corpus)
        return enc.encode(texts)

    key = query_encoder if query_fn is not None else _encoder_key(query_encoder, query_dim)
    if query_fn is None and query_encoder in FITTED_ENCODERS:  # the fitting corpus is part of the key
        key += f"-fit{sp.train_signature}"
    query, qpaths, sizes = {}, [], []
    for name, df in sp.frames():
        if name.startswith("train-part"):    # a part on disk: its embeddings stay there
            qpaths.append(cache / f"query-{key}-train-{sp.train_signature}-{name[6:]}.npy")
            sizes.append(len(_cached_npy(qpaths[-1], lambda d=df: encode(d))))
            del df
            release_memory()
        else:
            query[name] = _cached_npy(cache / f"query-{key}-{name}-{_signature(df)}.npy", lambda d=df: encode(d))
    train = TrainParts(sp.train, qpaths, sizes) if sp.on_disk else sp.train
    return RankerInputs(train, sp.val, sp.eval, kb, semantic, query, world, contract, query_encoder,
                        intent_encoder, sp.train_clicks)


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
    d = inputs.d_e
    if inputs.query_encoder in SIZED_ENCODERS and d != cfg.query_dim:
        raise ValueError(f"query_dim={cfg.query_dim}, but the inputs hold {d}-d {inputs.query_encoder} query "
                         f"embeddings: set query_dim={d} or rebuild the inputs with query_dim={cfg.query_dim}")
