"""Request-shape limits shared by the APIs (count, steps, characters); token limits are checked after tokenizing."""

from __future__ import annotations

from server.errors import LimitExceeded
from server.settings import Limits


def check_count(param: str, n: int, limit: int, what: str) -> None:
    if n > limit:
        raise LimitExceeded(param, n, limit, what)


def check_trajectory(limits: Limits, param: str, question: str, steps: list[str]) -> None:
    check_count(f"{param}.question", len(question), limits.max_chars, "characters")
    check_count(f"{param}.steps", len(steps), limits.max_steps, "steps")
    for k, step in enumerate(steps):
        check_count(f"{param}.steps[{k}]", len(step), limits.max_chars, "characters")
