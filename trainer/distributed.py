"""Data parallelism through torch's FSDP2 (`fully_shard`), started by `torchrun` or `accelerate launch`.

Every rank draws the same questions and keeps its shard (`shard`). When WORLD_SIZE > 1 the trainable models are
wrapped with `fully_shard` (`wrap`): each rank holds 1/WORLD_SIZE of every parameter (and of its gradient and
optimizer state), FSDP all-gathers a layer's weights for its forward/backward and reduce-scatters the gradients. With
WORLD_SIZE == 1 nothing is wrapped and nothing here costs anything (the single-process path, with vLLM rollouts).

Gradient numerics: our losses divide by GLOBAL counts (tokens, question groups), so the SUM over ranks of the local
gradients is the single-process gradient. FSDP2 AVERAGES by default (divides by the world size); `wrap` sets the divide
factor to 1 on every FSDP unit and forces plain SUM collectives (`set_force_sum_reduction_for_comms`: gloo has no AVG
or PREMUL_SUM; transformers' own FSDP2 code does the same for non-NCCL backends).

Why `fully_shard` directly and not `Accelerator.prepare` (checked in accelerate 1.15, state.py / utils/fsdp_utils.py):
  * accelerate refuses FSDP on CPU: `AcceleratorState` switches to DistributedType.FSDP only for GPU-like backends;
    with `cpu=True` (or ACCELERATE_USE_CPU) under torchrun it is MULTI_CPU, and `prepare` with an FSDP plugin returns
    a DDP wrapper, dropping the plugin without a word. Without `cpu=True` on a host with no GPU it is even
    DistributedType.NO: every process thinks it is rank 0.
  * device placement is the trainer's own (trainer/device.py: `device`, `dtype` in the recipe; each rank takes the
    GPU of its LOCAL_RANK in `setup`), the same on CPU and GPU, so `prepare`'s placement would be a second one.
  * one code path: what the 2-process CPU test (tests/trainer/test_distributed.py) runs is what runs everywhere, and it
    is what accelerate's `fsdp2_prepare_model` does (fully_shard per transformer layer, then the root). We read the
    layer class and reshard setting that `accelerate launch` exports from configs/accelerate/*.yaml.
Why not DDP for plain data parallelism: DDP wraps the module (`.module`), so `generate`, `save_pretrained`, `.config`
would need unwrapping everywhere; FSDP2 is composable (the module keeps its class API) and does the same gradient
reduction, sharded. So every distributed run, including configs/accelerate/cpu_2proc.yaml, uses FSDP2.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.distributed as dist


def setup(device_type: str = "cpu") -> None:
    """Join the process group when started by torchrun / accelerate (WORLD_SIZE > 1). On GPUs each rank first makes
    the GPU of its LOCAL_RANK the current device (NCCL and FSDP's mesh then use it; without it every rank would
    allocate on GPU 0), and the group gets two backends: NCCL for the models' CUDA tensors, gloo for the float
    metrics (`all_sum`, CPU tensors, which NCCL cannot carry). On CPU everything goes over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("cuda:nccl,cpu:gloo")
        else:
            dist.init_process_group("gloo")


# How long a leaving rank lets gloo's worker threads finish with their last collective before the interpreter shuts
# down (see teardown). A thread needs the CPU for microseconds; 0.5 s covers a thread kept off a busy CPU.
GLOO_EXIT_GRACE_S = 0.5


