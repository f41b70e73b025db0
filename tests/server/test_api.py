"""Every endpoint of the running service over HTTP: models, score (every format), rerank, cache, auth, limits."""

from __future__ import annotations

import uuid

import httpx
import pytest

from repirl.scoring.loader import load_scorer
from tests.server.conftest import API_KEY, HASHED_ONLY_KEY, metric

MODELS = {"tr": "token-reward", "qwen": "qwen-step-tag", "shepherd": "math-shepherd", "implicit": "implicit"}


@pytest.fixture(scope="module")
def direct(server_prms):
    """The same PRMs scored in this process, without the service (the reference for HTTP results)."""
    return {name: load_scorer(server_prms[fmt], engine="hf", kv_cache_tokens=0) for name, fmt in MODELS.items()}


def _q() -> str:
    return f"What is 2+3? ({uuid.uuid4().hex[:8]})"  # a fresh question: no cache entry yet


def test_models_lists_every_prm(client):
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert {k: cards[k]["format"] for k in MODELS} == MODELS
    assert all(cards[k]["engine"] == "hf" and len(cards[k]["revision"]) == 16 for k in MODELS)


def test_models_say_max_model_len_and_parse_as_vllms(client, direct):
    """/v1/models gives each PRM's `max_model_len` as vLLM's ModelCard does (vllm 0.32,
    vllm/entrypoints/serve/engine/protocol.py:105-113): the longest trajectory it scores, here the service's
    `max_tokens: 400` (the tiny PRMs hold 512 positions). One token more is a 413, that many is scored."""
    from vllm.entrypoints.serve.engine.protocol import ModelList as VllmModelList

    body = client.get("/v1/models").json()
    assert {c["id"]: c["max_model_len"] for c in body["data"]} == {k: 400 for k in MODELS}
    assert [m.max_model_len for m in VllmModelList.model_validate(body).data] == [400] * len(MODELS)
    q = _q()

    def steps(n_tokens: int) -> list[str]:  # two steps of digits (one token each in the byte-level tiny tokenizer)
        fixed = len(direct["tr"].encoder.encode(q, ["7", "7"]).ids) - 2
        first = (n_tokens - fixed) // 2
        out = ["7" * first, "7" * (n_tokens - fixed - first)]
        assert len(direct["tr"].encoder.encode(q, out).ids) == n_tokens
        return out

    ok = client.post("/v1/score", json={"model": "tr", "question": q, "steps": steps(400)})
    assert ok.status_code == 200 and ok.json()["usage"]["tokens"] == 400, ok.text
    too_long = client.post("/v1/score", json={"model": "tr", "question": q, "steps": steps(401)})
    assert too_long.status_code == 413, too_long.text


@pytest.mark.parametrize("name", list(MODELS))
def test_score_every_format_matches_direct_engine(client, direct, name):
    q, steps = _q(), ["2+3 = 5", "Answer: 5"]
    r = client.post("/v1/score", json={"model": name, "question": q, "steps": steps, "return_token_rewards": True})
    assert r.status_code == 200, r.text
    body = r.json()
    want = direct[name].score([(q, steps)])[0]
    got = body["data"][0]
    assert got["step_rewards"] == pytest.approx(want.step_rewards, abs=1e-5)
    assert (got.get("token_rewards") is None) == (want.token_rewards is None)
    assert body["model"] == name and body["usage"]["tokens"] == want.tokens_total


def test_score_batch_form_and_aggregations(client, direct):
    items = [{"question": _q(), "steps": ["2+3 = 5", "Answer: 5"]}, {"question": _q(), "steps": ["2+3 = 6"]}]
    for how in ["mean-token", "min", "last", "prod", "sum"]:
        body = client.post("/v1/score", json={"model": "tr", "items": items, "aggregation": how}).json()
        assert body["aggregation"] == how and [d["index"] for d in body["data"]] == [0, 1]
        from repirl.scoring.aggregate import aggregate

        for item, d in zip(items, body["data"]):
            want = direct["tr"].score([(item["question"], item["steps"])])[0]
            assert d["score"] == pytest.approx(aggregate(want.step_rewards, how, want.token_rewards), abs=1e-5)
            assert "token_rewards" not in d  # only on request


def test_redis_cache_hit_miss_and_partial(client, redis_main):
    import redis

    q = _q()
    hits0 = metric(client, "repirl_cache_hits_total", model="tr")
    first = client.post("/v1/score", json={"model": "tr", "question": q, "steps": ["a", "b"]}).json()
    assert first["usage"]["cached_steps"] == 0 and first["usage"]["tokens_computed"] > 0
    second = client.post("/v1/score", json={"model": "tr", "question": q, "steps": ["a", "b"]}).json()
    assert second["usage"]["cached_steps"] == 2 and second["usage"]["tokens_computed"] == 0
    assert second["data"][0]["step_rewards"] == first["data"][0]["step_rewards"]
    assert metric(client, "repirl_cache_hits_total", model="tr") == hits0 + 2
    third = client.post("/v1/score", json={"model": "tr", "question": q, "steps": ["a", "b", "c"]}).json()
    assert third["data"][0]["cached_steps"] == 2
    assert third["data"][0]["step_rewards"][:2] == pytest.approx(first["data"][0]["step_rewards"], abs=1e-5)
    r = redis.Redis(port=redis_main.port)
    keys = r.keys(f"repirl:v1:{first['revision']}:*")
    assert len(keys) >= 3 and all(0 < r.ttl(k) <= 7 * 86400 for k in keys)


