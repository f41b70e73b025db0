"""POST /v1/score schemas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from repirl.calibration import AggregateInput
from server.api.types import NonEmptyText, StrictModel, Text

Aggregation = Literal["mean-token", "min", "last", "prod", "sum"]


class ScoreItem(StrictModel):
    question: NonEmptyText
    steps: list[Text] = Field(min_length=1)


# the two forms, as the schema states them (the validator below enforces the same): exactly one of them, and the
# other form's fields absent or null
_ONE_FORM = {"oneOf": [
    {"required": ["question", "steps"], "properties": {"question": {"type": "string"}, "steps": {"type": "array"},
                                                       "items": {"type": "null"}}},
    {"required": ["items"], "properties": {"items": {"type": "array"}, "question": {"type": "null"},
                                           "steps": {"type": "null"}}},
]}


class ScoreRequest(StrictModel):
    """Single form: `question` + `steps`. Batch form: `items`."""

    model_config = {**StrictModel.model_config, "json_schema_extra": _ONE_FORM}

    model: Text | None = None  # a loaded PRM's name; default: the first
    question: NonEmptyText | None = None
    steps: list[Text] | None = Field(None, min_length=1)
    items: list[ScoreItem] | None = None
    aggregation: Aggregation | None = None  # default: the PRM's prm.json default_aggregation
    return_token_rewards: bool = False
    aggregate_input: AggregateInput = Field(
        "raw", description="what `aggregation` reads: `raw` step rewards (default), or `probability`: each step's "
        "calibrated `p_correct` (needs a PRM with a calibration in prm.json, else 400; mean-token then averages the "
        "steps' probabilities)")

    @model_validator(mode="after")
    def _one_form(self):
        single = self.question is not None or self.steps is not None
        if single and self.items is not None:
            raise ValueError("give either question+steps or items, not both")
        if not single and self.items is None:
            raise ValueError("give question+steps (single) or items (batch)")
        if single and (self.question is None or not self.steps):
            raise ValueError("the single form needs both question and a non-empty steps list")
        return self

    def item_list(self) -> list[ScoreItem]:
        return self.items if self.items is not None else [ScoreItem(question=self.question, steps=self.steps)]


class ScoreResult(BaseModel):
    index: int
    step_rewards: list[float]
    p_correct: list[float] | None = Field(
        None, description="per step: the calibrated probability that the solution is error-free through that step "
        "(sigmoid(a * step reward + b), prm.json `calibration`); absent when the PRM has no calibration")
    score: float
    token_rewards: list[list[float]] | None = None
    cached_steps: int


class Usage(BaseModel):
    items: int
    tokens: int
    tokens_computed: int
    cached_steps: int


class ScoreResponse(BaseModel):
    object: Literal["score"] = "score"
    model: str
    revision: str
    aggregation: Aggregation
    aggregate_input: AggregateInput = "raw"
    data: list[ScoreResult]
    usage: Usage
