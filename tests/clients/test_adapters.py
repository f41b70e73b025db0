"""The trainer adapters against the real service: TRL (a real GRPOTrainer step, plus direct calls that check
batching, limits learnt from the service and per-item failures), veRL, search-and-learn, and OpenRLHF's remote
reward protocol sent exactly as OpenRLHF's client sends it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys

import pytest

from repirl.policy.toy import TOY_QUESTION
from repirl_client import Client
from repirl_client.adapters.search_and_learn import RepirlPRM
from repirl_client.adapters.trl import AsyncPRMReward, PRMReward
from repirl_client.adapters.verl import VerlPRMScore
from tests.clients.conftest import API_KEY, MAX_ITEMS, OPENRLHF_PATH

RIGHT = "3+4=7\n\n7*2=14\n\nAnswer: 14\n\n"
WRONG = "3+4=8\n\n8*2=16\n\nAnswer: 16"


def expected(client: Client, completions: list[str], aggregation: str = "min") -> list[float]:
    items = [(TOY_QUESTION, [s.strip() for s in c.split("\n\n") if s.strip()]) for c in completions]
    return [d.score for d in client.score(items=items, aggregation=aggregation).data]


def variants(n: int) -> list[str]:
    """n distinct, scoreable completions."""
    return [f"3+4=7\n\n7*2={10 + i}\n\nAnswer: {10 + i}" for i in range(n)]


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

    rewards = [Recording(base_url=sdk_service.url, api_key=API_KEY, aggregation="min"),
               AsyncRecording(base_url=sdk_service.url, api_key=API_KEY, aggregation="min", name="repirl_prm_async")]
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
    assert log["rewards/repirl_prm/mean"] == pytest.approx(sum(out_b) / 4, abs=1e-5)
    assert log["rewards/repirl_prm_async/mean"] == pytest.approx(sum(out_a) / 4, abs=1e-5)
    assert log["repirl_prm/failed"] == 0.0 and math.isfinite(log["loss"])


def test_verl_compute_score_sync_async_and_batch(sdk_service, client):
    verl = VerlPRMScore(base_url=sdk_service.url, api_key=API_KEY, aggregation="min")
    info = {"question": TOY_QUESTION, "split": "train", "index": 0}
    one = verl.compute_score("toy", RIGHT, "14", info)
    direct = client.score(question=TOY_QUESTION, steps=["3+4=7", "7*2=14", "Answer: 14"], aggregation="min").data[0]
    assert one == {"score": pytest.approx(direct.score), "step_scores": pytest.approx(direct.step_rewards)}
    got_async = asyncio.run(verl.compute_score_async("toy", RIGHT, "14", info))
    assert got_async == one
    batch = verl.compute_score_batch(["toy"] * 3, [RIGHT, WRONG, ""], ["14"] * 3, [info] * 3)
    assert batch[0] == one and batch[1]["score"] != one["score"] and batch[2] == {"score": 0.0, "step_scores": []}
    assert all(set(b) == {"score", "step_scores"} for b in batch)  # veRL stacks the keys into columns
    with pytest.raises(ValueError, match="question"):
        verl.compute_score("toy", RIGHT, "14", {"index": 0})


def test_verl_module_functions_read_the_environment(sdk_service, tmp_path):
    """veRL loads `custom_reward_function.path` as a file and calls `name`: run that in a fresh process."""
    import repirl_client.adapters.verl as mod

    script = (f"import importlib.util, asyncio, json\n"
              f"spec = importlib.util.spec_from_file_location('custom_module', {mod.__file__!r})\n"
              f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              f"info = {{'question': {TOY_QUESTION!r}}}\n"
              f"a = m.compute_score('toy', {RIGHT!r}, '14', info)\n"
              f"b = asyncio.run(m.compute_score_async('toy', {RIGHT!r}, '14', info))\n"
              f"print(json.dumps([a, b]))\n")
    env = {**os.environ, "REPIRL_BASE_URL": sdk_service.url, "REPIRL_API_KEY": API_KEY,
           "REPIRL_PRM_AGGREGATION": "last"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    a, b = json.loads(out.stdout)
    assert a == b and a["score"] == pytest.approx(a["step_scores"][-1]) and len(a["step_scores"]) == 3


def test_search_and_learn_prm_shape(sdk_service, client):
    prm = RepirlPRM(None, base_url=sdk_service.url, api_key=API_KEY)
    out = prm.score([TOY_QUESTION, TOY_QUESTION], [[RIGHT, WRONG], [""]])
    assert len(out) == 2 and len(out[0]) == 2 and out[1] == [[]]
    assert [len(s) for s in out[0]] == [3, 3]
    direct = client.score(items=[(TOY_QUESTION, ["3+4=7", "7*2=14", "Answer: 14"]),
                                 (TOY_QUESTION, ["3+4=8", "8*2=16", "Answer: 16"])]).data
    assert out[0][0] == pytest.approx(direct[0].step_rewards) and out[0][1] == pytest.approx(direct[1].step_rewards)
    with pytest.raises(Exception, match="limit"):
        prm.score([TOY_QUESTION], [["y" * 500]])


async def _openrlhf_post(url, data, try_max_times=5):
    """OpenRLHF's `_fetch_rewards_via_http` request (openrlhf/utils/agent.py): aiohttp, json=payload, no headers."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, json=data) as response:
            response.raise_for_status()
            return await response.json()


