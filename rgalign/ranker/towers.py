"""The three towers of QE-Rec (paper section 3.3): user z_u, intent z_i and query z_q.

Example:
    >>> import torch
    >>> from rgalign.ranker.towers import QueryTower
    >>> QueryTower(d_e=384, d=64)(torch.randn(8, 384)).shape
    torch.Size([8, 64])
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class InputShape:
    """Sizes of an encoded feature row (``FeatureSpec.shape``): each categorical field's vocabulary size (id 0
    included), the number of numeric inputs and the behaviour-sequence length L."""
    cardinalities: tuple[int, ...]
    n_numerical: int
    max_recent: int

    def __post_init__(self):
        if any(c < 2 for c in self.cardinalities) or self.n_numerical < 0 or self.max_recent < 1:
            raise ValueError(f"InputShape: cardinalities must be >= 2, n_numerical >= 0 and max_recent >= 1, got "
                             f"{self}")


def _check(name: str, x: torch.Tensor, shape: tuple) -> None:
    """Assert ``x`` matches ``shape`` (None = any size) with a message naming the argument."""
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


class FieldEmbedding(nn.Module):
    """Embeds the categorical fields, the hashed user id and each numerical feature as one d-vector per field.

    Input: ``cat`` (B, C) int64, ``user`` (B,) int64, ``num`` (B, N) float32. Output: (B, C + 1 + N, d).
    """

    def __init__(self, cardinalities: list[int], user_buckets: int, n_num: int, d: int):
        super().__init__()
        if d < 1 or not cardinalities:
            raise ValueError(f"need d >= 1 and at least one categorical field, got d={d}, {len(cardinalities)} fields")
        self.cat = nn.ModuleList(nn.Embedding(n, d, padding_idx=0) for n in cardinalities)
        self.user = nn.Embedding(user_buckets + 1, d, padding_idx=0)
        self.num_w = nn.Parameter(torch.randn(n_num, d) * 0.1)  # AutoInt: a numeric field is value * vector
        self.num_b = nn.Parameter(torch.zeros(n_num, d))
        self.n_fields = len(cardinalities) + 1 + n_num

    def forward(self, cat: torch.Tensor, user: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        _check("cat", cat, (None, len(self.cat)))
        _check("num", num, (cat.shape[0], self.num_w.shape[0]))
        e = [emb(cat[:, j]) for j, emb in enumerate(self.cat)] + [self.user(user)]
        return torch.cat([torch.stack(e, 1), num.unsqueeze(-1) * self.num_w + self.num_b], 1)


class AutoIntLayer(nn.Module):
    """Interacting layer: multi-head self-attention over fields with a residual projection. (B, F, d) -> same."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.res = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(x, x, x, need_weights=False)
        return F.relu(a + self.res(x))


