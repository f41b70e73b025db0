"""Sequential Monte Carlo pieces of particle filtering / particle Gibbs (Puri et al. 2025, arXiv 2502.01618; its_hub's
`ParticleGibbs`): log-weights from PRM scores, normalised weights, effective sample size, resampling. Pure functions
of plain floats and a `random.Random`, so properties (weights sum to 1, resampling keeps the count, a seed repeats)
are tested on them directly."""

from __future__ import annotations

import math
import random
from typing import Sequence

_EPS = 1e-7  # its_hub clips probabilities the same way before the logit


def log_weight(score: float | None, probability: bool) -> float:
    """A particle's log-weight from its PRM score: the score itself for unbounded scores (token-reward, implicit: a
    log-weight already), the logit of it for probability scores (its_hub's `_inv_sigmoid`). Unscored: 0."""
    if score is None:
        return 0.0
    if not probability:
        return float(score)
    p = min(max(float(score), _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def normalized_weights(log_weights: Sequence[float], temperature: float = 1.0) -> list[float]:
    """softmax(log_weights / temperature), shifted by the max so large scores do not overflow."""
    if not log_weights:
        return []
    scaled = [lw / temperature for lw in log_weights]
    top = max(scaled)
    if math.isinf(top) or math.isnan(top):  # a non-finite score: fall back to uniform rather than NaN weights
        return [1.0 / len(scaled)] * len(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = math.fsum(exps)
    return [e / total for e in exps]


def effective_sample_size(weights: Sequence[float]) -> float:
    """1 / sum(w^2) of normalised weights: n when uniform, 1 when one particle holds all the mass."""
    sq = math.fsum(w * w for w in weights)
    return 1.0 / sq if sq > 0 else 0.0


def resample(weights: Sequence[float], k: int, method: str, rng: random.Random) -> list[int]:
    """k ancestor indices drawn by weight. systematic: one uniform offset, k evenly spaced points on the cumulative
    weights (lower variance: a particle of weight w gets floor(k w) or ceil(k w) copies); multinomial: k independent
    draws (its_hub's `random.choices`). Sorted for systematic, draw order for multinomial."""
    if k <= 0 or not weights:
        return []
    if method == "multinomial":
        return rng.choices(range(len(weights)), weights=weights, k=k)
    if method != "systematic":
        raise ValueError(f"resampling must be systematic or multinomial, got {method!r}")
    total = math.fsum(weights)
    u0 = rng.random() / k
    out, cum, i = [], weights[0] / total, 0
    for j in range(k):
        u = u0 + j / k
        while u > cum and i < len(weights) - 1:
            i += 1
            cum += weights[i] / total
        out.append(i)
    return out
