"""Policy engines behind one StepPolicy interface; `load_policy(spec)` picks the engine.

spec forms: `http(s)://host:port[/v1]` (remote OpenAI-compatible server), `vllm:DIR` (vLLM in-process),
`hf:DIR` (transformers), or a plain DIR (vLLM when it is installed, else transformers; `engine=` overrides).
"""

from __future__ import annotations

from pathlib import Path

from repirl.policy.base import PolicyError, Prefix, SamplingConfig, StepPolicy, StepSample, make_step

ENGINES = ("auto", "vllm", "transformers", "remote")


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def load_policy(spec: str | Path, engine: str = "auto", **kwargs) -> StepPolicy:
    """A StepPolicy from a folder or URL. kwargs go to the engine (policy_dir= for remote, max_model_len= for vLLM)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    spec = str(spec)
    if spec.startswith(("http://", "https://")) or engine == "remote":
        from repirl.policy.remote import RemotePolicy

        return RemotePolicy(spec, **kwargs)
    for prefix, name in (("vllm:", "vllm"), ("hf:", "transformers")):
        if spec.startswith(prefix):
            spec, engine = spec[len(prefix):], name
    if engine == "auto":
        engine = "vllm" if _vllm_installed() else "transformers"
    if engine == "vllm":
        from repirl.policy.vllm_engine import VLLMPolicy

        return VLLMPolicy(spec, **kwargs)
    from repirl.policy.hf import TransformersPolicy

    return TransformersPolicy(spec, **kwargs)


__all__ = ["ENGINES", "PolicyError", "Prefix", "SamplingConfig", "StepPolicy", "StepSample", "load_policy", "make_step"]
