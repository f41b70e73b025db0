"""POST /v1/rerank schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from repirl.search.types import COUNT_LIMIT, TEMPERATURE_LIMIT
from server.api.score.protocol import Aggregation
from server.api.types import NonEmptyText, StrictModel, Text


class StepsCandidate(StrictModel):
    steps: list[Text] = Field(min_length=1)


class RerankRequest(StrictModel):
    model: Text | None = None
    question: NonEmptyText
    # text (split at the PRM's separator) or steps
    candidates: list[NonEmptyText | StepsCandidate] = Field(min_length=1)
    aggregation: Aggregation | None = None
    voting: Literal["none", "weighted", "majority"] = "none"
    vote_temperature: float = Field(1.0, gt=0.0, le=TEMPERATURE_LIMIT, description="weighted vote with unbounded scores: weight = "
                                    "exp((score - max) / vote_temperature), as in search's `vote_temperature`")
    top_n: int | None = Field(None, gt=0, le=COUNT_LIMIT)


class RerankResult(BaseModel):
    index: int  # position in the request's candidates
    score: float
    answer: str | None  # the extracted final answer (repirl.answers)
    step_rewards: list[float]


class Selection(BaseModel):
    index: int  # the chosen candidate (the best-scored one when none states an answer)
    answer: str | None
    score: float | None
    votes: dict[str, float] = Field(default_factory=dict)  # normalized answer -> (weighted) votes


class RerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    model: str
    revision: str
    aggregation: Aggregation
    voting: str
    results: list[RerankResult]  # ranked: best score first (top_n of them)
    ranking: list[int]  # candidate indices, best first (all of them)
    selected: Selection
