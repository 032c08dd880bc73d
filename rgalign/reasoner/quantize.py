"""The int8 serving variant of the reasoner."""
from __future__ import annotations

import torch


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every Linear of the transformer body (the int8 serving variant, the
    CPU analogue of the paper's 8-bit vLLM deployment). Returns a quantized copy; LTP uses it unchanged."""
    import copy
    from torch.ao.quantization import quantize_dynamic
    return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
