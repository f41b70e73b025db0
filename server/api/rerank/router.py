from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.rerank.protocol import RerankRequest, RerankResponse
from server.api.rerank.serving import serve_rerank
from server.cancellation import with_cancellation
from server.deps import StateDep
from server.errors import responses

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank", response_model=RerankResponse, responses=responses(400, 404, 413, 422, 429, 499, 503, 504))
async def rerank(req: RerankRequest, request: Request, state: StateDep) -> RerankResponse:
    """Score candidate solutions, rank them, and select one under none | weighted | majority voting."""
    return await with_cancellation(request, serve_rerank(state, req))
