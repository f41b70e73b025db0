from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.pooling.protocol import ClassificationRequest, ClassificationResponse, PoolingRequest, PoolingResponse
from server.api.pooling.serving import serve_classify, serve_pooling
from server.cancellation import with_cancellation
from server.deps import StateDep
from server.errors import responses

router = APIRouter(tags=["vllm-pooling"])


@router.post("/pooling", response_model=PoolingResponse, responses=responses(400, 404, 413, 422, 429, 499, 503, 504))
async def pooling(req: PoolingRequest, request: Request, state: StateDep) -> PoolingResponse:
    """vLLM's `/pooling` (task token_classify) on a PRM: one row per step tag (step-tag PRMs: `[1 - p, p]`) or per
    token (token-reward PRMs: `[value]`), served from repirl's step cache and engines. docs/service.md."""
    return await with_cancellation(request, serve_pooling(state, req))


@router.post("/classify", response_model=ClassificationResponse,
             responses=responses(400, 404, 413, 422, 429, 499, 503, 504))
async def classify(req: ClassificationRequest, request: Request, state: StateDep) -> ClassificationResponse:
    """vLLM's `/classify` on a PRM: per input, `probs` from the PRM's score of the sequence (its default aggregation):
    `[1 - s, s]` for probability formats, `[s]` otherwise. veRL's reward loop reads `data[-1].probs[-1]`."""
    return await with_cancellation(request, serve_classify(state, req))
