"""Hostile input and faults, over real HTTP (issue 11, "Found when the service was probed"): each test here failed on
the service as it was. The session's `main_server` (transformers PRMs, Redis, API keys) takes the input checks; an
in-process uvicorn with a slow scripted policy (a short context, a call counter) takes what needs a policy: request
timeouts, the search budget's 429, the models' context and a dying engine. The vLLM cases are in
test_probe_findings_vllm.py."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

from repirl.artifacts import PolicyConfig
from repirl.policy.base import PolicyError, make_step
from repirl.tiny import build_tokenizer
from repirl.trajectory import TrajectoryEncoder
from tests.server.conftest import API_KEY, free_port, metric

Q = "What is 2+3?"
STEPS = ["2+3 = 5", "Answer: 5"]


# ---- input checks on the main service ----------------------------------------------------------------------------


def _raw(client: httpx.Client, path: str, body: str) -> httpx.Response:
    """A body sent as written (JSON may carry escapes such as a lone surrogate that no client would encode)."""
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param"}
    return err


@pytest.mark.parametrize("path,body,param", [
    ("/v1/best-of-n", {"question": Q, "seed": 2**70}, "seed"),  # the probe's 1180591620717411303424
    ("/v1/search", {"question": Q, "seed": 2**64}, "seed"),
    ("/v1/search", {"question": Q, "seed": -1}, "seed"),
    ("/v1/chat/completions", {"model": "tr", "messages": [{"role": "user", "content": Q}], "seed": 2**64}, "seed"),
    ("/v1/chat/completions", {"model": "tr", "messages": [{"role": "user", "content": Q}],
                              "search": {"seed": 2**64}}, "search.seed"),
])
def test_seeds_outside_the_engines_range_are_422_naming_seed(client, path, body, param):
    """Before: no bound; a seed >= 2^64 reached vLLM, whose serializer overflowed and wedged the next request."""
    assert _error(client.post(path, json=body), 422)["param"] == param


def test_the_largest_seed_passes_validation(client):
    r = client.post("/v1/search", json={"question": Q, "seed": 2**63 - 1})
    assert r.status_code == 503 and r.json()["error"]["param"] == "policy"  # validated; no policy on this service


@pytest.mark.parametrize("path,body,param", [
    ("/v1/score", '{"question": "q\\ud800", "steps": ["s"]}', "question"),
    ("/v1/score", '{"question": "q", "steps": ["s", "\\ud800"]}', "steps.1"),
    ("/v1/score", '{"items": [{"question": "q", "steps": ["\\udfff x"]}]}', "items.0.steps.0"),
    ("/v1/rerank", '{"question": "q", "candidates": ["a\\ud800"]}', "candidates.0"),
    ("/v1/rerank", '{"question": "q", "candidates": [{"steps": ["\\ud800"]}]}', "candidates.0.steps.0"),
    ("/v1/search", '{"question": "\\ud800"}', "question"),
    ("/v1/chat/completions", '{"model": "tr", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
])
def test_lone_surrogates_are_422_naming_the_field(client, path, body, param):
    """Before: 500 on score, rerank and chat (the tokenizer raised TypeError)."""
    assert _error(_raw(client, path, body), 422)["param"] == param


@pytest.mark.parametrize("path,body,param", [
    ("/v1/score", {"question": "", "steps": ["s"]}, "question"),
    ("/v1/score", {"items": [{"question": "  ", "steps": ["s"]}]}, "items.0.question"),
    ("/v1/rerank", {"question": "", "candidates": ["a"]}, "question"),
    ("/v1/search", {"question": " "}, "question"),
    ("/v1/search", {"question": Q, "n": "8"}, "n"),
    ("/v1/best-of-n", {"question": Q, "n": True}, "n"),
    ("/v1/score", {"question": Q, "steps": STEPS, "return_tokens": True}, "return_tokens"),
    ("/v1/rerank", {"question": Q, "candidates": ["a"], "vote": "majority"}, "vote"),
    ("/v1/search", {"question": Q, "beam": 4}, "beam"),
])
def test_strict_validation_of_our_own_apis(client, path, body, param):
    """One rule everywhere: empty questions, unknown fields and numbers in disguise ("8", true) are 422. Before: an
    empty question passed score and rerank, unknown fields were ignored, "8" and true were taken as 8 and 1."""
    assert _error(client.post(path, json=body), 422)["param"] == param


def test_chat_stays_lenient_like_openai(client):
    r = client.post("/v1/chat/completions", json={"model": "tr", "messages": [{"role": "user", "content": Q}],
                                                  "user": "someone", "temperature": "0.5"})
    assert r.status_code == 503 and r.json()["error"]["param"] == "policy"  # accepted; no policy on this service


def test_error_params_name_the_field(client):
    err = _error(_raw(client, "/v1/score", '{"question": "q", "steps": [}'), 422)
    assert err["param"] == "body" and "byte 28" in err["message"]  # was param "28"
    chat = {"model": "tr", "messages": [{"role": "user", "content": Q}], "prm": "nope"}
    assert _error(client.post("/v1/chat/completions", json=chat), 404)["param"] == "prm"  # was "model"


def _chunked_post(url: str, path: str, total: int, chunk: int = 1 << 16) -> tuple[int, dict]:
    """POST `total` bytes with Transfer-Encoding: chunked (no Content-Length) until the server answers."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nAuthorization: Bearer {API_KEY}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
        for _ in range(total // chunk):
            if select.select([s], [], [], 0)[0]:  # the server answered already
                break
            try:
                s.sendall(piece)
            except OSError:
                break
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += s.recv(65536)
        head, body = raw.split(b"\r\n\r\n", 1)
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
        while len(body) < length:
            body += s.recv(65536)
        return int(head.split()[1]), json.loads(body)


def test_a_50_mb_chunked_body_is_413(main_server):
    status, body = _chunked_post(main_server.url, "/v1/score", 50 << 20)
    assert status == 413 and body["error"]["param"] == "body", body  # was 400 "error parsing the body"


def test_no_redirect_built_from_the_host_header(client):
    r = client.get("/v1/models/", headers={"Host": "evil.example"})
    assert r.status_code == 404 and "location" not in r.headers  # was 307 to http://evil.example/v1/models


def test_head_on_health_and_metrics(main_server):
    for path in ("/livez", "/readyz", "/metrics"):  # /metrics wants the key (issue 22.10)
        r = httpx.head(main_server.url + path, timeout=30, headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 200 and r.content == b"", path  # was 405


def test_schema_and_docs_behind_the_api_key(main_server, client):
    with httpx.Client(base_url=main_server.url, timeout=30) as anon:
        assert anon.get("/openapi.json").status_code == 401 and anon.get("/docs").status_code == 401
    schema = client.get("/openapi.json")  # was 404 with or without the key
    assert schema.status_code == 200 and "/v1/score" in schema.json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_readiness_runs_nothing_in_the_engines(client):
    """/readyz reads state the engines keep: polling it never reaches an engine (it ran a probe batch per call,
    and 32 pollers took scoring p99 from 114 ms to 2.2 s)."""
    before = metric(client, "repirl_batch_items_count")
    for _ in range(20):
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["cache"]["healthy"] is True
    assert metric(client, "repirl_batch_items_count") == before


# ---- one bad item in a micro-batch -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_bad_item_fails_only_its_own_request():
    """Before: the engine's error on one item failed every request sharing its batch (120 of 120 valid requests
    got 500 beside one over-long item on the vLLM PRM)."""
    from server.batching import MicroBatcher
    from server.metrics import Metrics

    calls: list[list[str]] = []

    def engine(items):
        calls.append(list(items))
        time.sleep(0.05)  # busy: what arrives meanwhile shares the next batch
        if "bad" in items:
            raise ValueError("trajectory of 616 tokens exceeds max_model_len 512")
        return [f"r-{x}" for x in items]

    b = MicroBatcher("fake", engine, max_batch_tokens=1000, max_batch_items=16, max_wait_ms=1, max_queue_items=100,
                     metrics=Metrics())
    b.start()
    try:
        first = asyncio.create_task(b.submit(["a"], [1]))
        await asyncio.sleep(0.02)
        good = [asyncio.create_task(b.submit([f"g{i}", f"h{i}"], [1, 1])) for i in range(3)]
        bad = asyncio.create_task(b.submit(["x", "bad"], [1, 1]))
        assert await first == ["r-a"]
        assert [await t for t in good] == [[f"r-g{i}", f"r-h{i}"] for i in range(3)]
        with pytest.raises(ValueError, match="616 tokens"):
            await bad
    finally:
        await b.stop()
    assert calls[1] == ["g0", "h0", "g1", "h1", "g2", "h2", "x", "bad"]  # one shared batch, then each request alone


# ---- with a policy: timeouts, the search budget, the models' context, a dying engine -----------------------------


class ScriptedPolicy:
    """A slow policy that never finishes a trajectory; calls are counted, its context is short, and it can die."""

    name = "scripted"
    context_tokens = 128

    def __init__(self, delay: float = 0.3):
        self.config, self.delay, self.calls, self.dead = PolicyConfig(), delay, 0, False
        self.encoder = TrajectoryEncoder(build_tokenizer())

    def engine_dead(self) -> bool:
        return self.dead

    def sample_steps(self, prefixes, params):
        if self.dead:
            raise PolicyError("the engine died")
        self.calls += 1
        time.sleep(self.delay)
        return [[make_step(f"1+{len(steps)}={1 + len(steps)}\n\n", [1], [0.0], "\n\n", False, False)
                 for _ in range(params.n)] for _, steps in prefixes]


def _serve(settings, policy):
    import uvicorn

    from server.app import create_app

    app = create_app(settings, policies={"policy": policy})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return app, server, thread


@pytest.fixture(scope="module")
def short_prm(tmp_path_factory):
    """A transformers PRM with 64 positions, under the default max_tokens (4096)."""
    from repirl.scoring.tiny_prms import build_tiny_prm

    return build_tiny_prm(tmp_path_factory.mktemp("short_prm") / "prm", "token-reward", max_position_embeddings=64)


@pytest.fixture(scope="module")
def policy_service(server_prms, short_prm):
    from server.settings import Settings

    policy = ScriptedPolicy()
    settings = Settings(prm=[f"tr={server_prms['token-reward']}", f"short={short_prm}"], engine="hf",
                        limits={"max_steps": 64, "max_search_samples": 200, "max_search_samples_in_flight": 200,
                                "request_timeout_s": 3.0})
    app, server, thread = _serve(settings, policy)
    yield f"http://127.0.0.1:{server.config.port}", policy
    server.should_exit = True
    thread.join(10)


SLOW = {"question": "q?", "strategy": "beam", "n": 2, "beam_width": 1, "max_steps": 60}  # 60 x 0.3 s: past 3 s


def _settle(policy, wait: float = 1.0) -> int:
    before = policy.calls
    time.sleep(wait)
    return policy.calls - before


def test_request_timeout_is_enforced_and_stops_the_search(policy_service):
    """Before: `request_timeout_s` was never read (a request behind a wedged engine lived until shutdown)."""
    url, policy = policy_service
    r = httpx.post(url + "/v1/search", json=SLOW, timeout=30)
    err = _error(r, 504)
    assert err["param"] == "request_timeout_s" and "3 s" in err["message"]
    _settle(policy, 0.5)  # the step in flight may finish
    assert _settle(policy) == 0
    with httpx.stream("POST", url + "/v1/search", json=SLOW | {"stream": True}, timeout=30) as s:
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: ")]
    assert events[-1]["error"]["param"] == "request_timeout_s"  # a stream ends with the error event
    _settle(policy, 0.5)
    assert _settle(policy) == 0


def test_search_overload_says_what_is_full(policy_service):
    url, policy = policy_service
    start = policy.calls
    first = threading.Thread(target=lambda: httpx.post(url + "/v1/search", json=SLOW, timeout=30))
    first.start()
    while policy.calls == start:
        time.sleep(0.02)
    err = _error(httpx.post(url + "/v1/search", json=SLOW, timeout=30), 429)
    assert "max_search_samples_in_flight" in err["message"] and "scoring queue" not in err["message"]
    first.join(30)
    _settle(policy)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/search", {"question": "x" * 200}, "question"),
    ("/v1/best-of-n", {"question": "x" * 200}, "question"),
    ("/v1/chat/completions", {"model": "policy", "messages": [{"role": "user", "content": "x" * 200}]}, "messages"),
    ("/v1/search", {"question": "x" * 100, "model": "short"}, "question"),  # the PRM's 64 positions
    ("/v1/score", {"model": "short", "question": Q, "steps": ["2+3 = 5 " * 10]}, "body"),
    ("/v1/rerank", {"model": "short", "question": Q, "candidates": ["a", "2+3 = 5 " * 10]}, "candidates[1]"),
])
def test_inputs_over_the_models_context_are_413(policy_service, path, body, param):
    """The limit that matters is the model's own context, known at load time. Before: 500 from the policy, and on
    the transformers PRM a 200 with rewards at positions the model never saw."""
    url, _ = policy_service
    err = _error(httpx.post(url + path, json=body, timeout=30), 413)
    assert err["param"] == param and "context" in err["message"]


