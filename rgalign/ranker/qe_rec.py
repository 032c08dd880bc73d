"""QE-Rec: the query-enhanced three-tower ranker (paper section 3.3, Eq. 4).

    s = w * cos(z_u, z_i) + (1 - w) * cos(z_i, z_q),   w = 0.7

Example:
    >>> import torch
    >>> from rgalign.ranker.qe_rec import QERec
    >>> from rgalign.ranker.towers import InputShape
    >>> shape = InputShape(cardinalities=(4,) * 13, n_numerical=10, max_recent=10)
    >>> m = QERec(shape, n_intents=50, semantic=torch.randn(50, 16), d_e=32, d=16)
    >>> x = {"cat": torch.zeros(4, 13, dtype=torch.long), "user": torch.ones(4, dtype=torch.long),
    ...      "num": torch.zeros(4, 10), "seq": torch.zeros(4, 10, dtype=torch.long),
    ...      "seq_age": torch.zeros(4, 10, dtype=torch.long)}
    >>> m(x, torch.randn(4, 32), torch.randint(1, 51, (4, 7))).shape   # (B, N) scores of N candidates
    torch.Size([4, 7])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rgalign.ranker.towers import AutoIntMMoEUser, FieldEmbedding, InputShape, IntentTower, QueryTower, UserTower


def qe_score(z_u: torch.Tensor, z_i: torch.Tensor, z_q: torch.Tensor | None, w) -> torch.Tensor:
    """Eq. 4 for ``z_u`` (B, d), candidate ``z_i`` (B, N, d) or (N, d) shared, ``z_q`` (B, d) -> (B, N).
    ``w`` is the paper's scalar or a (B, N) tensor of per-pair weights (``FusionGate``). Without ``z_q`` (the
    two-tower baseline) the score is cos(z_u, z_i)."""
    z_u = F.normalize(z_u, dim=-1)
    z_i = F.normalize(z_i, dim=-1)
    eq = "bd,nd->bn" if z_i.dim() == 2 else "bd,bnd->bn"
    s = torch.einsum(eq, z_u, z_i)
    if z_q is None:
        return s
    return w * s + (1 - w) * torch.einsum(eq, F.normalize(z_q, dim=-1), z_i)


class QERec(nn.Module):
    """User, intent and query towers scored by Eq. 4.

    Args:
        shape: the encoded feature row's sizes (``FeatureSpec.shape``).
        n_intents: KB size (intent ids 1..n_intents).
        semantic: (n_intents, d_sem) frozen text embeddings of the intent texts (row k = intent k + 1).
        d_e: query-embedding size (the reasoner's hidden size for LTP).
        d: tower output size; w: Eq. 4 weight of the user-intent term.
        intent_id_std: initial scale of the intent-ID embedding (see ``IntentTower``).
        families: (n_intents,) family id (>= 1) of each intent, or None for no family-ID embedding.
        intent_id_dropout: training-time probability of zeroing a candidate's z_id (see ``IntentTower``).
        autoint_layers, n_experts: AutoInt interacting layers (both user towers' AutoInt) and MMoE experts
            (the autoint-mmoe user tower), as the baseline's.
        fusion: ``fixed`` (Eq. 4's w for every pair, the paper) or ``adaptive`` (``FusionGate``: w per user and
            intent from the intent's training clicks and the user's recent clicks, started at w).
    """

    def __init__(self, shape: InputShape, n_intents: int, semantic: torch.Tensor, d_e: int, d: int = 64, w: float = 0.7,
                 user_buckets: int = 50_000, dropout: float = 0.2, heads: int = 2, user_activation: str | None = None,
                 non_seq: str | None = None, user_tower: str = "hierarchical", intent_id_std: float = 1.0,
                 families: torch.Tensor | None = None, intent_id_dropout: float = 0.0, autoint_layers: int = 2,
                 n_experts: int = 4, fusion: str = "fixed"):
        super().__init__()
        if not 0 <= w <= 1:
            raise ValueError(f"w must be within [0, 1], got {w}")
        if semantic.shape[0] != n_intents:
            raise ValueError(f"semantic has {semantic.shape[0]} rows for n_intents={n_intents}")
        self.w, self.n_intents, self.d_e = w, n_intents, d_e
        if fusion not in ("fixed", "adaptive"):
            raise ValueError(f"fusion={fusion!r}; use 'fixed' (Eq. 4) or 'adaptive'")
        self.gate = FusionGate(n_intents, w, shape.max_recent) if fusion == "adaptive" else None
        if user_tower == "hierarchical":
            fields = FieldEmbedding(list(shape.cardinalities), user_buckets, shape.n_numerical, d)
            self.user_tower = UserTower(fields, n_intents, d, shape.max_recent, heads=heads, dropout=dropout,
                                        activation=user_activation or "sigmoid", non_seq=non_seq or "mlp",
                                        autoint_layers=autoint_layers)
            user_activation = None  # applied inside the hierarchical tower
        elif user_tower == "autoint-mmoe":
            if non_seq is not None:
                raise ValueError("non_seq applies to the hierarchical user tower only")
            self.user_tower = AutoIntMMoEUser(shape, n_intents, d, autoint_layers, heads, n_experts, user_buckets, dropout)
        else:
            raise ValueError(f"user_tower={user_tower!r}; use 'hierarchical' or 'autoint-mmoe'")
        self.sigma = UserTower.ACTIVATIONS[user_activation] if user_activation not in (None, "none") else None
        self.intent_tower = IntentTower(semantic, d, dropout, intent_id_std, families, intent_id_dropout)
        self.query_tower = QueryTower(d_e, d)

    def user(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        z_u = self.user_tower(x["cat"], x["user"], x["num"], x["seq"], x["seq_age"])
        return z_u if self.sigma is None else self.sigma(z_u)

    def weight(self, x: dict[str, torch.Tensor], candidates: torch.Tensor | None = None):
        """Eq. 4's w: the fixed scalar, or the gate's (B, N) / (B, n_intents) per-pair weights."""
        return self.w if self.gate is None else self.gate(x["seq"], candidates)

    def intent_index(self) -> torch.Tensor:
        """z_i of every intent, (n_intents, d): precomputed once and looked up at serving time."""
        return self.intent_tower(torch.arange(1, self.n_intents + 1, device=self.query_tower.proj.weight.device))

    def query_half(self, e: torch.Tensor, intent_index: torch.Tensor | None = None) -> torch.Tensor:
        """cos(z_i, z_q) (B, n_intents) of query embeddings ``e`` (B, d_e): Eq. 4's query term alone, how well
        the latent query by itself ranks the KB (no user features read)."""
        z_i = intent_index if intent_index is not None else self.intent_index()
        return F.normalize(self.query_tower(e), dim=-1) @ F.normalize(z_i, dim=-1).T

    def forward(self, x: dict[str, torch.Tensor], e: torch.Tensor, candidates: torch.Tensor | None = None,
                intent_index: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, N) of ``candidates`` (B, N) intent ids, or (B, n_intents) of all intents when None
        (using ``intent_index`` when given)."""
        z_u, z_q = self.user(x), self.query_tower(e)
        if candidates is None:
            z_i = intent_index if intent_index is not None else self.intent_index()
        else:
            z_i = self.intent_tower(candidates)
        return qe_score(z_u, z_i, z_q, self.weight(x, candidates))


class FusionGate(nn.Module):
    """Adaptive fusion (beyond the paper): the weight of Eq. 4's user-intent term per user-intent pair,

        w(u, i) = sigmoid(logit(w0) + a * c_i + b * h_u),

    with c_i the intent's standardised log(1 + training clicks) (``intent_clicks``, set from the training
    weeks) and h_u the standardised number of the user's recent clicks in the behaviour sequence. ``a`` and
    ``b`` start at 0, so training starts at the paper's fixed w0 = 0.7; a positive ``a`` learns to trust the
    ID side on warm intents and the query on cold ones.

    Input: ``seq`` (B, L) the behaviour sequence (0 = padding), ``candidates`` (B, N) intent ids or None for
    every intent. Output: (B, N) or (B, n_intents) weights in (0, 1).
    """

    def __init__(self, n_intents: int, w0: float = 0.7, max_recent: int = 10):
        super().__init__()
        if not 0 < w0 < 1:
            raise ValueError(f"adaptive fusion needs 0 < w < 1, got {w0}")
        self.bias = nn.Parameter(torch.tensor(float(torch.logit(torch.tensor(w0)))))
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))
        self.register_buffer("intent_clicks", torch.zeros(n_intents + 1))   # standardised, index 0 unused
        self.max_recent = max_recent

    def set_intent_clicks(self, clicks: torch.Tensor) -> None:
        """``clicks`` (n_intents + 1,) training clicks per intent id -> the standardised log counts."""
        c = torch.log1p(clicks.float())
        self.intent_clicks.copy_((c - c[1:].mean()) / c[1:].std().clamp(min=1e-6))

    def forward(self, seq: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        h = ((seq > 0).float().sum(1, keepdim=True) - 1.0) / max(self.max_recent / 4, 1.0)    # (B, 1)
        c = self.intent_clicks[1:][None] if candidates is None else self.intent_clicks[candidates]  # (1|B, N)
        return torch.sigmoid(self.bias + self.a * c + self.b * h)
