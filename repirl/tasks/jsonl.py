"""Users' own data: one JSON object per line.

    {"question": "...", "steps": ["...", "..."] | "solution": "step\\n\\nstep", "answer": "42",
     "candidates": [{"steps": [...] | "solution": "...", "correct": false, "logprob": -12.3,
                     "token_ids": [...], "token_logprobs": [...]}]}

`steps` or `solution` gives the expert (reference) trajectory; `candidates` are optional pre-collected rollouts with
outcome labels and, when known, their log-probability under the policy that sampled them (the offline trainer uses
it for importance weights, uniform weights otherwise). Every error names the file, the line and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from repirl.tasks.base import Problem
from repirl.trajectory import DEFAULT_SEP, split_steps
from repirl.validation import describe


class DataError(ValueError):
    """A malformed data file; the message reads `FILE:LINE: field 'F': what is wrong`."""


class CandidateRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[str] | None = None
    solution: str | None = None
    correct: bool
    logprob: float | None = None  # sum of the sampled tokens' log-probs under the sampling policy
    # the sampled response ids (optionally ending with EOS): the offline trainer trains on them as the online loop
    # trains on a rollout's sampled ids, and reads `token_logprobs` (one per id) only over ids it compared
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.steps is None) == (self.solution is None):
            raise ValueError("give exactly one of 'steps' or 'solution'")
        if self.token_ids is not None and self.token_logprobs is not None and \
                len(self.token_ids) != len(self.token_logprobs):
            raise ValueError(f"'token_logprobs' has {len(self.token_logprobs)} values for {len(self.token_ids)} "
                             "'token_ids'")
        return self


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    question: str = Field(min_length=1)
    steps: list[str] | None = None
    solution: str | None = None
    answer: str | None = None
    candidates: list[CandidateRecord] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_form(self):
        if self.steps is not None and self.solution is not None:
            raise ValueError("give 'steps' or 'solution', not both")
        if self.steps is None and self.solution is None and not self.candidates:
            raise ValueError("a record needs 'steps', 'solution' or 'candidates'")
        if self.steps is not None and any(not s.strip() for s in self.steps):
            raise ValueError("'steps' must not contain empty strings")
        return self

    def reference_steps(self, sep: str = DEFAULT_SEP) -> list[str] | None:
        if self.steps is not None:
            return list(self.steps)
        return split_steps(self.solution, sep) if self.solution is not None else None


def read_records(path: str | Path) -> Iterator[tuple[int, Record]]:
    """(line number, record) for every non-blank line; raises DataError naming file, line and field."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}")
            try:
                yield lineno, Record.model_validate(raw)
            except ValidationError as e:
                raise DataError(f"{path}:{lineno}: {describe(e, top='(record)')}") from None


def load_problems(path: str | Path, sep: str = DEFAULT_SEP) -> list[Problem]:
    """Records with a reference trajectory, as Problems (the answer is taken from the last step if not given)."""
    from repirl.answers import extract_answer

    problems = []
    for lineno, rec in read_records(path):
        steps = rec.reference_steps(sep)
        if steps is None:
            continue
        answer = rec.answer or extract_answer(steps[-1] if steps else "")
        if answer is None:
            raise DataError(f"{path}:{lineno}: field 'answer': missing, and the last step states no answer")
        problems.append(Problem(id=rec.id or f"{Path(path).stem}-{lineno}", question=rec.question, steps=steps,
                                answer=answer))
    return problems
