from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.rerank.protocol import RerankRequest, RerankResponse
from server.api.rerank.serving import serve_rerank
from server.deps import StateDep, until_disconnect

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank", response_model=RerankResponse)
async def rerank(req: RerankRequest, request: Request, state: StateDep) -> RerankResponse:
    """Score candidate solutions, rank them, and select one under none | weighted | majority voting."""
    return await until_disconnect(request, serve_rerank(state, req))
