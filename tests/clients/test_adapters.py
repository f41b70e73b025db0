"""The TRL and search-and-learn adapters against the real service: a real GRPOTrainer step, AsyncGRPOTrainer's
pickling of reward_funcs, direct calls that check batching, limits learnt from the service and per-item failures, and
search-and-learn's score shape. veRL: test_verl.py; OpenRLHF: test_openrlhf.py."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import multiprocessing
import pickle

import pytest

from repirl.policy.toy import TOY_QUESTION
from repirl_client import Client
from repirl_client.adapters.search_and_learn import RepirlPRM
from repirl_client.adapters.trl import AsyncPRMReward, PRMReward, repirl_prm
from tests.clients import trl_child
from tests.clients.adapter_data import (RIGHT, RIGHT_STEPS, WRONG, WRONG_STEPS, expected, sigmoid, steps_of,
                                         variants)
from tests.clients.conftest import API_KEY, MAX_ITEMS


def test_trl_reward_batches_to_the_service_limit_and_fails_per_item(sdk_service, client):
    reward = PRMReward(base_url=sdk_service.url, api_key=API_KEY, aggregation="min", max_concurrency=2)
    completions = variants(40) + [RIGHT, RIGHT, "", "x" * 500, [{"role": "assistant", "content": WRONG}]]
    prompts = ["Question: ignored\nSolution:\n"] * len(completions)
    metrics = {}
    got = reward(prompts=prompts, completions=completions, completion_ids=None,
                 question=[TOY_QUESTION] * len(completions), log_metric=metrics.__setitem__)
    assert len(got) == len(completions)
    want = expected(client, variants(40)[:MAX_ITEMS]) + expected(client, variants(40)[MAX_ITEMS:2 * MAX_ITEMS]) + \
        expected(client, variants(40)[2 * MAX_ITEMS:] + [RIGHT, WRONG])
    assert got[:40] == pytest.approx(want[:40], abs=1e-6)
    assert got[40] == got[41] == pytest.approx(want[40], abs=1e-6)
    assert got[42] is None  # no steps
    assert got[43] is None  # a step over max_chars (413 naming the item): fails alone
    assert got[44] == pytest.approx(want[41], abs=1e-6)  # conversational completion
    assert metrics == {"repirl_prm/failed": pytest.approx(2 / 45)}
    # 43 unique scoreable items: one 413 on the first request of 64 teaches max_items=16, then 3 requests + one
    # resend after the over-long item failed alone
    assert reward.scorer.limits.max_items == MAX_ITEMS
    sent = reward.scorer.requests_sent
    assert sent <= 1 + math.ceil(43 / MAX_ITEMS) + 1
    again = reward(prompts=prompts[:40], completions=completions[:40], question=[TOY_QUESTION] * 40)
    assert again == pytest.approx(got[:40]) and reward.scorer.requests_sent - sent == math.ceil(40 / MAX_ITEMS)
    reward.close()


def test_trl_async_reward_matches_sync_and_question_from_prompt(sdk_service):
    sync = PRMReward(base_url=sdk_service.url, api_key=API_KEY)
    areward = AsyncPRMReward(base_url=sdk_service.url, api_key=API_KEY)
    prompts = [[{"role": "user", "content": TOY_QUESTION}]] * 3  # conversational: the question is the user turn
    completions = [[{"role": "assistant", "content": RIGHT}], [{"role": "assistant", "content": WRONG}],
                   [{"role": "assistant", "content": "   "}]]

    async def go():
        try:
            return await areward(prompts=prompts, completions=completions, completion_ids=None)
        finally:
            await areward.aclose()

    got = asyncio.run(go())
    assert got[2] is None and got[:2] == pytest.approx(sync(prompts=prompts, completions=completions)[:2])
    assert got[0] != got[1]
    down = PRMReward(base_url="http://127.0.0.1:9", max_retries=0)  # nothing listens: no rewards, no exception
    assert down(prompts=["q"], completions=[RIGHT]) == [None]


def test_trl_grpo_trainer_step_with_the_service(sdk_service, toy_policy, client, tmp_path):
    """A real GRPOTrainer step (trl/trainer/grpo_trainer.py, 1.16.0) with the three forms side by side: the blocking
    PRMReward, the AsyncPRMReward instance (TRL >= 1.14 detects its async __call__ with `is_async_callable`,
    trl/trainer/utils.py:247-258) and the plain `async def` repirl_prm through functools.partial (what TRL 0.27-1.13
    need: they test `inspect.iscoroutinefunction(reward_func)`, grpo_trainer.py:1654 at f2cd577). Per-step figures
    reach TRL's completions table through the `log_extra` kwarg (grpo_trainer.py `_calculate_rewards`)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from repirl.trajectory import PromptTemplate

    template = PromptTemplate(**json.loads((toy_policy / "policy.json").read_text())["prompt_template"])
    seen = []

    class Recording(PRMReward):
        def __call__(self, prompts, completions, **kwargs):
            out = super().__call__(prompts, completions, **kwargs)
            seen.append(("sync", list(completions), out))
            return out

    class AsyncRecording(AsyncPRMReward):
        async def __call__(self, prompts, completions, **kwargs):
            out = await super().__call__(prompts, completions, **kwargs)
            seen.append(("async", list(completions), out))
            return out

    settings = {"base_url": sdk_service.url, "api_key": API_KEY, "aggregation": "min"}
    function = functools.partial(repirl_prm, repirl_settings={**settings, "name": "repirl_prm_fn"})
    assert inspect.iscoroutinefunction(function)
    rewards = [Recording(**settings, name="repirl_prm_sync"), AsyncRecording(**settings, name="repirl_prm_async"),
               function]
    ds = Dataset.from_dict({"prompt": [template.render(TOY_QUESTION)] * 2, "question": [TOY_QUESTION] * 2})
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=32, temperature=1.0, report_to=[], use_cpu=True, bf16=False,
                      logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=str(toy_policy), reward_funcs=rewards, args=args, train_dataset=ds)
    trainer.train()
    assert trainer.state.global_step == 1
    (kind_a, comps_a, out_a), (kind_b, comps_b, out_b) = sorted(seen)
    assert (kind_a, kind_b) == ("async", "sync") and comps_a == comps_b and len(comps_a) == 4
    assert all(isinstance(r, float) for r in out_b) and out_a == pytest.approx(out_b)
    assert out_b == pytest.approx(expected(client, comps_b), abs=1e-6)  # the service's own scores
    log = trainer.state.log_history[0]
    for name in ("repirl_prm_sync", "repirl_prm_async", "repirl_prm"):  # TRL names the partial after repirl_prm
        assert log[f"rewards/{name}/mean"] == pytest.approx(sum(out_b) / 4, abs=1e-5)
    assert log["repirl_prm_sync/failed"] == log["repirl_prm_fn/failed"] == 0.0 and math.isfinite(log["loss"])
    extra = {k: list(v) for k, v in trainer._logs["extra"].items()}
    direct = client.score(items=[(TOY_QUESTION, steps_of(c)) for c in comps_b]).data
    assert extra["repirl_prm_sync/steps"] == [len(d.step_rewards) for d in direct]
    assert [json.loads(x) for x in extra["repirl_prm_sync/step_rewards"]] == [
        pytest.approx(d.step_rewards, abs=1e-9) for d in direct]
    assert extra["repirl_prm_fn/step_rewards"] == extra["repirl_prm_sync/step_rewards"]


