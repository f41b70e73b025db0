"""Overload over real HTTP: far more concurrent work than the admission limits take (the PRM queue, the searches'
in-flight sample budget), against `python -m server` in a subprocess with a transformers PRM and policy.
The service must shed what it cannot take with 429 + Retry-After, never answer 5xx, keep its memory bounded
(RSS of the server process, measured with psutil), and serve a normal request as soon as the load stops.

The flood runs until it has seen both kinds of 429 (or a deadline): nothing assumes how fast the machine is."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import psutil
import pytest

from repirl.policy.toy import TOY_QUESTION
from tests.server.conftest import ServerProc, metric

pytestmark = pytest.mark.slow

MAX_QUEUE_ITEMS = 16
MAX_BODY_BYTES = 20_000
SEARCH = {"question": TOY_QUESTION, "n": 4, "max_steps": 4, "return_candidates": False}  # 16 samples
SEARCH_BUDGET = 48  # max_search_samples_in_flight: 3 such searches at a time
SCORE_CLIENTS, SEARCH_CLIENTS = 48, 12
# RSS bound over the warmed-up baseline. What the limits let in: <= MAX_QUEUE_ITEMS queued items of <= max_tokens
# (400) ids, bodies of <= MAX_BODY_BYTES on each of the 60 connections (~1.2 MB raw, ~25 MB as Python objects at
# 20x), one transformers forward of <= hf_forward_tokens tokens through a 2-layer 128-wide model (a few MB), and
# 3 searches' trees of 16 candidates. Everything else is a leak or an unbounded queue. 200 MB leaves room for the
# allocator's arenas of the extra worker threads (glibc: up to 8 x cores arenas, 64 MB each reserved, little touched).
RSS_BOUND_MB = 200


@pytest.fixture(scope="module")
def server_o(server_prms, tmp_path_factory):
    from repirl.policy.toy import build_toy_policy

    env = {"REPIRL_ENGINE": "hf", "REPIRL_TORCH_THREADS": "1",
           "REPIRL_LIMITS__MAX_QUEUE_ITEMS": str(MAX_QUEUE_ITEMS), "REPIRL_LIMITS__MAX_BATCH_ITEMS": "8",
           "REPIRL_LIMITS__MAX_TOKENS": "400", "REPIRL_LIMITS__MAX_BATCH_TOKENS": "2048",
           "REPIRL_LIMITS__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
           "REPIRL_LIMITS__MAX_SEARCH_SAMPLES_IN_FLIGHT": str(SEARCH_BUDGET)}
    srv = ServerProc(["--prm", f"tr={server_prms['token-reward']}", "--policy", f"hf:{build_toy_policy()}"],
                     env=env, log=tmp_path_factory.mktemp("server_overload") / "server.log").wait_ready()
    yield srv
    srv.stop()


def _score_body(tag: str, k: int) -> dict:
    return {"items": [{"question": f"({tag}-{k}) What is {i}+{k}?", "steps": [f"{i}+{k}={i + k}", f"Answer: {i + k}"]}
                      for i in range(8)]}


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop_event = psutil.Process(pid), 0, threading.Event()

    def run(self):
        while not self.stop_event.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)


async def _flood(url: str, tag: str, deadline_s: float = 90) -> list[tuple[str, int, str | None, dict | None]]:
    """SCORE_CLIENTS clients posting 8 fresh items each and SEARCH_CLIENTS clients posting searches, each in a loop,
    until both kinds of 429 were seen (plus some more traffic) or the deadline. (kind, status, Retry-After, body)."""
    out: list = []
    seen = {"score": 0, "search": 0}
    end = time.monotonic() + deadline_s
    done_at: list[float] = []

    def enough() -> bool:
        if time.monotonic() > end:
            return True
        if min(seen.values()) and not done_at:
            done_at.append(len(out))
        return bool(done_at) and len(out) >= done_at[0] + 100

    async def score_client(c: httpx.AsyncClient, w: int):
        k = 0
        while not enough():
            r = await c.post("/v1/score", json=_score_body(f"{tag}-{w}", k))
            k += 1
            out.append(("score", r.status_code, r.headers.get("retry-after"), r.json()))
            seen["score"] += r.status_code == 429

    async def search_client(c: httpx.AsyncClient, w: int):
        k = 0
        while not enough():
            r = await c.post("/v1/best-of-n", json={**SEARCH, "seed": w * 1000 + k})
            k += 1
            out.append(("search", r.status_code, r.headers.get("retry-after"), r.json()))
            seen["search"] += r.status_code == 429

    limits = httpx.Limits(max_connections=SCORE_CLIENTS + SEARCH_CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await asyncio.gather(*[score_client(c, w) for w in range(SCORE_CLIENTS)],
                             *[search_client(c, w) for w in range(SEARCH_CLIENTS)])
    return out


def test_overload_sheds_with_429_bounded_memory_and_recovers(server_o):
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=server_o.url, timeout=120) as c:
        for k in range(3):  # warm: engines, worker threads, allocator arenas
            assert c.post("/v1/score", json=_score_body(f"warm-{tag}", k)).status_code == 200
            assert c.post("/v1/best-of-n", json={**SEARCH, "seed": k}).status_code == 200
        baseline = psutil.Process(server_o.proc.pid).memory_info().rss
        sampler = RssSampler(server_o.proc.pid)
        sampler.start()
        try:
            results = asyncio.run(_flood(server_o.url, tag))
        finally:
            sampler.stop_event.set()
            sampler.join()

        statuses = {}
        for kind, status, _, _ in results:
            statuses[(kind, status)] = statuses.get((kind, status), 0) + 1
        print(f"\noverload: {len(results)} requests {statuses}; RSS baseline {baseline / 2**20:.0f} MB, "
              f"peak {sampler.peak / 2**20:.0f} MB")
        assert not [r for r in results if r[1] >= 500], statuses
        assert {s for _, s, _, _ in results} <= {200, 429}, statuses
        assert statuses.get(("score", 429)) and statuses.get(("search", 429)), statuses
        assert statuses.get(("score", 200)) and statuses.get(("search", 200)), statuses
        for kind, status, retry_after, body in results:
            if status == 429:
                assert retry_after is not None and int(retry_after) >= 1
                assert body["error"]["type"] == "queue_full"
                want = "scoring queue" if kind == "score" else "max_search_samples_in_flight"
                assert want in body["error"]["message"], body
            else:
                assert body["object"] in ("score", "search")
        assert (sampler.peak - baseline) / 2**20 < RSS_BOUND_MB, (baseline, sampler.peak)

        # the load has stopped: nothing is left queued, and normal requests succeed at once
        assert metric(c, "repirl_queue_items") == 0
        assert metric(c, "repirl_searches_in_flight") == 0
        r = c.post("/v1/score", json=_score_body(f"after-{tag}", 0))
        assert r.status_code == 200 and len(r.json()["data"]) == 8
        r = c.post("/v1/best-of-n", json={**SEARCH, "seed": 7})
        assert r.status_code == 200 and r.json()["answer"] is not None
        assert c.get("/readyz").status_code == 200
