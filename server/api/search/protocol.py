"""POST /v1/search and /v1/best-of-n schemas. The search knobs are repirl.search.SearchParams itself, so the
service validates exactly what the library runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from repirl.calibration import AggregateInput
from repirl.search import SearchParams
from server.api.types import NonEmptyText, StrictModel, Text, integral_floats


class SearchRequest(SearchParams):
    model_config = StrictModel.model_config  # the library's SearchParams stays lenient; the API does not

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data):
        return integral_floats(cls, data)

    question: NonEmptyText
    model: Text | None = Field(None, description="PRM name (GET /v1/models); default: the first")
    policy: Text | None = Field(None, description="policy name; default: the only one")
    stream: bool = Field(False, description="server-sent events: one `step` event per search step, then `result`")
    return_candidates: bool = Field(True, description="include every completed candidate in the response")


class BestOfNRequest(SearchRequest):
    strategy: Literal["best-of-n"] = "best-of-n"


class CandidateOut(BaseModel):
    id: int
    steps: list[str]
    answer: str | None
    score: float | None
    step_rewards: list[float]
    p_correct: list[float] | None = Field(None, description="per step, the calibrated probability that the solution "
                                          "is error-free through that step; null when the PRM has no calibration")
    finished: bool
    truncated: bool
    logprob: float


class SearchResponse(BaseModel):
    object: Literal["search"] = "search"
    model: str
    revision: str
    policy: str
    strategy: str
    select: str
    aggregation: str
    aggregate_input: AggregateInput = "raw"
    answer: str | None
    text: str
    steps: list[str]
    score: float | None
    candidates: list[CandidateOut] | None = None
    stats: dict[str, Any]
