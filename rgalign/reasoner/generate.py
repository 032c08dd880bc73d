"""Query generation: the reasoner writes the one-sentence user question of section 3.2 (10-20 words).

Used for the Stage 2 teacher pool (the reasoner is the 4th candidate), for the BGE-style ablation (Table 3:
a frozen sentence encoder over the generated query) and for people to read.
"""
from __future__ import annotations

import re

import torch

from rgalign.reasoner.ltp import LTPEncoder


def clean_query(text: str, max_words: int = 20) -> str:
    """First line / sentence of a generation, at most ``max_words`` words, whitespace normalised."""
    text = text.strip().split("\n")[0]
    m = re.search(r"^(.+?[?.!])(\s|$)", text)
    text = m.group(1) if m else text
    return " ".join(text.split()[:max_words])


@torch.inference_mode()
def generate_queries(encoder: LTPEncoder, contexts: list[str], sample: bool = False, temperature: float = 0.8,
                     top_p: float = 0.95, max_new_tokens: int | None = None, seed: int = 0,
                     batch_size: int = 16) -> list[str]:
    """One question per context: greedy (``sample=False``) or nucleus sampling, deterministic per seed;
    ``max_new_tokens`` defaults to the encoder's (the reasoner's ``ReasonerConfig.max_new_tokens``)."""
    max_new_tokens = max_new_tokens or encoder.max_new_tokens
    r = encoder.reasoner
    tok, model = r.tokenizer, r.model
    out = []
    for i in range(0, len(contexts), batch_size):
        b = encoder.tokenize([encoder.render(c) for c in contexts[i:i + batch_size]])
        if sample:
            torch.manual_seed(seed + i)
        g = model.generate(**b, max_new_tokens=max_new_tokens, do_sample=sample,
                           temperature=temperature if sample else None, top_p=top_p if sample else None,
                           top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(g[:, b["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [clean_query(t) for t in texts]
    return out
