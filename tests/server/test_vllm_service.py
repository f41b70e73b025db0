"""The vLLM pooling engine inside the real service: `python -m server --engine vllm` under uvicorn, reached over HTTP,
its /v1/score results (token rewards included, single and micro-batched concurrent requests) against the
transformers engine on the same PRM to 1e-4."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from repirl.scoring.loader import load_scorer
from repirl.scoring.vllm_engine import vllm_available
from tests.server.conftest import ServerProc

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]


@pytest.fixture(scope="session")
def vllm_server(server_prms, tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm_server")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "REPIRL_VLLM_MAX_MODEL_LEN": "256"}
    srv = ServerProc(["--engine", "vllm", "--prm", f"tr={server_prms['token-reward']}"], env=env,
                     log=d / "server.log").wait_ready(timeout=300)
    yield srv
    srv.stop()


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
        assert body["usage"]["tokens_computed"] == body["usage"]["tokens"] > 0
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