def test_trl_reasoning_content_is_scored_when_asked(sdk_service, client):
    """Thinking models: TRL's `parse_response` gives conversational completions `{"role": "assistant", "content":
    answer, "reasoning_content": thoughts}` (trl/chat_template_utils.py response schemas). By default only the
    content is scored; `include_reasoning=True` puts the reasoning's steps before it."""
    completion = [{"role": "assistant", "reasoning_content": "3+4=7\n\n7*2=14", "content": "Answer: 14"}]
    plain = PRMReward(base_url=sdk_service.url, api_key=API_KEY, aggregation="last")
    thinking = PRMReward(base_url=sdk_service.url, api_key=API_KEY, aggregation="last", include_reasoning=True)
    logged = {}
    got_plain = plain(prompts=[TOY_QUESTION], completions=[completion])
    got_thinking = thinking(prompts=[TOY_QUESTION], completions=[completion], log_extra=logged.__setitem__)
    assert got_plain == [pytest.approx(client.score(question=TOY_QUESTION, steps=["Answer: 14"],
                                                    aggregation="last").data[0].score)]
    whole = client.score(question=TOY_QUESTION, steps=RIGHT_STEPS, aggregation="last").data[0]
    assert got_thinking == [pytest.approx(whole.score)] and logged["repirl_prm/steps"] == [3]
    assert json.loads(logged["repirl_prm/step_rewards"][0]) == pytest.approx(whole.step_rewards)


def test_trl_rewards_pickle_and_score_after_a_round_trip(sdk_service, client):
    """AsyncGRPOTrainer pickles `reward_funcs` for its spawned rollout process (trl/experimental/async_grpo/
    async_rollout_worker.py:1205-1216, 1.16.0): every form pickles, also after it has scored (clients, locks and
    connection pools are made again in the process that unpickles it), and scores the same there."""
    prompts, completions = [TOY_QUESTION] * 2, [RIGHT, WRONG]
    want = expected(client, completions)
    settings = {"base_url": sdk_service.url, "api_key": API_KEY, "aggregation": "min"}
    sync, areward = PRMReward(**settings), AsyncPRMReward(**settings)
    function = functools.partial(repirl_prm, repirl_settings=settings)
    assert sync(prompts, completions) == pytest.approx(want)  # used before pickling: a client and a lock exist

    async def run(f):
        return await f(prompts, completions)

    assert asyncio.run(run(areward)) == pytest.approx(want)
    for f in (sync, areward, function):
        g = pickle.loads(pickle.dumps(f))
        is_async = inspect.iscoroutinefunction(g) or inspect.iscoroutinefunction(type(g).__call__)
        got = asyncio.run(run(g)) if is_async else g(prompts, completions)
        assert got == pytest.approx(want)
    given = PRMReward(Client(base_url=sdk_service.url, api_key=API_KEY), aggregation="min")  # a client object given
    assert pickle.loads(pickle.dumps(given))(prompts, completions) == pytest.approx(want)


