"""What every reasoning task hands the rest of the project: problems with reference steps and a step checker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from repirl.answers import answers_match, extract_answer


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    steps: list[str]  # the reference (expert) solution, one string per step; the last step states the answer
    answer: str
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StepCheck:
    """Ground truth for a candidate solution."""

    correct: bool  # outcome: the final answer matches the reference
    first_wrong_step: int | None  # index of the first wrong step; None when every step is right

    @property
    def process_correct(self) -> bool:
        return self.first_wrong_step is None


class Task(Protocol):
    name: str

    def check(self, problem: Problem, steps: Sequence[str]) -> StepCheck: ...


def outcome_correct(problem: Problem, solution_text: str) -> bool:
    """The verifiable outcome reward: does the solution's final answer equal the reference answer?"""
    return answers_match(extract_answer(solution_text), problem.answer)
