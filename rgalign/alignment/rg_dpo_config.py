"""RG-DPO configuration (paper Eq. 9-10)."""
from __future__ import annotations

from dataclasses import dataclass

from rgalign.alignment.common import RGATrainConfig
from rgalign.config import _f


@dataclass
class RGDPOConfig(RGATrainConfig):
    """Preference refinement of the RG-SFT reasoner on (C, q^w, q^l) with NDCG(q^w) > NDCG(q^l): TRL
    ``DPOTrainer``; the reference policy is the frozen SFT checkpoint (the adapter-off model)."""
    learning_rate: float = _f(5e-4, "peak learning rate of the LoRA adapter")
    epochs: float = _f(2.0, "passes over the preference pairs")
    beta: float = _f(0.1, "beta of Eq. 10: strength of the KL constraint to the SFT reference")
    max_pairs_per_sample: int = _f(3, "at most this many (q^w, q^l) pairs per context (paper: 3 negatives)")

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    def trl_args(self, out):
        """TRL ``DPOConfig`` with Eq. 10's beta."""
        from trl import DPOConfig
        return DPOConfig(**self.hf_kwargs(out), gradient_checkpointing=False, beta=self.beta, max_length=self.max_length)
