"""The service under stress, over HTTP: 429 when the queue is full, cancellation of a disconnected client's work,
fail-open when Redis stops, refusing to start on a missing model, SIGTERM draining in-flight requests."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.server.conftest import REPO, RedisProc, ServerProc, metric, poll

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_b(tmp_path_factory):
    r = RedisProc(tmp_path_factory.mktemp("redis_b")).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def slow_prm(tmp_path_factory):
    """A wider PRM with room for long items: a `_big` request keeps the engine busy for seconds even on a quiet
    machine (with the 2-layer, 128-wide PRM it finished in ~0.2 s, before the queue could fill)."""
    from repirl.scoring.tiny_prms import build_tiny_prm

    return build_tiny_prm(tmp_path_factory.mktemp("slow_prm") / "prm", "token-reward", hidden_size=256,
                          intermediate_size=1024, max_position_embeddings=4096)


@pytest.fixture(scope="module")
def server_b(slow_prm, redis_b, tmp_path_factory):
    """One PRM, no engine KV reuse (so big requests stay slow), a 70-item queue, limits from REPIRL_* env vars."""
    env = {"REPIRL_ENGINE": "hf", "REPIRL_HF_KV_CACHE_TOKENS": "0", "REPIRL_LIMITS__MAX_QUEUE_ITEMS": "70",
           "REPIRL_REDIS_BACKOFF_S": "0.5"}
    srv = ServerProc(["--prm", str(slow_prm), "--redis-url", redis_b.url], env=env,
                     log=tmp_path_factory.mktemp("server_b") / "server.log").wait_ready()
    yield srv
    srv.stop()


def _big(tag: str, n: int = 64) -> dict:
    """n items of ~2,000 tokens for `slow_prm`: 8 items per micro-batch, so a 64-item request holds the engine for
    several batches and whatever arrives meanwhile waits in the queue."""
    return {"items": [{"question": f"{tag} {i}", "steps": ["1+2+3+4+5+6+7+8+9 = 45 " * 40] * 2} for i in range(n)]}


def _post_in_thread(url: str, payload: dict, out: dict, key: str, timeout: float = 120):
    def run():
        try:
            out[key] = httpx.post(url + "/v1/score", json=payload, timeout=timeout)
        except httpx.HTTPError as e:
            out[key] = e

    t = threading.Thread(target=run)
    t.start()
    return t


def _wait_busy(client: httpx.Client, timeout: float = 30) -> None:
    """Until the big request is inside the engine (it left the queue as a batch)."""
    deadline = time.monotonic() + timeout
    while metric(client, "repirl_batch_items_count") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)


def _items_arrived(client: httpx.Client) -> float:
    """Items ever queued: those waiting plus those handed to the engine, read from one scrape (the batcher moves
    items from one to the other in a single step, so the sum only grows when a request is queued)."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(("repirl_queue_items{", "repirl_batch_items_sum{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_queue_full_gives_429_with_retry_after(server_b):
    """Events, not sleeps: the refused request is sent once the queue gauge shows b's 40 items waiting (a fixed
    0.3 s wait let a loaded CI machine send it while b was still being tokenised, and it was admitted)."""
    out: dict = {}
    with httpx.Client(base_url=server_b.url, timeout=60) as c:
        base = metric(c, "repirl_batch_items_count")
        a = _post_in_thread(server_b.url, _big("busy-a", 16), out, "a")  # one batch in the engine, 8 items wait
        while metric(c, "repirl_batch_items_count") <= base:
            time.sleep(0.02)
        b = _post_in_thread(server_b.url, _big("queued-b", 40), out, "b")  # waits in the queue (<= 48 of 70)
        assert poll(lambda: metric(c, "repirl_queue_items") >= 40, timeout=60)
        r = c.post("/v1/score", json=_big("refused-c", 40))  # b's 40 + 40 > 70
        a.join(), b.join()
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "queue_full"
        assert out["a"].status_code == 200 and out["b"].status_code == 200
        assert metric(c, "repirl_queue_rejections_total") >= 1


def test_disconnected_client_work_is_cancelled(server_b):
    """The client hangs up once its 10 items are queued (the queue gauge says so), not after a fixed timeout that a
    slow tokenisation on a loaded machine could outlast."""
    from tests.server.conftest import SlowRequest

    out: dict = {}
    with httpx.Client(base_url=server_b.url, timeout=60) as c:
        cancelled0 = metric(c, "repirl_cancelled_work_total", stage="queued")
        base = metric(c, "repirl_batch_items_count")
        a = _post_in_thread(server_b.url, _big("busy-d"), out, "a")
        while metric(c, "repirl_batch_items_count") <= base:
            time.sleep(0.02)
        arrived0 = _items_arrived(c)
        gone = SlowRequest(server_b.url, "/v1/score", _big("gone-e", 10)).send_rest()
        assert poll(lambda: _items_arrived(c) >= arrived0 + 10, timeout=60)
        gone.hang_up()  # the client gives up while its items wait
        a.join()
        assert out["a"].status_code == 200
        assert poll(lambda: metric(c, "repirl_cancelled_work_total", stage="queued") >= cancelled0 + 10, timeout=10)
        assert metric(c, "repirl_cancelled_work_total", stage="queued") == cancelled0 + 10  # never reached the engine


def test_fail_open_when_redis_stops(server_b, redis_b):
    with httpx.Client(base_url=server_b.url, timeout=60) as c:
        payload = {"question": "fail open?", "steps": ["x", "y"]}
        warm = c.post("/v1/score", json=payload).json()
        assert c.post("/v1/score", json=payload).json()["usage"]["cached_steps"] == 2
        t0 = time.perf_counter()
        c.post("/v1/score", json={"question": "baseline", "steps": ["x", "y"]})
        baseline = time.perf_counter() - t0
        redis_b.stop()
        errors0 = metric(c, "repirl_cache_errors_total")
        t0 = time.perf_counter()
        r = c.post("/v1/score", json=payload)
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200 and r.json()["usage"]["cached_steps"] == 0
        assert r.json()["data"][0]["step_rewards"] == pytest.approx(warm["data"][0]["step_rewards"], abs=1e-6)
        assert elapsed < baseline + 1.0  # bounded added latency (timeouts are 50 ms)
        assert metric(c, "repirl_cache_errors_total") > errors0
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["cache"]["healthy"] is False


def test_refuses_to_start_on_missing_model(tmp_path):
    missing = tmp_path / "no-such-prm"
    p = subprocess.run([sys.executable, "-m", "server", "--prm", str(missing)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and str(missing) in p.stderr
    p = subprocess.run([sys.executable, "-m", "server", "--config", str(tmp_path / "none.yaml")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "none.yaml" in p.stderr


def test_sigterm_drains_in_flight_requests(slow_prm, tmp_path):
    """Events, not timing: the in-flight request is one whose last body byte the test holds back, so it is surely
    in flight at the signal (before: a big request raced the signal, and a loaded machine could run it past the
    30 s drain timeout). It then runs entirely during the drain and must still complete."""
    from tests.server.conftest import SlowRequest

    drain_s = 120
    srv = ServerProc(["--prm", str(slow_prm)], env={"REPIRL_ENGINE": "hf", "REPIRL_HF_KV_CACHE_TOKENS": "0",
                     "REPIRL_LOG_LEVEL": "info", "REPIRL_DRAIN_TIMEOUT_S": str(drain_s)},
                     log=tmp_path / "server.log").wait_ready()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            slow = SlowRequest(srv.url, "/v1/score", _big("drain", 8))
            assert poll(lambda: metric(c, "repirl_requests_in_flight") == 1, 30)
            srv.proc.send_signal(signal.SIGTERM)
            t_signal = time.monotonic()
            assert poll(lambda: c.get("/readyz").json()["status"] == "draining", 30)
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["in_flight"] == 1, ready.text
            refused = c.post("/v1/score", json={"question": "new?", "steps": ["x"]})  # arrives while draining
            assert refused.status_code == 503 and refused.headers["connection"] == "close", refused.text
            assert "draining" in refused.json()["error"]["message"]
            assert srv.proc.poll() is None  # still up: the in-flight request holds the drain open
        status, body = slow.finish()
        assert status == 200, body[:500]
        assert len(__import__("json").loads(body)["data"]) == 8
        # uvicorn finishes the shutdown, then re-raises the captured SIGTERM (exit status -15)
        assert srv.proc.wait(max(1.0, drain_s - (time.monotonic() - t_signal))) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        srv.stop()


@pytest.mark.asyncio
async def test_micro_batcher_bounds_splits_and_batches_concurrent_requests():
    """The batcher on a fake engine: batches never exceed max_batch_items/tokens, a large request is split and
    reassembled in order, and requests that arrive while the engine is busy share the next batch."""
    import asyncio

    from server.batching import MicroBatcher
    from server.metrics import Metrics

    import threading

    calls: list[list[str]] = []
    started, release = threading.Event(), threading.Event()

    def engine(items):
        calls.append(list(items))
        if len(calls) == 1:  # busy with the first batch until the test has queued the rest: no timing involved
            started.set()
            release.wait(timeout=30)
        return [f"r-{x}" for x in items]

    b = MicroBatcher("fake", engine, max_batch_tokens=100, max_batch_items=4, max_wait_ms=1, max_queue_items=100,
                     metrics=Metrics())
    b.start()
    try:
        first = asyncio.create_task(b.submit(["a0"], [10]))
        assert await asyncio.to_thread(started.wait, 30)  # the engine is now busy with a0
        rest = [asyncio.create_task(b.submit([f"c{i}"], [10])) for i in range(3)]
        big = asyncio.create_task(b.submit([f"big{i}" for i in range(6)], [30] * 6))
        while b._queued_items < 9:  # every later request is queued while the engine is busy
            await asyncio.sleep(0)
        release.set()
        assert await first == ["r-a0"]
        assert [await t for t in rest] == [["r-c0"], ["r-c1"], ["r-c2"]]
        assert await big == [f"r-big{i}" for i in range(6)]
    finally:
        release.set()
        await b.stop()
    assert calls[0] == ["a0"]
    assert calls[1][:3] == ["c0", "c1", "c2"]  # arrived during a0's call: one batch, no extra wait
    assert all(len(c) <= 4 for c in calls)
    assert [x for c in calls[1:] for x in c] == ["c0", "c1", "c2"] + [f"big{i}" for i in range(6)]
    tokens = {x: 30 if x.startswith("big") else 10 for c in calls for x in c}
    assert all(sum(tokens[x] for x in c) <= 100 for c in calls)
