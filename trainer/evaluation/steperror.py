"""Step-error localisation in the style of ProcessBench: the PRM predicts the first step whose reward falls below a
threshold; the threshold is chosen on a dev split (other problems) and applied unchanged to the test split.

Labelled solutions come from two sources whose first wrong step is known exactly:
- policy samples, labelled by the arithmetic step checker (ArithmeticTask.check);
- corrupted references: the reference solution with one step's result changed (the error then propagates, as a
  model's would), balanced over positions, next to the untouched reference (a correct solution).
GSM8K solutions with calculator notes are handled in gsm8k_rerank.py (they need a PRM trained on GSM8K text).
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Sequence

from repirl.tasks.arithmetic import ArithmeticTask
from repirl.tasks.base import Problem
from trainer.evaluation.metrics import Sample, choose_threshold, confusion, first_below, first_error_scores

MAX_STEP = 6  # confusion tables fold later steps into the last column


def corrupt(problem: Problem, rng: random.Random) -> tuple[list[str], int]:
    """The reference with the result of one equation step changed by a small non-zero offset; later steps follow
    from the wrong value. Returns (steps, index of the first wrong step)."""
    ops = problem.meta["ops"]
    k = rng.randrange(len(ops))
    value = problem.meta["start"]
    steps = []
    for i, (op, b) in enumerate(ops):
        right = value + b if op == "+" else value - b if op == "-" else value * b
        new = right
        if i == k:
            new = max(0, right + rng.choice([-3, -2, -1, 1, 2, 3, 10]))
            new = new if new != right else right + 1
        steps.append(f"{value}{op}{b}={new}")
        value = new
    steps.append(f"Answer: {value}")
    return steps, k


def corrupted_set(problems: Sequence[Problem], seed: int) -> list[tuple[Problem, list[str], int | None]]:
    """Each problem twice: its reference (no error) and one corrupted copy. Balanced by construction."""
    rng = random.Random(seed)
    out = []
    for p in problems:
        out.append((p, list(p.steps), None))
        steps, k = corrupt(p, rng)
        out.append((p, steps, k))
    return out


def check_corrupted(task: ArithmeticTask, items) -> None:
    """Guard: the step checker agrees with the constructed labels (else the ground truth would be wrong)."""
    for p, steps, k in items:
        got = task.check(p, steps).first_wrong_step
        if got != k:
            raise AssertionError(f"{p.id}: constructed first error {k}, checker says {got} for {steps}")


def score_items(scorer, name: str, items) -> list[Sample]:
    from trainer.evaluation.bestofn import score_samples

    samples = [Sample(answer=None, correct=k is None, steps=steps, first_wrong_step=k) for _, steps, k in items]
    # score_samples wants per-problem groups; one group per item keeps the question aligned
    score_samples(scorer, name, [p.question for p, _, _ in items], [[s] for s in samples])
    return samples


def localisation(dev: Sequence[Sample], test: Sequence[Sample], prm: str) -> dict:
    """Threshold from dev (best F1), scores and confusion on test."""
    dev_r = [s.step_rewards[prm] for s in dev]
    th, dev_f1 = choose_threshold(dev_r, [s.first_wrong_step for s in dev])
    pred = [first_below(s.step_rewards[prm], th) for s in test]
    truth = [s.first_wrong_step for s in test]
    scores = first_error_scores(pred, truth)
    return {"threshold": th, "dev_f1": dev_f1, **asdict(scores), "confusion": confusion(pred, truth, MAX_STEP)}


def balanced(samples: Sequence[Sample], seed: int, cap: int | None = None) -> list[Sample]:
    """As many correct as erroneous solutions (ProcessBench reports both accuracies; balance keeps F1 readable)."""
    rng = random.Random(seed)
    err = [s for s in samples if s.first_wrong_step is not None]
    ok = [s for s in samples if s.first_wrong_step is None]
    m = min(len(err), len(ok))
    if cap is not None:
        m = min(m, cap)
    return rng.sample(err, m) + rng.sample(ok, m)
