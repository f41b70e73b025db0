"""Issue 22, item 5: work whose client went away stops, and holds its search budget until it has stopped. Over real
HTTP against `python -m server` (transformers PRM, a random tiny transformers policy whose steps run to
`max_step_tokens`, so each search spends its time inside one long sampling call): 50 best-of-n clients leave while
their searches sample; their sampling stops between decode steps (counted as cancelled policy samples), their
worker threads end, and a normal request is answered. Latency under this load is measured by
load_tests/bench_hostile.py --part abandoned, not asserted here (timing-sensitive tests are bugs)."""

from __future__ import annotations

import httpx
import psutil
import pytest

from repirl.scoring.tiny_prms import build_policy, build_tiny_prm
from tests.server.conftest import ServerProc, metric, poll
from tests.server.test_cancellation import Victim

pytestmark = pytest.mark.slow

ABANDONED = 50
QUESTION = "What is 2+2?"
LONG = {"question": QUESTION, "n": 8, "max_steps": 1, "max_step_tokens": 1000}  # one long sampling call each
NORMAL = {"question": QUESTION, "n": 4, "max_steps": 2, "max_step_tokens": 8}
# threads the process may add beyond its warmed-up count that are not search workers: asyncio's default executor
# (the micro-batcher's engine calls) grows up to min(32, cores + 4) threads as calls overlap
EXECUTOR_SLACK = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("abandoned")
    prm = build_tiny_prm(d / "prm", "token-reward", max_position_embeddings=4096)
    policy = build_policy(d / "policy", max_position_embeddings=4096)
    env = {"REPIRL_ENGINE": "hf", "REPIRL_TORCH_THREADS": "1"}
    srv = ServerProc(["--prm", f"tr={prm}", "--policy", f"hf:{policy}"], env=env, log=d / "server.log").wait_ready()
    yield srv
    srv.stop()


def test_abandoned_searches_stop_inside_the_policy_and_a_normal_one_is_answered(server):
    proc = psutil.Process(server.proc.pid)
    with httpx.Client(base_url=server.url, timeout=300) as c:
        for _ in range(2):  # warm: engines, executor threads
            assert c.post("/v1/best-of-n", json=NORMAL).status_code == 200
        baseline = proc.num_threads()
        cancelled = metric(c, "repirl_cancelled_work_total", stage="engine")
        victims = [Victim(server.url, path="/v1/best-of-n", body={**LONG, "seed": k}) for k in range(ABANDONED)]
        # every one of them is admitted (its worker started sampling), then every client goes away
        assert poll(lambda: metric(c, "repirl_searches_in_flight") >= ABANDONED, timeout=120), \
            metric(c, "repirl_searches_in_flight")
        for v in victims:
            v.leave()
        # their work stops: inside the policy's sampling loop (between decode steps), not after it
        assert poll(lambda: metric(c, "repirl_searches_in_flight") == 0, timeout=300), \
            metric(c, "repirl_searches_in_flight")
        assert metric(c, "repirl_search_samples_in_flight") == 0
        assert metric(c, "repirl_cancelled_work_total", stage="engine") > cancelled, "no sampling was stopped"
        assert poll(lambda: proc.num_threads() <= baseline + EXECUTOR_SLACK, timeout=60), (proc.num_threads(), baseline)
        r = c.post("/v1/best-of-n", json=NORMAL)
        assert r.status_code == 200 and r.json()["object"] == "search", r.text
