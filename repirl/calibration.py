"""Calibrated step scores: a PRM's raw step reward (rePIRL: beta * log-prob + const, ~5.5 on the demo) mapped to
`p_correct`, the probability that the solution is still error-free through that step.

The mapping is Platt scaling, `p = sigmoid(a * raw + b)`: two numbers, fitted by the trainer on held-out steps whose
labels come from the task's step checker (trainer/calibration.py), stored in prm.json (`calibration`), applied by the
service at response time (cached raw rewards stay valid: recalibrating changes no revision). This module holds the
facts only (no fitting, no prm.json), so the server reads them without importing the trainer; which calibration
applies to a PRM config is `repirl.artifacts.active_calibration`, and step values in [0, 1] are
`repirl.scoring.unit_values`.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

AggregateInput = Literal["raw", "probability"]  # what the request's aggregation reads: raw rewards or p_correct


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow at either end."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class Calibration(BaseModel):
    """prm.json `calibration`: p_correct = sigmoid(a * raw_step_reward + b)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["platt"] = "platt"
    a: float
    b: float
    # scoring revision (weights hash + step rule) whose raw rewards were fitted: another rule's raws are another
    # scale, so a calibration whose revision no longer matches is not applied (see `active_calibration`)
    revision: str = ""
    n_steps: int = Field(0, ge=0)  # labelled steps the fit used
    n_positive: int = Field(0, ge=0)  # of which error-free so far
    ece: float | None = None  # expected calibration error (10 equal-width bins) on the check split, after the fit
    ece_raw: float | None = None  # the same steps, the raw reward read as a probability (sigmoid of it, or itself)
    n_check_steps: int = Field(0, ge=0)  # steps of the check split (other problems than the fit)
    data: str = ""  # what the steps were: source, problems, samples, temperature

    def p_correct(self, raw: float) -> float:
        return sigmoid(self.a * raw + self.b)

    def p_correct_all(self, raws: Sequence[float]) -> list[float]:
        return [self.p_correct(r) for r in raws]
