"""Every SDK method, blocking and asyncio, against the real service (tests/clients/conftest.py): typed results,
streams, the error per status with the service's type/message/param, and the request id on all of them."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from repirl.policy.toy import TOY_QUESTION
from repirl_client import (APITimeoutError, AsyncClient, AsyncSearchStream, AuthenticationError, Client,
                           NotFoundError, RequestTooLargeError, SearchStream, UnprocessableEntityError)
from repirl_client.types import (ChatCompletion, ChatCompletionChunk, Health, ModelList, RerankResponse,
                                 ScoreResponse, SearchResponse, SearchResultEvent, SearchStepEvent)
from tests.clients.conftest import API_KEY, MAX_ITEMS

RIGHT = ["3+4=7", "7*2=14", "Answer: 14"]
WRONG = ["3+4=8", "8*2=16", "Answer: 16"]


def _is_request_id(rid) -> bool:
    return isinstance(rid, str) and rid.startswith("req_") and len(rid) == 36


# ---------------------------------------------------------------- blocking client

def test_score_single_and_batch(client):
    one = client.score(question=TOY_QUESTION, steps=RIGHT)
    assert isinstance(one, ScoreResponse) and one.model == "tr" and len(one.data) == 1
    assert len(one.data[0].step_rewards) == 3 and one.data[0].token_rewards is None
    assert _is_request_id(one.request_id)
    batch = client.score(items=[(TOY_QUESTION, RIGHT), {"question": TOY_QUESTION, "steps": WRONG}],
                         aggregation="min", return_token_rewards=True)
    assert batch.aggregation == "min" and [d.index for d in batch.data] == [0, 1]
    assert batch.data[0].step_rewards == pytest.approx(one.data[0].step_rewards, abs=1e-6)
    assert batch.data[1].score == pytest.approx(min(batch.data[1].step_rewards))
    assert [len(t) > 0 for t in batch.data[1].token_rewards] == [True] * 3
    assert batch.request_id != one.request_id


def test_rerank(client):
    r = client.rerank(question=TOY_QUESTION, candidates=["\n\n".join(RIGHT), WRONG, RIGHT], voting="majority")
    assert isinstance(r, RerankResponse) and sorted(r.ranking) == [0, 1, 2]
    assert r.selected.answer == "14" and r.selected.votes == {"14": 2.0, "16": 1.0}
    assert {x.answer for x in r.results} == {"14", "16"} and _is_request_id(r.request_id)


def test_search_plain_and_streamed_agree(client):
    plain = client.search(question=TOY_QUESTION, strategy="beam", n=4, beam_width=2, seed=5, max_steps=6)
    assert isinstance(plain, SearchResponse) and plain.strategy == "beam" and plain.answer in {"14", "16"}
    assert plain.steps[-1] == f"Answer: {plain.answer}" and _is_request_id(plain.request_id)
    stream = client.search(question=TOY_QUESTION, strategy="beam", n=4, beam_width=2, seed=5, max_steps=6,
                           stream=True)
    assert isinstance(stream, SearchStream) and _is_request_id(stream.request_id)
    with stream:
        events = list(stream)
    steps = [e for e in events if isinstance(e, SearchStepEvent)]
    assert steps and [e.step for e in steps] == list(range(1, len(steps) + 1))
    assert all(c.steps and len(c.step_rewards) == len(c.steps) for e in steps for c in e.beams + e.completed)
    assert isinstance(events[-1], SearchResultEvent) and stream.result is events[-1].result
    got = events[-1].result
    assert (got.answer, got.steps, got.score) == (plain.answer, plain.steps, pytest.approx(plain.score))
    assert got.request_id == stream.request_id


def test_particle_search_with_a_budget_streams_typed_particle_events(client):
    stream = client.search(question=TOY_QUESTION, strategy="particle-gibbs", n=4, sweeps=2, reference_particles=1,
                           ess_threshold=1.0, particle_temperature=0.05, resampling="multinomial", seed=3,
                           max_steps=6, budget={"policy_tokens": 10_000}, stream=True)
    with stream:
        events = list(stream)
    steps = [e for e in events if isinstance(e, SearchStepEvent)]
    assert steps and {e.sweep for e in steps} == {1, 2}
    assert all(len(e.weights) == len(e.beams) == 4 and e.ess is not None for e in steps)
    result = events[-1].result
    assert result.strategy == "particle-gibbs" and result.select == "weighted" and result.stats["stopped_by"] is None
    tight = client.best_of_n(question=TOY_QUESTION, n=4, seed=1, budget={"policy_tokens": 1})
    assert tight.stats["stopped_by"] == "policy_tokens" and tight.stats["steps"] == 1
    adaptive = client.search(question=TOY_QUESTION, strategy="adaptive-best-of-n", n=8, round_size=2, settle=0.5,
                             seed=1)
    assert adaptive.select == "majority" and len(adaptive.candidates) <= 8
    with pytest.raises(UnprocessableEntityError) as e:
        client.search(question=TOY_QUESTION, budget={"seconds": 0})
    assert e.value.param == "budget.seconds"


def test_best_of_n(client):
    r = client.best_of_n(question=TOY_QUESTION, n=4, seed=1, select="majority")
    assert r.strategy == "best-of-n" and r.select == "majority" and len(r.candidates) == 4
    assert r.answer in {"14", "16"}


def test_chat_plain_and_streamed(client):
    msgs = [{"role": "user", "content": TOY_QUESTION}]
    r = client.chat(messages=msgs, seed=2, search={"strategy": "best-of-n", "n": 4})
    assert isinstance(r, ChatCompletion) and r.choices[0].message.content.endswith(f"Answer: {r.search.answer}")
    assert r.usage.completion_tokens > 0 and _is_request_id(r.request_id)
    chunks = list(client.chat(messages=msgs, seed=2, search={"strategy": "best-of-n", "n": 4}, stream=True,
                              stream_options={"include_usage": True}))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_models_and_health(client):
    models = client.models()
    assert isinstance(models, ModelList) and [m.id for m in models.prms] == ["tr"]
    assert models.get("tr").step_separator == "\n\n" and models.get("policy").kind == "policy"
    # the toy policy and the PRM initialised from it hold 256 positions (repirl/policy/toy.py)
    assert models.get("tr").max_model_len == 256 and models.get("policy").max_model_len == 256
    health = client.health()
    assert isinstance(health, Health) and health.ready and health.engines == {"tr": "ok", "policy": "ok"}


def test_errors_carry_type_message_param_and_request_id(client, sdk_service):
    with pytest.raises(AuthenticationError) as e401:
        client.with_options(api_key="wrong").models()
    err = e401.value
    assert (err.status_code, err.type, err.param) == (401, "unauthorized", "authorization")
    assert "API key" in err.error_message and _is_request_id(err.request_id) and err.request_id in str(err)
    with pytest.raises(NotFoundError) as e404:
        client.score(question=TOY_QUESTION, steps=RIGHT, model="nope")
    assert (e404.value.type, e404.value.param) == ("not_found", "model")
    with pytest.raises(RequestTooLargeError) as e413:
        client.score(items=[(TOY_QUESTION, RIGHT)] * (MAX_ITEMS + 1))
    assert (e413.value.type, e413.value.param) == ("limit_exceeded", "items")
    assert f"limit of {MAX_ITEMS}" in e413.value.error_message
    with pytest.raises(UnprocessableEntityError) as e422:
        client.score(question=TOY_QUESTION, steps=RIGHT, extra_body={"aggregation": "median"})
    assert e422.value.type == "validation_error" and e422.value.param == "aggregation"
    with pytest.raises(RequestTooLargeError) as stream413:  # known before the stream starts: a plain 413
        client.search(question=TOY_QUESTION, n=64, stream=True)
    assert stream413.value.param == "n"


def test_request_id_is_echoed_when_sane_and_on_every_response(client, sdk_service):
    mine = client.score(question=TOY_QUESTION, steps=RIGHT, extra_headers={"X-Request-Id": "trace-42.a:b"})
    assert mine.request_id == "trace-42.a:b"
    odd = client.score(question=TOY_QUESTION, steps=RIGHT, extra_headers={"X-Request-Id": "x" * 200})
    assert _is_request_id(odd.request_id)
    with httpx.Client(base_url=sdk_service.url) as raw:  # not just our routes: public ones, 404s, the body limit
        for r in (raw.get("/livez"), raw.get("/nowhere"),
                  raw.post("/v1/score", content=b"x" * 300_000, headers={"Authorization": f"Bearer {API_KEY}"})):
            assert _is_request_id(r.headers.get("x-request-id")), (r.status_code, r.headers)
        assert raw.post("/v1/score", content=b"x" * 300_000).status_code == 413


def test_with_options_timeout_and_env_configuration(sdk_service, monkeypatch):
    monkeypatch.setenv("REPIRL_BASE_URL", sdk_service.url + "/v1")
    monkeypatch.setenv("REPIRL_API_KEY", API_KEY)
    with Client() as c:
        assert c.base_url == sdk_service.url and c.models().prms[0].id == "tr"
        with pytest.raises(APITimeoutError):
            c.with_options(timeout=0.001, max_retries=0).search(question=TOY_QUESTION, n=8)
        assert c.with_options(max_retries=0).max_retries == 0 and c.max_retries == 2
        pool = c._client
    assert pool.is_closed


# ---------------------------------------------------------------- asyncio client

async def _async_tour(url: str) -> dict:
    async with AsyncClient(base_url=url, api_key=API_KEY) as c:
        score, rerank, models, health = await asyncio.gather(
            c.score(question=TOY_QUESTION, steps=RIGHT),
            c.rerank(question=TOY_QUESTION, candidates=[RIGHT, WRONG]),
            c.models(), c.health())
        plain = await c.search(question=TOY_QUESTION, strategy="dvts", n=4, beam_width=2, seed=7)
        stream = await c.search(question=TOY_QUESTION, strategy="dvts", n=4, beam_width=2, seed=7, stream=True)
        assert isinstance(stream, AsyncSearchStream)
        events = [e async for e in stream]
        bon = await c.best_of_n(question=TOY_QUESTION, n=2, seed=0)
        chat = await c.chat(messages=[{"role": "user", "content": TOY_QUESTION}], seed=0)
        chunks = [ch async for ch in await c.chat(messages=[{"role": "user", "content": TOY_QUESTION}], seed=0,
                                                  stream=True)]
        try:
            await c.with_options(api_key="bad").score(question=TOY_QUESTION, steps=RIGHT)
        except AuthenticationError as e:
            auth_error = e
        http = c._client
    return dict(score=score, rerank=rerank, models=models, health=health, plain=plain, events=events, bon=bon,
                chat=chat, chunks=chunks, auth_error=auth_error, closed=http.is_closed)


def test_async_client_every_method(client, sdk_service):
    got = asyncio.run(_async_tour(sdk_service.url))
    sync_score = client.score(question=TOY_QUESTION, steps=RIGHT)
    assert got["score"].data[0].step_rewards == pytest.approx(sync_score.data[0].step_rewards, abs=1e-6)
    assert _is_request_id(got["score"].request_id)
    assert len(got["rerank"].results) == 2 and got["models"].prms[0].id == "tr" and got["health"].ready
    events = got["events"]
    assert isinstance(events[-1], SearchResultEvent) and any(isinstance(e, SearchStepEvent) for e in events)
    assert (events[-1].result.answer, events[-1].result.steps) == (got["plain"].answer, got["plain"].steps)
    assert got["bon"].strategy == "best-of-n" and got["chat"].choices[0].message.content
    text = "".join(ch.choices[0].delta.content or "" for ch in got["chunks"] if ch.choices)
    assert text == got["chat"].choices[0].message.content
    assert got["auth_error"].status_code == 401 and _is_request_id(got["auth_error"].request_id)
    assert got["closed"]


def test_openapi_served_with_the_key(client):
    schema = client._client.get(client.base_url + "/openapi.json", headers=client.default_headers).json()
    assert "/v1/openrlhf/reward" in schema["paths"] and json.dumps(schema)
