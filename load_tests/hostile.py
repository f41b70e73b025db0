"""Hostile clients for `make soak` (load_tests/soak.py), beside load_tests/locustfile.py's MixedUser: the bodies of
issue 22, interleaved with normal traffic. Run with `locust -f load_tests/locustfile.py,load_tests/hostile.py
MixedUser HostileUser`.

Each hostile request is a success when the service refuses it properly (any 4xx naming a field, or a 429 with
Retry-After) or serves it (200: e.g. the OpenRLHF route gives an unscorable query reward 0); a failure is a 5xx, a
timeout or a dropped connection. The stalled stream is a /v1/search with `stream: true` whose client never reads
(a 4 KiB receive buffer) and hangs up after REPIRL_SOAK_STALL_S seconds: what it costs shows in the other users.

Settings (environment): REPIRL_API_KEY, REPIRL_SOAK_HOSTILE (HostileUser count, 2), REPIRL_SOAK_MAX_BODY (the
service's max_body_bytes, 1,000,000: the quadratic body is made as large as allowed), REPIRL_SOAK_STALL_S (30).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load_tests.load_data import DEMO, load  # noqa: E402

API_KEY = os.environ.get("REPIRL_API_KEY")
HEADERS = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
MAX_BODY = int(os.environ.get("REPIRL_SOAK_MAX_BODY", "1000000"))
STALL_S = float(os.environ.get("REPIRL_SOAK_STALL_S", "30"))
load()


def quadratic_openrlhf_body() -> bytes:
    """Issue 22.1: a chat-template opener repeated to the body limit (the user-turn regex was quadratic on it)."""
    unit = "<|im_start|>user\n"
    reps = (MAX_BODY - 64) // len(json.dumps(unit)[1:-1])
    return json.dumps({"query": ["x"], "prompts": [unit * reps]}).encode()


def huge_integer_bodies(rng: random.Random) -> tuple[str, bytes]:
    """Issue 22.2: a 4,300-digit integer (past Python's int-to-str limit), 1e308, a megabyte-scale string."""
    question = json.dumps(rng.choice(DEMO)[0])
    nines = "9" * 4300
    return rng.choice([
        ("/v1/search", f'{{"question": {question}, "lookahead": {nines}}}'.encode()),
        ("/v1/search", f'{{"question": {question}, "n": 1e308}}'.encode()),
        ("/v1/best-of-n", f'{{"question": {question}, "temperature": 1e308, "max_steps": {nines}}}'.encode()),
        ("/v1/score", json.dumps({"question": "q" * (MAX_BODY // 2), "steps": ["s"]}).encode()),
    ])


def digit_steps_body(rng: random.Random) -> bytes:
    """Issue 22.3: 20 steps of 20,000 random digits (refused; its tokenisation must not be kept)."""
    steps = ["".join(rng.choices("0123456789", k=20_000)) for _ in range(20)]
    return json.dumps({"question": "What is the sum?", "steps": steps}).encode()


class HostileUser(HttpUser):
    fixed_count = int(os.environ.get("REPIRL_SOAK_HOSTILE", "2"))
    wait_time = between(0.5, 2.0)

    def on_start(self):
        self.rng = random.Random(id(self))
        self.client.headers.update(HEADERS)

    def _post_raw(self, path: str, body: bytes, name: str):
        with self.client.post(path, data=body, name=name, catch_response=True, timeout=300,
                              headers={"Content-Type": "application/json"}) as r:
            ok = r.status_code == 200 or (400 <= r.status_code < 500 and r.status_code != 429) or (
                r.status_code == 429 and r.headers.get("retry-after"))
            if ok:
                r.success()
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task
    def quadratic_openrlhf(self):
        self._post_raw("/v1/openrlhf/reward", quadratic_openrlhf_body(), "hostile: quadratic OpenRLHF prompt")

    @task
    def huge_numbers(self):
        path, body = huge_integer_bodies(self.rng)
        self._post_raw(path, body, "hostile: huge numbers")

    @task
    def digit_steps(self):
        self._post_raw("/v1/score", digit_steps_body(self.rng), "hostile: 20k-digit steps")

    @task
    def stalled_stream(self):
        """Opens a stream of the largest search allowed, never reads it, hangs up after STALL_S."""
        u = urlsplit(self.host)
        body = json.dumps({"question": self.rng.choice(DEMO)[0], "n": 64, "max_steps": 64, "stream": True}).encode()
        head = (f"POST /v1/search HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
                + "\r\n").encode()
        t0, exc = time.perf_counter(), None
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((u.hostname, u.port))
            sock.sendall(head + body)
            time.sleep(STALL_S)  # gevent's sleep under locust: the other users run meanwhile
        except OSError as e:
            exc = e
        finally:
            sock.close()
        self.environment.events.request.fire(request_type="STALL", name="hostile: stalled stream",
                                             response_time=(time.perf_counter() - t0) * 1000, response_length=0,
                                             exception=exc, context={})
