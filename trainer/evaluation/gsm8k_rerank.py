"""Real data: best-of-4 reranking of the four real model solutions per GSM8K test question
(../shared/data/gsm8k/model_solutions.jsonl): PRM vs majority vote vs random vs oracle, plus first-error
localisation where the calculator notes locate an arithmetic error.

A PRM trained by the `offline` algorithm saw the first `offline.limit` questions of this file (a random part of them
held out), so only questions after that limit are evaluated: none of them was seen in training.
"""

from __future__ import annotations

from pathlib import Path

from repirl.answers import extract_answer
from repirl.tasks.gsm8k import GSM8KTask, load_model_solutions
from trainer.evaluation.bestofn import is_probability_scorer, score_samples
from trainer.evaluation.metrics import Sample, best_of_n_accuracy


def offline_limit(run_dir: Path | None) -> int:
    """Questions of model_solutions.jsonl the offline run trained on (config.yaml offline.limit), 0 if unknown."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return 0
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    limit = (cfg.get("offline") or {}).get("limit")
    return int(limit) if limit is not None else 10**9  # no limit: it saw everything


def load_candidates(skip: int, limit: int | None) -> tuple[list[str], list[list[Sample]]]:
    rows = load_model_solutions()[skip:]
    rows = rows[:limit] if limit is not None else rows
    task = GSM8KTask()
    questions, problems = [], []
    for problem, cands in rows:
        samples = []
        for c in cands:
            check = task.check(problem, c.steps)
            samples.append(Sample(answer=extract_answer("\n".join(c.steps)), correct=c.is_correct, steps=c.steps,
                                  first_wrong_step=check.first_wrong_step))
        questions.append(problem.question)
        problems.append(samples)
    return questions, problems


def rerank(scorer, name: str, questions: list[str], problems: list[list[Sample]]) -> dict:
    score_samples(scorer, name, questions, problems, batch_size=16)
    prob = is_probability_scorer(scorer)
    n = min(len(s) for s in problems)
    return {
        "questions": len(problems),
        "PRM rerank": best_of_n_accuracy(problems, n, "naive", name, probability_scores=prob),
        "PRM-weighted vote": best_of_n_accuracy(problems, n, "weighted", name, probability_scores=prob),
        "majority vote": best_of_n_accuracy(problems, n, "majority"),
        "random (mean candidate accuracy)": best_of_n_accuracy(problems, 1, "first"),
        "oracle": best_of_n_accuracy(problems, n, "oracle"),
        "first candidate": best_of_n_accuracy([s[:1] for s in problems], 1, "first"),
    }


def note_labelled(problems: list[list[Sample]]) -> list[Sample]:
    """Solutions whose first error is known from the notes: a false note (erroneous at that step), or a correct
    final answer with every note true (taken as error-free). Wrong answers with true notes are left out."""
    out = []
    for samples in problems:
        for s in samples:
            if s.first_wrong_step is not None or s.correct:
                out.append(s)
    return out
