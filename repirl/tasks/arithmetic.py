"""A seeded synthetic multi-step arithmetic task whose every step is a checkable equation.

Question: "Start with 23. Add 5, then multiply by 7, then subtract 9. What is the result?"
Reference steps: "23+5=28", "28*7=196", "196-9=187", "Answer: 187".

Knobs: number of operations, operand size, which operations. Values never go negative (a subtraction never takes
more than the running value), so every intermediate is a plain non-negative integer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from repirl.answers import extract_answer, parse_number
from repirl.tasks.base import Problem, StepCheck

OP_WORDS = {"+": "add {b}", "-": "subtract {b}", "*": "multiply by {b}"}
_EQUATION = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class ArithmeticConfig:
    min_ops: int = 2
    max_ops: int = 3
    max_operand: int = 20  # start value and +/- operands are drawn from [1, max_operand]
    max_multiplier: int = 5  # multiplications use [2, max_multiplier]
    ops: str = "+-*"

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError("need 1 <= min_ops <= max_ops")
        if self.max_operand < 1 or self.max_multiplier < 2:
            raise ValueError("need max_operand >= 1 and max_multiplier >= 2")
        if not self.ops or set(self.ops) - set(OP_WORDS):
            raise ValueError(f"ops must be a non-empty subset of {''.join(OP_WORDS)!r}, got {self.ops!r}")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, config: ArithmeticConfig | None = None):
        self.config = config or ArithmeticConfig()

    def problem(self, rng: random.Random, pid: str) -> Problem:
        c = self.config
        value = rng.randint(1, c.max_operand)
        start = value
        ops, steps = [], []
        for _ in range(rng.randint(c.min_ops, c.max_ops)):
            op = rng.choice(c.ops)
            if op == "-" and value < 1:
                op = "+"
            b = rng.randint(2, c.max_multiplier) if op == "*" else rng.randint(1, c.max_operand)
            if op == "-":
                b = min(b, value)
            new = _apply(value, op, b)
            ops.append((op, b))
            steps.append(f"{value}{op}{b}={new}")
            value = new
        phrases = [OP_WORDS[op].format(b=b) for op, b in ops]
        phrases[0] = phrases[0][0].upper() + phrases[0][1:]
        question = f"Start with {start}. " + ", then ".join(phrases) + ". What is the result?"
        steps.append(f"Answer: {value}")
        return Problem(id=pid, question=question, steps=steps, answer=str(value), meta={"start": start, "ops": ops})

    def sample(self, n: int, seed: int, prefix: str = "arith") -> list[Problem]:
        """`n` problems, the same for the same seed and config."""
        rng = random.Random(f"{seed}:{self.config}")
        return [self.problem(rng, f"{prefix}-{seed}-{i}") for i in range(n)]

    def check(self, problem: Problem, steps: Sequence[str]) -> StepCheck:
        """Outcome and first wrong step of a candidate solution.

        Step k is right when it is the equation "a op b = c" with a the running value (the start value for k=0),
        (op, b) the k-th operation of the question and c = a op b. After the equations, the last step must state the
        final value. A missing step counts as wrong at the index where it should have been.
        """
        ops = problem.meta.get("ops") or _ops_from_reference(problem)
        value = problem.meta.get("start", _start_from_reference(problem))
        final_answer = extract_answer(steps[-1]) if steps else None
        pred = parse_number(final_answer) if final_answer is not None else None
        correct = pred is not None and pred == parse_number(problem.answer)
        for k, (op, b) in enumerate(ops):
            if k >= len(steps):
                return StepCheck(correct, k)
            m = _EQUATION.match(steps[k])
            expected = _apply(value, op, b)
            if not m or (int(m[1]), m[2], int(m[3]), int(m[4])) != (value, op, b, expected):
                return StepCheck(correct, k)
            value = expected
        k = len(ops)  # the answer step
        stated = extract_answer(steps[k]) if k < len(steps) else None
        if stated is None or parse_number(stated) != value:
            return StepCheck(correct, k)
        if len(steps) > k + 1:  # anything after the answer is a wrong step
            return StepCheck(correct, k + 1)
        return StepCheck(correct, None)


def _ops_from_reference(problem: Problem) -> list[tuple[str, int]]:
    """Operations recovered from reference steps (problems loaded from JSONL carry no meta)."""
    out = []
    for step in problem.steps[:-1]:
        m = _EQUATION.match(step)
        if not m:
            raise ValueError(f"problem {problem.id}: reference step {step!r} is not an equation")
        out.append((m[2], int(m[3])))
    return out


def _start_from_reference(problem: Problem) -> int:
    m = _EQUATION.match(problem.steps[0])
    if not m:
        raise ValueError(f"problem {problem.id}: reference step {problem.steps[0]!r} is not an equation")
    return int(m[1])
