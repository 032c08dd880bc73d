"""RG-CL (paper Eq. 11 + section 5.1): InfoNCE between the last-token state h_i and the embedding e_i^+ of
the winning query, with in-batch negatives, plus a small causal LM loss on q^w.

    L_CL    = -1/N sum_i log( exp(cos(h_i, e_i^+)/tau) / sum_j exp(cos(h_i, e_j^+)/tau) )     (Eq. 11)
    L       = lambda_CL * L_CL + lambda_causal * L_LM(q^w | C)                              (section 5.1)

One forward pass over ``prompt + q^w`` (right padded) gives both: with causal attention the state at the
last prompt token equals the prompt-only LTP (Eq. 2-3), and the logits after it give L_LM. NEFTune adds
uniform noise alpha / sqrt(L d) to the input embeddings while the model is in training mode only. A linear
projection head maps h_i to e^+'s size only where the two differ; it is used for the loss and not saved.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgalign.alignment.common import load_for_training, save_aligned
from rgalign.alignment.rg_cl_config import RGCLConfig


def info_nce(h: torch.Tensor, e_pos: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 11 for ``h`` (N, d) and ``e_pos`` (N, d): row i's positive is e_i^+, the other rows are negatives.

    A row j whose e_j^+ equals e_i^+ (the same winning query, e.g. a templated teacher's, for two contexts) is
    not a negative of row i: it is masked out of i's denominator, else Eq. 11 would push h_i away from its
    own positive."""
    if h.shape != e_pos.shape:
        raise ValueError(f"h {tuple(h.shape)} and e_pos {tuple(e_pos.shape)} must have the same shape")
    logits = F.normalize(h, dim=-1) @ F.normalize(e_pos, dim=-1).T / tau
    same = (e_pos.unsqueeze(1) == e_pos.unsqueeze(0)).all(-1)                  # (N, N) duplicate positives
    eye = torch.eye(len(h), dtype=torch.bool, device=h.device)
    logits = logits.masked_fill(same & ~eye, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, torch.arange(len(h), device=h.device))


def rg_cl_loss(h, e_pos, lm_logits, labels, cfg: RGCLConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L_CL, L_LM): ``lm_logits`` (N, T, V), ``labels`` (N, T) with -100 outside q^w."""
    l_cl = info_nce(h, e_pos, cfg.tau)
    l_lm = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)
    return cfg.lambda_cl * l_cl + cfg.lambda_causal * l_lm, l_cl, l_lm


def neftune_hook(alpha: float):
    """Forward hook for an embedding layer: NEFTune noise, only while the layer is in training mode."""
    def hook(module, args, output):
        if module.training and alpha > 0:
            scale = alpha / np.sqrt(output.shape[1] * output.shape[2])
            output = output + torch.zeros_like(output).uniform_(-scale, scale)
        return output
    return hook


class CLCollator:
    """Right-padded ``prompt + q^w + eos`` ids, labels on q^w only, the last prompt position, and e^+."""

    def __init__(self, tok, max_length: int):
        self.tok, self.max_length = tok, max_length

    def __call__(self, rows):
        tok, ids, labels, last = self.tok, [], [], []
        for r in rows:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            p = p[-(self.max_length - min(len(c), self.max_length // 2)):]   # keep the end of a long prompt
            c = c[:self.max_length - len(p)]
            ids.append(p + c)
            labels.append([-100] * len(p) + c)
            last.append(len(p) - 1)
        width = max(map(len, ids))
        pad = tok.pad_token_id
        return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
                "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
                "last_prompt": torch.tensor(last), "e_pos": torch.tensor(np.stack([r["e_pos"] for r in rows]),
                                                                          dtype=torch.float32)}


def _trainer_cls():
    from transformers import Trainer

    class RGCLTrainer(Trainer):
        """``transformers.Trainer`` with the RG-CL objective (gives DeepSpeed, accumulation and schedules)."""

        def __init__(self, *a, rgcl: RGCLConfig, **kw):
            super().__init__(*a, **kw)
            self.rgcl = rgcl
            self.parts = []
            # compute_loss returns a micro-batch mean, not a sum over num_items_in_batch: the Trainer must divide it
            # by the accumulation steps (transformers 5 skips that for models that accept loss kwargs, which
            # gave ~grad_accum x the gradient: batch 8 x 3 must update like batch 24 x 1)
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
            hidden = body(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
            h = hidden[torch.arange(len(hidden), device=hidden.device), inputs["last_prompt"]]
            proj = getattr(model, "rgcl_proj", None)
            if proj is not None:
                h = proj(h)
            logits = model.get_output_embeddings()(hidden)
            loss, l_cl, l_lm = rg_cl_loss(h, inputs["e_pos"], logits, inputs["labels"], self.rgcl)
            self.parts.append((l_cl.item(), l_lm.item()))
            return loss
    return RGCLTrainer


def rg_cl(reasoner: str | Path, samples: list[tuple[str, str]], e_pos: np.ndarray, cfg: RGCLConfig,
          out: str | Path) -> Path:
    """Align ``reasoner`` so that its LTP of each rendered prompt moves to ``e_pos`` (N, d_e) of its q^w."""
    from datasets import Dataset
    if len(samples) < cfg.batch_size:
        raise ValueError(f"RG-CL needs at least batch_size={cfg.batch_size} samples (in-batch negatives), "
                         f"got {len(samples)}")
    if len(e_pos) != len(samples):
        raise ValueError(f"e_pos has {len(e_pos)} rows for {len(samples)} samples")
    t0 = time.perf_counter()
    model, tok = load_for_training(reasoner, cfg)
    d_h, d_e = model.config.hidden_size, int(np.asarray(e_pos).shape[1])
    if cfg.peft_config() is not None:
        from peft import get_peft_model
        model = get_peft_model(model, cfg.peft_config())
    # attached after get_peft_model, which freezes every parameter it does not adapt: the projection trains
    model.rgcl_proj = nn.Linear(d_h, d_e) if d_h != d_e else None
    proj_start = model.rgcl_proj.weight.detach().clone() if model.rgcl_proj is not None else None
    handle = model.get_input_embeddings().register_forward_hook(neftune_hook(cfg.neftune_alpha))
    ds = Dataset.from_dict({"prompt": [p for p, _ in samples], "completion": [q for _, q in samples],
                            "e_pos": [np.asarray(v, np.float32) for v in e_pos]})
    with tempfile.TemporaryDirectory() as tmp:
        args = cfg.trl_args(tmp)
        trainer = _trainer_cls()(model=model, args=args, train_dataset=ds, data_collator=CLCollator(tok, cfg.max_length),
                                 rgcl=cfg)
        result = trainer.train()
    handle.remove()
    parts = np.array(trainer.parts) if trainer.parts else np.zeros((1, 2))
    proj = model.rgcl_proj
    model.rgcl_proj = None   # a training head only: not part of the saved reasoner
    return save_aligned(trainer, tok, out, reasoner, "rg-cl",
                        {"config": cfg.to_dict(), "samples": len(samples), "train_loss": result.training_loss,
                         "cl_loss_first": float(parts[:5, 0].mean()), "cl_loss_last": float(parts[-5:, 0].mean()),
                         "proj_trained": None if proj is None else not torch.equal(proj_start, proj.weight.detach()),
                         "seconds": round(time.perf_counter() - t0, 1)})