def test_chat_errors_use_chat_names(policy_service):
    url, _ = policy_service
    msgs = [{"role": "user", "content": Q}]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "policy", "messages": msgs, "max_tokens": 5000})
    assert _error(r, 413)["param"] == "max_tokens"  # was "max_step_tokens"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "policy", "messages": msgs, "search": {"n": 500}})
    assert _error(r, 413)["param"] == "search.n"


def test_a_dead_engine_makes_the_service_unready(server_prms):
    """An engine that died shows in /readyz (503 naming it); `repirl serve` then exits (test_probe_findings_vllm.py).
    Before: /readyz probed the PRMs only and said ready while every search failed."""
    from server.settings import Settings

    policy = ScriptedPolicy(delay=0.0)
    app, server, thread = _serve(Settings(prm=[f"tr={server_prms['token-reward']}"], engine="hf"), policy)
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        assert httpx.get(url + "/readyz").status_code == 200
        policy.dead = True
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and ready.json()["engines"]["policy"].startswith("dead")
        assert "policy" in ready.json()["error"]["message"]
        deadline = time.monotonic() + 10  # the watchdog notices (`repirl serve` then drains and exits)
        while not app.state.repirl.fatal and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "policy" in app.state.repirl.fatal
        r = httpx.post(url + "/v1/search", json={"question": Q})
        assert _error(r, 503)["param"] == "policy"
    finally:
        server.should_exit = True
        thread.join(10)
