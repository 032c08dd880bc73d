"""The production baseline (paper section 5.1 "Base Model"): a two-tower model whose user tower is AutoInt
(multi-head self-attention over feature-field embeddings) followed by a dense 4-expert multi-gate mixture of
experts, scored by cos(z_u, z_i). Its intent tower knows intents only by ids (intent id + family id), as an
ID-based DLRM does: the intent text, which QE-Rec reads, is what it lacks.

Example:
    >>> import torch
    >>> from rgalign.ranker.baseline import TwoTowerAutoIntMMoE
    >>> from rgalign.ranker.towers import InputShape
    >>> shape = InputShape(cardinalities=(4,) * 13, n_numerical=10, max_recent=10)
    >>> m = TwoTowerAutoIntMMoE(shape, n_intents=50, families=torch.randint(1, 5, (50,)), d=16)
    >>> x = {"cat": torch.zeros(4, 13, dtype=torch.long), "user": torch.ones(4, dtype=torch.long),
    ...      "num": torch.zeros(4, 10), "seq": torch.zeros(4, 10, dtype=torch.long),
    ...      "seq_age": torch.zeros(4, 10, dtype=torch.long)}
    >>> m(x, None, torch.randint(1, 51, (4, 7))).shape
    torch.Size([4, 7])
"""
from __future__ import annotations

import torch
from torch import nn

from rgalign.ranker.qe_rec import qe_score
from rgalign.ranker.towers import AutoIntLayer, AutoIntMMoEUser, InputShape, MMoE  # noqa: F401 (the baseline's towers)


class TwoTowerAutoIntMMoE(nn.Module):
    """User tower: field embeddings (+ mean of the recent-intent embeddings as one more field) -> AutoInt
    layers -> 4-expert MMoE. Intent tower: intent id + family id embeddings -> MLP. Score: cos(z_u, z_i).

    Args:
        shape: the encoded feature row's sizes (``FeatureSpec.shape``).
        n_intents: KB size; families: (n_intents,) family id (>= 1) of each intent.
    """

    def __init__(self, shape: InputShape, n_intents: int, families: torch.Tensor, d: int = 64, n_layers: int = 2, heads: int = 2,
                 n_experts: int = 4, user_buckets: int = 50_000, dropout: float = 0.2):
        super().__init__()
        if families.shape != (n_intents,):
            raise ValueError(f"families must have shape ({n_intents},), got {tuple(families.shape)}")
        self.n_intents, self.d_e = n_intents, None
        self.user_tower = AutoIntMMoEUser(shape, n_intents, d, n_layers, heads, n_experts, user_buckets, dropout)
        self.register_buffer("families", torch.cat([torch.zeros(1, dtype=torch.long), families.long()]))
        self.intent_ids = nn.Embedding(n_intents + 1, d, padding_idx=0)
        self.family_ids = nn.Embedding(int(families.max()) + 1, d, padding_idx=0)
        self.intent_mlp = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d, d))

    def user(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_tower(x["cat"], x["user"], x["num"], x["seq"])

    def intent_tower(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (ids.min() < 1 or ids.max() > self.n_intents):
            raise ValueError(f"intent ids must be within [1, {self.n_intents}]")
        return self.intent_mlp(torch.cat([self.intent_ids(ids), self.family_ids(self.families[ids])], -1))

    def intent_index(self) -> torch.Tensor:
        return self.intent_tower(torch.arange(1, self.n_intents + 1, device=self.families.device))

    def forward(self, x: dict[str, torch.Tensor], e: torch.Tensor | None = None,
                candidates: torch.Tensor | None = None, intent_index: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, N) of ``candidates`` or (B, n_intents) of all intents; ``e`` is ignored (no query tower)."""
        z_u = self.user(x)
        if candidates is None:
            z_i = intent_index if intent_index is not None else self.intent_index()
        else:
            z_i = self.intent_tower(candidates)
        return qe_score(z_u, z_i, None, 1.0)
