"""The Stage-1 QE-Rec as a reward model (paper section 4.2): NDCG of the clicked intent per candidate query.

Teachers' hidden states are not available, so every candidate query is mapped into one embedding space
(the paper uses a Qwen3 embedding model with last-token pooling): here ``QueryEmbedder`` = last-token
pooling of the *frozen Stage-1 reasoner* over the query text, read inside the section 3.2 prompt (where the
reasoner's pre-training distils a sentence encoder's embedding of a text into its LTP, so the query lands
where the contexts that call for it do) or as a bare chat user turn. The Stage-1 ranker then scores
every intent with z_q from that embedding (Eq. 4), and the reward of a candidate is NDCG of the clicked
intent in the full ranking, 1 / log2(2 + rank) (one relevant intent, so the ideal DCG is 1).

Ties count against the clicked intent, as in every metric (``rgalign.metrics.ranks_from_scores``): a query
that leaves the ranking flat earns the reward of the last place, never a tie for the first.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rgalign.reasoner.ltp import LTPEncoder


QUERY_PROMPTS = ("context", "chat")


class QueryEmbedder:
    """e(q): the frozen reasoner's last-token state over ``q``, (N, d) float32: ``prompt="context"`` reads q
    in the section 3.2 prompt (as ``rgalign reasoner check`` reads utterances), ``"chat"`` as a bare user turn."""

    def __init__(self, encoder: LTPEncoder, prompt: str = "context"):
        if prompt not in QUERY_PROMPTS:
            raise ValueError(f"query prompt {prompt!r}; use one of {QUERY_PROMPTS}")
        self.prompt = prompt
        self.encoder = encoder

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def render(self, text: str) -> str:
        if not text or not text.strip():
            raise ValueError("cannot embed an empty query")
        if self.prompt == "context":
            return self.encoder.render(text.strip())
        return self.encoder.reasoner.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.embed_prompts([self.render(t) for t in texts])


@torch.inference_mode()
def candidate_ndcg(model, inputs: dict[str, torch.Tensor], e: np.ndarray, clicked: np.ndarray,
                   batch_size: int = 256) -> np.ndarray:
    """Reward (S, K) of K candidate query embeddings ``e`` (S, K, d_e) for S sessions.

    ``inputs`` are the encoded user features (``FeatureSpec.encode``) of the S sessions, ``clicked`` (S,) the
    clicked intent ids. The user term cos(z_u, z_i) is computed once per session; only the query term
    changes between candidates.
    """
    e = torch.as_tensor(np.asarray(e, np.float32))
    if e.dim() != 3:
        raise ValueError(f"e must be (S, K, d_e), got shape {tuple(e.shape)}")
    if e.shape[2] != model.d_e:
        raise ValueError(f"query embeddings have d_e={e.shape[2]} but the reward model's query tower expects "
                         f"{model.d_e}: embed the candidates with the Stage-1 reasoner")
    model.eval()
    z_i = F.normalize(model.intent_index(), dim=-1)                       # (n, d)
    clicked = torch.as_tensor(np.asarray(clicked, np.int64)) - 1
    out = []
    for a in range(0, e.shape[0], batch_size):
        x = {k: v[a:a + batch_size] for k, v in inputs.items()}
        s_u = F.normalize(model.user(x), dim=-1) @ z_i.T                  # (B, n)
        eb = e[a:a + batch_size]
        z_q = F.normalize(model.query_tower(eb.reshape(-1, eb.shape[-1])), dim=-1).view(*eb.shape[:2], -1)  # (B, K, d)
        w = model.weight(x)                                                # Eq. 4's w: scalar or (B, n)
        w = w[:, None, :] if torch.is_tensor(w) else w
        s = w * s_u[:, None, :] + (1 - w) * z_q @ z_i.T                     # Eq. 4, (B, K, n)
        c = clicked[a:a + batch_size]
        target = s.gather(2, c[:, None, None].expand(-1, s.shape[1], 1))
        rank = (s > target).sum(-1) + (s == target).sum(-1) - 1            # 0-based, ties count against it
        out.append((1.0 / torch.log2(rank.float() + 2)).numpy())
    return np.concatenate(out) if out else np.zeros((0, e.shape[1]))


def golden_cosine(e: np.ndarray, intent_e: np.ndarray) -> np.ndarray:
    """cos(e(q_k), e(golden intent text)) for V3/V4: ``e`` (S, K, d), ``intent_e`` (S, d) -> (S, K)."""
    a = e / (np.linalg.norm(e, axis=-1, keepdims=True) + 1e-12)
    b = intent_e / (np.linalg.norm(intent_e, axis=-1, keepdims=True) + 1e-12)
    return np.einsum("skd,sd->sk", a, b)
