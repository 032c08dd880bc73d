"""RG-CL configuration (paper Eq. 11 and section 5.1)."""
from __future__ import annotations

from dataclasses import dataclass

from rgalign.alignment.common import RGATrainConfig
from rgalign.config import _f


@dataclass
class RGCLConfig(RGATrainConfig):
    """Representation-level alignment of the last-token state h_i to e_i^+ = e(q^w). Defaults are the
    paper's: tau 0.05, lambda_CL 1.0, lambda_causal 0.01, NEFTune alpha 5, lr 5e-5 with linear decay and 3%
    warm-up, effective batch 24 (8 x 3 accumulation), 10 epochs, full fine-tuning."""
    learning_rate: float = _f(5e-5, "peak learning rate (paper: 5e-5)")
    epochs: float = _f(10.0, "epochs (paper: 10)")
    batch_size: int = _f(8, "samples per step; the in-batch negatives of Eq. 11 are the other samples of it")
    grad_accum: int = _f(3, "accumulation steps (paper: effective batch 24)")
    lora_r: int = _f(0, "LoRA rank (0 = full fine-tuning, as the paper's ZeRO-3 set-up implies)")
    tau: float = _f(0.05, "InfoNCE temperature (paper: 0.05)")
    lambda_cl: float = _f(1.0, "weight of the contrastive loss (paper: 1.0)")
    lambda_causal: float = _f(0.01, "weight of the causal LM loss on q^w (paper: 0.01)")
    neftune_alpha: float = _f(5.0, "NEFTune noise scale on the input embeddings, training only (paper: 5; 0 = off)")

    def __post_init__(self):
        super().__post_init__()
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.neftune_alpha < 0 or self.lambda_cl < 0 or self.lambda_causal < 0:
            raise ValueError("neftune_alpha, lambda_cl and lambda_causal must be >= 0")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: Eq. 11 needs in-batch negatives")

    def trl_args(self, out):
        """``transformers.TrainingArguments`` of the RG-CL trainer (it keeps the e^+ column)."""
        from transformers import TrainingArguments
        return TrainingArguments(**self.hf_kwargs(out), remove_unused_columns=False)
