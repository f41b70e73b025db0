"""vLLM's pooling API (POST /pooling, POST /classify) on the running service, checked with vLLM's own protocol
classes (vllm 0.32 is installed: vllm/entrypoints/pooling/pooling/protocol.py:102-114 `PoolingResponse`,
classify/protocol.py:58-73 `ClassificationResponse`) and against the PRMs' own forward passes in transformers."""

from __future__ import annotations

import base64
import uuid

import httpx
import numpy as np
import pytest
import torch

from repirl.scoring.tiny_prms import build_tiny_prm
from tests.server.conftest import ServerProc

TAG = "<extra_0>"


@pytest.fixture(scope="module")
def prms(server_prms, tmp_path_factory):
    d = tmp_path_factory.mktemp("pooling_prms")
    return {"qwen": build_tiny_prm(d / "qwen-extra0", "qwen-step-tag", step_tag=TAG), "tr": server_prms["token-reward"]}


@pytest.fixture(scope="module")
def http(prms, tmp_path_factory):
    log = tmp_path_factory.mktemp("pooling_server") / "server.log"
    srv = ServerProc(["--engine", "hf", "--prm", f"qwen={prms['qwen']}", "--prm", f"tr={prms['tr']}"],
                     log=log).wait_ready()
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c
    srv.stop()


@pytest.fixture(scope="module")
def vllm_classes():
    pytest.importorskip("vllm")
    from vllm.entrypoints.pooling.classify.protocol import ClassificationResponse
    from vllm.entrypoints.pooling.pooling.protocol import PoolingResponse

    return PoolingResponse, ClassificationResponse


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _qwen_p_good(folder, ids: list[int]) -> list[float]:
    """Qwen2.5-Math-PRM's recipe (its model card's `make_step_rewards`): softmax over the two labels, P(label 1),
    at each step tag, from the model's own forward pass."""
    from repirl.scoring.formats import Qwen2ForProcessRewardModel

    model = Qwen2ForProcessRewardModel.from_pretrained(folder)
    tag = _tokenizer(folder).convert_tokens_to_ids(TAG)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    return [float(torch.softmax(logits[i], -1)[1]) for i, t in enumerate(ids) if t == tag]


def _token_values(folder, ids: list[int]) -> list[float]:
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, :, 0].tolist()


def test_vllm_docs_process_reward_request_round_trips(http, prms, vllm_classes):
    """vLLM's PRM example (docs/models/pooling_models/reward.md, "Process Reward Models", vllm-project/vllm@063da22:
    `llm.encode("Hello, my name is<extra_0><extra_0><extra_0>", pooling_task="token_classify")` on
    Qwen/Qwen2.5-Math-PRM-7B; online: the same input to `/pooling`) on a tiny Qwen2ForProcessRewardModel whose step tag
    is <extra_0>: one [P(bad), P(good)] row per tag, as vLLM's STEP pooler gives (model_executor/layers/pooler/
    tokwise/methods.py:104-139), parsed by vLLM's PoolingResponse."""
    PoolingResponse, _ = vllm_classes
    text = "Hello, my name is" + TAG * 3
    r = http.post("/pooling", json={"model": "qwen", "input": text})
    assert r.status_code == 200, r.text
    resp = PoolingResponse.model_validate(r.json())
    ids = _tokenizer(prms["qwen"]).encode(text)
    want = _qwen_p_good(prms["qwen"], ids)
    rows = resp.data[0].data
    assert len(rows) == 3 and resp.usage.prompt_tokens == len(ids) and resp.model == "qwen"
    assert [row[1] for row in rows] == pytest.approx(want, abs=1e-5)
    assert [row[0] + row[1] for row in rows] == pytest.approx([1.0] * 3)


