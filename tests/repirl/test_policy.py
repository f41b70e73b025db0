"""Policy engines: the shared step rule, the transformers engine checked against a full forward pass and HF generate,
and the toy policy searched end to end. The vLLM engines are in test_policy_vllm.py (slow)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from repirl.artifacts import ArtifactError  # noqa: E402
from repirl.policy import SamplingConfig, load_policy, make_step  # noqa: E402
from repirl.policy.hf import TransformersPolicy  # noqa: E402
from repirl.policy.toy import TOY_QUESTION, build_toy_policy  # noqa: E402
from repirl.search import SearchParams, run_search  # noqa: E402


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    return build_toy_policy()  # cached between runs (content-addressed)


@pytest.fixture(scope="session")
def hf_policy(toy_dir):
    return load_policy(toy_dir, engine="transformers")


def test_make_step_rules():
    s = make_step("3+4=7\n\n", [1, 2], [-0.5, -0.25], "\n\n", hit_eos=False, hit_length=False)
    assert (s.text, s.finished, s.finish_reason, s.logprob) == ("3+4=7", False, "sep", -0.75)
    assert make_step("Answer: 14", [], [], "\n\n", hit_eos=False, hit_length=False).finish_reason == "answer"
    assert make_step("Answer: 14\n\nmore", [], [], "\n\n", False, False).finished  # an answer ends it
    assert make_step("7*2=", [], [], "\n\n", hit_eos=False, hit_length=True).finish_reason == "length"
    eos = make_step("the end", [], [], "\n\n", hit_eos=True, hit_length=False)
    assert eos.finished and eos.finish_reason == "eos"
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


def test_load_policy_errors_name_the_problem(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_policy(tmp_path / "nope", engine="transformers")
    with pytest.raises(ValueError, match="engine must be one of"):
        load_policy(tmp_path, engine="tgi")


def test_transformers_policy_stops_at_separator_and_answers(hf_policy):
    out = hf_policy.sample_steps([(TOY_QUESTION, []), (TOY_QUESTION, ["3+4=7", "7*2=14"])],
                                 SamplingConfig(n=6, temperature=1.0, seed=3))
    assert len(out) == 2 and all(len(o) == 6 for o in out)
    firsts = {s.text for s in out[0]}
    assert firsts <= {"3+4=7", "3+4=8"} and all(s.finish_reason == "sep" and not s.finished for s in out[0])
    assert all(s.text == "Answer: 14" and s.finished for s in out[1])
    tok = hf_policy.tokenizer
    assert all(tok.decode(s.token_ids) == s.text + "\n\n" for s in out[0])  # ids are exactly what was generated


def test_transformers_policy_is_seeded(hf_policy):
    cfg = SamplingConfig(n=8, temperature=1.0, seed=11)
    a = hf_policy.sample_steps([(TOY_QUESTION, [])], cfg)
    b = hf_policy.sample_steps([(TOY_QUESTION, [])], cfg)
    assert [s.token_ids for s in a[0]] == [s.token_ids for s in b[0]]


def test_logprobs_match_a_full_forward_pass(hf_policy):
    [[s]] = hf_policy.sample_steps([(TOY_QUESTION, ["3+4=8"])], SamplingConfig(n=1, temperature=1.0, seed=5))
    prompt = hf_policy.encoder.encode(TOY_QUESTION, ["3+4=8"]).ids
    ids = torch.tensor([prompt + s.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(hf_policy.model(input_ids=ids).logits[0].float(), dim=-1)
    ref = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(s.token_ids)]
    assert s.logprobs == pytest.approx(ref, abs=1e-4)


def test_greedy_matches_hf_generate(hf_policy):
    prompt = hf_policy.encoder.encode(TOY_QUESTION, []).ids
    ref = hf_policy.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   stop_strings=["\n\n"], tokenizer=hf_policy.tokenizer)[0, len(prompt):].tolist()
    [[s]] = hf_policy.sample_steps([(TOY_QUESTION, [])], SamplingConfig(n=1, temperature=0.0, max_tokens=12))
    assert s.token_ids == ref


def test_max_tokens_cuts_a_step(hf_policy):
    [[s]] = hf_policy.sample_steps([(TOY_QUESTION, [])], SamplingConfig(n=1, temperature=0.0, max_tokens=3))
    assert s.finish_reason == "length" and len(s.token_ids) == 3 and not s.finished


@pytest.mark.parametrize("strategy", ["best-of-n", "beam", "dvts"])
def test_every_strategy_runs_on_a_real_model(hf_policy, strategy):
    r = run_search(hf_policy, None, TOY_QUESTION, SearchParams(strategy=strategy, n=4, beam_width=2, select="majority",
                                                               seed=0, dedup=False))
    assert r.answer in {"14", "16"}
    assert r.stats.policy_tokens > 0 and r.stats.steps >= 3
    assert isinstance(hf_policy, TransformersPolicy)
