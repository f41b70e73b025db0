"""How well a trajectory score ranks solutions: AUC (correct vs wrong) and best-of-N accuracy over groups.

Used by the offline mode and by `python -m trainer.compare` (trained PRM vs the policy's own likelihood).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from trainer.losses import masked_mean
from trainer.models import Batch, token_logprobs


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a random correct solution outscores a random wrong one (ties count 1/2); None if one class
    is empty. Computed by ranks (Mann-Whitney U), O(n log n)."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def best_of_n(groups: Sequence[int], scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Fraction of groups whose highest-scoring member is correct (first one on ties)."""
    best: dict[int, tuple[float, bool]] = {}
    for g, s, y in zip(groups, scores, labels):
        if g not in best or s > best[g][0]:
            best[g] = (s, y)
    return sum(y for _, y in best.values()) / max(1, len(best))


def report(groups, scores, labels) -> dict:
    by = defaultdict(list)
    for g, y in zip(groups, labels):
        by[g].append(y)
    return {"auc": auc(scores, labels), "best_of_n": best_of_n(groups, scores, labels),
            "mean_single": sum(labels) / max(1, len(labels)),
            "pass_at_n": sum(any(v) for v in by.values()) / max(1, len(by))}


@torch.no_grad()
def mean_scores(score_fn, batches: Sequence[Batch]) -> list[float]:
    """Mean over step tokens of score_fn(batch) [B, T] for each row of each batch."""
    out = []
    for b in batches:
        out += masked_mean(score_fn(b), b.step_mask).tolist()
    return out


def likelihood_fn(policy):
    """The baseline a PRM must beat: the policy's own per-token log-likelihood."""
    return lambda b: token_logprobs(policy, b)
