"""The StepScorer interface (a PRM at inference) shared by the evaluator, the search code and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

Item = tuple[str, Sequence[str]]  # (question, steps)


@dataclass
class StepScores:
    step_rewards: list[float]  # one reward per step
    token_rewards: list[list[float]] | None = None  # per step, one reward per token (token-reward formats only)
    tokens_computed: int = 0  # tokens the model actually ran for this item (the rest came from a cache)
    tokens_total: int = 0  # tokens in the trajectory (prompt included)
    meta: dict = field(default_factory=dict)


class StepScorer(Protocol):
    """score(items) -> one StepScores per item, in order."""

    name: str
    revision: str

    def score(self, items: Sequence[Item]) -> list[StepScores]: ...
