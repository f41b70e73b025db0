"""What the adapter tests share: the toy task's completions and references computed from /v1/score directly."""

from __future__ import annotations

import importlib
import math
import os

from repirl.policy.toy import TOY_QUESTION
from repirl_client import Client

RIGHT = "3+4=7\n\n7*2=14\n\nAnswer: 14\n\n"
WRONG = "3+4=8\n\n8*2=16\n\nAnswer: 16"
RIGHT_STEPS = ["3+4=7", "7*2=14", "Answer: 14"]
WRONG_STEPS = ["3+4=8", "8*2=16", "Answer: 16"]


def steps_of(completion: str) -> list[str]:
    return [s.strip() for s in completion.split("\n\n") if s.strip()]


def expected(client: Client, completions: list[str], aggregation: str = "min") -> list[float]:
    items = [(TOY_QUESTION, steps_of(c)) for c in completions]
    return [d.score for d in client.score(items=items, aggregation=aggregation).data]


def variants(n: int) -> list[str]:
    """n distinct, scoreable completions."""
    return [f"3+4=7\n\n7*2={10 + i}\n\nAnswer: {10 + i}" for i in range(n)]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def unit_mean(step_rewards: list[float]) -> float:
    """The value in [0, 1] of an uncalibrated token-reward PRM under its default mean-token aggregation, computed
    here (not by the service): the mean of sigmoid(step reward) (repirl/scoring/unit_values.py `unit_score`; mean-token has
    no token probabilities, so it averages the steps)."""
    return sum(sigmoid(r) for r in step_rewards) / len(step_rewards)


def upstream(module: str):
    """Import a module of a trainer's own code (openrlhf, verl): skipped where it does not import, except under
    REPIRL_REQUIRE_UPSTREAM=1 (`make test`'s second run, with .venv/upstream first on PYTHONPATH), where a missing
    package is a failure, so the runs against the real upstream code cannot silently stop running."""
    import pytest

    if os.environ.get("REPIRL_REQUIRE_UPSTREAM") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
