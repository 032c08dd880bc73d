"""Save and load a trained ranker as a self-contained folder (what MLflow logs and KServe serves).

    <dir>/config.json    RankerConfig
    <dir>/spec.json      FeatureSpec (vocabularies, numeric standardisation)
    <dir>/model.pt       state_dict
    <dir>/meta.json      n_intents, d_e, families, world name / digest
    <dir>/semantic.npy   intent-text embeddings (the intent tower's frozen z_sem)
    <dir>/intents.parquet  intent id -> title (for top-K responses)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rgalign.config import RankerConfig
from rgalign.ranker.data import FeatureSpec


def save_ranker(model: torch.nn.Module, spec: FeatureSpec, cfg: RankerConfig, semantic: np.ndarray,
                families: np.ndarray, kb: pd.DataFrame, path: str | Path, meta: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (path / "spec.json").write_text(spec.to_json())
    torch.save(model.state_dict(), path / "model.pt")
    np.save(path / "semantic.npy", np.asarray(semantic, np.float32))
    (path / "meta.json").write_text(json.dumps({
        "n_intents": int(len(kb)), "d_e": getattr(model, "d_e", None),
        "families": np.asarray(families).astype(int).tolist(), **(meta or {})}, indent=2))
    kb[["intent_id", "title"]].to_parquet(path / "intents.parquet", index=False)
    return path


def load_ranker(path: str | Path):
    """Returns ``(model, spec, cfg, intents)`` with the model in eval mode."""
    from rgalign.ranker.ranker_trainer import build_model
    path = Path(path)
    if not (path / "model.pt").is_file():
        raise FileNotFoundError(f"no ranker checkpoint at {path} (model.pt missing)")
    cfg = RankerConfig(**json.loads((path / "config.json").read_text()))
    meta = json.loads((path / "meta.json").read_text())
    spec = FeatureSpec.from_json((path / "spec.json").read_text())
    model = build_model(cfg, spec, meta["n_intents"], torch.from_numpy(np.load(path / "semantic.npy")),
                        torch.tensor(meta["families"]), meta["d_e"] or 1)
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
    model.eval()
    return model, spec, cfg, pd.read_parquet(path / "intents.parquet")
