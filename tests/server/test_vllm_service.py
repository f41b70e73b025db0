"""The vLLM pooling engine inside the real service: `python -m server --engine vllm` under uvicorn, reached over HTTP,
its /v1/score results (token rewards included, single and micro-batched concurrent requests) against the
transformers engine on the same PRM to 1e-4."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from repirl.scoring.loader import load_scorer
from repirl.vllm_setup import vllm_available
from tests.server.conftest import ServerProc

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]


@pytest.fixture(scope="module")
def hf_reference(server_prms):
    return load_scorer(server_prms["token-reward"], engine="hf", kv_cache_tokens=0)


def _assert_close(got: dict, want) -> None:
    assert got["step_rewards"] == pytest.approx(want.step_rewards, abs=1e-4)
    assert len(got["token_rewards"]) == len(want.token_rewards)
    for g, w in zip(got["token_rewards"], want.token_rewards):
        assert g == pytest.approx(w, abs=1e-4)


def test_vllm_engine_in_service_matches_hf(vllm_server, hf_reference):
    with httpx.Client(base_url=vllm_server.url, timeout=120) as c:
        cards = c.get("/v1/models").json()["data"]
        assert [(m["id"], m["engine"]) for m in cards if m["kind"] == "prm"] == [("tr", "vllm")]
        assert c.get("/readyz").status_code == 200
        tag = uuid.uuid4().hex[:8]
        items = [(f"What is 12+7? ({tag})", ["12+7 = 19", "Answer: 19"]),
                 (f"What is 12+7? ({tag})", ["12+7 = 18", "so 18", "Answer: 18"]),
                 (f"3*4? ({tag})", ["3*4=12"])]
        body = c.post("/v1/score", json={"items": [{"question": q, "steps": s} for q, s in items],
                                         "return_token_rewards": True}).json()
        # items 0 and 1 share their prompt: the engine computes it once and the other reads vLLM's prefix cache
        # (whole 32-token blocks; repirl/scoring/vllm_engine.py "Prefix reuse")
        assert 0 < body["usage"]["tokens_computed"] < body["usage"]["tokens"]
        for got, want in zip(body["data"], hf_reference.score(items)):
            _assert_close(got, want)

        # concurrent single-item requests share vLLM batches; each still gets its own item's rewards
        singles = [(f"q{i} ({tag}): {i}+{i}?", [f"{i}+{i} = {2 * i}", f"Answer: {2 * i}"]) for i in range(8)]

        def post(item):
            return c.post("/v1/score", json={"question": item[0], "steps": item[1],
                                             "return_token_rewards": True}).json()["data"][0]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(post, singles))
        for got, want in zip(results, hf_reference.score(singles)):
            _assert_close(got, want)


def test_pooling_api_on_the_vllm_engine(vllm_server, server_prms):
    """vLLM's `/pooling` (vllm/entrypoints/pooling/pooling/protocol.py:102-114) served by repirl's vLLM engine: one
    [value] row per token equal to the PRM's own forward pass; the same input extended by a step reads the first
    one's whole 32-token blocks from vLLM's prefix cache (usage.tokens_computed < prompt_tokens)."""
    from tests.server.test_pooling import _token_values
    from transformers import AutoTokenizer

    prefix = f"Question: what is 2+3? {uuid.uuid4().hex[:8]} and then add 40 to it\nSolution:\n2+3 = 5\n\n"
    text = prefix + "5+40 = 45\n\nAnswer: 45\n\n"
    with httpx.Client(base_url=vllm_server.url, timeout=120) as c:
        first = c.post("/pooling", json={"input": prefix}).json()
        body = c.post("/pooling", json={"input": text}).json()
    ids = AutoTokenizer.from_pretrained(server_prms["token-reward"]).encode(text)
    assert [row[0] for row in body["data"][0]["data"]] == pytest.approx(_token_values(server_prms["token-reward"], ids),
                                                                        abs=1e-4)
    assert first["usage"]["tokens_computed"] == first["usage"]["prompt_tokens"]
    assert body["usage"]["tokens_computed"] == len(ids) - first["usage"]["prompt_tokens"] // 32 * 32


def test_second_engine_process_starts_beside_the_first(vllm_server, server_prms, tmp_path):
    """vLLM's CPU backend used to reserve 92% of memory per engine, so a second engine-holding process (a training run
    beside the service, the test suite) could not start; repirl sets an explicit KV cache (repirl/vllm_setup.py)."""
    second = ServerProc(["--engine", "vllm", "--prm", f"tr={server_prms['token-reward']}"],
                        env={"REPIRL_VLLM_MAX_MODEL_LEN": "256"}, log=tmp_path / "server.log")
    try:
        second.wait_ready(timeout=300)
        item = {"question": "What is 2+2?", "steps": ["2+2=4", "Answer: 4"]}
        with httpx.Client(timeout=120) as c:
            a = c.post(vllm_server.url + "/v1/score", json=item).json()["data"][0]["step_rewards"]
            b = c.post(second.url + "/v1/score", json=item).json()["data"][0]["step_rewards"]
        assert a == pytest.approx(b, abs=1e-5)
    finally:
        second.stop()


def test_engine_that_cannot_fit_exits_2_naming_the_setting(server_prms):
    """An engine start that cannot fit ends `repirl serve` with exit 2 and one line naming the setting, no traceback."""
    import subprocess
    import sys

    from tests.server.conftest import REPO

    p = subprocess.run([sys.executable, "-m", "server", "--engine", "vllm", "--prm", str(server_prms["token-reward"])],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "REPIRL_VLLM_KV_CACHE_GIB": "100000"})
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "REPIRL_VLLM_KV_CACHE_GIB" in lines[0] and "GiB memory is free" in lines[0], lines
    assert "Traceback" not in p.stderr + p.stdout
