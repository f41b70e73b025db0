"""A PRM's step rewards as values in [0, 1], for clients that want probabilities (OpenRLHF's `scores`,
search-and-learn's aggregations): the calibrated `p_correct` where the PRM has a calibration that applies
(repirl.artifacts.active_calibration), the format's own probability (qwen-step-tag, math-shepherd), else sigmoid of
the raw reward."""

from __future__ import annotations

from typing import Literal, Sequence

from repirl.artifacts import active_calibration
from repirl.calibration import sigmoid
from repirl.scoring.aggregate import aggregate
from repirl.scoring.formats import FORMATS

UnitKind = Literal["p_correct", "probability", "sigmoid"]


def unit_step_values(cfg, step_rewards: Sequence[float]) -> tuple[list[float], UnitKind]:
    """Each step's value in [0, 1], and what it is: `p_correct` (the PRM's calibration), `probability` (the format's
    own step reward is one: qwen-step-tag, math-shepherd), else `sigmoid` (an uncalibrated token-reward or implicit
    PRM: sigmoid(raw reward), order-preserving but not a probability; on the demo PRM it sits near 1 for every step,
    since the raw rewards are beta * log-prob + const, ~5.5)."""
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
