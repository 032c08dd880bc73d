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

    def trl_args(self, out):
        """TRL ``SFTConfig``: prompt-completion data, loss on the completion only, no packing."""
        from trl import SFTConfig
        return SFTConfig(**self.hf_kwargs(out), gradient_checkpointing=False, completion_only_loss=True,
                         max_length=self.max_length, packing=False, dataset_num_proc=None)