class MMoE(nn.Module):
    """Dense multi-gate mixture of experts: ``n_experts`` MLP experts, one softmax gate per task.

    Input (B, D_in). Output: list of ``n_tasks`` tensors (B, d_out).
    """

    def __init__(self, d_in: int, d_out: int, n_experts: int = 4, n_tasks: int = 1, dropout: float = 0.2):
        super().__init__()
        if n_experts < 1 or n_tasks < 1:
            raise ValueError(f"need n_experts >= 1 and n_tasks >= 1, got {n_experts}, {n_tasks}")
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d_in, 2 * d_out), nn.ReLU(), nn.Dropout(dropout),
                                                   nn.Linear(2 * d_out, d_out)) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Linear(d_in, n_experts) for _ in range(n_tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = torch.stack([ex(x) for ex in self.experts], 1)                     # (B, E, d_out)
        return [torch.einsum("be,bed->bd", F.softmax(g(x), -1), e) for g in self.gates]


class AutoIntMMoEUser(nn.Module):
    """The production user encoder: field embeddings (+ the mean of the recent-intent embeddings as one more
    field) -> AutoInt interacting layers -> dense MMoE. Input as ``UserTower``; output (B, d)."""

    def __init__(self, shape: InputShape, n_intents: int, d: int = 64, n_layers: int = 2, heads: int = 2,
                 n_experts: int = 4, user_buckets: int = 50_000, dropout: float = 0.2):
        super().__init__()
        self.fields = FieldEmbedding(list(shape.cardinalities), user_buckets, shape.n_numerical, d)
        self.seq_items = nn.Embedding(n_intents + 2, d, padding_idx=0)
        self.autoint = nn.Sequential(*(AutoIntLayer(d, heads, dropout) for _ in range(n_layers)))
        self.mmoe = MMoE((self.fields.n_fields + 1) * d, d, n_experts, 1, dropout)

    def forward(self, cat, user, num, seq, seq_age=None) -> torch.Tensor:
        f = self.fields(cat, user, num)
        keep = (seq > 0).unsqueeze(-1).float()
        pooled = (self.seq_items(seq) * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        return self.mmoe(self.autoint(torch.cat([f, pooled], 1)).flatten(1))[0]


class UserTower(nn.Module):
    """z_u = sigma(MLP([v_non-seq; v_seq; v_grouped])), sigma = sigmoid as the paper writes it (``activation``).

    - v_non-seq: numerical + categorical field embeddings, concatenated through an MLP (``non_seq="autoint"``
      first runs the production baseline's AutoInt interacting layers over them).
    - v_seq: self-attention over the ordered behaviour sequence (intent id + position), read at a [CLS]
      token, so an empty sequence is well defined (the [CLS] attends to itself only).
    - v_grouped: intra-group cross-attention of the coupled group (intent id, click age): each clicked
      intent attends over the ages of the group, fused and mean-pooled; zero for an empty sequence.

    Input: ``cat`` (B, C), ``user`` (B,), ``num`` (B, N), ``seq`` (B, L) intent ids with 0 = padding,
    ``seq_age`` (B, L) age buckets. Output: (B, d).
    """

    ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda x: x}

    def __init__(self, fields: FieldEmbedding, n_intents: int, d: int, max_len: int, n_age: int = 6,
                 heads: int = 2, dropout: float = 0.2, activation: str = "sigmoid", non_seq: str = "mlp",
                 autoint_layers: int = 2):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} must be divisible by heads={heads}")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; use one of {sorted(self.ACTIVATIONS)}")
        self.sigma = self.ACTIVATIONS[activation]
        self.fields = fields
        self.items = nn.Embedding(n_intents + 2, d, padding_idx=0)  # + OOV id n_intents + 1
        self.ages = nn.Embedding(n_age, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len + 1, d) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.seq_attn = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout, batch_first=True)
        self.cross = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        if non_seq not in ("autoint", "mlp"):
            raise ValueError(f"non_seq={non_seq!r}; use 'autoint' or 'mlp'")
        self.interact = (nn.Sequential(*(AutoIntLayer(d, heads, dropout) for _ in range(autoint_layers)))
                         if non_seq == "autoint"
                         else nn.Identity())
        self.non_seq = nn.Sequential(nn.Linear(fields.n_fields * d, 2 * d), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(2 * d, d))
        self.mlp = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d, d))

    def forward(self, cat, user, num, seq, seq_age) -> torch.Tensor:
        _check("seq", seq, (cat.shape[0], None))
        _check("seq_age", seq_age, tuple(seq.shape))
        B, L = seq.shape
        v_non_seq = self.non_seq(self.interact(self.fields(cat, user, num)).flatten(1))
        pad = seq == 0
        x = torch.cat([self.cls.expand(B, 1, -1), self.items(seq)], 1) + self.pos[: L + 1]
        mask = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=seq.device), pad], 1)
        v_seq = self.seq_attn(x, src_key_padding_mask=mask)[:, 0]
        items, ages = self.items(seq), self.ages(seq_age)
        # every row keeps one unmasked key (a padded key of an empty row is unmasked, its output zeroed below)
        key_mask = pad & ~pad.all(1, keepdim=True)
        fused, _ = self.cross(items, ages, ages, key_padding_mask=key_mask, need_weights=False)
        keep = (~pad).unsqueeze(-1).float()
        v_grouped = ((items + fused) * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.sigma(self.mlp(torch.cat([v_non_seq, v_seq, v_grouped], -1)))


class CrossLayer(nn.Module):
    """One DCN-style feature cross: x_1 = x_0 * (W x_0 + b) + x_0. (B, D) -> (B, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 * self.lin(x0) + x0


def _id_embedding(n: int, d: int, std: float) -> nn.Embedding:
    """An ID table with row 0 = padding, drawn from N(0, std^2); std 1.0 is nn.Embedding's own init, kept as is."""
    emb = nn.Embedding(n, d, padding_idx=0)
    if std != 1.0:
        with torch.no_grad():
            emb.weight.normal_(0, std)[0].zero_()
    return emb


class IntentTower(nn.Module):
    """z_i from a learnable ID embedding z_id and a frozen semantic embedding z_sem of the intent text,
    crossed by a feature-cross layer. The semantic table is a buffer (not trained).

    ``families`` (n_intents,) ids >= 1, when given, add a learnable family-ID embedding, concatenated with z_id (the KB's
    category id, as the baseline's intent tower has): effects shared by a family are learned from all its
    intents' clicks, and reach an intent launched after training.

    ``id_std`` is the initial scale of z_id. At 1.0 (PyTorch's default) an intent seen in few clicks keeps a
    random ID vector that drowns its text; a small scale (e.g. 0.01) starts every intent from its text, and
    the ID vector grows only where clicks teach it something the text does not say.

    ``id_dropout`` p: in training, each candidate's z_id is zeroed with probability p, as if the intent were
    new (a cold-start intent's ID row never moves from its start). The text path then has to rank head
    intents on its own part of the time, so what it learns there carries to intents with few clicks.

    Input: ``intent_ids`` (...) int64 in [1, n_intents]. Output: (..., d).
    """

    def __init__(self, semantic: torch.Tensor, d: int, dropout: float = 0.2, id_std: float = 1.0,
                 families: torch.Tensor | None = None, id_dropout: float = 0.0):
        super().__init__()
        _check("semantic", semantic, (None, None))
        if id_std <= 0:
            raise ValueError(f"id_std must be > 0, got {id_std}")
        if not 0 <= id_dropout < 1:
            raise ValueError(f"id_dropout must be within [0, 1), got {id_dropout}")
        n, d_sem = semantic.shape
        if families is not None and (families.shape != (n,) or (n and int(families.min()) < 1)):
            raise ValueError(f"families must have shape ({n},) with ids >= 1 (one per semantic row), got "
                             f"{tuple(families.shape)}")
        self.n_intents, self.id_dropout = n, id_dropout
        self.register_buffer("semantic", torch.cat([torch.zeros(1, d_sem), semantic.float()]))  # row 0 = pad
        self.ids = _id_embedding(n + 1, d, id_std)
        self.family_ids = None
        if families is not None:  # started like z_id: the text leads until clicks teach the family
            self.register_buffer("families", torch.cat([torch.zeros(1, dtype=torch.long), families.long()]))
            self.family_ids = _id_embedding(int(families.max()) + 1, d, id_std)
        self.sem = nn.Linear(d_sem, d)
        width = (3 if families is not None else 2) * d
        self.cross = CrossLayer(width)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, d))

    def forward(self, intent_ids: torch.Tensor) -> torch.Tensor:
        if intent_ids.numel() and (intent_ids.min() < 1 or intent_ids.max() > self.n_intents):
            raise ValueError(f"intent ids must be within [1, {self.n_intents}], got "
                             f"[{int(intent_ids.min())}, {int(intent_ids.max())}]")
        z_id = self.ids(intent_ids)
        if self.training and self.id_dropout > 0:
            z_id = z_id * (torch.rand(intent_ids.shape, device=z_id.device) >= self.id_dropout).unsqueeze(-1)
        parts = [z_id, self.sem(self.semantic[intent_ids])]
        if self.family_ids is not None:
            parts.insert(1, self.family_ids(self.families[intent_ids]))
        return self.out(self.cross(torch.cat(parts, -1)))


class QueryTower(nn.Module):
    """z_q = W e + b: a single-layer MLP projecting the query embedding e (e.g. the reasoner's LTP, Eq. 3).
    e is layer-normalised first: LLM hidden states carry a few outlier dimensions.

    Input: (B, d_e). Output: (B, d).
    """

    def __init__(self, d_e: int, d: int):
        super().__init__()
        self.d_e = d_e
        self.norm = nn.LayerNorm(d_e)
        self.proj = nn.Linear(d_e, d)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        if e.dim() != 2 or e.shape[1] != self.d_e:
            raise ValueError(f"query embedding must have shape (B, {self.d_e}), got {tuple(e.shape)}: the ranker "
                             f"was trained with {self.d_e}-d query embeddings; use the same encoder/reasoner")
        return self.proj(self.norm(e))
