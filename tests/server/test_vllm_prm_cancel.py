"""Cancellation reaches a vLLM PRM batch already running (issue 22, item 10a), over real HTTP against the service on
vLLM's pooling runner: a batch whose every client left stops between engine steps, and in a batch shared with a
client that stays, the leaver's unfinished items are aborted while the stayer's complete.

The service is this module's own: 32 tokens per PRM engine step (`vllm_prm_max_num_batched_tokens`), so a batch of
64 items of ~200 tokens takes ~400 engine steps, and a client hangs up once the metrics say its batch is in the
engine (no sleeps). Before this item the batch ran to the end (`stage="engine"` stayed 0).
"""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from repirl.vllm_setup import vllm_available
from tests.server.conftest import ServerProc, SlowRequest, metric, poll

PRM = "tr"
BIG = 64  # items per request at most (max_items)


@pytest.fixture(scope="module")
def server(server_prms, tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm_prm_cancel")
    (d / "config.yaml").write_text(f"engine: vllm\nlimits:\n  max_items: {BIG}\n  max_tokens: 250\n"
                                   "  max_batch_tokens: 65536\n")
    env = {"REPIRL_VLLM_MAX_MODEL_LEN": "256", "REPIRL_VLLM_PRM_MAX_NUM_BATCHED_TOKENS": "32"}
    srv = ServerProc(["--config", str(d / "config.yaml"), "--prm", f"{PRM}={server_prms['token-reward']}"], env=env,
                     log=d / "server.log").wait_ready(timeout=300)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _items(tag: str, n: int = BIG) -> list[dict]:
    """n items of ~200 tokens, unique per call (the score cache and vLLM's prefix cache never answer them)."""
    salt = uuid.uuid4().hex
    return [{"question": f"{tag} {salt} {i}: what is 1+2+3+4+5?", "steps": ["1+2+3+4+5 = 15, " * 5, "so 15. " * 4]}
            for i in range(n)]


def _counts(c: httpx.Client) -> dict[str, float]:
    return {"queued": metric(c, "repirl_cancelled_work_total", model=PRM, stage="queued"),
            "engine": metric(c, "repirl_cancelled_work_total", model=PRM, stage="engine"),
            "batches": metric(c, "repirl_batch_items_count", model=PRM),
            "items_in_batches": metric(c, "repirl_batch_items_sum", model=PRM),
            "queue": metric(c, "repirl_queue_items", model=PRM),
            "tokens_computed": metric(c, "repirl_tokens_computed_total", model=PRM)}


class Stayer(threading.Thread):
    """A /v1/score request whose client waits for the answer."""

    def __init__(self, url: str, items: list[dict]):
        super().__init__(daemon=True)
        self.url, self.items, self.response = url, items, None
        self.start()

    def run(self) -> None:
        self.response = httpx.post(self.url + "/v1/score", json={"model": PRM, "items": self.items}, timeout=120)


def _answered(stayer: Stayer) -> dict:
    stayer.join(120)
    assert stayer.response is not None and stayer.response.status_code == 200, stayer.response
    body = stayer.response.json()
    assert len(body["data"]) == len(stayer.items) and all(len(d["step_rewards"]) == 2 for d in body["data"])
    return body


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
def test_a_running_batch_stops_when_its_client_leaves(server, client):
    before = _counts(client)
    leaver = SlowRequest(server.url, "/v1/score", {"model": PRM, "items": _items("alone")}).send_rest()
    # its batch was taken: it is in the engine (~400 steps of 32 tokens) when the client hangs up
    assert poll(lambda: _counts(client)["batches"] >= before["batches"] + 1, timeout=60)
    leaver.hang_up()
    assert poll(lambda: _counts(client)["engine"] >= before["engine"] + BIG, timeout=60), _counts(client)
    after = _counts(client)
    assert after["engine"] == before["engine"] + BIG and after["queued"] == before["queued"]
    # the engine is free again and answers the next request
    r = client.post("/v1/score", json={"model": PRM, "items": _items("next", 2)})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["tokens_computed"] > 0


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
def test_a_leavers_items_are_aborted_while_the_batch_runs_on_for_the_others(server, client):
    before = _counts(client)
    blocker = Stayer(server.url, _items("blocker"))  # holds the engine while the next two queue behind it
    assert poll(lambda: _counts(client)["batches"] >= before["batches"] + 1, timeout=60)
    leaver = SlowRequest(server.url, "/v1/score", {"model": PRM, "items": _items("leaver", 48)}).send_rest()
    assert poll(lambda: _counts(client)["queue"] >= 48, timeout=60)
    stayer = Stayer(server.url, _items("stayer", 16))  # after the leaver: its items run after the leaver's (FCFS)
    assert poll(lambda: _counts(client)["queue"] >= 64, timeout=60)
    # the leaver's and the stayer's items went into one batch (64 items), now in the engine
    assert poll(lambda: _counts(client)["batches"] >= before["batches"] + 2, timeout=120)
    assert _counts(client)["items_in_batches"] == before["items_in_batches"] + 2 * BIG
    leaver.hang_up()
    blocked, stayed = _answered(blocker), _answered(stayer)
    assert poll(lambda: _counts(client)["engine"] > before["engine"], timeout=60), _counts(client)
    after = _counts(client)
    # only the leaver's items that had not finished were aborted (the stayer's all completed: answered above)
    assert before["engine"] < after["engine"] <= before["engine"] + 48 and after["queued"] == before["queued"]
    assert after["tokens_computed"] == before["tokens_computed"] + sum(
        b["usage"]["tokens_computed"] for b in (blocked, stayed))


@pytest.mark.asyncio
async def test_the_batcher_says_which_items_are_gone_and_counts_those_the_engine_dropped():
    """The micro-batcher's side, on a fake engine (no vLLM): `item_gone(i)` turns true for the items of a request
    cancelled while its batch is in the engine, an engine's None for such an item counts as cancelled in the engine,
    and the request that stayed gets its results."""
    import asyncio

    from repirl import cancel
    from server.batching import MicroBatcher
    from server.metrics import Metrics

    first_in, first_out, second_in, second_out = (threading.Event() for _ in range(4))
    seen: list[list[bool]] = []

    def engine(items):
        if items == ["first"]:  # holds the engine while the next two requests queue behind it
            first_in.set()
            first_out.wait(timeout=30)
            return ["r-first"]
        seen.append([cancel.item_gone(i) for i in range(len(items))])
        second_in.set()
        second_out.wait(timeout=30)  # until the test has cancelled the leaver
        return [None if cancel.item_gone(i) else f"r-{x}" for i, x in enumerate(items)]

    b = MicroBatcher("fake", engine, max_batch_tokens=100, max_batch_items=8, max_wait_ms=1, max_queue_items=100,
                     metrics=Metrics())
    b.start()
    try:
        first = asyncio.create_task(b.submit(["first"], [1]))
        assert await asyncio.to_thread(first_in.wait, 30)
        leaver = asyncio.create_task(b.submit(["l0", "l1"], [1, 1]))
        stayer = asyncio.create_task(b.submit(["s0", "s1", "s2"], [1, 1, 1]))
        while b._queued_items < 5:
            await asyncio.sleep(0)
        first_out.set()
        assert await first == ["r-first"]
        assert await asyncio.to_thread(second_in.wait, 30)  # leaver and stayer: one batch, in the engine
        leaver.cancel()
        await asyncio.gather(leaver, return_exceptions=True)
        second_out.set()
        assert await stayer == ["r-s0", "r-s1", "r-s2"]
    finally:
        first_out.set()
        second_out.set()
        await b.stop()
    assert seen == [[False] * 5]
    assert b.metrics.cancelled_work.labels("fake", "engine")._value.get() == 2
    assert b.metrics.cancelled_work.labels("fake", "queued")._value.get() == 0
