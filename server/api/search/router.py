from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.search.protocol import BestOfNRequest, SearchRequest, SearchResponse
from server.api.search.serving import serve_search
from server.deps import StateDep
from server.errors import ref, responses, sse_event

router = APIRouter(tags=["search"])
# `stream: true`: one `step` event per search step (its beams, pruned and completed candidates), then `result`
# (the SearchResponse) or `error` (the error body, when the search fails after the 200 went out)
STREAM = {"text/event-stream": {"schema": {"anyOf": [sse_event("step", {"type": "object"}),
                                                     sse_event("result", ref("SearchResponse")),
                                                     sse_event("error", ref("ErrorResponse"))]}}}
RESPONSES = {200: {"content": STREAM}, **responses(400, 404, 413, 422, 429, 499, 503, 504)}


@router.post("/v1/search", response_model=SearchResponse, responses=RESPONSES)
async def search(req: SearchRequest, request: Request, state: StateDep):
    """Step-level search (best-of-n | adaptive-best-of-n | beam | dvts | particle-filtering | particle-gibbs) with a
    policy and a PRM, optionally within a `budget`; `stream: true` answers with SSE."""
    return await serve_search(state, req, request)


@router.post("/v1/best-of-n", response_model=SearchResponse, responses=RESPONSES)
async def best_of_n(req: BestOfNRequest, request: Request, state: StateDep):
    """Sample n solutions, score them with the PRM, choose one (naive | weighted | majority)."""
    return await serve_search(state, req, request)
