"""Best-of-N on held-out synthetic problems: sample N_max solutions per problem ONCE (through `run_search`, the
service's search code), score every sample with every PRM (through `StepScorer.score` + `aggregate`, the service's
scorers), then compute every N and every selection rule by subsampling (metrics.curve).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from repirl.scoring import aggregate
from repirl.search import SearchParams, default_aggregation, run_search
from repirl.scoring.formats import scores_are_probabilities
from repirl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from repirl.tasks.base import Problem
from trainer.data import DEV_SEED, HELDOUT_SEED  # noqa: F401  (one home: trainer/data.py; used by the evaluator)
from trainer.evaluation.metrics import NS, Sample, curve, pass_at_k

# the task settings of the best-of-N and step-error sections: code selects them by these stable keys (kept in each
# setting as `task_key`, with `temperature`), the report shows the labels (the settings' keys in results.json)
IN_DIST, HARDER = "in_dist", "harder"
TASK_LABELS = {IN_DIST: "in-distribution", HARDER: "harder"}

LIKELIHOOD = "likelihood"  # score key of the policy's own mean token log-likelihood


def policy_task_config(policy) -> ArithmeticConfig:
    """The arithmetic config the policy was trained on (policy.json `task.config`), else the default."""
    cfg = (getattr(policy.config, "task", None) or {}).get("config") or {}
    fields = {k: v for k, v in cfg.items() if k in ArithmeticConfig.__dataclass_fields__}
    return ArithmeticConfig(**fields)


def harder(cfg: ArithmeticConfig) -> ArithmeticConfig:
    """Out of distribution: as many operations as the longest trained problems or one more, operands twice as large.
    (Two more operations made the bootstrap policy fail on all but 0.1% of its samples: nothing left to rerank.)"""
    return ArithmeticConfig(min_ops=cfg.max_ops, max_ops=cfg.max_ops + 1, max_operand=cfg.max_operand * 2,
                            max_multiplier=cfg.max_multiplier, ops=cfg.ops)


def heldout_problems(cfg: ArithmeticConfig, n: int, split: str = "test") -> list[Problem]:
    """test: the trainer's held-out seed; dev: another seed, with any question that is also in test removed."""
    task = ArithmeticTask(cfg)
    if split == "test":
        return task.sample(n, seed=HELDOUT_SEED, prefix="heldout")
    test = {p.question for p in task.sample(max(n, 500), seed=HELDOUT_SEED, prefix="heldout")}
    return [p for p in task.sample(2 * n + 50, seed=DEV_SEED, prefix="dev") if p.question not in test][:n]


@dataclass
class SampleConfig:
    n: int = 32
    temperature: float = 0.8
    seed: int = 0
    max_steps: int = 8
    max_step_tokens: int = 32


def sample_problems(policy, task: ArithmeticTask, problems: Sequence[Problem], cfg: SampleConfig,
                    progress: Callable[[int], None] | None = None) -> list[list[Sample]]:
    """cfg.n samples per problem with run_search(best-of-n), in sample order, checked by the task's step checker."""
    out = []
    for i, p in enumerate(problems):
        params = SearchParams(strategy="best-of-n", n=cfg.n, select="majority", temperature=cfg.temperature,
                              seed=cfg.seed + 7919 * i, max_steps=cfg.max_steps, max_step_tokens=cfg.max_step_tokens)
        result = run_search(policy, None, p.question, params)
        samples = []
        for c in sorted(result.candidates, key=lambda c: c.id):
            check = task.check(p, c.steps)
            n_tokens = sum(len(policy.encoder.step_ids(s)) for s in c.steps)
            samples.append(Sample(answer=c.answer, correct=check.correct, steps=list(c.steps),
                                  first_wrong_step=check.first_wrong_step,
                                  scores={LIKELIHOOD: c.logprob / n_tokens if n_tokens else -1e9}))
        out.append(samples)
        if progress:
            progress(i + 1)
    return out


def score_samples(scorer, name: str, questions: Sequence[str], problems: list[list[Sample]],
                  batch_size: int = 64) -> None:
    """Adds scores[name] (the PRM's default aggregation) and step_rewards[name] to every sample."""
    how = default_aggregation(scorer)
    flat = [(q, s) for q, samples in zip(questions, problems) for s in samples]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start: start + batch_size]
        items = [(q, s.steps) for q, s in chunk if s.steps]
        results = iter(scorer.score(items)) if items else iter(())
        for _, s in chunk:
            if not s.steps:
                s.scores[name], s.step_rewards[name] = aggregate([], how), []
                continue
            r = next(results)
            s.step_rewards[name] = list(r.step_rewards[: len(s.steps)])
            s.scores[name] = aggregate(r.step_rewards, how, r.token_rewards)


def is_probability_scorer(scorer) -> bool:
    return scores_are_probabilities(scorer)


def curves(problems: list[list[Sample]], prm_names: Sequence[str], probability: dict[str, bool] | None = None,
           ns: Sequence[int] = NS, n_subsets: int = 8, seed: int = 0) -> dict[str, dict[int, float]]:
    """Every method's best-of-N curve on the same samples and the same random subsets (same seed)."""
    probability = probability or {}
    top = min(len(ss) for ss in problems)
    exact_pass = {n: sum(pass_at_k(len(ss), sum(s.correct for s in ss), n) for ss in problems) / len(problems)
                  for n in ns if n <= top}  # exact expectation: rare successes make subsampled estimates jumpy
    out = {"oracle (pass@N)": exact_pass,
           "majority vote": curve(problems, "majority", None, ns, n_subsets, seed),
           "policy likelihood rerank": curve(problems, "naive", LIKELIHOOD, ns, n_subsets, seed)}
    for name in prm_names:
        prob = probability.get(name, False)
        out[f"PRM rerank: {name}"] = curve(problems, "naive", name, ns, n_subsets, seed, prob)
        out[f"PRM-weighted vote: {name}"] = curve(problems, "weighted", name, ns, n_subsets, seed, prob)
    return out


def samples_to_json(problems: list[list[Sample]]) -> list[list[dict]]:
    return [[asdict(s) for s in samples] for samples in problems]


def samples_from_json(rows: list[list[dict]]) -> list[list[Sample]]:
    return [[Sample(**s) for s in samples] for samples in rows]