def teardown() -> None:
    """Leave the process group before the interpreter exits (torch asks for `destroy_process_group()`), then wait
    GLOO_EXIT_GRACE_S with the GIL released. Why the wait: gloo's C++ worker threads outlive destroy_process_group
    (FSDP's modules still hold the group), and a worker that has just completed a collective drops its last reference
    to the output tensor AFTER the main thread has woken from wait(); freeing that tensor's Python object needs the
    GIL. If the main thread has meanwhile reached interpreter shutdown, Python ends the worker thread inside that
    C++ destructor and the rank dies of SIGABRT, "terminate called without an active exception" (a core of one such
    rank, 2026-12-07: thread in ProcessGroupGloo::runLoop -> ~AsyncAllgatherCoalescedWork -> decref_pyobject ->
    take_gil -> PyThread_exit_thread while the main thread was in Py_FinalizeEx; seen in 2-process tests under
    load, after the run had finished and written everything; pytorch/pytorch#179291 describes the same race). The
    wait lets the worker take the GIL while Python is still whole. Local, no collective: safe on an error path too."""
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(GLOO_EXIT_GRACE_S)


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(x: float) -> float:
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_max(x: float | None) -> float | None:
    """The largest x over ranks (None where every rank has None)."""
    if not dist.is_initialized():
        return x
    t = torch.tensor([float("-inf") if x is None else float(x)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return None if t.item() == float("-inf") else float(t.item())


def shard(items: list, r: int | None = None, w: int | None = None) -> list:
    r = rank() if r is None else r
    w = world() if w is None else w
    return items[r::w]


# ------------------------------------------------------------------------------------------------------ sharding
@functools.lru_cache(maxsize=None)
def _mesh(device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world(),))


def wrap(model: torch.nn.Module, bf16: bool = False, force: bool = False,
         accumulate_unsharded: bool = True) -> torch.nn.Module:
    """Shard a Hugging Face model in place (no-op when WORLD_SIZE == 1). Pass the module whose forward() is called
    (FSDP's root hooks run on forward: for a RewardModel that is `prm.model`).

    Build the optimizer right after this and before the first forward: fully_shard replaces the parameters with
    DTensor shards, and after a forward FSDP leaves the root's (embeddings, final norm) *unsharded* tensors
    registered until the next backward, so `parameters()` would then hand the optimizer the wrong objects (the 2-process
    test caught exactly that: embeddings never updated).

    Move the model to its device first (the mesh is built on the parameters' device). `bf16`: FSDP2 mixed precision,
    MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): the sharded parameters (the optimizer's master
    weights) and AdamW state stay fp32, each unit all-gathers its weights as bf16 for forward/backward, and gradients
    are reduce-scattered in fp32 (a bf16 SUM over ranks would round every partial sum).

    `force`: shard in a one-process group too (tests/gpu: the CUDA FSDP2 path on one GPU). `accumulate_unsharded`:
    see set_grad_sync (recipe key `fsdp_accumulate_unsharded`)."""
    if world() == 1 and not (force and dist.is_initialized()):
        return model
    if os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true":
        # transformers' from_pretrained then loads zeros on every rank but 0 (modeling_utils, is_fsdp_enabled),
        # expecting accelerate's prepare to broadcast rank 0's weights, which this trainer does not call
        raise ValueError("fsdp_cpu_ram_efficient_loading is not supported by the trainer: set it to false")
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = _mesh(next(model.parameters()).device.type)  # where the model lives (cuda: the current device)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or ",".join(getattr(model, "_no_split_modules", None) or [])
    names = {n.strip() for n in names.split(",") if n.strip()}
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if names and not layers:
        raise ValueError(f"FSDP: no module of class {sorted(names)} in {type(model).__name__}")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # the root: embeddings (tied with lm_head), final norm, head
    for m in model.modules():
        if isinstance(m, FSDPModule):  # both setters act on one unit only, so every unit is set
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    # transformers' generate() runs `synced_gpus` (every rank keeps stepping until all are done, so the per-layer
    # all-gathers stay paired) when it sees this flag, which its own FSDP2 loader sets.
    model._is_fsdp_managed_module = True
    model._repirl_accumulate_unsharded = accumulate_unsharded
    return model


def set_grad_sync(model: torch.nn.Module, enabled: bool) -> None:
    """FSDP2 gradient accumulation: with `enabled=False` the next backward keeps its gradients unsharded on this rank
    (in float32: FSDP2 accumulates in reduce_dtype) instead of reduce-scattering them; the micro-batch loops turn it
    off for every micro-batch but a mini-batch's last, so gradients cross the network once per optimizer step (the
    cost: one unsharded float32 gradient of the model per rank while accumulating, which `wrap(accumulate_unsharded=
    False)` declines: then every micro-batch syncs). A no-op when not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        sync = enabled or not getattr(model, "_repirl_accumulate_unsharded", True)
        model.set_requires_gradient_sync(sync)  # recurses into every FSDP unit


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def check_synced(model: torch.nn.Module) -> None:
    """Gradients are reduced by FSDP during backward; an unwrapped model in a distributed run would silently train
    each rank on its own shard."""
    if world() > 1 and not is_sharded(model):
        raise RuntimeError(f"WORLD_SIZE={world()} but {type(model).__name__} was not wrapped by distributed.wrap")


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank holds (its shards when wrapped)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ state dicts
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def model_state(model: torch.nn.Module) -> dict:
    """`model.state_dict()`; when sharded, the FULL unsharded weights on rank 0 (CPU; {} on other ranks). Collective
    when sharded: every rank must call it. For exported folders (`saveable`); training checkpoints do not gather
    (trainer/checkpoint.py, DCP)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def optim_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """`opt.state_dict()`; when sharded, the full optimizer state keyed by parameter name (rank 0; collective)."""
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=_options(cpu_offload=True))


def load_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None, model_sd: dict, opt_sd: dict | None) -> None:
    """Inverse of model_state / optim_state. Sharded: only rank 0's dicts are read (the others may pass {}); rank 0
    broadcasts and every rank keeps its shards. Collective when sharded."""
    if not is_sharded(model):
        model.load_state_dict(model_sd)
        if opt is not None:
            opt.load_state_dict(opt_sd)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    # (a shallow copy: with broadcast_from_rank0 torch puts the DTensor shards into the dict it is given)
    set_model_state_dict(model, dict(model_sd), options=_options(broadcast_from_rank0=True))
    if opt is not None:
        set_optimizer_state_dict(model, opt, opt_sd, options=_options(broadcast_from_rank0=True))


class _FullWeights:
    """What `save_model_folder` / `RewardModel.export` use of a model (`save_pretrained`, `config`), writing the
    gathered full weights of a sharded model. (transformers strips the `FSDP` class-name prefix when it records
    `architectures`, and takes `state_dict=` instead of reading the DTensor parameters.)"""

    def __init__(self, model, state_dict: dict):
        self.model, self.state_dict = model, state_dict
        self.config = model.config

    def save_pretrained(self, out_dir, **kw):
        return self.model.save_pretrained(out_dir, state_dict=self.state_dict, **kw)


def saveable(model):
    """The model itself when not sharded; when sharded, gather its full weights (collective: every rank calls) and
    return, on rank 0, an object whose `save_pretrained` writes them (None on other ranks)."""
    if not is_sharded(model):
        return model
    sd = model_state(model)
    if rank() != 0:
        return None
    # Tied weights (embed_tokens / lm_head) share one parameter in the model but come back as two gathered tensors;
    # keep the first name only, as transformers does for shared storage, so the folder matches a single-process one.
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return _FullWeights(model, {k: v for k, v in sd.items() if k not in aliases})
