"""/livez (the process answers), /readyz (every PRM answers a one-step score), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import StateDep
from server.errors import error_body

router = APIRouter(tags=["health"])
PROBE_TIMEOUT_S = 10.0


@router.get("/livez")
async def livez() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when every engine scores a one-step item. The cache is reported, never required (it fails open)."""
    engines: dict[str, str] = {}
    for name, rt in state.runtimes.items():
        try:
            await asyncio.wait_for(rt.probe(), PROBE_TIMEOUT_S)
            engines[name] = "ok"
        except Exception as e:  # a failing engine makes the replica unready; report why
            engines[name] = f"error: {type(e).__name__}: {e}"
    cache = {"kind": state.cache.kind, "healthy": await state.cache.healthy()} if state.cache else None
    ok = bool(engines) and all(v == "ok" for v in engines.values())
    body = {"status": "ready" if ok else "unready", "engines": engines, "cache": cache}
    if not ok:
        body.update(error_body(503, "an engine is not ready"))
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