def test_qwen_model_card_chat_request_and_cache(http, prms, vllm_classes):
    """Qwen2.5-Math-PRM's model card request (system, user, assistant = steps joined and closed by <extra_0>, chat
    template applied) as vLLM's chat form (`messages`, base/protocol.py:228-314): a row per step; the same request
    again is served from repirl's step cache (usage.tokens_computed 0), and one more step costs only its tokens."""
    PoolingResponse, _ = vllm_classes
    steps = ["3 + 4 = 7", "7 * 2 = 14", "Answer: 14"]
    q = f"Start with 3. Add 4, then multiply by 2. ({uuid.uuid4().hex[:6]})"

    def messages(k):
        return [{"role": "system", "content": "Please reason step by step."}, {"role": "user", "content": q},
                {"role": "assistant", "content": TAG.join(steps[:k]) + TAG}]

    first = PoolingResponse.model_validate(http.post("/pooling", json={"model": "qwen", "messages": messages(2)}).json())
    tok = _tokenizer(prms["qwen"])
    ids = tok.encode(tok.apply_chat_template(messages(2), tokenize=False), add_special_tokens=False)
    assert [row[1] for row in first.data[0].data] == pytest.approx(_qwen_p_good(prms["qwen"], ids), abs=1e-5)
    assert first.usage.tokens_computed > 0
    again = http.post("/pooling", json={"model": "qwen", "messages": messages(2)}).json()
    assert again["usage"]["tokens_computed"] == 0 and again["usage"]["cached_steps"] == 2
    assert again["data"] == first.model_dump()["data"]
    longer = http.post("/pooling", json={"model": "qwen", "messages": messages(3)}).json()
    assert len(longer["data"][0]["data"]) == 3 and longer["usage"]["cached_steps"] == 2
    assert [row[1] for row in longer["data"][0]["data"][:2]] == pytest.approx([row[1] for row in first.data[0].data],
                                                                               abs=1e-6)
    ids3 = tok.encode(tok.apply_chat_template(messages(3), tokenize=False), add_special_tokens=False)
    last_tag = max(i for i, t in enumerate(ids3) if t == tok.convert_tokens_to_ids(TAG))
    # the KV cache resumes after step 2's tag: only step 3's tokens are computed (the template's tail has no tag)
    assert longer["usage"]["tokens_computed"] == last_tag + 1 - (max(i for i, t in enumerate(ids)
                                                                     if t == tok.convert_tokens_to_ids(TAG)) + 1)


@pytest.mark.parametrize("flag", ["use_activation", "activation"])
def test_verl_reward_loop_classify(http, prms, vllm_classes, flag):
    """veRL's reward loop (verl 0.9.1, verl/experimental/reward_loop/reward_loop.py:231-242 `compute_score_disrm`:
    `{"model": config.reward.reward_model.model_path, "input": prompt, "use_activation": False}` to `/classify`,
    reads `output["data"][-1]["probs"][-1]`; older veRL and vLLM spell it `activation`): the model is named by its
    folder, and probs[-1] is the PRM's score (the qwen PRM's default aggregation, min over its steps)."""
    _, ClassificationResponse = vllm_classes
    text = f"Question {uuid.uuid4().hex[:6]}: 2+3?\nSolution:\n2+3=5{TAG}Answer: 5{TAG}"
    r = http.post("/classify", json={"model": str(prms["qwen"]), "input": text, flag: False})
    assert r.status_code == 200, r.text
    resp = ClassificationResponse.model_validate(r.json())
    want = min(_qwen_p_good(prms["qwen"], _tokenizer(prms["qwen"]).encode(text)))
    assert resp.data[-1].probs[-1] == pytest.approx(want, abs=1e-5) and resp.data[-1].num_classes == 2


def test_token_reward_rows_float_and_base64(http, prms, vllm_classes):
    """A token-reward PRM (Qwen2ForTokenClassification, num_labels 1) on /pooling: one [value] row per token, as
    vLLM's ALL pooler gives for token_classify; encoding_format base64 is vLLM's float32 bytes (vllm/entrypoints/
    pooling/utils.py:86-92, utils/serial_utils.py:74-94); token-id input (base/protocol.py:214) gives the same."""
    PoolingResponse, ClassificationResponse = vllm_classes
    text = f"Question: what is 2+3? {uuid.uuid4().hex[:6]}\nSolution:\n2+3 = 5\n\nAnswer: 5\n\n"
    ids = _tokenizer(prms["tr"]).encode(text)
    want = _token_values(prms["tr"], ids)
    body = PoolingResponse.model_validate(http.post("/pooling", json={"model": "tr", "input": text,
                                                                      "use_activation": False}).json())
    assert [row[0] for row in body.data[0].data] == pytest.approx(want, abs=1e-4)
    b64 = PoolingResponse.model_validate(http.post("/pooling", json={"model": "tr", "input": [ids],
                                                                     "encoding_format": "base64"}).json())
    decoded = np.frombuffer(base64.b64decode(b64.data[0].data), dtype=np.float32)
    assert decoded.tolist() == pytest.approx(want, abs=1e-4)
    cls = ClassificationResponse.model_validate(http.post("/classify", json={"model": "tr", "input": text}).json())
    assert cls.data[0].probs == pytest.approx([float(np.mean(want))], abs=1e-4)  # mean-token: every token scored


