"""SIGTERM during load on `repirl serve` with vLLM engines (the token-reward PRM on the pooling runner, the toy
policy in-process), over real HTTP: requests in flight complete (a stream included), new ones are refused,
/readyz says draining, and the process and every engine process it started (psutil children, recursively,
captured before the signal) exit within the drain timeout: no orphaned VLLM::EngineCore.

Event-driven: the two requests surely in flight at the signal hold back their last body byte (conftest.SlowRequest)
until the drain is visible; background load runs beside them. Waits are polls with deadlines."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import psutil
import pytest

from repirl.policy.toy import TOY_QUESTION
from repirl.vllm_setup import vllm_available
from tests.server.conftest import ServerProc, SlowRequest, metric, poll

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

DRAIN_S = 90


class _Load(threading.Thread):
    """Scores and searches in a loop until told to stop, or until the service refuses it. Outcomes: status codes,
    or the exception's type name."""

    def __init__(self, url: str, w: int):
        super().__init__(daemon=True)
        self.url, self.w, self.stop_event, self.results = url, w, threading.Event(), []

    def run(self):
        k = 0
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop_event.is_set():
                if k % 2:
                    req = ("/v1/search", {"question": TOY_QUESTION, "strategy": "beam", "n": 4, "beam_width": 2,
                                          "max_steps": 4, "return_candidates": False})
                else:
                    req = ("/v1/score", {"question": f"load {self.w}-{k}: 2+{k}?", "steps": [f"2+{k}={2 + k}"]})
                try:
                    r = c.post(req[0], json=req[1])
                    self.results.append((req[0], r.status_code, r.text[:200]))
                    if r.status_code == 503:
                        return
                except httpx.HTTPError as e:
                    self.results.append((req[0], type(e).__name__, str(e)))
                    return
                k += 1


def test_sigterm_with_vllm_engines_drains_and_leaves_no_orphans(server_prms, tmp_path):
    from repirl.policy.toy import build_toy_policy

    srv = ServerProc(["--engine", "vllm", "--prm", f"tr={server_prms['token-reward']}",
                      "--policy", f"vllm:{build_toy_policy()}"],
                     env={"REPIRL_VLLM_MAX_MODEL_LEN": "256", "REPIRL_DRAIN_TIMEOUT_S": str(DRAIN_S),
                          "REPIRL_LOG_LEVEL": "info"},
                     log=tmp_path / "server.log")
    loads: list[_Load] = []
    family: list[psutil.Process] = []
    try:
        srv.wait_ready(timeout=300)
        main = psutil.Process(srv.proc.pid)
        family = main.children(recursive=True)  # before the signal: every process the service started
        engines = [p for p in family if "EngineCore" in p.name() + " ".join(p.cmdline())]
        assert len(engines) >= 2, [(p.pid, p.name(), p.cmdline()) for p in family]  # the PRM's and the policy's
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            assert c.get("/readyz").json()["status"] == "ready"
            score = SlowRequest(srv.url, "/v1/score", {"question": "In flight: 3+4?", "steps": ["3+4=7", "Answer: 7"]})
            stream = SlowRequest(srv.url, "/v1/search", {"question": TOY_QUESTION, "strategy": "beam", "n": 4,
                                                         "beam_width": 2, "max_steps": 4, "stream": True})
            assert poll(lambda: metric(c, "repirl_requests_in_flight") == 2, 60)
            loads = [_Load(srv.url, w) for w in range(3)]
            for t in loads:
                t.start()
            assert poll(lambda: sum(len(t.results) for t in loads) >= 6, 120)  # the load is flowing

            srv.proc.send_signal(signal.SIGTERM)
            t_signal = time.monotonic()
            assert poll(lambda: c.get("/readyz").json()["status"] == "draining", 30)
            assert c.get("/readyz").status_code == 503
            refused = c.post("/v1/score", json={"question": "new one?", "steps": ["x"]})
            assert refused.status_code == 503 and "draining" in refused.json()["error"]["message"]

        status, body = score.finish()  # both run entirely during the drain, on the engines still up
        assert status == 200 and len(json.loads(body)["data"][0]["step_rewards"]) == 2, body[:300]
        status, body = stream.finish()
        assert status == 200, body[:300]
        kinds = [ln[len("event: "):] for ln in body.decode().splitlines() if ln.startswith("event: ")]
        assert kinds and kinds[-1] == "result" and set(kinds[:-1]) == {"step"}, kinds

        for t in loads:
            t.join(DRAIN_S)
        code = srv.proc.wait(max(1.0, DRAIN_S - (time.monotonic() - t_signal)))
        assert code in (0, -signal.SIGTERM), code
        gone, alive = psutil.wait_procs(family, timeout=max(0.5, DRAIN_S - (time.monotonic() - t_signal)))
        assert not alive, [(p.pid, p.name()) for p in alive]  # no orphaned engine process
        assert time.monotonic() - t_signal <= DRAIN_S
        print(f"\ndrain: {len(family)} child processes ({len(engines)} engine cores); all gone "
              f"{time.monotonic() - t_signal:.1f} s after SIGTERM (drain timeout {DRAIN_S} s)")

        results = [r for t in loads for r in t.results]
        # every request got an answer: a 200, or (sent after the signal) 503 draining or a refused connection;
        # none was cut off mid-response and none failed with a 5xx of its own
        bad = [r for r in results if r[1] not in (200, 503, "ConnectError")]
        assert not bad, bad
        assert all("draining" in r[2] for r in results if r[1] == 503)
        assert sum(r[1] == 200 for r in results) >= 6
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        for t in loads:
            t.stop_event.set()
        srv.stop()
        for p in family:  # never leave this server's engines behind a failed test (only its own processes)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
