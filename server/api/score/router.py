from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.score.protocol import ScoreRequest, ScoreResponse
from server.api.score.serving import serve_score
from server.cancellation import with_cancellation
from server.deps import StateDep
from server.errors import responses

router = APIRouter(tags=["score"])


@router.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True,
             responses=responses(400, 404, 413, 422, 429, 499, 503, 504))
async def score(req: ScoreRequest, request: Request, state: StateDep) -> ScoreResponse:
    """Per-step rewards (+ token rewards on request) and the aggregate, for one item or a batch."""
    return await with_cancellation(request, serve_score(state, req))
