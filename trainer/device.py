"""Where and in what precision the trainer computes (recipe keys `device`, `dtype`, `gradient_checkpointing`,
`micro_batch_size`, `logprob_chunk_tokens`; issue 13).

A `Compute` is attached to each model the trainer runs (`attach`), and every forward pass reads it from the model
(`compute_of`): trainer/models.py moves a batch's ids to the model's device, runs the forward under bf16 autocast when
asked, splits the rows into micro-batches and the log-probs into chunks. A model without one computes as before this
issue (CPU or wherever it is, float32, whole batch), so tools that load a model on their own (compare, ranking,
offline) need nothing.

Precision (what we chose, and why):
  * one process, `dtype: bfloat16`: parameters, gradients and AdamW state stay float32 (master weights); the forward
    runs under `torch.autocast(bfloat16)`, so matmuls are bf16 and autocast keeps its float32 ops (norms, softmax).
    Keeping bf16 parameters instead would make AdamW update bf16 weights in place (updates below bf16's resolution
    vanish), unless the optimizer kept its own fp32 copy, which is what autocast gives for free.
  * several processes: FSDP2 `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (trainer/distributed.py):
    fp32 sharded master weights and optimizer state, bf16 all-gathered weights for compute, gradients reduced in fp32.
    No autocast on top (the parameters FSDP hands to the forward are already bf16).
  * either way the logits are upcast to float32 per chunk before log_softmax, and every log-prob, entropy, loss and
    advantage is float32 (veRL / OpenRLHF do the same: bf16 logits, fp32 log-softmax).
Updates (policy, rePIRL PRM, PRIME PRM): each micro-batch goes to the model's device, and its log-probs, loss and
backward stay there; running sums for the metrics stay there too and are read once per update. No-grad scoring
passes return their [batch, tokens] results to the batch's device (the CPU), where advantages and metrics are
computed, one copy per micro-batch.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Compute:
    device: torch.device = torch.device("cpu")
    autocast_bf16: bool = False  # run the forward under torch.autocast(bfloat16) (one process, dtype: bfloat16)
    micro_batch_size: int | None = None  # rows per forward (None: the whole batch)
    chunk_tokens: int | None = None  # token positions per lm_head + log_softmax chunk (None: full logits)

    def autocast(self):
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


DEFAULT = Compute()


def attach(model: torch.nn.Module, compute: Compute) -> torch.nn.Module:
    model._repirl_compute = compute  # a plain attribute: FSDP2 keeps the module object, so it survives wrapping
    return model


def compute_of(model: torch.nn.Module) -> Compute:
    return getattr(model, "_repirl_compute", DEFAULT)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU. Under torchrun each process takes the GPU of its
    LOCAL_RANK (and `setup` makes it the current device, so NCCL and FSDP use it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but torch sees no GPU (torch.cuda.is_available() is False); "
                             "use device: auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def compute_for(cfg, device: torch.device, world: int) -> Compute:
    """The Compute of the trainable models and the frozen reference, from the recipe."""
    bf16 = cfg.dtype == "bfloat16"
    return Compute(device=device, autocast_bf16=bf16 and world == 1, micro_batch_size=cfg.micro_batch_size,
                   chunk_tokens=cfg.logprob_chunk_tokens)


def reference_dtype(cfg, world: int) -> torch.dtype:
    """The frozen initial policy is never trained, so it needs no fp32 master copy: with `dtype: bfloat16` it is
    stored in bf16 (half the memory; it computes in bf16 as the policy's forward does). Its log-probs then differ
    from the fp32-master policy's by bf16 rounding (~1e-2 nats), so kl_init starts near 0, not at exactly 0.
    float32 recipes keep an fp32 reference (kl_init exactly 0 before the first update)."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """HF gradient checkpointing: each decoder layer's activations are recomputed in backward (memory ~ one layer's
    activations + the layer inputs). Non-reentrant (use_reentrant=False) is the variant that composes with FSDP2 and
    with inputs that need no grad (token ids). Only the train-mode forward checkpoints; generation runs in eval mode
    and keeps its KV cache."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def place(model: torch.nn.Module, cfg, compute: Compute, trainable: bool) -> torch.nn.Module:
    """Put a model where the recipe says, in this order: onto the device (FSDP builds its mesh there), gradient
    checkpointing (trainable models), then FSDP2 sharding with the mixed-precision policy when WORLD_SIZE > 1
    (trainable models; a no-op in one process), and attach the Compute its forward passes read. Build the optimizer
    after this (FSDP replaces the parameters)."""
    from trainer import distributed as dist

    model = model.to(compute.device)
    if compute.device.type == "cpu" and cfg.dtype == "bfloat16":
        # torch 2.13's CPU flash-attention kernel for bf16 packs with AVX-512 VNNI when the hardware has it and fails
        # ("pack_vnni2 is only supported when avx512 is supported") when ATEN_CPU_CAPABILITY holds torch's kernels
        # below AVX-512, as CI does to reproduce other machines. Eager attention (plain matmuls) runs on every kernel
        # set, also in a checkpointed layer's recompute; bf16 on a CPU is for tests, where its speed does not matter.
        model.set_attn_implementation("eager")
    if trainable:
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        dist.wrap(model, bf16=cfg.dtype == "bfloat16", accumulate_unsharded=cfg.fsdp_accumulate_unsharded)
    return attach(model, compute)
