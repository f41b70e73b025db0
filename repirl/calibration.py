"""Calibrated step scores: a PRM's raw step reward (rePIRL: beta * log-prob + const, ~5.5 on the demo) mapped to
`p_correct`, the probability that the solution is still error-free through that step.

The mapping is Platt scaling, `p = sigmoid(a * raw + b)`: two numbers, fitted by the trainer on held-out steps whose
labels come from the task's step checker (trainer/calibration.py), stored in prm.json (`calibration`), applied by the
service at response time (cached raw rewards stay valid: recalibrating changes no revision). This module holds the
facts only (no fitting), so the server reads them without importing the trainer.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from repirl.scoring.aggregate import aggregate

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


def active_calibration(cfg) -> Calibration | None:
    """The PRM config's calibration when it was fitted on the rewards this config produces, else None."""
    from repirl.artifacts import scoring_revision

    cal = getattr(cfg, "calibration", None)
    if cal is None:
        return None
    if cal.revision and cal.revision != scoring_revision(cfg):
        return None
    return cal


UnitKind = Literal["p_correct", "probability", "sigmoid"]


def unit_step_values(cfg, step_rewards: Sequence[float]) -> tuple[list[float], UnitKind]:
    """Each step's value in [0, 1], and what it is: `p_correct` (the PRM's calibration), `probability` (the format's
    own step reward is one: qwen-step-tag, math-shepherd), else `sigmoid` (an uncalibrated token-reward or implicit
    PRM: sigmoid(raw reward), order-preserving but not a probability; on the demo PRM it sits near 1 for every step,
    since the raw rewards are beta * log-prob + const, ~5.5)."""
    from repirl.scoring.formats import FORMATS

    cal = active_calibration(cfg)
    if cal is not None:
        return cal.p_correct_all(step_rewards), "p_correct"
    facts = FORMATS.get(getattr(cfg, "format", None))
    if facts is not None and facts.is_probability:
        return [min(1.0, max(0.0, float(r))) for r in step_rewards], "probability"
    return [sigmoid(float(r)) for r in step_rewards], "sigmoid"


def unit_score(cfg, step_rewards: Sequence[float], how: str) -> float:
    """One value in [0, 1] for a trajectory: `unit_step_values` aggregated with `how` ("sum" would leave [0, 1]: the
    mean of the step values instead; an empty trajectory scores 0)."""
    values, _ = unit_step_values(cfg, step_rewards)
    return aggregate(values, "mean-token" if how == "sum" else how)
