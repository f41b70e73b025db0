"""POST /v1/rerank schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from server.api.score.protocol import Aggregation


class StepsCandidate(BaseModel):
    steps: list[str] = Field(min_length=1)


class RerankRequest(BaseModel):
    model: str | None = None
    question: str
    candidates: list[str | StepsCandidate] = Field(min_length=1)  # text (split at the PRM's separator) or steps
    aggregation: Aggregation | None = None
    voting: Literal["none", "weighted", "majority"] = "none"
    top_n: int | None = Field(None, gt=0)


class RerankResult(BaseModel):
    index: int  # position in the request's candidates
    score: float
    answer: str | None  # the extracted final answer (repirl.answers)
    step_rewards: list[float]


class Selection(BaseModel):
    index: int | None  # the chosen candidate (None if no candidate states an answer under voting)
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
