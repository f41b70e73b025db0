"""Cancellation reaches the engine (issue 11, item 3), over real HTTP against the session's service (transformers
PRMs, Redis): a client that goes away takes its PRM work with it, whether the work still waits in the micro-batcher's
queue (dropped before the engine) or is already a batch inside the engine (stopped between forward passes).

Each test orders its requests by events the service exposes (a micro-batch taken, a 499 recorded), never by sleeps:
a `blocker` request holds the engine, victims queue behind it, and their sockets are closed at a known point. The
service is this module's own, with limits that let one blocker hold the engine for about a second (64 items, ~23k
tokens) while a victim needs milliseconds to queue: with main_server's 8-item limit the blocker's batch was done in
0.14 s, and on a loaded machine the victim sometimes arrived after it.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server.conftest import API_KEY, ServerProc, metric, poll

pytestmark = pytest.mark.slow
PRM = "tr"  # a token-reward PRM on transformers
BIG = 64  # items per blocker request (and per victims' batch in the engine test)


@pytest.fixture(scope="module")
def server(server_prms, tmp_path_factory):
    d = tmp_path_factory.mktemp("cancel_server")
    (d / "keys.txt").write_text(API_KEY + "\n")
    (d / "config.yaml").write_text(f"engine: hf\nlimits:\n  max_items: {BIG}\n  max_tokens: 400\n  max_chars: 300\n"
                                   "  max_batch_tokens: 65536\n")
    srv = ServerProc(["--config", str(d / "config.yaml"), "--api-key-file", str(d / "keys.txt"),
                      "--prm", f"{PRM}={server_prms['token-reward']}"], log=d / "server.log").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


def _items(tag: str, n: int = BIG) -> list[dict]:
    """n items of ~360 tokens each (under the 400-token and 300-character limits), unique per call so the prefix
    cache never answers them: each must go to the engine."""
    salt = uuid.uuid4().hex
    return [{"question": f"{tag} {salt} {i} " + "7+8+9 = 24; " * 6, "steps": ["1+2+3+4+5 = 15 " * 7] * 2}
            for i in range(n)]


class Victim:
    """A POST (default: /v1/score of `items`) sent whole on its own socket; `leave()` closes the socket without
    reading the answer: the client that went away."""

    def __init__(self, url: str, items: list[dict] | None = None, path: str = "/v1/score", body: dict | None = None):
        u = urlsplit(url)
        data = json.dumps(body if body is not None else {"model": PRM, "items": items}).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        self.sock = socket.create_connection((u.hostname, u.port), timeout=60)
        self.sock.sendall(head + data)

    def leave(self) -> None:
        self.sock.close()


class Blocker(threading.Thread):
    """A /v1/score request whose client stays: it holds the PRM's engine while the victims queue behind it."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.response = url, None

    def run(self) -> None:
        self.response = httpx.post(self.url + "/v1/score", json={"model": PRM, "items": _items("blocker")},
                                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)


def _batches(c: httpx.Client) -> float:
    return metric(c, "repirl_batch_items_count", model=PRM)


def _counts(c: httpx.Client) -> dict[str, float]:
    return {"queued": metric(c, "repirl_cancelled_work_total", model=PRM, stage="queued"),
            "engine": metric(c, "repirl_cancelled_work_total", model=PRM, stage="engine"),
            "items_in_batches": metric(c, "repirl_batch_items_sum", model=PRM),
            "tokens_computed": metric(c, "repirl_tokens_computed_total", model=PRM),
            "499": metric(c, "repirl_requests_total", route="/v1/score", status="499")}


def _start_blocker(c: httpx.Client, url: str) -> Blocker:
    """A blocker whose batch is inside the engine when this returns."""
    batches = _batches(c)
    blocker = Blocker(url)
    blocker.start()
    assert poll(lambda: _batches(c) >= batches + 1, timeout=60), "the blocker's batch never reached the engine"
    return blocker


def test_queued_items_of_a_client_that_left_never_reach_the_engine(server, client):
    before = _counts(client)
    blocker = _start_blocker(client, server.url)
    victim = Victim(server.url, _items("queued-victim", 3))
    # its 3 items wait in the micro-batcher's queue behind the blocker (not earlier: a client that leaves before then
    # is cancelled before it queues anything); then it goes away
    assert poll(lambda: metric(client, "repirl_queue_items", model=PRM) >= 3, timeout=30)
    victim.leave()
    # the service has seen the disconnect (and answered 499 to nobody) while the blocker still holds the engine
    assert poll(lambda: metric(client, "repirl_requests_total", route="/v1/score", status="499") >= before["499"] + 1,
                timeout=30)
    blocker.join(120)
    assert blocker.response is not None and blocker.response.status_code == 200, blocker.response
    assert poll(lambda: _counts(client)["queued"] >= before["queued"] + 3, timeout=30)
    after = _counts(client)
    assert after["queued"] == before["queued"] + 3 and after["engine"] == before["engine"]
    # the engine saw the blocker's items and nothing of the victim's
    assert after["items_in_batches"] == before["items_in_batches"] + BIG


def test_a_batch_inside_the_engine_stops_when_all_its_clients_left(server, client):
    before = _counts(client)
    blocker = _start_blocker(client, server.url)
    # four victims queue behind the blocker: the worker takes them as one batch (64 items, ~23k tokens) next
    victims = [Victim(server.url, _items(f"engine-victim-{k}", BIG // 4)) for k in range(4)]
    # the victims' batch is taken (the blocker's items and theirs went into batches): it is in the engine now,
    # ~23 forwards of ~3 items each, when every one of its clients goes away
    assert poll(lambda: _counts(client)["items_in_batches"] >= before["items_in_batches"] + 2 * BIG, timeout=60)
    for v in victims:
        v.leave()
    blocker.join(120)
    assert blocker.response is not None and blocker.response.status_code == 200, blocker.response
    # the engine stopped between two forwards: the whole batch is counted as cancelled inside the engine
    assert poll(lambda: _counts(client)["engine"] >= before["engine"] + BIG, timeout=60), _counts(client)
    after = _counts(client)
    assert after["engine"] == before["engine"] + BIG and after["queued"] == before["queued"]
    # no victim's tokens were counted as computed: only the blocker's results were handed out
    assert after["tokens_computed"] == before["tokens_computed"] + blocker.response.json()["usage"]["tokens_computed"]
    # the engine is free again: a fresh request is answered
    r = client.post("/v1/score", json={"model": PRM, "items": _items("after", 1)})
    assert r.status_code == 200, r.text
