"""RG-DPO (paper Eq. 10):

    L = -E log sigma( beta log pi(q^w|C)/pi_ref(q^w|C) - beta log pi(q^l|C)/pi_ref(q^l|C) )

over the preference set of Eq. 9. ``pi_ref`` is the RG-SFT checkpoint: the policy is a fresh LoRA adapter
on the merged SFT model and TRL uses the adapter-off model as the reference.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rgalign.alignment.common import load_for_training, save_aligned
from rgalign.alignment.rg_dpo_config import RGDPOConfig


def rg_dpo(sft_reasoner: str | Path, pairs: list[tuple[str, str, str]], cfg: RGDPOConfig, out: str | Path) -> Path:
    """Refine the SFT reasoner on ``(rendered prompt, q^w, q^l)`` triples; returns the aligned directory."""
    from datasets import Dataset
    from trl import DPOTrainer
    if not pairs:
        raise ValueError("RG-DPO got no preference pairs: every kept sample had tied candidates")
    t0 = time.perf_counter()
    model, tok = load_for_training(sft_reasoner, cfg, [p[0] for p in pairs])
    ds = Dataset.from_dict({"prompt": [p for p, _, _ in pairs], "chosen": [w for _, w, _ in pairs],
                            "rejected": [l for _, _, l in pairs]})
    with tempfile.TemporaryDirectory() as tmp:
        args = cfg.trl_args(tmp)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=ds, processing_class=tok,
                             peft_config=cfg.peft_config())
        result = trainer.train()
    return save_aligned(trainer, tok, out, sft_reasoner, "rg-dpo",
                        {"config": cfg.to_dict(), "pairs": len(pairs), "train_loss": result.training_loss,
                         "seconds": round(time.perf_counter() - t0, 1)})
