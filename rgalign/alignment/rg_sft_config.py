"""RG-SFT configuration (paper Eq. 8)."""
from __future__ import annotations

from dataclasses import dataclass

from rgalign.alignment.common import RGATrainConfig
from rgalign.config import _f


@dataclass
class RGSFTConfig(RGATrainConfig):
    """Supervised fine-tuning on (C, q^w): TRL ``SFTTrainer``, prompt-completion data, completion-only loss,
    LoRA adapter merged into the saved reasoner."""
    learning_rate: float = _f(1e-3, "peak learning rate of the LoRA adapter")
    epochs: float = _f(3.0, "passes over the winners Q^w")
