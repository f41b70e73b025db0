"""Issue 22, item 7: fairness between API keys, over real HTTP against `python -m server` (transformers PRM). A heavy
key saturates the PRM queue (many clients, requests of 1-64 items of ~360 tokens, retried at once after a 429) while a
light key sends single items one after another: every light request is answered 200 (a key with nothing queued is
always admitted; the batcher serves the keys in turns), and the heavy key is the one refused. Before, the queue was
first come first served by items, and the heavy key's retries filled every slot the engine freed.
Latency figures (light p99 alone vs under the heavy load) come from
`load_tests/bench_hostile.py --part fairness`, not from here."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid

import httpx
import pytest

from repirl import cancel
from repirl.artifacts import PRMConfig
from repirl.scoring.base import StepScores
from repirl.scoring.cache import InProcessCache
from repirl.trajectory import TrajectoryIds
from server.batching import MicroBatcher
from server.errors import QueueFull
from server.metrics import Metrics
from server.runtime import GuardedCache, PRMRuntime
from server.settings import Limits
from tests.server.conftest import ServerProc

HEAVY, LIGHT = "heavy-key-1", "light-key-2"
HEAVY_CLIENTS, LIGHT_REQUESTS = 12, 20


def items(tag: str, n: int) -> list[dict]:
    """n unique items of ~360 tokens (the prefix cache never answers them: each goes to the engine)."""
    salt = uuid.uuid4().hex
    return [{"question": f"{tag} {salt} {i} " + "7+8+9 = 24; " * 6, "steps": ["1+2+3+4+5 = 15 " * 7] * 2}
            for i in range(n)]


@pytest.fixture(scope="module")
def server(server_prms, tmp_path_factory):
    d = tmp_path_factory.mktemp("fairness")
    (d / "keys.txt").write_text(f"{HEAVY}\n{LIGHT}\n")
    (d / "config.yaml").write_text("engine: hf\ntorch_threads: 1\nlimits:\n  max_items: 64\n  max_tokens: 400\n"
                                   "  max_chars: 300\n  max_queue_items: 256\n")
    srv = ServerProc(["--config", str(d / "config.yaml"), "--api-key-file", str(d / "keys.txt"),
                      "--prm", f"tr={server_prms['token-reward']}"], log=d / "server.log").wait_ready()
    yield srv
    srv.stop()


async def _load(url: str) -> tuple[list[int], dict[int, int]]:
    """(light statuses, heavy status counts) with the heavy key saturating the queue while the light key runs."""
    light_done = asyncio.Event()
    heavy: dict[int, int] = {}
    rng = random.Random(0)

    async def heavy_client(c: httpx.AsyncClient, w: int):
        k = 0
        while not light_done.is_set():
            r = await c.post("/v1/score", json={"items": items(f"heavy-{w}-{k}", rng.randint(1, 64))})
            heavy[r.status_code] = heavy.get(r.status_code, 0) + 1
            k += 1

    async def light_client(c: httpx.AsyncClient) -> list[int]:
        while sum(heavy.values()) < 2 * HEAVY_CLIENTS or not heavy.get(429):  # the heavy key is saturating
            await asyncio.sleep(0.05)
        out = []
        for k in range(LIGHT_REQUESTS):
            out.append((await c.post("/v1/score", json={"items": items(f"light-{k}", 1)})).status_code)
        light_done.set()
        return out

    limits = httpx.Limits(max_connections=HEAVY_CLIENTS + 1)
    async with (httpx.AsyncClient(base_url=url, timeout=300, limits=limits,
                                  headers={"Authorization": f"Bearer {HEAVY}"}) as hc,
                httpx.AsyncClient(base_url=url, timeout=300, headers={"Authorization": f"Bearer {LIGHT}"}) as lc):
        tasks = [asyncio.create_task(heavy_client(hc, w)) for w in range(HEAVY_CLIENTS)]
        try:
            light = await asyncio.wait_for(light_client(lc), 600)
        finally:
            light_done.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return light, heavy


@pytest.mark.slow
def test_a_light_key_is_served_while_a_heavy_key_saturates_the_queue(server):
    light, heavy = asyncio.run(_load(server.url))
    print(f"\nfairness: light {light}; heavy {heavy}")
    assert light == [200] * LIGHT_REQUESTS, light
    assert heavy.get(200) and heavy.get(429), heavy  # the heavy key was served, and refused beyond the queue
    assert set(heavy) <= {200, 429}, heavy


class _TimedEngine:
    """A fake engine on a fake clock: 10 tokens per item at 1000 tokens/s (0.01 s an item), so the batcher measures
    exactly 1000 tokens/s and a 50 ms quantum is 50 tokens. `hold()` makes its next call wait for `release`."""

    def __init__(self):
        self.now, self.calls, self._hold = 0.0, [], None

    def hold(self) -> tuple[threading.Event, threading.Event]:
        self._hold = threading.Event(), threading.Event()
        return self._hold

    def __call__(self, batch):
        self.calls.append(list(batch))
        if self._hold:
            (started, release), self._hold = self._hold, None
            started.set()
            release.wait(timeout=30)
        self.now += 0.01 * len(batch)
        return [f"r-{x}" for x in batch]


async def _queue_behind_a_held_call(b, engine: _TimedEngine, work: dict[str, list[str]]) -> list[list]:
    """Keep the engine busy with one heavy item, queue `work` (key -> items) meanwhile, then let it all run."""
    started, release = engine.hold()
    try:
        first = asyncio.create_task(b.submit(["hold"], [10], key=HEAVY))
        assert await asyncio.to_thread(started.wait, 30)
        engine.calls.clear()
        tasks = [asyncio.create_task(b.submit(xs, [10] * len(xs), key=key)) for key, xs in work.items()]
        while b._queued_items < sum(map(len, work.values())):
            await asyncio.sleep(0)
        release.set()
        await first
        return [await t for t in tasks]
    finally:
        release.set()


@pytest.mark.asyncio
async def test_with_two_active_keys_each_engine_call_is_one_quantum_of_the_measured_rate():
    """Two active keys: every engine call holds at most the quantum's tokens at the rate measured from earlier calls
    (50 ms x 1000 tokens/s = 50 tokens, not max_batch_tokens 100), the light item rides in the first call after the
    one in flight, and the heavy key alone keeps the quantum while the light key is active (within fair_window_s)
    and full batches once it is not. Without the quantum the first call after the held one had 60 tokens."""
    engine = _TimedEngine()
    b = MicroBatcher("fake", engine, max_batch_tokens=100, max_batch_items=100, max_wait_ms=1, max_queue_items=1000,
                     metrics=Metrics(), fair_quantum_ms=50, fair_window_s=5, clock=lambda: engine.now)
    b.start()
    heavy = [f"h{i}" for i in range(30)]
    try:
        # one key: full batches (10 items, 100 tokens), and the rate is measured meanwhile
        assert await _queue_behind_a_held_call(b, engine, {HEAVY: heavy}) == [[f"r-{x}" for x in heavy]]
        assert [len(c) for c in engine.calls] == [10, 10, 10]
        assert b.rate == pytest.approx(1000)
        assert b.call_tokens([HEAVY]) == 100

        # two keys: the light key's one item and the heavy key's backlog, both queued behind the call in flight
        engine.now += 10  # past the window: nothing but these two keys is active
        out = await _queue_behind_a_held_call(b, engine, {HEAVY: heavy, LIGHT: ["light"]})
        assert out == [[f"r-{x}" for x in heavy], ["r-light"]]
        assert "light" in engine.calls[0]  # the first call after the one in flight
        assert [len(c) for c in engine.calls[1:]] == [5] * 5 + [3]  # the light key is still active: 50 tokens
        assert all(10 * len(c) <= 50 for c in engine.calls)
        assert sorted(x for c in engine.calls for x in c) == sorted(heavy + ["light"])

        # the light key's window has passed: the heavy key alone gets full batches again
        engine.now += 10
        assert await _queue_behind_a_held_call(b, engine, {HEAVY: heavy}) == [[f"r-{x}" for x in heavy]]
        assert [len(c) for c in engine.calls] == [10, 10, 10]
    finally:
        await b.stop()


class _CountingScorer:
    """A fake PRM behind a real PRMRuntime: counts tokenizations, and its first engine call waits for `release`."""

    def __init__(self):
        self.config, self.revision, self.encoder, self.encoded = PRMConfig(), "fake", self, 0
        self.started, self.release = threading.Event(), threading.Event()

    def encode(self, question, steps, token_limit=None) -> TrajectoryIds:
        self.encoded += 1
        return TrajectoryIds([hash(question) % 1000, 1, 2, 3], 1, [(1, 4)])

    def score_encoded(self, trajs):
        if not self.started.is_set():
            self.started.set()
            self.release.wait(timeout=30)
        return [StepScores([0.5], [[0.1, 0.2, 0.3]], tokens_computed=4, tokens_total=4) for _ in trajs]


@pytest.mark.asyncio
async def test_a_request_the_full_queue_refuses_is_refused_before_it_is_tokenized():
    """A key with work queued, over the item bound: 429 without tokenizing its items (a flooding key's retries
    tokenized up to max_items items each, on the engine's cores, only to be refused); another key is still taken.
    Before, the refused request was tokenized first (`encoded` went up by its items)."""
    scorer, metrics = _CountingScorer(), Metrics()
    rt = PRMRuntime("fake", scorer, GuardedCache(InProcessCache(), metrics, 1.0, 1.0), metrics,
                    Limits(max_queue_items=3), ttl_s=60, salt=None)
    rt.batcher.start()
    item = lambda tag: [(tag, ["step"])]  # noqa: E731
    try:
        first = asyncio.create_task(rt.score(item("in-flight"), ["items[0]"], caller=HEAVY))
        assert await asyncio.to_thread(scorer.started.wait, 30)
        queued = asyncio.create_task(rt.score(item("q1") + item("q2"), ["items[0]", "items[1]"], caller=HEAVY))
        while rt.batcher._queued_items < 2:
            await asyncio.sleep(0)
        before = scorer.encoded
        with pytest.raises(QueueFull):
            await rt.score(item("r1") + item("r2"), ["items[0]", "items[1]"], caller=HEAVY)
        assert scorer.encoded == before  # refused before its tokenization
        light = asyncio.create_task(rt.score(item("light"), ["items[0]"], caller=LIGHT))
        while rt.batcher._queued_items < 3:  # the light key's item is taken although the queue is full
            await asyncio.sleep(0)
        scorer.release.set()
        assert [len(r) for r in await asyncio.gather(first, queued, light)] == [1, 2, 1]
    finally:
        scorer.release.set()
        await rt.batcher.stop()


class _PreemptibleEngine:
    """A fake engine that scores one item at a time (0.01 s each on a fake clock) with a safe point before each, as
    the transformers PRM has between forwards; its first call stops before item `pause_at` until `release`."""

    def __init__(self, pause_at: int):
        self.now, self.calls, self.scored, self.pause_at = 0.0, [], [], pause_at
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, batch):
        self.calls.append(list(batch))
        results = [None] * len(batch)
        for i, x in enumerate(batch):
            if len(self.calls) == 1 and i == self.pause_at:
                self.started.set()
                self.release.wait(timeout=30)
            if i and cancel.preempt_requested():
                raise cancel.Preempted(results)
            self.now += 0.01
            self.scored.append(x)
            results[i] = f"r-{x}"
        return results


@pytest.mark.asyncio
async def test_a_heavy_call_hands_back_at_a_safe_point_once_it_had_its_quantum_and_another_key_waits():
    """The call in flight is the heavy key's 10 items when the light key's item arrives: at the first safe point past
    the 50 ms quantum (5 items in) it hands back what is done, the light item runs next, and the heavy key's other
    items follow it, each scored once and handed back in order. Before, the light item waited for all 10."""
    engine = _PreemptibleEngine(pause_at=3)
    b = MicroBatcher("fake", engine, max_batch_tokens=100, max_batch_items=100, max_wait_ms=1, max_queue_items=1000,
                     metrics=Metrics(), fair_quantum_ms=50, fair_window_s=5, clock=lambda: engine.now)
    b.start()
    heavy = [f"h{i}" for i in range(10)]
    try:
        heavy_task = asyncio.create_task(b.submit(heavy, [10] * 10, key=HEAVY))
        assert await asyncio.to_thread(engine.started.wait, 30)  # 3 heavy items done, 30 ms of the quantum
        light_task = asyncio.create_task(b.submit(["light"], [10], key=LIGHT))
        while not b._queue:
            await asyncio.sleep(0)
        engine.release.set()
        assert await light_task == ["r-light"]
        assert await heavy_task == [f"r-{x}" for x in heavy]
    finally:
        engine.release.set()
        await b.stop()
    assert engine.scored[:5] == heavy[:5]  # then the call handed back
    assert engine.calls[1] == ["light"] + heavy[5:]  # the light key first, then the heavy key's rest
    assert sorted(engine.scored) == sorted(heavy + ["light"])  # nothing scored twice


@pytest.mark.asyncio
async def test_a_key_the_call_limit_leaves_out_comes_first_next_time():
    """A quantum worth less than two items: each call holds one item. A key with nothing queued goes first (the
    light key's first item), and a key the call limit leaves out keeps its place (its second item comes right after
    one heavy item). Before: a new key queued behind the heavy key waited for one more heavy call (3 calls a light
    request in load_tests/bench_hostile.py); and both keys went to the back of the turn order after each call, so
    the heavy key's forced first item took every call (17.8 s seen with fair_quantum_ms 10)."""
    b = MicroBatcher("fake", lambda items: items, max_batch_tokens=100, max_batch_items=100, max_wait_ms=1,
                     max_queue_items=1000, metrics=Metrics(), fair_quantum_ms=10, fair_window_s=5, clock=lambda: 0.0)
    b.rate = 1000.0  # 10 ms x 1000 tokens/s = 10 tokens: one 10-token item per call
    heavy = asyncio.create_task(b.submit([f"h{i}" for i in range(5)], [10] * 5, key=HEAVY))
    while b._queued_items < 5:
        await asyncio.sleep(0)
    light = asyncio.create_task(b.submit(["l0", "l1"], [10, 10], key=LIGHT))
    while b._queued_items < 7:
        await asyncio.sleep(0)
    calls = [[x for p, s, e in b._take_batch() for x in p.items[s:e]] for _ in range(4)]
    assert calls == [["l0"], ["h0"], ["l1"], ["h1"]]
    heavy.cancel(), light.cancel()
    await asyncio.gather(heavy, light, return_exceptions=True)


async def _two_keys_queued(engine, rate: float, heavy: list, heavy_tokens: list[int], light: list,
                           light_tokens: list[int]):
    """A batcher with the quantum on (`rate` fixes the call's tokens) and both keys' requests queued, not yet run:
    (batcher, heavy task, light task); the test runs the calls itself with `_run_batch(_take_batch())`."""
    b = MicroBatcher("hf", engine, max_batch_tokens=1000, max_batch_items=100, max_wait_ms=1, max_queue_items=1000,
                     metrics=Metrics(), fair_quantum_ms=25, fair_window_s=5)
    b.rate = rate
    heavy_task = asyncio.create_task(b.submit(heavy, heavy_tokens, key=HEAVY))
    light_task = asyncio.create_task(b.submit(light, light_tokens, key=LIGHT))
    while b._queued_items < len(heavy) + len(light):
        await asyncio.sleep(0)
    return b, heavy_task, light_task


@pytest.mark.asyncio
async def test_in_a_call_with_two_keys_the_light_key_is_answered_when_its_own_forward_ends(server_prms):
    """One engine call holds the heavy key's three items and the light key's one (the real transformers PRM): the
    light key's item runs first and is answered when its forward ends (the call hands back, the heavy items are
    queued again and come next); every item's scores equal an unshared call's. Before, the light item waited for the
    heavy key's share of the call too (load_tests/bench_hostile.py: light p99 under load 3.8-4.0x unloaded)."""
    from repirl.scoring.loader import load_scorer

    scorer = load_scorer(server_prms["token-reward"], engine="hf", kv_cache_tokens=0)
    heavy = [(f"heavy {i}: what is 12+7?", ["12+7 = 19"] * 3) for i in range(3)]
    light = [("light: what is 2+2?", ["2+2 = 4"])]
    want = scorer.score(heavy + light)
    calls: list[tuple[int, str]] = []

    def engine(batch):
        try:
            out = scorer.score(batch)
        except cancel.Preempted as e:
            calls.append((len(batch), f"handed back {sum(r is not None for r in e.results)}"))
            raise
        calls.append((len(batch), "whole"))
        return out

    # the quantum holds all four items: one call
    b, heavy_task, light_task = await _two_keys_queued(engine, 1e6, heavy, [30] * 3, light, [10])
    try:
        await b._run_batch(b._take_batch())
        assert calls == [(4, "handed back 1")]
        light_got = await asyncio.wait_for(light_task, 10)  # answered with no other engine call
        assert not heavy_task.done() and len(calls) == 1
        await b._run_batch(b._take_batch())  # the heavy key's three, queued again
        assert calls[1:] == [(3, "whole")]
        got = await heavy_task + light_got
        assert [g.step_rewards for g in got] == [pytest.approx(w.step_rewards, abs=1e-5) for w in want]
    finally:
        heavy_task.cancel(), light_task.cancel()
        await b.stop()


@pytest.mark.asyncio
async def test_a_key_a_hand_back_left_unreached_goes_first_in_the_next_call(server_prms):
    """Two keys in each call, the light key's item longer than the heavy key's share: the lightest-first order runs
    the heavy item first and the call hands back before the light item. The next call serves the light key first,
    and every call after reaches it: it is answered by the second call. Before, the same order came back call after
    call (the hand-back left the turn order as it was) and the light key waited until a heavier heavy item came."""
    from repirl.scoring.loader import load_scorer

    scorer = load_scorer(server_prms["token-reward"], engine="hf", kv_cache_tokens=0)
    heavy = [(f"heavy {i}: what is 12+7?", ["12+7 = 19"]) for i in range(6)]
    light = [("light: what is 12+7 and then 19+1?", ["12+7 = 19"] * 3)]
    calls: list[list[str]] = []

    def engine(batch):
        calls.append([q.split(":")[0] for q, _ in batch])
        return scorer.score(batch)

    # 50 tokens a call, a share of 25: two heavy items (10 tokens each), or the light one (25)
    b, heavy_task, light_task = await _two_keys_queued(engine, 50 / 0.025, heavy, [10] * 6, light, [25])
    try:
        await b._run_batch(b._take_batch())
        # the heavy items ran first (fewer tokens) and the call handed back before the light item: queued again
        assert calls == [["light", "heavy 0", "heavy 1"]] and b._key_items.get(LIGHT) == 1
        await b._run_batch(b._take_batch())
        assert calls[1][0] == "light"
        assert (await asyncio.wait_for(light_task, 10))[0].step_rewards == pytest.approx(
            scorer.score(light)[0].step_rewards, abs=1e-5)
        while not heavy_task.done():
            await b._run_batch(b._take_batch())
        assert len(await heavy_task) == 6
    finally:
        heavy_task.cancel(), light_task.cancel()
        await b.stop()
