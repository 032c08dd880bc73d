"""What the three RGA trainers share: the typed config base, Hugging Face training arguments built from it
(CPU / GPU / DeepSpeed ZeRO-3), LoRA, and saving an aligned reasoner as a loadable directory."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rgalign.config import _Config, _f

ZERO3 = Path(__file__).parent / "deepspeed" / "zero3.json"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class RGATrainConfig(_Config):
    """Fields every RGA trainer has; each method's config subclasses it with its own defaults."""
    learning_rate: float = _f(2e-4, "peak learning rate (linear decay after warm-up)")
    epochs: float = _f(3.0, "passes over the best-of-N samples")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1 = run all epochs)")
    batch_size: int = _f(8, "samples per device step")
    grad_accum: int = _f(1, "gradient accumulation steps (effective batch = batch_size x grad_accum x devices)")
    warmup_ratio: float = _f(0.03, "share of steps with linear warm-up (paper: 3%)")
    max_length: int = _f(512, "prompt + completion tokens; longer sequences are truncated")
    lora_r: int = _f(8, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: int = _f(16, "LoRA alpha")
    seed: int = _f(0, "seed of data order and initialisation of the adapter")
    deepspeed: bool = _f(False, "train with DeepSpeed ZeRO-3 (rgalign/alignment/deepspeed/zero3.json)")

    def __post_init__(self):
        for name in ("learning_rate", "epochs", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be within [0, 1), got {self.warmup_ratio}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")

    def hf_kwargs(self, out: str | Path) -> dict:
        """Keyword arguments shared by ``TrainingArguments``, ``SFTConfig`` and ``DPOConfig``."""
        cuda = torch.cuda.is_available()
        kw = dict(output_dir=str(out), learning_rate=self.learning_rate, num_train_epochs=self.epochs,
                  max_steps=self.max_steps, per_device_train_batch_size=self.batch_size,
                  gradient_accumulation_steps=self.grad_accum, lr_scheduler_type="linear",
                  warmup_steps=self.warmup_ratio,  # transformers 5 reads a float < 1 as a ratio
                  weight_decay=0.0, max_grad_norm=1.0, seed=self.seed, data_seed=self.seed,
                  logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=None,
                  use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported())
        if self.deepspeed:
            kw["deepspeed"] = str(ZERO3)
        return kw

    def peft_config(self):
        if self.lora_r == 0:
            return None
        from peft import LoraConfig
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.05, task_type="CAUSAL_LM",
                          target_modules=LORA_TARGETS)


def single_process_deepspeed_env(port: int = 29533) -> None:
    """Environment for DeepSpeed in one process without a launcher (CPU: gloo backend)."""
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def load_for_training(path: str | Path, cfg: RGATrainConfig, prompts: list[str] | None = None):
    """(model, tokenizer with right padding) from a reasoner directory, after the set-up every RGA trainer
    needs: the single-process DeepSpeed environment when ``cfg.deepspeed``, and (for TRL trainers, which cut
    the completion of an over-long pair) the check that ``prompts`` leave room for a query."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if cfg.deepspeed:
        single_process_deepspeed_env()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if prompts is not None:
        check_prompt_lengths(tok, prompts, cfg.max_length)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tok


def check_prompt_lengths(tok, prompts: list[str], max_length: int, room: int = 24) -> None:
    """Fail before training when a prompt leaves fewer than ``room`` tokens for the query (TRL would cut the
    completion and silently drop the sample)."""
    longest = max(len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"])
    if longest > max_length - room:
        raise ValueError(f"a prompt has {longest} tokens, leaving < {room} of max_length={max_length} for the "
                         f"query: raise max_length to at least {longest + room}")


def zero3_partition(model) -> dict | None:
    """What each rank holds of a ZeRO-3-partitioned ``model``: ``{"params": total elements, "per_rank": [its
    shard's elements per rank]}`` (None when the parameters are not partitioned). Every rank must call it."""
    ps = [p for p in model.parameters() if hasattr(p, "ds_tensor")]
    if not ps:
        return None
    local = int(sum(p.ds_tensor.numel() for p in ps))
    per_rank = [local]
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        per_rank = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(per_rank, local)
    return {"params": int(sum(p.ds_numel for p in ps)), "per_rank": per_rank}


def save_aligned(trainer, tok, out: str | Path, parent: str | Path, method: str, meta: dict) -> Path:
    """Save a finished trainer's model as a reasoner directory whose ``rgalign_reasoner.json`` names its
    parent and the method (lineage for the registry). ``trainer.save_model`` gathers ZeRO-3 partitions; a
    LoRA adapter is kept under ``<out>.adapter`` and merged into a fresh copy of the parent."""
    import shutil

    from transformers import AutoModelForCausalLM

    from rgalign.reasoner.sources import META, save_reasoner
    out = Path(out)
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    meta = {**meta, "deepspeed_zero_stage": plugin.zero_stage if plugin is not None else None,
            "log_history": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history]}
    meta["zero3_partition"] = zero3_partition(trainer.model)
    staged = out.with_name(out.name + ".trained")
    trainer.save_model(str(staged))   # every rank: ZeRO-3 gathers the partitions; rank 0 writes
    if not trainer.is_world_process_zero():
        return out                    # rank 0 merges and saves the reasoner
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    unset_hf_deepspeed_config()  # otherwise from_pretrained below would partition the fresh copy again
    if (staged / "adapter_config.json").is_file():
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, staged).merge_and_unload()
        adapter = out.with_name(out.name + ".adapter")
        if adapter.exists():
            shutil.rmtree(adapter)
        staged.replace(adapter)
    else:
        model = AutoModelForCausalLM.from_pretrained(staged, dtype=torch.float32)
        shutil.rmtree(staged)
    parent_meta = json.loads((Path(parent) / META).read_text()) if (Path(parent) / META).is_file() else {}
    tok.padding_side = "left"
    return save_reasoner(model.eval(), tok, out, {"source": method, "parent": str(parent),
                                                  "parent_digest": parent_meta.get("digest"),
                                                  "ltp": parent_meta.get("ltp", {}), **meta})
