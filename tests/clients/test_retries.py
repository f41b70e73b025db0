"""Retries, Retry-After and stream errors against a misbehaving HTTP server on loopback, started here: each test
scripts the answers one path gives, request by request, and the server records when each request came."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from repirl_client import (APIConnectionError, APITimeoutError, AsyncClient, BadRequestError, Client,
                           InternalServerError, RateLimitError)
from repirl_client.types import SearchStepEvent

OK_SCORE = {"object": "score", "model": "m", "revision": "r", "aggregation": "min",
            "data": [{"index": 0, "step_rewards": [0.5], "score": 0.5, "cached_steps": 0}],
            "usage": {"items": 1, "tokens": 3, "tokens_computed": 3, "cached_steps": 0}}


def err(kind: str, message: str, param=None) -> dict:
    return {"error": {"type": kind, "message": message, "param": param}}


class Script:
    """path -> list of answers: (status, headers, body) or ("sleep", seconds, answer) or ("reset",)."""

    def __init__(self):
        self.answers: dict[str, list] = {}
        self.seen: list[tuple[float, str, dict]] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        script: Script = self.server.script  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        with script.lock:
            script.seen.append((time.monotonic(), self.path, dict(self.headers)))
            queue = script.answers.get(self.path) or [(500, {}, err("internal_error", "unscripted"))]
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if answer[0] == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if answer[0] == "sleep":
            time.sleep(answer[1])
            answer = answer[2]
        status, headers, body = answer
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        headers = {"content-type": "application/json", "x-request-id": f"req_fake{len(script.seen)}", **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout test)
            pass

    do_GET = do_POST = _answer


@pytest.fixture
def bad_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.script = Script()  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def gaps(script: Script) -> list[float]:
    t = [s[0] for s in script.seen]
    return [b - a for a, b in zip(t, t[1:])]


def score(c):
    return c.score(question="q", steps=["s"])


def test_backoff_doubles_from_half_a_second_with_jitter(bad_server):
    bad_server.script.answers["/v1/score"] = [(503, {}, err("unavailable", "busy")), (502, {}, "bad gateway"),
                                              (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c:
        r = score(c)
    assert r.data[0].score == 0.5 and r.request_id == "req_fake3"
    g = gaps(bad_server.script)
    assert len(g) == 2
    assert 0.5 * 0.75 - 0.02 <= g[0] <= 0.5 + 0.25  # 0.5 s minus up to 25% jitter (+ scheduling slack)
    assert 1.0 * 0.75 - 0.02 <= g[1] <= 1.0 + 0.25


def test_retry_delay_law():
    c = Client(base_url="http://127.0.0.1:9")
    import repirl_client._base as base

    orig = base.random.random
    try:
        base.random.random = lambda: 0.0
        assert [c._retry_delay(k, None) for k in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
        base.random.random = lambda: 1.0
        assert [c._retry_delay(k, None) for k in range(5)] == [0.375, 0.75, 1.5, 3.0, 6.0]
    finally:
        base.random.random = orig
    headers = httpx.Headers({"retry-after": "3"})
    assert c._retry_delay(0, headers) == 3.0
    assert c._retry_delay(0, httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert 0.375 <= c._retry_delay(0, httpx.Headers({"retry-after": "0"})) <= 0.5  # not positive: backoff


def test_retry_after_seconds_is_honoured(bad_server):
    bad_server.script.answers["/v1/score"] = [(429, {"retry-after": "1"}, err("queue_full", "full")),
                                              (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c:
        assert score(c).data[0].score == 0.5
    (g,) = gaps(bad_server.script)
    assert 0.98 <= g <= 1.4  # the server's 1 s, not the 0.5 s backoff


def test_retry_after_http_date_is_honoured(bad_server):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: waits 1-2 s
    bad_server.script.answers["/v1/score"] = [(503, {"retry-after": when}, err("unavailable", "restarting")),
                                              (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c:
        assert score(c).data[0].score == 0.5
    (g,) = gaps(bad_server.script)
    assert 0.9 <= g <= 2.4


def test_retry_after_beyond_the_cap_is_not_waited_for(bad_server):
    bad_server.script.answers["/v1/score"] = [(429, {"retry-after": "3600"}, err("queue_full", "come back later")),
                                              (200, {}, OK_SCORE)]
    t0 = time.monotonic()
    with Client(base_url=url(bad_server)) as c, pytest.raises(RateLimitError) as e:
        score(c)
    assert time.monotonic() - t0 < 0.5 and len(bad_server.script.seen) == 1
    assert e.value.retry_after == 3600 and e.value.type == "queue_full" and e.value.request_id == "req_fake1"
    # a client with a longer cap waits for it (here: a 1 s Retry-After under a 0.5 s cap is also refused)
    bad_server.script.answers["/v1/score"] = [(429, {"retry-after": "1"}, err("queue_full", "x")), (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server), max_retry_after=0.5) as c, pytest.raises(RateLimitError):
        score(c)


def test_which_statuses_are_retried(bad_server):
    fast = {"retry-after-ms": "10"}
    s = bad_server.script
    s.answers["/v1/score"] = [(408, fast, "timeout"), (409, fast, "lock"), (429, fast, "rate"), (500, fast, "boom"),
                              (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server), max_retries=4) as c:
        assert score(c).data[0].score == 0.5
    assert len(s.seen) == 5
    s.seen.clear()
    s.answers["/v1/score"] = [(400, fast, err("invalid_request", "bad", "steps")), (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c, pytest.raises(BadRequestError) as e:
        score(c)
    assert len(s.seen) == 1 and (e.value.type, e.value.param, e.value.error_message) == ("invalid_request", "steps",
                                                                                          "bad")
    s.seen.clear()
    s.answers["/v1/score"] = [(500, {"x-should-retry": "false"}, err("internal_error", "do not")), (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c, pytest.raises(InternalServerError):
        score(c)
    assert len(s.seen) == 1
    s.seen.clear()
    s.answers["/v1/score"] = [(503, fast, "x"), (503, fast, "x"), (503, fast, "x"), (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c, pytest.raises(InternalServerError) as e5:
        c.with_options(max_retries=1).score(question="q", steps=["s"])
    assert len(s.seen) == 2 and e5.value.status_code == 503 and e5.value.body == "x"


def test_connection_errors_and_timeouts_are_retried(bad_server):
    s = bad_server.script
    s.answers["/v1/score"] = [("reset",), (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server)) as c:
        assert score(c).data[0].score == 0.5
    assert len(s.seen) == 2
    s.seen.clear()
    s.answers["/v1/score"] = [("sleep", 1.0, (200, {}, OK_SCORE)), (200, {}, OK_SCORE)]
    with Client(base_url=url(bad_server), timeout=0.3) as c:
        assert score(c).data[0].score == 0.5  # the first attempt timed out, the retry answered
        s.answers["/v1/score"] = [("sleep", 1.0, (200, {}, OK_SCORE))]
        with pytest.raises(APITimeoutError):
            c.with_options(max_retries=0).score(question="q", steps=["s"])
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    t0 = time.monotonic()
    with Client(base_url=f"http://127.0.0.1:{dead}", max_retries=1) as c, pytest.raises(APIConnectionError):
        score(c)
    assert 0.35 <= time.monotonic() - t0 <= 1.5  # one retry after ~0.5 s


def test_async_client_retries_the_same_way(bad_server):
    s = bad_server.script
    s.answers["/v1/score"] = [(429, {"retry-after": "1"}, err("queue_full", "full")), (503, {}, "x"),
                              (200, {}, OK_SCORE)]

    async def go():
        async with AsyncClient(base_url=url(bad_server)) as c:
            return await c.score(question="q", steps=["s"])

    assert asyncio.run(go()).request_id == "req_fake3"
    g = gaps(s)
    assert 0.98 <= g[0] <= 1.4 and 0.75 - 0.02 <= g[1] <= 1.25  # Retry-After, then the second backoff (1 s)


SSE_OK = ('event: step\ndata: {"kind": "step", "step": 1, "beams": [{"id": 1, "steps": ["a"], "step_rewards": [0.1], '
          '"score": 0.1}], "pruned": [], "completed": []}\n\n')


def test_stream_error_event_raises_after_the_steps_before_it(bad_server):
    body = SSE_OK + 'event: error\ndata: {"error": {"type": "queue_full", "message": "engine busy", "param": null}}\n\n'
    bad_server.script.answers["/v1/search"] = [(200, {"content-type": "text/event-stream"}, body)]
    got = []
    with Client(base_url=url(bad_server)) as c:
        stream = c.search(question="q", stream=True)
        with pytest.raises(RateLimitError) as e:
            for event in stream:
                got.append(event)
    assert len(got) == 1 and isinstance(got[0], SearchStepEvent) and got[0].beams[0].steps == ["a"]
    assert e.value.type == "queue_full" and e.value.request_id == "req_fake1" and "engine busy" in str(e.value)
    # a stream cut before its result is an error too, not a silent end
    bad_server.script.answers["/v1/search"] = [(200, {"content-type": "text/event-stream"}, SSE_OK)]
    with Client(base_url=url(bad_server)) as c, pytest.raises(Exception, match="ended before"):
        list(c.search(question="q", stream=True))
