"""`/pooling` and `/classify` with a step-tag PRM on the vLLM engine (issue 23 item 2): a tiny random-weight
Qwen2ForProcessRewardModel whose step tag is Qwen2.5-Math-PRM's `<extra_0>`, served with `--engine vllm` (vLLM's STEP
pooler returns rows only at the tag tokens: model_executor/layers/pooler/tokwise/methods.py) and, for the reference,
with `--engine hf` from the same folder. Responses are parsed with vLLM's own protocol classes and must agree
between the engines and with the model's own forward pass (tests/server/test_pooling.py `_qwen_p_good`).

One vLLM engine start for the module (30-60 s on 2 cores), 256-token context."""

from __future__ import annotations

import uuid

import httpx
import pytest

from repirl.scoring.tiny_prms import build_tiny_prm
from repirl.vllm_setup import vllm_available
from tests.server.conftest import ServerProc
from tests.server.test_pooling import TAG, _qwen_p_good, _tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

# vLLM's docs, "Reward Usages" > "Process Reward Models" (docs/models/pooling_models/reward.md): the request for
# Qwen/Qwen2.5-Math-PRM-7B, offline `llm.encode(..., pooling_task="token_classify")`, online the same input to /pooling
DOCS_INPUT = "Hello, my name is" + TAG * 3


def _qwen_prompt(system: str, query: str, steps: list[str]) -> str:
    """The layout of vLLM's own Qwen2.5-Math-PRM test (tests/models/language/pooling/test_reward.py
    `math_step_prompts`: steps joined and closed by <extra_0>, in the im_start/im_end frame), with short steps: the
    original (~1400 bytes) does not fit the tiny byte-level PRM's 256 tokens."""
    answer = TAG.join(steps) + TAG
    return (f"<im_start>system\n{system}<im_end>\n<im_start>user\n{query}<im_end>\n"
            f"<im_start>assistant\n{answer}<im_end><|endoftext|>")


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    return build_tiny_prm(tmp_path_factory.mktemp("pooling_vllm") / "qwen-extra0", "qwen-step-tag", step_tag=TAG)


@pytest.fixture(scope="module")
def engines(qwen_prm, tmp_path_factory):
    """{"vllm": client, "hf": client}: the same folder on both engines (both started before either is waited for)."""
    d = tmp_path_factory.mktemp("pooling_vllm_servers")
    procs = {"vllm": ServerProc(["--engine", "vllm", "--prm", f"qwen={qwen_prm}"],
                                env={"REPIRL_VLLM_MAX_MODEL_LEN": "256"}, log=d / "vllm.log"),
             "hf": ServerProc(["--engine", "hf", "--prm", f"qwen={qwen_prm}"], log=d / "hf.log")}
    clients = {}
    try:
        for name, proc in procs.items():
            try:
                proc.wait_ready(timeout=300)
            except Exception:
                print((d / f"{name}.log").read_text()[-4000:])
                raise
            clients[name] = httpx.Client(base_url=proc.url, timeout=120)
        yield clients
    finally:
        for c in clients.values():
            c.close()
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def vllm_classes():
    from vllm.entrypoints.pooling.classify.protocol import ClassificationResponse
    from vllm.entrypoints.pooling.pooling.protocol import PoolingResponse

    return PoolingResponse, ClassificationResponse


def _flat(rows) -> list[float]:
    return [v for row in rows for v in row]


def _post_both(engines, path: str, body: dict) -> dict:
    out = {}
    for name, c in engines.items():
        r = c.post(path, json=body)
        assert r.status_code == 200, (name, r.text)
        out[name] = r.json()
    return out


def test_the_prm_is_served_by_each_engine(engines):
    for name, c in engines.items():
        cards = c.get("/v1/models").json()["data"]
        assert [(m["id"], m["format"], m["engine"]) for m in cards if m["kind"] == "prm"] == [
            ("qwen", "qwen-step-tag", name)]


def test_vllm_docs_prm_request_on_vllm_equals_transformers(engines, qwen_prm, vllm_classes):
    """The docs' input: one [P(bad), P(good)] row per <extra_0>, equal on both engines and to the model's forward."""
    PoolingResponse, _ = vllm_classes
    got = {name: PoolingResponse.model_validate(body)
           for name, body in _post_both(engines, "/pooling", {"model": "qwen", "input": DOCS_INPUT}).items()}
    ids = _tokenizer(qwen_prm).encode(DOCS_INPUT)
    want = _qwen_p_good(qwen_prm, ids)
    assert len(want) == 3
    for name, resp in got.items():
        rows = resp.data[0].data
        assert len(rows) == 3 and resp.usage.prompt_tokens == len(ids) and resp.model == "qwen", name
        assert [row[1] for row in rows] == pytest.approx(want, abs=1e-4), name
        assert [row[0] + row[1] for row in rows] == pytest.approx([1.0] * 3), name
    assert _flat(got["vllm"].data[0].data) == pytest.approx(_flat(got["hf"].data[0].data), abs=1e-4)


def test_qwen_prompt_batch_base64_and_classify_agree(engines, qwen_prm, vllm_classes):
    """vLLM's Qwen2.5-Math-PRM prompt layout (steps of different lengths, a tail after the last tag that gets no row),
    two inputs in one request, base64 rows, and /classify (the PRM's default aggregation: min over its steps)."""
    import base64

    import numpy as np

    PoolingResponse, ClassificationResponse = vllm_classes
    tag = uuid.uuid4().hex[:6]  # fresh steps: nothing from an earlier request in repirl's step cache
    system = "Please reason step by step."
    inputs = [_qwen_prompt(system, f"Sue has 18 flamingos ({tag}). A third turn white. How many pink?",
                           ["18/3 = 6.", "18 - 6 = 12.", "The answer is (\\boxed{12})."]),
              _qwen_prompt(system, f"What is 2+3? ({tag})", ["2+3=5", "The answer is (\\boxed{5})."])]
    plain = {k: PoolingResponse.model_validate(v)
             for k, v in _post_both(engines, "/pooling", {"model": "qwen", "input": inputs}).items()}
    tok = _tokenizer(qwen_prm)
    for i, text in enumerate(inputs):
        want = _qwen_p_good(qwen_prm, tok.encode(text))
        assert len(want) == (3, 2)[i]
        for name, resp in plain.items():
            assert [row[1] for row in resp.data[i].data] == pytest.approx(want, abs=1e-4), (name, i)
        assert _flat(plain["vllm"].data[i].data) == pytest.approx(_flat(plain["hf"].data[i].data), abs=1e-4)
    b64 = {k: PoolingResponse.model_validate(v) for k, v in _post_both(
        engines, "/pooling", {"model": "qwen", "input": inputs[1], "encoding_format": "base64"}).items()}
    for name, resp in b64.items():
        flat = np.frombuffer(base64.b64decode(resp.data[0].data), dtype=np.float32).tolist()
        assert flat == pytest.approx(_flat(plain[name].data[1].data), abs=1e-6), name
    cls = {k: ClassificationResponse.model_validate(v)
           for k, v in _post_both(engines, "/classify", {"model": str(qwen_prm), "input": inputs,
                                                         "use_activation": False}).items()}
    for i in range(2):
        want = min(row[1] for row in plain["hf"].data[i].data)
        for name, resp in cls.items():
            assert resp.data[i].probs[-1] == pytest.approx(want, abs=1e-4) and resp.data[i].num_classes == 2, name
