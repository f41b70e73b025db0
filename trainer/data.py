"""Training and held-out problem pools for a recipe (the same for every algorithm at the same seed)."""

from __future__ import annotations

from repirl.tasks.arithmetic import ArithmeticConfig, ArithmeticTask
from repirl.tasks.base import Problem

# The one home of the seeds that must agree across the trainer, the bootstrap and the evaluator:
HELDOUT_SEED = 12345  # held-out problems: task.sample(n, seed=HELDOUT_SEED, prefix="heldout"); never trained on
DEV_SEED = 54321  # the evaluator's threshold-selection problems (disjoint from the held-out ones)
EVAL_SAMPLE_SEED = 987654  # the trainer's held-out accuracy samples with seed EVAL_SAMPLE_SEED + recipe seed


def make_task_and_pools(cfg) -> tuple[object, list[Problem], list[Problem]]:
    t = cfg.task
    if t.name == "arithmetic":
        task = ArithmeticTask(ArithmeticConfig(min_ops=t.min_ops, max_ops=t.max_ops, max_operand=t.max_operand,
                                               max_multiplier=t.max_multiplier))
        heldout = task.sample(t.eval_size, seed=HELDOUT_SEED, prefix="heldout")
        seen = {p.question for p in heldout}
        train = [p for p in task.sample(t.train_size + t.eval_size, seed=1000 + cfg.seed, prefix="train")
                 if p.question not in seen][: t.train_size]
        return task, train, heldout
    from repirl.tasks.gsm8k import GSM8KTask, load_gsm8k

    if t.name == "gsm8k":
        return GSM8KTask(), load_gsm8k("train", limit=t.train_size), load_gsm8k("test", limit=t.eval_size)
    from repirl.tasks.jsonl import load_problems

    problems = load_problems(t.path)
    cut = max(1, len(problems) - t.eval_size) if len(problems) > 1 else len(problems)
    return GSM8KTask(), problems[:cut][: t.train_size], problems[cut:]
