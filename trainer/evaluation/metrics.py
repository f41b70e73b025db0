"""Pure metric functions of the evaluator: best-of-N curves by subsampling, ProcessBench-style first-error scores,
threshold selection, mean and spread. No models here, so every function is tested on hand-made cases.

Selection among candidates goes through `repirl.search.choose`, the very function the service's search ends with,
so "PRM rerank", "PRM-weighted vote" and "majority" mean here exactly what they mean in a `/v1/search` response.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from repirl.search import Candidate, choose, rank

NS = (1, 2, 4, 8, 16, 32)


@dataclass
class Sample:
    """One sampled solution of one problem: what every selection rule needs to pick among samples."""

    answer: str | None
    correct: bool
    scores: dict[str, float] = field(default_factory=dict)  # method -> trajectory score (PRM, likelihood, ...)
    step_rewards: dict[str, list[float]] = field(default_factory=dict)  # PRM name -> per-step rewards
    first_wrong_step: int | None = None
    steps: list[str] = field(default_factory=list)


def select(samples: Sequence[Sample], rule: str, score_key: str | None = None, probability_scores: bool = False,
           vote_temperature: float = 1.0) -> Sample | None:
    """The sample a rule picks. rule: naive (best score) | weighted (score-weighted vote) | majority | first | oracle.

    naive / weighted / majority rank then choose exactly as `run_search` does (answered before unanswered, ties
    keep sample order), so a constant score picks the first answered sample.
    """
    if not samples:
        return None
    if rule == "first":
        return samples[0]
    if rule == "oracle":
        return next((s for s in samples if s.correct), samples[0])
    if rule not in ("naive", "weighted", "majority"):
        raise ValueError(f"rule must be naive, weighted, majority, first or oracle, got {rule!r}")
    if rule != "majority" and score_key is None:
        raise ValueError(f"rule {rule!r} needs score_key")
    cands = [Candidate(steps=[], finished=True, answer=s.answer, id=i,
                       score=s.scores[score_key] if score_key is not None else 0.0)
             for i, s in enumerate(samples)]
    best, _ = choose(rank(cands), rule, vote_temperature, probability_scores)
    return samples[best.id] if best is not None else None


def subset_indices(n_total: int, n: int, n_subsets: int, rng: random.Random) -> list[list[int]]:
    """Index subsets of size n (sorted, so sample order is kept inside a subset). n == n_total: the one full set;
    n == 1: every single sample (the exact expectation); otherwise `n_subsets` random subsets without replacement."""
    if not 1 <= n <= n_total:
        raise ValueError(f"need 1 <= n <= {n_total}, got {n}")
    if n == n_total:
        return [list(range(n_total))]
    if n == 1:
        return [[i] for i in range(n_total)]
    return [sorted(rng.sample(range(n_total), n)) for _ in range(n_subsets)]


def best_of_n_accuracy(problems: Sequence[Sequence[Sample]], n: int, rule: str, score_key: str | None = None,
                       n_subsets: int = 8, seed: int = 0, probability_scores: bool = False) -> float:
    """Mean over problems (and over random subsets of n of each problem's samples) of "the pick is correct"."""
    rng = random.Random(seed)
    per_problem = []
    for samples in problems:
        subsets = subset_indices(len(samples), n, n_subsets, rng)
        hits = [select([samples[i] for i in idx], rule, score_key, probability_scores).correct for idx in subsets]
        per_problem.append(sum(hits) / len(hits))
    return sum(per_problem) / len(per_problem) if per_problem else float("nan")


def curve(problems: Sequence[Sequence[Sample]], rule: str, score_key: str | None = None, ns: Sequence[int] = NS,
          n_subsets: int = 8, seed: int = 0, probability_scores: bool = False) -> dict[int, float]:
    top = min(len(s) for s in problems)
    return {n: best_of_n_accuracy(problems, n, rule, score_key, n_subsets, seed, probability_scores)
            for n in ns if n <= top}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ---- step-error localisation (ProcessBench) ----------------------------------------------------------------------
def first_below(step_rewards: Sequence[float], threshold: float) -> int | None:
    """Index of the first step whose reward is below the threshold; None: the solution is predicted correct."""
    return next((i for i, r in enumerate(step_rewards) if r < threshold), None)


@dataclass
class FirstErrorScores:
    acc_erroneous: float  # on solutions with an error: predicted step == true first wrong step
    acc_correct: float  # on fully correct solutions: no step predicted wrong
    f1: float  # harmonic mean of the two (ProcessBench)
    n_erroneous: int
    n_correct: int


def first_error_scores(predicted: Sequence[int | None], truth: Sequence[int | None]) -> FirstErrorScores:
    err = [(p, t) for p, t in zip(predicted, truth) if t is not None]
    ok = [p for p, t in zip(predicted, truth) if t is None]
    acc_err = sum(p == t for p, t in err) / len(err) if err else float("nan")
    acc_ok = sum(p is None for p in ok) / len(ok) if ok else float("nan")
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok > 0 else 0.0
    return FirstErrorScores(acc_err, acc_ok, f1, len(err), len(ok))


def choose_threshold(rewards: Sequence[Sequence[float]], truth: Sequence[int | None],
                     candidates: Sequence[float] | None = None) -> tuple[float, float]:
    """The threshold with the best first-error F1 on a dev split; returns (threshold, dev F1). Candidates default to
    midpoints between consecutive distinct rewards (plus one below and one above all of them)."""
    if candidates is None:
        values = sorted({r for rs in rewards for r in rs})
        if not values:
            return 0.0, float("nan")
        candidates = ([values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0])
        if len(candidates) > 400:  # bound the work: quantiles of the candidate set
            candidates = [candidates[int(i * (len(candidates) - 1) / 399)] for i in range(400)]
    best = (candidates[0], -1.0)
    for th in candidates:
        f1 = first_error_scores([first_below(r, th) for r in rewards], truth).f1
        if f1 > best[1]:
            best = (th, f1)
    return best


def confusion(predicted: Sequence[int | None], truth: Sequence[int | None], max_step: int) -> list[list[int]]:
    """Counts [true][predicted]; index 0 = "no error", k = step k-1; steps >= max_step are folded into the last."""
    def cell(x):
        return 0 if x is None else 1 + min(x, max_step - 1)

    table = [[0] * (max_step + 1) for _ in range(max_step + 1)]
    for p, t in zip(predicted, truth):
        table[cell(t)][cell(p)] += 1
    return table


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")
