import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repirl.trajectory import PromptTemplate, TrajectoryEncoder, join_steps, split_steps

step_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda s: s.strip() and "\n\n" not in s)


@pytest.fixture(scope="module")
def encoder(tiny_tokenizer):
    return TrajectoryEncoder(tiny_tokenizer)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(question=st.text(min_size=1, max_size=40), steps=st.lists(step_text, min_size=0, max_size=5),
       extra=st.lists(step_text, min_size=1, max_size=3))
def test_prefix_ids_never_change_when_steps_are_appended(encoder, question, steps, extra):
    short = encoder.encode(question, steps)
    long = encoder.encode(question, steps + extra)
    assert long.ids[: len(short.ids)] == short.ids
    assert long.step_spans[: len(steps)] == short.step_spans
    assert long.prefix_len(len(steps)) == len(short.ids)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(question=st.text(min_size=1, max_size=40), steps=st.lists(step_text, min_size=1, max_size=5))
def test_spans_cover_each_step_exactly(encoder, tiny_tokenizer, question, steps):
    traj = encoder.encode(question, steps)
    assert traj.step_spans[0][0] == traj.prompt_len
    assert traj.step_spans[-1][1] == len(traj.ids)
    for (a, b), (c, _) in zip(traj.step_spans, traj.step_spans[1:]):
        assert b == c  # contiguous, no gaps or overlaps
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731 - Qwen2's tokenizer normalizes text to NFC
    for step, (a, b) in zip(steps, traj.step_spans):
        assert tiny_tokenizer.decode(traj.ids[a:b]) == nfc(step + encoder.sep)
    assert tiny_tokenizer.decode(traj.ids[: traj.prompt_len]) == nfc(encoder.template.render(question))


def test_split_and_join_are_inverse_for_clean_steps():
    steps = ["3+4=7", "7*2=14", "Answer: 14"]
    assert split_steps(join_steps(steps)) == steps
    assert split_steps("a\n\n\n\nb\n\n") == ["a", "b"]
    assert split_steps("a\nb", sep="\n") == ["a", "b"]


def test_chat_template_uses_the_tokenizer(tiny_tokenizer):
    enc = TrajectoryEncoder(tiny_tokenizer, PromptTemplate(kind="chat", system="Be brief."))
    text = tiny_tokenizer.decode(enc.prompt_ids("What is 2+2?"))
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_empty_separator_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="separator"):
        TrajectoryEncoder(tiny_tokenizer, sep="")


def test_spans_hold_for_text_the_tokenizer_normalizes(encoder, tiny_tokenizer):
    # U+F900 is NFC-normalized to U+8C48 by Qwen2's tokenizer (found by hypothesis): the span still covers the step.
    traj = encoder.encode("q", ["\uf900", "x"])
    a, b = traj.step_spans[0]
    assert tiny_tokenizer.decode(traj.ids[a:b]) == "\u8c48\n\n"
    assert encoder.encode("q", ["\uf900"]).ids == traj.ids[:b]


def test_first_step_prefix_goes_with_step_one_only():
    """A card that writes f"{question} {step_1}" in one string: the space is tokenized with step 1 (" Step" one
    token), later steps are untouched, and a prefix's ids still never change when steps are appended."""
    from repirl.scoring.hub_replicas import MERGES, byte_tokenizer

    tok = byte_tokenizer(["<s>", "</s>"], eos="</s>", merges=MERGES)
    enc = TrajectoryEncoder(tok, PromptTemplate(template="Q: {question}", first_step_prefix=" "), sep=" ки\n")
    one, two = enc.encode("2+3?", ["Step 1: 5"]), enc.encode("2+3?", ["Step 1: 5", "Step 2: done"])
    assert two.ids[:len(one.ids)] == one.ids
    assert two.ids == tok.encode("Q: 2+3? Step 1: 5 ки\nStep 2: done ки\n")  # the one-go tokenization
    a, b = two.step_spans[0]
    assert tok.decode(two.ids[a:b]) == " Step 1: 5 ки\n" and tok.decode(two.ids[:two.prompt_len]) == "Q: 2+3?"
    assert tok.convert_ids_to_tokens(two.ids[a]) == "ĠStep"
