from __future__ import annotations

from fastapi import APIRouter

from server.api.models.protocol import ModelList
from server.api.models.serving import list_models
from server.deps import StateDep

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True)
async def models(state: StateDep) -> ModelList:
    """The loaded PRMs (chosen per request by `model`) and the configured policy."""
    return list_models(state)
