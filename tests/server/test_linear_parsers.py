"""Every parser of user text is linear-time (issue 22.1). A quadratic `findall` in the OpenRLHF route's question
extraction froze the whole service for 13.6 s on a 265 KB body; the answer-extraction regexes had the same shape.

Each parser runs on adversarial inputs of size n and 4n (the best of 5 runs each); linear work grows 4x, quadratic
work 16x, and the test allows 9x (3x per doubling, the issue's bound) plus 5 ms of scheduling noise. The sizes are
chosen so that the quadratic versions these replace take 0.1-2 s at 4n: each case failed before the fix.
`last_user_turn` also equals the regex it replaced on random chat-tagged text (Hypothesis)."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repirl.answers import extract_answer, normalize_answer, parse_number
from repirl.trajectory import split_steps
from server.api.openrlhf.serving import last_user_turn, question_of, split_query, strip_trailing_tokens

CHATML_USER = "<|im_start|>user\n"
LLAMA_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
SPECIAL = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"]


def _best_time(fn, arg, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


CASES = {
    # name: (parser, input of size n, n)
    "question_of: unclosed ChatML user turns": (question_of, lambda n: CHATML_USER * n, 1_500),
    "question_of: unclosed Llama-3 user turns": (question_of, lambda n: LLAMA_USER * n, 800),
    "question_of: closed turns": (question_of, lambda n: (CHATML_USER + "q<|im_end|>") * n, 2_000),
    "split_query: trailing end-of-turn tokens": (
        lambda q: split_query(q, "p", SPECIAL), lambda n: "p" + "x" + "<|im_end|> " * n, 20_000),
    "strip_trailing_tokens": (lambda t: strip_trailing_tokens(t, SPECIAL), lambda n: "a" + "<|eot_id|>\n" * n, 20_000),
    "extract_answer: blank lines": (extract_answer, lambda n: "\n" * n + "x", 4_000),
    "extract_answer: Answer then blank lines": (extract_answer, lambda n: "Answer" + "\n" * n, 4_000),
    "extract_answer: A: then blank lines": (extract_answer, lambda n: "A:" + "\n" * n + "\nA:" + "\n" * n, 4_000),
    "extract_answer: #### then blank lines": (extract_answer, lambda n: ("####" + "\n" * 50) * (n // 50), 20_000),
    "extract_answer: nested braces": (extract_answer, lambda n: "\\boxed{" + "{" * n, 20_000),
    "parse_number: blanks before a unit": (parse_number, lambda n: "1" + " " * n + "x", 4_000),
    "parse_number: digit groups": (parse_number, lambda n: "1" + ",000" * n + ",00", 20_000),
    "normalize_answer: blanks": (normalize_answer, lambda n: "a" + " \t" * n + "b", 20_000),
    "split_steps: separators": (lambda t: split_steps(t, "\n\n"), lambda n: "\n" * n, 40_000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parser_time_grows_linearly(name):
    parse, make, n = CASES[name]
    small, large = make(n), make(4 * n)
    t_small, t_large = _best_time(parse, small), _best_time(parse, large)
    assert t_large <= 9 * t_small + 0.005, (
        f"{name}: {len(small):,} chars in {t_small * 1e3:.2f} ms, {len(large):,} chars in {t_large * 1e3:.2f} ms "
        f"({t_large / max(t_small, 1e-9):.1f}x for 4x the input)")


_OLD_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)  # the regex last_user_turn replaced


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([CHATML_USER, "<|im_end|>", "<|im_start|>assistant\n", "a", "\n", "user"]),
                max_size=30))
def test_last_user_turn_equals_the_regex_it_replaced(pieces):
    text = "".join(pieces)
    turns = _OLD_USER_TURN.findall(text)
    assert last_user_turn(text, CHATML_USER, "<|im_end|>") == (turns[-1] if turns else None)
