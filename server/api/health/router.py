"""/livez (the process answers), /readyz (every engine alive and not stuck, from state the engines keep: no probe per
call, so polling it costs nothing), /metrics (Prometheus). Each also answers HEAD (load balancers' checks)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from server.deps import StateDep
from server.errors import ErrorDetail, error_body
from server.health import engine_status

router = APIRouter(tags=["health"])


class Live(BaseModel):
    status: Literal["ok"]


class CacheState(BaseModel):
    kind: str
    healthy: bool


class Readiness(BaseModel):
    """200 when ready; 503 (with the error body's `error` too) when not."""

    status: Literal["ready", "unready", "draining"]
    engines: dict[str, str] = Field(description="engine name -> \"ok\" or why not")
    cache: CacheState | None
    in_flight: int | None = Field(None, description="while draining: requests still being served")
    error: ErrorDetail | None = None


@router.get("/livez", response_model=Live)
@router.head("/livez", include_in_schema=False)
async def livez() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready: an engine dead or stuck, or draining"}})
@router.head("/readyz", include_in_schema=False)
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when no engine (PRM or policy) is dead or stuck in one call past request_timeout_s. The cache is
    reported (did its last call succeed), never required (it fails open)."""
    engines = engine_status(state)
    cache = {"kind": state.cache.kind, "healthy": state.cache.healthy()} if state.cache else None
    bad = {name: s for name, s in engines.items() if s != "ok"}
    ok = bool(engines) and not bad and state.fatal is None and not state.draining
    body = {"status": "ready" if ok else "draining" if state.draining else "unready", "engines": engines,
            "cache": cache}
    if state.draining:
        body["in_flight"] = state.in_flight
    if not ok:
        why = ("; ".join(f"{name}: {s}" for name, s in bad.items()) or state.fatal
               or ("draining: shutting down, finishing in-flight requests" if state.draining else "no engine loaded"))
        body.update(error_body(503, f"not ready: {why}"))
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition", "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
@router.head("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
