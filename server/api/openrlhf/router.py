from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from server.api.openrlhf.protocol import OpenRLHFRewardRequest, OpenRLHFRewardResponse
from server.api.openrlhf.serving import serve_openrlhf_reward
from server.api.score.protocol import Aggregation
from server.cancellation import with_cancellation
from server.deps import StateDep
from server.errors import responses

router = APIRouter(tags=["openrlhf"])


@router.post("/v1/openrlhf/reward", response_model=OpenRLHFRewardResponse, responses=responses(400, 404, 413, 422, 429, 499, 503, 504))
async def openrlhf_reward(req: OpenRLHFRewardRequest, request: Request, state: StateDep,
                          model: Annotated[str | None, Query(description="PRM name; default: the first")] = None,
                          aggregation: Annotated[Aggregation | None, Query()] = None,
                          # finite and bounded: `nan` answered `rewards: [null]` (issue 22.9), and a huge weight
                          # overflows to inf, which JSON writes as null too
                          prm_weight: Annotated[float | None, Query(description="rewards = outcome + prm_weight x "
                                                                    "PRM score (needs labels)", allow_inf_nan=False,
                                                                    ge=-1000, le=1000)] = None,
                          ) -> OpenRLHFRewardResponse:
    """OpenRLHF's remote reward model protocol: `--reward.remote_url http://HOST:PORT/v1/openrlhf/reward` (OpenRLHF
    >= 0.10.2; `--remote_rm_url` before), knobs as query parameters: `?model=NAME&aggregation=min&prm_weight=0.1`.
    No label (`""`, OpenRLHF's default without `--data.label_key`): `scores` is the PRM's value in [0, 1]. OpenRLHF sends no API key: with keys set, list
    this path in `public_paths` or put the service behind a network boundary the trainer shares."""
    return await with_cancellation(request, serve_openrlhf_reward(state, req, model, aggregation, prm_weight))
