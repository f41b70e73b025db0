"""Request-scoped dependencies (FastAPI `Annotated` style) and the app's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable

from fastapi import Depends, Header, Request

from server.auth import hash_key, key_matches
from server.errors import APIError
from server.metrics import Metrics
from server.runtime import TENANT, GuardedCache, PRMRuntime
from server.settings import Settings

@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: GuardedCache | None = None
    runtimes: dict[str, PRMRuntime] = field(default_factory=dict)
    api_key_hashes: list[str] | None = None
    policy: str | None = None
    policies: dict = field(default_factory=dict)  # name -> StepPolicy engine (server/api/search), "policy" from --policy
    fatal: str | None = None  # why the service cannot serve any more (an engine died: server/health.py)
    on_fatal: Callable[[], None] | None = None  # `repirl serve` sets it: drain, then exit non-zero
    draining: bool = False  # SIGTERM received (server/drain.py): /readyz 503 "draining", new requests 503
    in_flight: int = 0  # requests being served, health routes aside (DrainMiddleware): the drain waits for 0


async def get_state(request: Request) -> AppState:  # async: a sync dependency costs a thread hop per request
    return request.app.state.repirl


StateDep = Annotated[AppState, Depends(get_state)]


async def require_api_key(request: Request, state: StateDep, authorization: Annotated[str | None, Header()] = None,
                          x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Applied to the whole app; paths on `settings.public_paths` are exempt."""
    if state.api_key_hashes is None or request.url.path in state.settings.public_paths:
        return
    presented = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    if not key_matches(presented, state.api_key_hashes):
        raise APIError(401, "missing or invalid API key (Authorization: Bearer KEY)", "authorization",
                       headers={"WWW-Authenticate": "Bearer"})
    if state.settings.cache_scope == "api-key":
        TENANT.set(hash_key(presented))  # this request's cache entries are this key's only


def get_runtime(state: AppState, model: str | None) -> PRMRuntime:
    if model is None:
        return next(iter(state.runtimes.values()))
    try:
        return state.runtimes[model]
    except KeyError:
        raise APIError(404, f"model {model!r} is not loaded (loaded: {', '.join(state.runtimes)})", "model") from None
