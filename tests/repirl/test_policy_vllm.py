"""The vLLM in-process engine (LLM, prefix caching) against the transformers engine on the same toy policy.

The remote engine (repirl/policy/remote.py) is tested in tests/server/test_search_engines.py, next to the service,
so the suite starts one real vLLM api_server for both."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("vllm")

from repirl.policy import SamplingConfig, load_policy  # noqa: E402
from repirl.policy.base import SEED_LIMIT, prefix_seed  # noqa: E402
from repirl.policy.toy import TOY_QUESTION, build_toy_policy  # noqa: E402
from repirl.search import SearchParams, run_search  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
PREFIXES = [(TOY_QUESTION, []), (TOY_QUESTION, ["3+4=8"]), (TOY_QUESTION, ["3+4=7", "7*2=14"])]


@pytest.fixture(scope="module")
def toy_dir():
    return build_toy_policy()


@pytest.fixture(scope="module")
def hf_policy(toy_dir):
    return load_policy(toy_dir, engine="transformers")


def _greedy(policy):
    return policy.sample_steps(PREFIXES, SamplingConfig(n=1, temperature=0.0, max_tokens=24))


def _check_against_transformers(policy, hf_policy):
    ref, got = _greedy(hf_policy), _greedy(policy)
    for r, g in zip(ref, got):
        assert g[0].text == r[0].text and g[0].finished == r[0].finished
        # vLLM may keep the separator's tokens or not; the step's own tokens and their log-probs must agree
        n = len(hf_policy.tokenizer.encode(r[0].text, add_special_tokens=False))
        assert g[0].token_ids[:n] == r[0].token_ids[:n]
        assert g[0].logprobs[:n] == pytest.approx(r[0].logprobs[:n], abs=2e-3)
    assert got[2][0].text == "Answer: 14" and got[2][0].finish_reason == "answer"
    # greedy with n > 1 (vLLM refuses it natively): n copies of the greedy step
    many = policy.sample_steps(PREFIXES[:1], SamplingConfig(n=3, temperature=0.0, max_tokens=24))[0]
    assert [s.token_ids for s in many] == [got[0][0].token_ids] * 3


def _check_sampling(policy):
    out = policy.sample_steps(PREFIXES[:1], SamplingConfig(n=8, temperature=1.0, seed=7))
    assert len(out[0]) == 8 and {s.text for s in out[0]} <= {"3+4=7", "3+4=8"}
    assert all(s.finish_reason == "sep" for s in out[0])
    r = run_search(policy, None, TOY_QUESTION, SearchParams(strategy="beam", n=4, beam_width=2, select="majority", seed=1))
    assert r.answer in {"14", "16"} and r.stats.steps >= 3


STEP_BUDGET = 256  # tokens per engine step: a few seeded toy prompts overflow it (the seeded-split test below)


@pytest.fixture(scope="module")
def vllm_policy(toy_dir):
    policy = load_policy(f"vllm:{toy_dir}", max_model_len=256, max_num_batched_tokens=STEP_BUDGET)
    yield policy
    policy.close()  # free the engine core process before the api_server test starts (a no-op if a test closed it)


def test_vllm_in_process_matches_transformers(vllm_policy, hf_policy):
    assert vllm_policy.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    _check_against_transformers(vllm_policy, hf_policy)
    _check_sampling(vllm_policy)


def test_seeded_batch_over_one_engine_step_is_split_not_chunked(vllm_policy):
    """Before: the 8 seeded prompts went to the engine in one call; over the step budget vLLM-CPU chunked a seeded
    prefill ("CPU Generator does not use offset") and the engine core died: EngineDeadError for every later call."""
    sched = vllm_policy.llm.llm_engine.vllm_config.scheduler_config
    assert sched.max_num_batched_tokens == STEP_BUDGET
    prefixes = [(TOY_QUESTION, ["3+4=7", "7*2=14"][: i % 3]) for i in range(8)]
    prompt_tokens = sum(len(vllm_policy.encoder.encode(q, s).ids) for q, s in prefixes)
    assert prompt_tokens > STEP_BUDGET  # one engine call would have chunked
    params = SamplingConfig(n=2, temperature=1.0, max_tokens=24, seed=11)
    out = vllm_policy.sample_steps(prefixes, params)
    assert not vllm_policy.engine_dead()
    assert [len(o) for o in out] == [2] * 8
    # the split keeps every sample's seed: the same call again, and a prefix alone with its derived seed, agree
    again = vllm_policy.sample_steps(prefixes, params)
    assert [[s.token_ids for s in o] for o in again] == [[s.token_ids for s in o] for o in out]
    for i in (0, 7):
        alone = vllm_policy.sample_steps([prefixes[i]], replace(params, seed=prefix_seed(11, i)))
        assert [s.token_ids for s in alone[0]] == [s.token_ids for s in out[i]]
    # the largest valid seed: derived seeds wrap below 2^63 instead of overflowing vLLM's serializer
    top = vllm_policy.sample_steps(prefixes[:3], replace(params, seed=SEED_LIMIT - 1))
    assert [len(o) for o in top] == [2] * 3 and not vllm_policy.engine_dead()


def test_close_stops_the_engine_core_process(vllm_policy):
    """The server's shutdown calls close(): the engine core must not outlive it (it did before close() existed).
    Runs last in this module: the engine is gone afterwards."""
    procs = vllm_policy.llm.llm_engine.engine_core.resources.engine_manager.processes
    assert procs and all(p.is_alive() for p in procs)
    vllm_policy.close()
    vllm_policy.close()  # idempotent (the app and the fixture may both call it)
    for p in procs:
        p.join(timeout=15)
    assert not any(p.is_alive() for p in procs)
