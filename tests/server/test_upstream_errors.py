"""Issue 22.9 over real HTTP: what goes wrong upstream is logged, not handed to clients, and a bad query parameter is
a 422 naming it. The remote policy here is a tiny real HTTP server of this test (Python's http.server) that lists a
model and answers every completion with a 500 and a body holding a secret: a vLLM server does not fail on demand.
The context-length case runs against a real vLLM api_server (tests/server/test_search_engines.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from repirl.policy.toy import TOY_QUESTION, build_toy_policy
from tests.server.conftest import ServerProc

pytestmark = pytest.mark.slow

SECRET = "upstream-secret-7f3a: stack trace with internal hostnames"


class _FailingUpstream(BaseHTTPRequestHandler):
    model = ""

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/v1/models":
            card = {"id": self.model, "object": "model", "max_model_len": 256}
            return self._send(200, json.dumps({"object": "list", "data": [card]}).encode())
        self._send(404, b"{}")

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(500, SECRET.encode(), "text/plain")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def failing_upstream():
    handler = type("Handler", (_FailingUpstream,), {"model": str(build_toy_policy())})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_policy_failure_is_logged_not_returned(failing_upstream, server_prms, tmp_path):
    log = tmp_path / "server.log"
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={server_prms['token-reward']}", "--policy",
                      failing_upstream + "/v1"], log=log).wait_ready()
    try:
        import httpx

        r = httpx.post(srv.url + "/v1/search", json={"question": TOY_QUESTION, "n": 2, "max_steps": 2}, timeout=60)
    finally:
        srv.stop()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["param"] == "policy"
    host = failing_upstream.split("//")[1]
    assert host not in r.text and "upstream-secret" not in r.text, r.text  # neither the address nor its body
    assert "answered 500" in r.text  # still says what happened
    logged = log.read_text()
    assert host in logged and SECRET in logged  # the operator gets the whole story


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_openrlhf_prm_weight_must_be_finite_and_bounded(client, value):
    """`?prm_weight=nan` answered 200 with `rewards: [null]` (NaN as JSON null); inf and 1e308 (which overflows the
    reward) the same. Now a 422 naming the parameter."""
    body = {"query": ["Q: 2+2?\nA: 2+2=4\n\nAnswer: 4"], "prompts": ["Q: 2+2?\nA:"], "labels": ["4"]}
    r = client.post(f"/v1/openrlhf/reward?model=tr&prm_weight={value}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "query.prm_weight"  # the mapper names query parameters so
    ok = client.post("/v1/openrlhf/reward?model=tr&prm_weight=0.1", json=body)
    assert ok.status_code == 200 and all(isinstance(x, float) for x in ok.json()["rewards"]), ok.text
