import json

import pytest

from repirl.answers import answers_match, extract_answer, majority_answer, normalize_answer, parse_number
from tests.conftest import GSM8K_DIR


@pytest.mark.parametrize("text,expected", [
    ("3+4=7\n\nAnswer: 7", "7"),
    ("so #### 1,200", "1,200"),
    ("step\nA: 18", "18"),
    ("We get \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"),
    ("\\boxed{x^{2}} and later \\boxed{42}", "42"),
    ("Answer: 3\nAnswer: 5", "5"),
    ("no answer here", None),
    ("\\boxed{unbalanced", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_numbers_compare_exactly():
    assert answers_match("1,200", "1200")
    assert answers_match("$18.00", "18")
    assert answers_match("0.5", "1/2")
    assert not answers_match("10.833333333333332", "10.83")
    assert not answers_match(None, "3")
    assert parse_number("abc") is None
    assert normalize_answer("7.50") == normalize_answer("7.5") == "15/2"


def test_latex_goes_through_math_verify():
    assert answers_match("\\frac{1}{2}", "0.5")
    assert answers_match("\\frac{2}{4}", "\\frac{1}{2}")
    assert not answers_match("\\frac{1}{3}", "0.5")


def test_majority_and_weighted_vote():
    assert majority_answer(["3", "4", "3.0", None]) == "3"
    assert majority_answer(["3", "4", "4"], weights=[5.0, 1.0, 1.0]) == "3"
    assert majority_answer(["4", "3"]) == "4"  # tie: first seen
    assert majority_answer([None, None]) is None


def test_every_gsm8k_reference_answer_extracts_and_matches():
    rows = [json.loads(line) for line in open(GSM8K_DIR / "train.jsonl", encoding="utf-8")]
    assert len(rows) == 7473
    failures = []
    for row in rows:
        truth = row["answer"].split("####")[-1].strip()
        got = extract_answer(row["answer"])
        if got is None or not answers_match(got, truth) or parse_number(got) is None:
            failures.append((got, truth))
    assert failures == []


def test_latex_answers_compare_off_the_main_thread():
    """The service compares answers in `asyncio.to_thread`, where math-verify's signal-based timeout raised and every
    LaTeX answer compared unequal (an OpenRLHF label `\\frac{1}{2}` scored outcome 0 for the answer 0.5)."""
    import threading

    seen = []
    t = threading.Thread(target=lambda: seen.append((answers_match("\\frac{1}{2}", "0.5"),
                                                     answers_match("\\sqrt{4}", "2"),
                                                     answers_match("\\frac{1}{3}", "0.5"))))
    t.start()
    t.join(60)
    assert seen == [(True, True, False)]


def test_an_answer_math_verify_cannot_finish_is_unequal_and_the_next_one_still_compares():
    """`9^{9^{9}}` ran for over a minute in math-verify (a big-integer power no signal interrupts): the worker is killed
    after the timeout, the answer counts as unequal, and a fresh worker answers the next comparison."""
    from repirl.latex_equal import latex_equal

    assert latex_equal("9^{9^{9}} \\cdot 1", "5", timeout=1.0) is False
    assert latex_equal("\\frac{2}{4}", "\\frac{1}{2}") is True
    assert latex_equal("x" * 2000, "x" * 2000) is False  # over MAX_CHARS: never parsed (equal text matches earlier)
