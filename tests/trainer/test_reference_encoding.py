"""Issue 24, cause 2: an expert reference is encoded as the policy would produce the same text, so no surface
feature (a trailing separator, another tokenization) tells references from samples; offline mode matches a
candidate's per-token log-probs to its tokens by id, not by count."""

import pytest

from repirl.tasks.arithmetic import ArithmeticTask
from repirl.trajectory import TrajectoryEncoder
from trainer.rollouts import build_rollouts, ends_with_separator, reference_rollout


@pytest.fixture
def setting(tiny_tokenizer):
    task = ArithmeticTask()
    return task, task.sample(1, seed=3)[0], TrajectoryEncoder(tiny_tokenizer), tiny_tokenizer.eos_token_id


@pytest.mark.parametrize("tail", ["", "\n\n"], ids=["chat-style end", "sft-style end"])
def test_reference_ids_are_the_ids_the_policy_samples_for_that_text(tiny_tokenizer, setting, tail):
    task, p, enc, eos = setting
    # a policy that writes the reference's text: the sampler's ids spell it in one tokenization, then EOS
    sampled = tiny_tokenizer.encode("\n\n".join(p.steps) + tail, add_special_tokens=False) + [eos]
    (rollout,) = build_rollouts([p], [[(sampled, None)]], enc, tiny_tokenizer, task, eos)
    assert rollout.correct
    ref = reference_rollout(p, 0, enc, eos, ends_with_separator([rollout], tiny_tokenizer, enc.sep))
    assert ref.ids == rollout.ids, (tiny_tokenizer.decode(ref.ids[-6:]), tiny_tokenizer.decode(rollout.ids[-6:]))
    assert (ref.prompt_len, ref.step_end) == (rollout.prompt_len, rollout.step_end)


def test_the_policys_ending_is_what_most_finished_samples_do(tiny_tokenizer, setting):
    task, p, enc, eos = setting
    text = "\n\n".join(p.steps)
    ids = lambda s: tiny_tokenizer.encode(s, add_special_tokens=False)
    gens = [[(ids(text) + [eos], None), (ids(text) + [eos], None), (ids(text + "\n\n") + [eos], None),
             (ids(text + "\n\n"), None)]]  # the last one was cut (no EOS): it does not vote
    rs = build_rollouts([p], gens, enc, tiny_tokenizer, task, eos)
    assert ends_with_separator(rs, tiny_tokenizer, enc.sep) is False
    assert ends_with_separator(rs[2:], tiny_tokenizer, enc.sep) is True
    assert ends_with_separator(rs[3:], tiny_tokenizer, enc.sep) is True  # nothing finished: the SFT format


def test_offline_matches_token_logprobs_by_id(tiny_tokenizer):
    from repirl.tasks.jsonl import CandidateRecord
    from trainer.offline import Candidate, _traj, candidate_logprob

    enc, eos = TrajectoryEncoder(tiny_tokenizer), tiny_tokenizer.eos_token_id
    q, steps = "Start with 3. Add 4. What is the result?", ["3+4=7", "Answer: 7"]
    sampled = tiny_tokenizer.encode("3+4=7\n\nAnswer: 7", add_special_tokens=False) + [eos]
    tlp = [-0.1 * (i + 1) for i in range(len(sampled))]
    assert CandidateRecord(steps=steps, correct=False, token_ids=sampled, token_logprobs=tlp).token_ids == sampled
    with pytest.raises(ValueError, match="token_logprobs"):
        CandidateRecord(steps=steps, correct=False, token_ids=sampled, token_logprobs=tlp[:-1])
    # a candidate with its sampled ids trains on them, and its log-probs cover exactly the kept step tokens
    r = _traj(enc, q, steps, 0, False, eos, 10_000, sampled=sampled)
    assert r.ids == enc.prompt_ids(q) + sampled and r.step_end == len(r.ids) - 1
    assert candidate_logprob(Candidate(steps, False, None, tlp, sampled), r) == pytest.approx(sum(tlp[:-1]))
    cut = _traj(enc, q, steps, 0, False, eos, r.prompt_len + 4, sampled=sampled)
    assert candidate_logprob(Candidate(steps, False, None, tlp, sampled), cut) == pytest.approx(sum(tlp[:4]))
    # per-token values whose COUNT fits the trajectory but whose ids are others (another tokenization of the text)
    # belong to other tokens: not used (only a total over the whole candidate, when nothing was cut)
    other = list(reversed(sampled[:-1])) + [eos]
    assert candidate_logprob(Candidate(steps, False, None, tlp, other), r) is None
    assert candidate_logprob(Candidate(steps, False, None, tlp), r) is None  # no ids to compare
    assert candidate_logprob(Candidate(steps, False, -3.0, tlp, other), r) == -3.0
