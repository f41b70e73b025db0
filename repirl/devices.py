"""Where and in what precision the service's transformers engines run (settings `hf_device`, `hf_dtype`).

auto: the GPU when torch sees one, else the CPU; bf16 on a GPU (the tensor cores' dtype; scores move by bf16
rounding, ~1e-2 on a token reward), float32 on the CPU (bf16 matmuls are slow there and change nothing in memory
that matters for the small models a CPU serves). The trainer has its own (trainer/device.py: LOCAL_RANK, autocast).
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"hf_device: {name!r} was asked for, but torch sees no GPU (torch.cuda.is_available() is "
                         "False); use auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if (device is not None and device.type == "cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"hf_dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]
