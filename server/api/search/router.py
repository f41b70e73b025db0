from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.search.protocol import BestOfNRequest, SearchRequest, SearchResponse
from server.api.search.serving import serve_search
from server.deps import StateDep

router = APIRouter(tags=["search"])


@router.post("/v1/search", response_model=SearchResponse)
async def search(req: SearchRequest, request: Request, state: StateDep):
    """Step-level search (best-of-n | beam | dvts) with a policy and a PRM; `stream: true` answers with SSE."""
    return await serve_search(state, req, request)


@router.post("/v1/best-of-n", response_model=SearchResponse)
async def best_of_n(req: BestOfNRequest, request: Request, state: StateDep):
    """Sample n solutions, score them with the PRM, choose one (naive | weighted | majority)."""
    return await serve_search(state, req, request)
