"""Policy engines behind one StepPolicy interface; `load_policy(spec)` picks the engine.

spec forms (parsed in one place, `repirl.policy.spec.PolicySpec`): `http(s)://host:port[/v1]` (remote
OpenAI-compatible server), `vllm:DIR` (vLLM in-process), `hf:DIR` (transformers), or a plain DIR (vLLM when it is
installed, else transformers; `engine=` overrides).
"""

from __future__ import annotations

from pathlib import Path

from repirl.policy.base import PolicyError, Prefix, SamplingConfig, StepPolicy, StepSample, make_step
from repirl.policy.spec import ENGINES, PolicySpec


def load_policy(spec: str | Path | PolicySpec, engine: str = "auto", **kwargs) -> StepPolicy:
    """A StepPolicy from a folder or URL (parsed by `PolicySpec`; `engine` is the default for a plain folder).
    kwargs go to the engine (policy_dir= for remote, max_model_len= for vLLM)."""
    spec = spec if isinstance(spec, PolicySpec) else PolicySpec.parse(spec, engine)
    engine = spec.resolved_engine()
    if engine == "remote":
        from repirl.policy.remote import RemotePolicy

        return RemotePolicy(spec.target, **kwargs)
    if engine == "vllm":
        from repirl.policy.vllm_engine import VLLMPolicy

        return VLLMPolicy(spec.target, **kwargs)
    from repirl.policy.hf import TransformersPolicy

    return TransformersPolicy(spec.target, **kwargs)


__all__ = ["ENGINES", "PolicyError", "Prefix", "SamplingConfig", "StepPolicy", "StepSample", "PolicySpec", "load_policy",
           "make_step"]