def test_trl_async_grpo_trainer_sends_the_rewards_to_its_child(sdk_service, toy_policy, client, tmp_path,
                                                              monkeypatch):
    """AsyncGRPOTrainer (trl/experimental/async_grpo, 1.16.0) built with the three forms: its AsyncRolloutWorker's
    kwargs pickle (the check AsyncRolloutWorker.start runs before spawning, async_rollout_worker.py:1208-1216), and
    in a spawned process they score a group as `_AsyncRolloutLoop._score_group` calls them (lines 1026-1037:
    `reward_func(**kwargs) if is_async_callable(reward_func) else asyncio.to_thread(reward_func, **kwargs)`, with
    the dataset columns repeated per generation, lines 613-617). Mocked: `get_peak_flops_per_device`, which asks
    CUDA for the device name (no GPU here), and the weight transfer to a vLLM server (none runs here)."""
    pytest.importorskip("trl")
    agt = pytest.importorskip("trl.experimental.async_grpo.async_grpo_trainer")
    from datasets import Dataset
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer

    monkeypatch.setattr(agt, "get_peak_flops_per_device", lambda *a, **k: 1e12)

    class NoWeightSync:
        def __getattr__(self, name):
            return lambda *a, **k: None

    settings = {"base_url": sdk_service.url, "api_key": API_KEY, "aggregation": "min"}
    rewards = [PRMReward(**settings), AsyncPRMReward(**settings, name="repirl_prm_async"),
               functools.partial(repirl_prm, repirl_settings=settings)]
    ds = Dataset.from_dict({"prompt": ["Question: x\nSolution:\n"] * 2, "question": [TOY_QUESTION] * 2})
    args = AsyncGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_steps=1,
                           num_generations=2, per_device_train_batch_size=2)
    trainer = AsyncGRPOTrainer(model=str(toy_policy), reward_funcs=rewards, args=args, train_dataset=ds,
                               weight_transfer=NoWeightSync())
    blob = pickle.dumps(trainer.rollout_worker._loop_kwargs)  # what AsyncRolloutWorker.start checks and sends
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    row = {"prompt": "Question: x\nSolution:\n", "question": TOY_QUESTION}
    child = ctx.Process(target=trl_child.score_group, args=(blob, row, [RIGHT, WRONG], results))
    child.start()
    got = results.get(timeout=120)
    child.join(timeout=30)
    assert not isinstance(got, str), got  # a traceback from the child
    want = expected(client, [RIGHT, WRONG])
    assert len(got) == 3 and all(r == pytest.approx(want) for r in got)


def test_search_and_learn_prm_shape(sdk_service, client):
    """search-and-learn's PRM contract (huggingface/search-and-learn at 6f81cac): `score(questions, outputs)` ->
    per question, per completion, per step a probability (src/sal/models/reward_models.py:84-87, softmax at the step
    tags, lines 49-61), aggregated by `aggregate_scores` with min / math.prod / [-1] (src/sal/utils/score.py:33-43),
    which raise on []. The toy PRM is an uncalibrated token-reward PRM: each value is sigmoid(raw step reward)."""
    prm = RepirlPRM(None, base_url=sdk_service.url, api_key=API_KEY)
    out = prm.score([TOY_QUESTION, TOY_QUESTION], [[RIGHT, WRONG], ["", "  \n\n "]])
    assert len(out) == 2 and len(out[0]) == 2 and out[1] == [[0.0], [0.0]]  # never [] (was [[], []])
    assert [len(s) for s in out[0]] == [3, 3] and prm.value_kind == "sigmoid"
    direct = client.score(items=[(TOY_QUESTION, RIGHT_STEPS), (TOY_QUESTION, WRONG_STEPS)]).data
    assert out[0][0] == pytest.approx([sigmoid(r) for r in direct[0].step_rewards], abs=1e-12)
    assert out[0][1] == pytest.approx([sigmoid(r) for r in direct[1].step_rewards], abs=1e-12)
    assert all(0.0 < v < 1.0 for steps in out[0] for v in steps)
    for steps in out[0] + out[1]:  # sal's own aggregations run on every entry
        assert 0.0 <= min(steps) <= 1.0 and 0.0 <= math.prod(steps) <= 1.0 and 0.0 <= steps[-1] <= 1.0
    with pytest.raises(Exception, match="limit"):
        prm.score([TOY_QUESTION], [["y" * 500]])
