"""Request-scoped dependencies (FastAPI `Annotated` style) and the app's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable

from fastapi import Depends, Request

from server.auth import KeyFile, hash_key, key_matches
from server.errors import APIError
from server.metrics import Metrics
from server.policies import LoadedPolicy
from server.runtime import CALLER, TENANT, GuardedCache, PRMRuntime
from server.settings import Settings
from server.text_work import TextWork


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: GuardedCache | None = None
    runtimes: dict[str, PRMRuntime] = field(default_factory=dict)
    api_key_hashes: list[str] | None = None  # the keys in use (replaced when the key file is reloaded)
    key_file: KeyFile | None = None
    # the policy registry, name -> LoadedPolicy (engine + the spec it came from; server/policies.py): "policy" from
    # --policy. /v1/models, search, chat, /readyz and shutdown all read this one dict
    policies: dict[str, LoadedPolicy] = field(default_factory=dict)
    search_samples_in_flight: int = 0  # admitted searches' samples, against limits.max_search_samples_in_flight
    searches_in_flight: int = 0  # admitted searches whose work has not ended, against limits.max_searches_in_flight
    fatal: str | None = None  # why the service cannot serve any more (an engine died: server/health.py)
    on_fatal: Callable[[], None] | None = None  # `repirl serve` sets it: drain, then exit non-zero
    draining: bool = False  # SIGTERM received (server/drain.py): /readyz 503 "draining", new requests 503
    in_flight: int = 0  # requests being served, health routes aside (DrainMiddleware): the drain waits for 0
    text_work: TextWork | None = None  # tokenizing and parsing request text, in turns (server/text_work.py)


async def get_state(request: Request) -> AppState:  # async: a sync dependency costs a thread hop per request
    return request.app.state.repirl


StateDep = Annotated[AppState, Depends(get_state)]


async def require_api_key(request: Request, state: StateDep) -> None:
    """Applied to the whole app; paths on `settings.public_paths` are exempt. The headers are read here, not declared
    as parameters: the schema states the key as a security requirement (server/openapi.py), not as two optional
    headers of every operation."""
    if state.api_key_hashes is None or request.url.path in state.settings.public_paths:
        return
    authorization, presented = request.headers.get("authorization"), request.headers.get("x-api-key")
    if authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    if not key_matches(presented, state.api_key_hashes):
        raise APIError(401, "missing or invalid API key (Authorization: Bearer KEY)", "authorization",
                       headers={"WWW-Authenticate": "Bearer"})
    key_hash = hash_key(presented)
    CALLER.set(key_hash)  # its own turns in the PRM's fair queue
    if state.settings.cache_scope == "api-key":
        TENANT.set(key_hash)  # this request's cache entries are this key's only


def get_runtime(state: AppState, model: str | None) -> PRMRuntime:
    if model is None:
        return next(iter(state.runtimes.values()))
    try:
        return state.runtimes[model]
    except KeyError:
        raise APIError(404, f"model {model!r} is not loaded (loaded: {', '.join(state.runtimes)})", "model") from None
