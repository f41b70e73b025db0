"""GSM8K (../shared/data/gsm8k): reference solutions as steps, calculator notes as step checks, real candidates.

A reference answer is one step per line with calculator notes `<<48/2=24>>` and a last line `#### 72`. Every note is
a machine-checkable claim, so a step whose note does not evaluate to its stated value is an arithmetic error there.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from repirl.answers import answers_match, extract_answer
from repirl.tasks.base import Problem, StepCheck

CALC_NOTE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
MODEL_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}


def default_data_dir() -> Path:
    """../shared/data/gsm8k next to the checkout, or $REPIRL_GSM8K_DIR."""
    import os

    env = os.environ.get("REPIRL_GSM8K_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"


def safe_eval(expr: str) -> Fraction:
    """Exact value of a calculator expression (numbers, + - * / ** % //, parentheses); raises ValueError otherwise."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow):
                if right.denominator != 1 or abs(right) > 64:
                    raise ValueError("unsupported power")
                return left ** int(right)
            if isinstance(node.op, ast.Div):
                return left / right
            return Fraction(_OPS[type(node.op)](left, right))
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        return ev(ast.parse(expr.replace(",", "").replace("x", "*").strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError, TypeError) as e:
        raise ValueError(str(e)) from e


def step_note_ok(step: str) -> bool | None:
    """True/False if every calculator note in the step evaluates to its stated value; None if it has no note."""
    notes = CALC_NOTE.findall(step)
    if not notes:
        return None
    for expr, value in notes:
        try:
            if abs(safe_eval(expr) - Fraction(value.replace(",", "").strip())) > Fraction(1, 100):
                return False
        except (ValueError, ZeroDivisionError):
            return False
    return True


def solution_steps(text: str) -> list[str]:
    """GSM8K steps are lines (a single newline), not blank-line separated."""
    return [line.strip() for line in text.split("\n") if line.strip()]


class GSM8KTask:
    name = "gsm8k"

    def check(self, problem: Problem, steps: Sequence[str]) -> StepCheck:
        """Outcome from the final answer; first wrong step = first step whose calculator note is false."""
        correct = answers_match(extract_answer("\n".join(steps)), problem.answer)
        first_wrong = next((i for i, s in enumerate(steps) if step_note_ok(s) is False), None)
        return StepCheck(correct, first_wrong)


def load_gsm8k(split: str = "train", data_dir: Path | str | None = None, limit: int | None = None) -> list[Problem]:
    path = Path(data_dir or default_data_dir()) / f"{split}.jsonl"
    problems = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and len(problems) >= limit:
                break
            row = json.loads(line)
            steps = solution_steps(row["answer"])
            answer = extract_answer(row["answer"])
            problems.append(Problem(id=f"gsm8k-{split}-{i}", question=row["question"], steps=steps, answer=answer))
    return problems


@dataclass(frozen=True)
class Candidate:
    source: str
    steps: list[str]
    is_correct: bool


def load_model_solutions(data_dir: Path | str | None = None, limit: int | None = None) -> list[tuple[Problem, list[Candidate]]]:
    """The 800 test questions with four real sampled solutions each, with outcome labels (best-of-4 benchmark)."""
    path = Path(data_dir or default_data_dir()) / "model_solutions.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and len(out) >= limit:
                break
            row = json.loads(line)
            truth = solution_steps(row["ground_truth"])
            problem = Problem(id=f"gsm8k-test-{i}", question=row["question"], steps=truth, answer=extract_answer(row["ground_truth"]))
            cands = [Candidate(k, solution_steps(row[k]["solution"]), bool(row[k]["is_correct"])) for k in MODEL_KEYS]
            out.append((problem, cands))
    return out
