"""Final-answer extraction and equivalence.

Formats, in priority order: `\\boxed{X}`, `#### X` (GSM8K references), `Answer: X` (our tasks), `A: X` (GSM8K model
solutions). The last occurrence wins, because solutions often restate intermediate values. Numbers compare exactly
as fractions (so "1,200", "1200.0" and "$1200" agree); LaTeX goes through math-verify.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import Iterable

# Linear time on any input (issue 22.1): a line start is `^` or a newline followed by horizontal space only (`\s*`
# there rescanned every following blank line from every newline), and possessive `*+` never gives back the space it
# took (`Answer` followed by 8,000 newlines backtracked quadratically between two `\s*`).
_LINE_PATTERNS = [
    re.compile(r"####\s*+(?P<a>[^\n]+)"),
    re.compile(r"(?:^|\n)[^\S\n]*+(?:The (?:final )?answer is|Answer)\s*+[:：]?+\s*+(?P<a>[^\n]+)", re.IGNORECASE),
    re.compile(r"(?:^|\n)[^\S\n]*+A:\s*+(?P<a>[^\n]+)"),
]
_NUMBER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?$")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with balanced braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced: treat as no answer


def extract_answer(text: str) -> str | None:
    """The final answer of a solution, or None if it states none."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed or None
    for pattern in _LINE_PATTERNS:
        matches = list(pattern.finditer(text))
        if matches:
            answer = matches[-1].group("a").strip()
            return answer or None
    return None


def parse_number(answer: str) -> Fraction | None:
    """Exact value of a plain numeric answer ("$1,200.50", "72.", "-3"), or None if it is not a number."""
    s = answer.strip().rstrip(".").strip()
    s = re.sub(r"^\$|\$$", "", s).strip()
    s = re.sub(r"(?:dollars?|%)$", "", s).rstrip()  # `\s*` before the unit was quadratic on long blank runs
    if not s or not _NUMBER.match(s) or s in "+-":
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string used to group answers for voting (numbers in lowest terms, else stripped text)."""
    if answer is None:
        return None
    number = parse_number(answer)
    if number is not None:
        return str(number)
    return re.sub(r"\s+", " ", answer.strip().rstrip(".")).strip() or None


def answers_match(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    a, b = parse_number(predicted), parse_number(reference)
    if a is not None and b is not None:
        return a == b
    if normalize_answer(predicted) == normalize_answer(reference):
        return True
    return _math_verify_equal(predicted, reference)


def _math_verify_equal(predicted: str, reference: str) -> bool:
    from repirl.latex_equal import latex_equal  # a worker process with a hard timeout: see that module
    return latex_equal(predicted, reference)


def majority_answer(answers: Iterable[str | None], weights: Iterable[float] | None = None) -> str | None:
    """The normalized answer with the largest (weighted) vote; ties go to the answer seen first."""
    answers = list(answers)
    weights = [1.0] * len(answers) if weights is None else list(weights)
    votes: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for i, (ans, w) in enumerate(zip(answers, weights)):
        key = normalize_answer(ans)
        if key is None:
            continue
        votes[key] += w
        first_seen.setdefault(key, i)
    if not votes:
        return None
    return max(votes, key=lambda k: (votes[k], -first_seen[k]))
