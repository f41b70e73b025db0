"""The policy registry: `AppState.policies` maps a name to a `LoadedPolicy` (the StepPolicy engine and the spec it
was loaded from). `--policy` loads the one named "policy"; /v1/models, search, chat, /readyz and shutdown read it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from repirl.policy.spec import PolicySpec
from server.errors import APIError

log = logging.getLogger("repirl.server")


@dataclass(frozen=True)
class LoadedPolicy:
    """One entry of `AppState.policies`: the StepPolicy engine and the spec it was loaded from (None when code
    handed the engine in, as tests and benchmarks do)."""

    name: str
    engine: object
    spec: PolicySpec | None = None

    @property
    def root(self) -> str:
        return str(self.spec) if self.spec else str(getattr(self.engine, "name", self.name))

    def status(self) -> str:
        dead = getattr(self.engine, "engine_dead", None)  # vLLM in-process; transformers and remote do not die
        return "dead: the engine process died" if dead is not None and dead() else "ok"

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


def load_policies(settings) -> dict[str, LoadedPolicy]:
    """`--policy` as the policy named "policy": a URL (remote server), `vllm:DIR` / `hf:DIR`, or a DIR whose engine
    follows the PRM engine setting (hf -> transformers, vllm -> vLLM, auto -> vLLM when installed)."""
    if not settings.policy:
        return {}
    from repirl.policy import load_policy

    spec = PolicySpec.parse(settings.policy, {"hf": "transformers", "vllm": "vllm"}.get(settings.engine, "auto"))
    resolved = spec.resolved_engine()
    kwargs = (settings.vllm_engine_kwargs() if resolved == "vllm" else
              {"device": settings.hf_device, "dtype": settings.hf_dtype} if resolved == "transformers" else
              # one connection per search admission lets in: concurrent calls never queue for the pool
              {"max_connections": settings.limits.max_searches_in_flight})
    engine = load_policy(spec, **kwargs)
    log.info("loaded policy from %s (%s)", spec, type(engine).__name__)
    return {"policy": LoadedPolicy("policy", engine, spec)}


def as_loaded(policies: dict) -> dict[str, LoadedPolicy]:
    """name -> LoadedPolicy from what `create_app(policies=...)` was given (engines or entries)."""
    return {name: p if isinstance(p, LoadedPolicy) else LoadedPolicy(name, p) for name, p in policies.items()}


def get_policy(policies: dict[str, LoadedPolicy], name: str | None) -> LoadedPolicy:
    """The named policy (default: the first), 404 when not loaded, 503 when none is or its engine died (vLLM's engine
    core does not come back: every call would fail)."""
    if not policies:
        raise APIError(503, "no policy is loaded (start the service with --policy DIR_OR_URL)", "policy")
    name = next(iter(policies)) if name is None else name
    if name not in policies:
        raise APIError(404, f"policy {name!r} is not loaded (loaded: {', '.join(policies)})", "policy")
    if policies[name].status() != "ok":
        raise APIError(503, f"policy {name!r}: its engine process died; the service must be restarted", "policy")
    return policies[name]