def test_openrlhf_remote_reward_protocol(sdk_service, client):
    pytest.importorskip("aiohttp")
    url = sdk_service.url + OPENRLHF_PATH
    prompt = f"<|im_start|>user\n{TOY_QUESTION}<|im_end|>\n<|im_start|>assistant\n"  # a chat-templated prompt
    # what SingleTurnAgentExecutor sends: one query (prompt + response, decoded with special tokens), its prompt
    # and its label
    got = asyncio.run(_openrlhf_post(url, {"query": [prompt + RIGHT + "<|im_end|>"], "prompts": [prompt],
                                           "labels": ["14"]}))
    direct = client.score(question=TOY_QUESTION, steps=["3+4=7", "7*2=14", "Answer: 14"]).data[0]
    assert set(got) == {"rewards", "scores", "extra_logs"}
    assert got["rewards"] == [pytest.approx(direct.score)] and got["scores"] == [1.0]
    assert got["extra_logs"] == {"prm_score": [pytest.approx(direct.score)], "prm_steps": [3.0],
                                 "prm_failed": [0.0], "outcome": [1.0]}
    plain = "Question: x\nSolution:\n"
    batch = asyncio.run(_openrlhf_post(url + "?prm_weight=0.5&aggregation=min", {
        "query": [plain + WRONG, plain + "", plain + RIGHT], "prompts": [plain] * 3, "labels": ["14", "14", None]}))
    wrong = client.score(question="x", steps=["3+4=8", "8*2=16", "Answer: 16"], aggregation="min").data[0].score
    assert batch["extra_logs"]["outcome"] == [0.0, 0.0, 0.0] and batch["extra_logs"]["prm_failed"] == [0.0, 1.0, 0.0]
    assert batch["rewards"][0] == pytest.approx(0.5 * wrong) and batch["rewards"][1] == 0.0
    # the reward-function file form (`--reward.remote_url /path/openrlhf.py`) goes through the SDK with the key
    import repirl_client.adapters.openrlhf as mod

    script = (f"import importlib.util, json\n"
              f"spec = importlib.util.spec_from_file_location('reward_func', {mod.__file__!r})\n"
              f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              f"print(json.dumps(m.reward_func([{(prompt + RIGHT)!r}], [{prompt!r}], ['14'])))\n")
    env = {**os.environ, "REPIRL_BASE_URL": sdk_service.url, "REPIRL_API_KEY": API_KEY}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rewards"] == [pytest.approx(direct.score)]