@pytest.mark.parametrize("body, status, param", [
    ({"model": "qwen", "input": "x", "messages": [{"role": "user", "content": "x"}]}, 422, "input"),
    ({"model": "qwen"}, 422, "input"),
    ({"model": "qwen", "input": [[1, 2, 99999]]}, 400, "input"),
    ({"model": "nope", "input": "x"}, 404, "model"),
    ({"model": "qwen", "input": "x" + TAG, "use_activation": False}, 400, "use_activation"),
    ({"model": "qwen", "input": "x" * 600 + TAG}, 413, "input"),
    ({"model": "qwen", "input": "x" + TAG, "encoding_format": "bytes"}, 400, "encoding_format"),
    ({"model": "qwen", "input": "x" + TAG, "task": "embed"}, 400, "task"),
])
def test_refusals_name_the_field(http, body, status, param):
    r = http.post("/pooling", json=body)
    assert r.status_code == status, r.text
    if param:
        assert r.json()["error"]["param"] == param


def test_classify_without_a_step_tag_is_400_and_pooling_gives_no_rows(http):
    """vLLM's STEP pooler returns no row for an input without a tag; /classify has no score to give then."""
    assert http.post("/pooling", json={"model": "qwen", "input": "no tag here"}).json()["data"][0]["data"] == []
    r = http.post("/classify", json={"model": "qwen", "input": "no tag here"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


@pytest.mark.parametrize("body, param, message", [
    # far over the context: refused on its length, before tokenizing (repirl.token_bounds); "at least" says so
    ({"model": "qwen", "input": "x" * 200_000 + TAG}, "input", "at least"),
    ({"model": "qwen", "input": ["x" + TAG, "x" * 200_000 + TAG]}, "input[1]", "at least"),
    ({"model": "qwen", "messages": [{"role": "user", "content": "x" * 200_000}]}, "messages", "at least"),
    ({"model": "qwen", "input": ["x" + TAG] * 65}, "input", "65 inputs exceeds the limit of 64"),
])
def test_long_and_many_inputs_are_413_naming_the_field(http, body, param, message):
    r = http.post("/pooling", json=body)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["param"] == param and message in r.json()["error"]["message"], r.text


def test_over_long_and_too_many_inputs_are_refused_before_anything_is_tokenized(prms):
    """Before, /pooling tokenized every input (a 1 MB text: 1.2 s of CPU with the demo PRM's tokenizer) and then
    refused it with a 413: the count of a list of texts, and each text's length, are checked first now."""
    from types import SimpleNamespace

    from server.api.pooling.protocol import PoolingRequest
    from server.api.pooling.serving import token_ids
    from server.errors import LimitExceeded

    class Counting:  # the PRM's tokenizer, counting what it tokenizes
        def __init__(self, tok):
            self.tok, self.encoded = tok, 0

        def __getattr__(self, name):
            return getattr(self.tok, name)

        def encode(self, text, **kwargs):
            self.encoded += 1
            return self.tok.encode(text, **kwargs)

    tok = Counting(_tokenizer(prms["qwen"]))
    runtime = SimpleNamespace(name="qwen", max_tokens=512,
                              scorer=SimpleNamespace(encoder=SimpleNamespace(tokenizer=tok)))
    for body in ({"input": "x" * 1_000_000}, {"input": ["x"] * 65}, {"input": ["x", "x" * 100_000]},
                 {"messages": [{"role": "user", "content": "x" * 100_000}]}):
        with pytest.raises(LimitExceeded):
            token_ids(runtime, PoolingRequest(model="qwen", **body), max_items=64)
    assert tok.encoded == 1  # the short first text of the third body only
    assert token_ids(runtime, PoolingRequest(model="qwen", input=["x" + TAG] * 2), max_items=64) == \
        [tok.tok.encode("x" + TAG)] * 2 and tok.encoded == 3


BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"  # 10^10 loop turns


@pytest.mark.parametrize("extra, param", [({"chat_template": BOMB}, "chat_template"),
                                          ({"chat_template_kwargs": {"chat_template": BOMB}}, "chat_template_kwargs")])
def test_a_chat_template_sent_with_the_request_is_refused_unless_trusted(http, extra, param):
    """vLLM refuses request chat templates unless `--trust-request-chat-template` is set
    (vllm/entrypoints/pooling/base/io_processor.py `_validate_chat_template`); repirl rendered them. Eight requests
    with this template held every text-work thread for good: a /v1/score sent 3 s later timed out after 20 s
    (scratch script on the previous commit). Now a 400 naming the field, and the service answers the next request.
    (Rendering a sent template with the flag on: tests/clients/test_sdk_pooling.py.)"""
    msgs = [{"role": "user", "content": "x"}]
    r = http.post("/pooling", json={"model": "qwen", "messages": msgs, **extra}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert "--trust-request-chat-template" in r.json()["error"]["message"]
    assert http.post("/pooling", json={"model": "qwen", "messages": msgs}, timeout=30).status_code == 200
