"""Issue 22, item 4: a client that stops reading a search stream must not hold the search budget, and its stalled
connection is closed after `limits.write_timeout_s`. Over real HTTP: `python -m server` under uvicorn with the
transformers PRM and a random tiny policy, and a raw socket that never reads. On loopback the server's kernel send
buffer grows to `tcp_wmem`'s maximum (4 MB here) whatever the client's receive buffer, so the stalled stream must be
larger than that plus uvicorn's 64 KB write buffer: a beam search of 64 samples per step over 48 steps, whose random
steps run to `max_step_tokens` and JSON-escape to 6 bytes a token, streams ~5.4 MB (each step event lists all 64
candidates' steps so far).

Ordered by events the service exposes (searches ended, write timeouts counted), never by sleeps."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from repirl.scoring.tiny_prms import build_policy, build_tiny_prm
from tests.server.conftest import ServerProc, metric, poll

pytestmark = pytest.mark.slow

QUESTION = "What is 2+2?"
STALLED = {"question": QUESTION, "strategy": "beam", "n": 64, "beam_width": 64, "dedup": False, "max_steps": 48,
           "max_step_tokens": 8, "stream": True}
STALLED_COST = 64 * 48
SMALL = {"question": QUESTION, "n": 2, "max_steps": 2, "max_step_tokens": 8}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random policy and PRM with a 4k context (a random step's bytes re-encode to ~3 tokens each)."""
    d = tmp_path_factory.mktemp("stalled_models")
    return (build_tiny_prm(d / "prm", "token-reward", max_position_embeddings=4096),
            build_policy(d / "policy", max_position_embeddings=4096))


def _server(models, tmp_path_factory, write_timeout_s: float) -> ServerProc:
    prm, policy = models
    env = {"REPIRL_ENGINE": "hf", "REPIRL_TORCH_THREADS": "1",
           # the stalled search holds all of it: any other search gets 429 while it holds it
           "REPIRL_LIMITS__MAX_SEARCH_SAMPLES_IN_FLIGHT": str(STALLED_COST),
           "REPIRL_LIMITS__WRITE_TIMEOUT_S": str(write_timeout_s)}
    log = tmp_path_factory.mktemp("stalled_server") / "server.log"
    return ServerProc(["--prm", f"tr={prm}", "--policy", f"hf:{policy}"], env=env, log=log).wait_ready()


class NonReader:
    """A raw socket with a 4 KB receive buffer that sends one request and never reads its answer."""

    def __init__(self, url: str, path: str, body: dict):
        u = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
        self.sock.connect((u.hostname, u.port))
        data = json.dumps(body).encode()
        self.sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)

    def drain(self, timeout: float = 60) -> tuple[bytes, bool]:
        """Everything left to read (until the server closes), and whether the connection was reset."""
        self.sock.settimeout(timeout)
        out = b""
        try:
            while chunk := self.sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            return out, True
        return out, False

    def close(self) -> None:
        self.sock.close()


def _ended(c: httpx.Client) -> float:
    return sum(metric(c, "repirl_searches_total", outcome=o) for o in ("completed", "cancelled", "error"))


def _others_are_served(c: httpx.Client) -> None:
    r = c.post("/v1/best-of-n", json=SMALL)
    assert r.status_code == 200, r.text
    r = c.post("/v1/search", json={**SMALL, "stream": True})
    assert r.status_code == 200 and "event: result" in r.text, r.text[-300:]
    r = c.post("/v1/score", json={"items": [{"question": QUESTION, "steps": ["2+2=4", "Answer: 4"]}]})
    assert r.status_code == 200, r.text


def test_a_search_that_ended_releases_its_budget_while_its_client_never_reads(models, tmp_path_factory):
    srv = _server(models, tmp_path_factory, write_timeout_s=600)  # no write timeout here
    readers = []
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            before = _ended(c)
            readers = [NonReader(srv.url, "/v1/search", STALLED)]
            # the search's work has ended (its stream is stuck in a write that nobody reads)
            assert poll(lambda: _ended(c) >= before + 1, timeout=300), "the stalled search never ended"
            # the budget is back and the gauges say so: nothing holds it any more
            assert metric(c, "repirl_searches_in_flight") == 0
            assert metric(c, "repirl_search_samples_in_flight") == 0
            _others_are_served(c)
    finally:
        for r in readers:
            r.close()
        srv.stop()


def test_a_stalled_stream_is_closed_after_the_write_timeout(models, tmp_path_factory):
    srv = _server(models, tmp_path_factory, write_timeout_s=2)
    readers = []
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            readers = [NonReader(srv.url, "/v1/search", STALLED)]
            assert poll(lambda: metric(c, "repirl_write_timeouts_total") >= 1, timeout=300), \
                "the stalled stream was not closed"
            for r in readers:  # the server dropped the connection before the stream's end
                data, reset = r.drain()
                assert reset or not data.endswith(b"0\r\n\r\n"), data[-200:]
                assert b"event: result" not in data
            # whatever the search was doing stopped with it, and its budget came back
            assert poll(lambda: metric(c, "repirl_search_samples_in_flight") == 0, timeout=120)
            assert metric(c, "repirl_searches_in_flight") == 0
            _others_are_served(c)
    finally:
        for r in readers:
            r.close()
        srv.stop()
