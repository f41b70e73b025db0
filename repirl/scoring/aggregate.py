"""Aggregations of per-step (and per-token) rewards into one trajectory score. Pure functions, kept apart from
scorers (search-and-learn's split): the same scores can be aggregated any way a request asks for."""

from __future__ import annotations

import math
from typing import Callable, Sequence

AGGREGATIONS = ("mean-token", "min", "last", "prod", "sum")


def aggregate(step_rewards: Sequence[float], how: str = "mean-token",
              token_rewards: Sequence[Sequence[float]] | None = None) -> float:
    """One score for a trajectory.

    mean-token (rePIRL: the mean reward over all of the trajectory's step tokens) needs token rewards; for formats
    that have only step rewards it falls back to the mean step reward. An empty trajectory scores 0.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
    if not step_rewards:
        return 0.0
    if how == "mean-token":
        if token_rewards is not None:
            flat = [r for step in token_rewards for r in step]
            if flat:
                return math.fsum(flat) / len(flat)
        return math.fsum(step_rewards) / len(step_rewards)
    return _STEP_AGGREGATIONS[how](step_rewards)


_STEP_AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "last": lambda r: r[-1],
    "prod": math.prod,
    "sum": math.fsum,
}