def test_poisoned_cache_value_is_a_miss(client, redis_main):
    import redis

    q = _q()
    first = client.post("/v1/score", json={"model": "tr", "question": q, "steps": ["a"]}).json()
    r = redis.Redis(port=redis_main.port)
    before = set(r.keys("repirl:v1:*"))
    orig = client.post("/v1/score", json={"model": "tr", "question": q + "!", "steps": ["a"]}).json()
    (new_key,) = set(r.keys("repirl:v1:*")) - before
    r.set(new_key, b"\x80\x04garbage")  # not JSON (e.g. a pickle): must be ignored, never trusted
    again = client.post("/v1/score", json={"model": "tr", "question": q + "!", "steps": ["a"]}).json()
    # a miss: recomputed (the engine's own KV cache may serve the tokens), and the right value comes back
    assert again["usage"]["cached_steps"] == 0
    assert again["data"][0]["step_rewards"] == orig["data"][0]["step_rewards"]
    assert first["usage"]["items"] == 1


def test_rerank_ranking_and_voting(client, direct):
    q = _q()
    cands = ["2+3 = 5\n\nAnswer: 5", {"steps": ["2+3 = 6", "Answer: 6"]}, "2+3 is 5\n\nAnswer: 5", "Answer: 7"]
    body = client.post("/v1/rerank", json={"model": "tr", "question": q, "candidates": cands}).json()
    scores = {r["index"]: r["score"] for r in body["results"]}
    assert body["ranking"] == sorted(range(4), key=lambda i: -scores[i])
    assert body["selected"]["index"] == body["ranking"][0]
    assert [r["answer"] for r in sorted(body["results"], key=lambda r: r["index"])] == ["5", "6", "5", "7"]
    want = direct["tr"].score([(q, ["2+3 = 6", "Answer: 6"])])[0]
    assert body["results"][body["ranking"].index(1)]["step_rewards"] == pytest.approx(want.step_rewards, abs=1e-5)
    maj = client.post("/v1/rerank", json={"model": "tr", "question": q, "candidates": cands, "voting": "majority"}).json()
    assert maj["selected"]["answer"] == "5" and maj["selected"]["votes"]["5"] == 2.0
    assert maj["selected"]["index"] == min((0, 2), key=lambda i: body["ranking"].index(i))
    w = client.post("/v1/rerank", json={"model": "qwen", "question": q, "candidates": ["x<|im_start|>Answer: 5",
                    "y<|im_start|>Answer: 6"], "voting": "weighted", "top_n": 1}).json()
    assert len(w["results"]) == 1 and set(w["selected"]["votes"]) == {"5", "6"}
    assert w["selected"]["answer"] == max(w["selected"]["votes"], key=w["selected"]["votes"].get)


def test_auth(main_server):
    with httpx.Client(base_url=main_server.url, timeout=30) as anon:
        r = anon.post("/v1/score", json={"question": "q", "steps": ["s"]})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anon.get("/v1/models", headers={"X-API-Key": HASHED_ONLY_KEY}).status_code == 200
        assert anon.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        for public in ["/livez", "/readyz"]:
            assert anon.get(public).status_code == 200, public
        # issue 22.10: /metrics is behind the key when keys are set (not in the default public_paths)
        assert anon.get("/metrics").status_code == 401
        assert anon.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert anon.get("/docs").status_code == 401  # schema pages are behind the key when keys are on


@pytest.mark.parametrize("payload,status,param", [
    ({"items": [{"question": "q", "steps": ["s"]}] * 9}, 413, "items"),
    ({"question": "q", "steps": ["s"] * 11}, 413, "body.steps"),
    ({"items": [{"question": "q", "steps": ["s"]}, {"question": "q", "steps": ["x" * 301]}]}, 413, "items[1].steps[0]"),
    ({"question": "q" * 301, "steps": ["s"]}, 413, "body.question"),
    ({"question": "q", "steps": ["y" * 250, "z" * 250]}, 413, "body"),  # 400-token limit
    ({"question": "q", "steps": []}, 422, None),
    ({"question": "q", "steps": ["s"], "aggregation": "median"}, 422, "aggregation"),
    ({"question": "q", "steps": ["s"], "model": "nope"}, 404, "model"),
])
def test_limits_and_errors_name_the_field(client, payload, status, param):
    r = client.post("/v1/score", json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param"}
    if param is not None:
        assert err["param"] == param


def test_body_size_limit(client):
    r = client.post("/v1/score", content=b'{"question": "' + b"q" * 30000 + b'", "steps": ["s"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    assert client.post("/v1/rerank", json={"question": "q", "candidates": ["a"] * 9}).json()["error"]["param"] == "candidates"


def test_readyz_and_metrics(client):
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and set(ready["engines"]) == set(MODELS)
    assert ready["cache"] == {"kind": "redis", "healthy": True}
    text = client.get("/metrics").text
    for name in ["repirl_requests_total", "repirl_request_latency_seconds", "repirl_batch_items",
                 "repirl_tokens_computed_total", "repirl_tokens_reused_total", "repirl_cache_hits_total",
                 "repirl_cache_misses_total", "repirl_cache_errors_total"]:
        assert name in text
    assert metric(client, "repirl_tokens_computed_total") > 0 and metric(client, "repirl_tokens_reused_total") > 0
