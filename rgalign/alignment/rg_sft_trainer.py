"""RG-SFT (paper Eq. 8): L = -E_{(C, q^w)} sum_t log pi_theta(q^w_t | C, q^w_<t).

The prompt is the section 3.2 chat prompt exactly as LTP renders it; only the completion q^w (plus EOS)
is learned (``completion_only_loss=True``). TRL's ``SFTTrainer`` with a PEFT LoRA adapter; the adapter is
saved next to the merged reasoner.

Example:
    >>> rg_sft("artifacts/reasoners/tiny-s0", [(prompt, "Where is my parcel?")], RGSFTConfig(), "out/sft")  # doctest: +SKIP
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rgalign.alignment.common import load_for_training, save_aligned
from rgalign.alignment.rg_sft_config import RGSFTConfig


def rg_sft(reasoner: str | Path, samples: list[tuple[str, str]], cfg: RGSFTConfig, out: str | Path) -> Path:
    """Fine-tune ``reasoner`` on ``(rendered prompt, q^w)`` pairs; returns the aligned reasoner directory."""
    from datasets import Dataset
    from trl import SFTTrainer
    if not samples:
        raise ValueError("RG-SFT got no samples: best-of-N kept none (try strategy V1 or more teachers)")
    t0 = time.perf_counter()
    model, tok = load_for_training(reasoner, cfg, [s[0] for s in samples])
    ds = Dataset.from_dict({"prompt": [p for p, _ in samples], "completion": [q for _, q in samples]})
    with tempfile.TemporaryDirectory() as tmp:
        args = cfg.trl_args(tmp)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             peft_config=cfg.peft_config())
        result = trainer.train()
    return save_aligned(trainer, tok, out, reasoner, "rg-sft",
                        {"config": cfg.to_dict(), "samples": len(samples), "train_loss": result.training_loss,
                         "seconds": round(time.perf_counter() - t0, 1)})
