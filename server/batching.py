"""Micro-batching of PRM work across concurrent requests.

Requests put their items on one queue per PRM; a single worker runs the engine (in a thread) on batches of at most
`max_batch_items` items and `max_batch_tokens` tokens (a request larger than that is split across batches) and hands
each request its results. Batching is continuous: items that arrived while the engine was busy form the next batch
at once; only a batch that starts on an idle engine waits up to `max_wait_ms` for company (woken by arrivals, not
by polling). Fair between API keys: each key (its hash; "" without keys) has its own FIFO queue, and a batch takes
the keys' work in turns, each key up to an equal share of the batch's tokens first, so one key's backlog never
makes another key wait behind all of it. The engine call in flight is not preemptible, so with more than one key
active (work queued, or submitted within `fair_window_s`: a key that sends one request at a time stays active between
them) each call is cut to a time quantum, `fair_quantum_ms` of tokens at the engine's measured rate (an EWMA of
recent calls' tokens per second; at least one item): a light key's item then waits about one quantum, not a full
`max_batch_tokens` call. With one key active, batches stay full size. An engine with safe points (the transformers
PRM, between forwards) is also preempted: once a call has had its quantum and another key's work waits, it hands back
the items done and the rest is queued again at the front of its key's queue (the first request of a key that was idle
met a full-size call in flight). While several keys are active a call also has safe points every quarter quantum
of tokens, runs its keys' items lightest key first and hands back as soon as one key's items are done (a light
key's item is answered when its own forward ends); a key that such a hand-back left unreached, and a key with
nothing queued, go first in the turn order. Admission counts tokens as well as items: a full queue (either bound)
refuses new work (429), except from a key with nothing queued, whose one request is always taken (one flooding key
never locks the others out; the queue then holds at most one request more per key). A request whose client went away
is cancelled: its items that have not reached the engine are dropped, and a batch already in the engine stops at
the engine's next safe point once every request waiting for it is gone; an engine that can drop single items
(vLLM's pooling PRM) also drops the items of a request that left while the rest of its batch runs on (repirl/cancel.py;
`repirl_cancelled_work_total{stage}` counts both). A batch the engine fails on is run again one request at a time,
so one request's bad item fails that request only (it used to fail every request that shared its batch).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from repirl.cancel import Preempted, WorkCancelled, stop_when, yield_when
from server.errors import QueueFull
from server.metrics import Metrics

log = logging.getLogger("repirl.server")


@dataclass
class _Pending:
    items: list
    tokens: list[int]
    future: asyncio.Future
    key: str = ""  # the API key's hash: whose turn this is in the fair queue
    # the items of a preempted call queued again: (the request they belong to, their indices in it); they share its
    # future, so a client that leaves or an engine error ends them too
    parent: tuple[_Pending, list[int]] | None = None
    taken: int = 0  # items already handed to a batch (a large request spans several batches)
    done: int = 0  # items whose results are in
    results: list = field(default_factory=list)

    def __post_init__(self):
        self.results = [None] * len(self.items)


class MicroBatcher:
    def __init__(self, name: str, score_fn: Callable[[Sequence], list], *, max_batch_tokens: int,
                 max_wait_ms: float, max_queue_items: int, metrics: Metrics, max_batch_items: int = 256,
                 max_queue_tokens: int | None = None, fair_quantum_ms: float = 0, fair_window_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic):
        """`score_fn(items) -> results` runs in a worker thread; items are whatever the engine takes.
        `fair_quantum_ms` 0: no quantum. `clock` times engine calls and key activity (a fake one in tests)."""
        self.name, self.score_fn, self.metrics = name, score_fn, metrics
        self.max_batch_tokens, self.max_batch_items = max_batch_tokens, max_batch_items
        self.max_wait_s, self.max_queue_items = max_wait_ms / 1000, max_queue_items
        self.max_queue_tokens = max_queue_tokens
        self.quantum_s, self.window_s, self.clock = fair_quantum_ms / 1000, fair_window_s, clock
        self.rate: float | None = None  # the engine's tokens per second, EWMA over recent calls (None: not measured)
        self._seen: dict[str, float] = {}  # key -> when it last submitted work (clock)
        self._in_flight: set[str] | None = None  # the keys of the engine call in flight
        self._call_started = 0.0  # (clock) when it started
        self._others_wait = False  # another key queued work during the call: preempt it once it had its quantum
        self._unreached: set[str] = set()  # keys the last hand-back left with nothing done: served first next
        self._step_tokens: int | None = None  # the next call's most tokens between safe points (None: the engine's)
        self._queues: dict[str, deque[_Pending]] = {}  # key -> its requests; dict order = whose turn comes first
        self._key_items: dict[str, int] = {}  # items each key has queued
        self._queued_items = self._queued_tokens = 0  # running totals: the wait loop never re-sums the queue
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        # the engine's own thread: in asyncio's shared pool an engine call queued behind request parsing (up to a
        # dozen heavy requests tokenizing at once) and a light key's item waited for that too
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix=f"prm-{name}")
        self.busy_since: float | None = None  # time.monotonic() when the engine call in flight started (readiness)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._engine_thread.shutdown(wait=False)

    @property
    def _queue(self) -> bool:
        """Whether any key has work queued."""
        return bool(self._queues)

    def _over_limits(self, items: int, tokens: int) -> bool:
        return (self._queued_items + items > self.max_queue_items
                or (self.max_queue_tokens is not None and self._queued_tokens + tokens > self.max_queue_tokens))

    def refuses(self, items: int, tokens: int, key: str) -> bool:
        """Whether `key`'s new work is refused now: the queue is full (either bound) and the key has work queued (a
        key with nothing queued is always taken). With `tokens` 0 (not tokenized yet) a True is already certain."""
        return bool(self._key_items.get(key, 0)) and self._over_limits(items, tokens)

    def refuse(self) -> None:
        self.metrics.rejected.labels(self.name).inc()
        raise QueueFull(retry_after_s=1)

    async def submit(self, items: list, tokens: list[int], admitted: bool = False, key: str = "") -> list:
        """`admitted`: work already admitted under a budget of its own (a search's PRM calls, bounded by
        max_search_samples_in_flight) is never refused here: a 429 mid-search threw away an admitted search's work.
        `key`: whose work it is (the fair queue's turns; a key with nothing queued is always admitted)."""
        if not items:
            return []
        if not admitted and self.refuses(len(items), sum(tokens), key):
            self.refuse()
        pending = _Pending(list(items), list(tokens), asyncio.get_running_loop().create_future(), key)
        self._seen[key] = self.clock()
        if self._in_flight is not None and key not in self._in_flight:
            self._others_wait = True
        if key in self._queues:
            self._queues[key].append(pending)
        else:  # a key with nothing queued goes first: at the back, behind the key that always has work queued, it
            # waited for that key's next call too when the quantum holds one item (3 calls a light request, not 2)
            self._queues = {key: deque([pending]), **self._queues}
        self._key_items[key] = self._key_items.get(key, 0) + len(items)
        self._count(len(items), sum(tokens))
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            pending.future.cancel()  # the worker drops its items that have not started
            raise

    def _count(self, items: int, tokens: int) -> None:
        self._queued_items += items
        self._queued_tokens += tokens
        self.metrics.queue_depth.labels(self.name).set(self._queued_items)

    def _full(self) -> bool:
        return self._queued_items >= self.max_batch_items or self._queued_tokens >= self.max_batch_tokens

    def _dequeue(self, p: _Pending, items: int, tokens: int) -> None:
        self._count(-items, -tokens)
        left = self._key_items[p.key] - items
        if left:
            self._key_items[p.key] = left
        else:
            del self._key_items[p.key]

    def _head(self, key: str) -> _Pending | None:
        """The key's first request still wanted (requests cancelled while queued are dropped: they never reach the
        engine); None when the key has nothing left (its queue is removed)."""
        q = self._queues[key]
        while q and q[0].future.done():
            p = q.popleft()
            left = len(p.items) - p.taken
            self._dequeue(p, left, sum(p.tokens[p.taken:]))
            if p.future.cancelled():  # (not after an engine error, which already failed the request)
                self.metrics.cancelled_work.labels(self.name, "queued").inc(left)
        if not q:
            del self._queues[key]
            return None
        return q[0]

    def _take_batch(self) -> list[tuple[_Pending, int, int]]:
        """Slices (pending, start, end) of queued requests within the batch bounds: the keys in turn, each up to an
        equal share of the batch's tokens (at least one item); each key's requests in arrival order. The keys served
        go to the back of the turn order. The room a key leaves unused stays unused: with several keys waiting, a
        shorter engine call is what bounds a light key's wait (the room filled with the heavy key's items made the
        light key's p50/p99 under load 0.82/1.61 s, against 0.59/1.27 s without: load_tests/bench_hostile.py)."""
        batch, items, tokens = [], 0, 0
        keys = [k for k in list(self._queues) if self._head(k) is not None]
        limit = self.call_tokens(keys)
        # while several keys are active (the limit is the quantum's), safe points every quarter quantum: the work a
        # newly arrived key's item waits for (a whole 1,024-token forward was ~25 ms on this CPU, a light item ~9)
        self._step_tokens = max(1, limit // 4) if limit < self.max_batch_tokens else None
        share = max(1, limit // max(1, len(keys)))
        for key in keys:
            key_tokens = 0
            while items < self.max_batch_items and key in self._queues:
                p = self._head(key)
                if p is None:
                    break
                end = p.taken
                while (end < len(p.items) and items < self.max_batch_items
                       and (items == 0 or tokens + p.tokens[end] <= limit)
                       and (key_tokens == 0 or key_tokens + p.tokens[end] <= share)):
                    items, tokens, key_tokens = items + 1, tokens + p.tokens[end], key_tokens + p.tokens[end]
                    end += 1
                if end == p.taken:  # the batch, or this key's share of it, is full
                    break
                batch.append((p, p.taken, end))
                self._dequeue(p, end - p.taken, sum(p.tokens[p.taken:end]))
                p.taken = end
                if end == len(p.items):
                    self._queues[key].popleft()
                    if not self._queues[key]:
                        del self._queues[key]
        served = {p.key for p, _, _ in batch}
        for key in keys:  # served this turn: the others come first next time (a key the limit left out keeps its
            if key in served and key in self._queues:  # place: at a quantum under two items it was starved)
                self._queues[key] = self._queues.pop(key)
        return batch

    def call_tokens(self, queued_keys: list[str]) -> int:
        """The next engine call's token bound: max_batch_tokens, or the quantum's worth of tokens at the measured rate
        while more than one key is active (queued now, or seen within the window)."""
        if not self.quantum_s or self.rate is None:
            return self.max_batch_tokens
        now = self.clock()
        for key in [k for k, t in self._seen.items() if now - t > self.window_s and k not in self._queues]:
            del self._seen[key]  # (bounded by the keys active within the window)
        if len(self._seen.keys() | set(queued_keys)) < 2:
            return self.max_batch_tokens
        return max(1, min(self.max_batch_tokens, round(self.rate * self.quantum_s)))

    def _measure(self, tokens: int, seconds: float) -> None:
        """The engine's rate from one call. Calls cut to the quantum measure a lower rate (fixed costs weigh more), so
        the next ones get fewer tokens: the fixed point is a call of about one quantum, which is the aim."""
        if seconds <= 0 or tokens <= 0:
            return
        rate = tokens / seconds
        self.rate = rate if self.rate is None else 0.7 * self.rate + 0.3 * rate

    async def _wait_for_company(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while not self._full():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            if not self._queue:  # idle engine: wait for work, then briefly for concurrent requests to join
                self._arrived.clear()
                await self._arrived.wait()
                await self._wait_for_company()
            batch = self._take_batch()
            if not batch:
                continue
            self.metrics.batch_items.labels(self.name).observe(sum(e - s for _, s, e in batch))
            self.metrics.batch_tokens.labels(self.name).observe(sum(sum(p.tokens[s:e]) for p, s, e in batch))
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[_Pending, int, int]]) -> None:
        flat = [item for p, start, end in batch for item in p.items[start:end]]
        owner = [p for p, start, end in batch for _ in range(start, end)]
        self.busy_since = time.monotonic()

        self._in_flight = {p.key for p, _, _ in batch}
        self._others_wait = any(k not in self._in_flight for k in self._queues)
        self._call_started = self.clock()

        def timed() -> tuple[list, float]:  # timed in the engine thread: a wait for the thread is not engine time
            self._call_started = t = self.clock()
            out = self.score_fn(flat)
            return out, self.clock() - t

        def preempt() -> bool:  # read from the engine thread at its safe points
            return bool(self.quantum_s) and self._others_wait and self.clock() - self._call_started >= self.quantum_s

        try:
            # read from the engine thread between its forwards: a future is done once its request is cancelled
            # the second check: one item's request has gone (the vLLM engine aborts those items, returns None)
            with stop_when(lambda: all(p.future.done() for p, _, _ in batch),
                           lambda i: owner[i].future.done()), yield_when(preempt, self._serving_order(batch),
                                                                        self._step_tokens):
                ctx = contextvars.copy_context()  # the stop check travels with it (as asyncio.to_thread does)
                results, seconds = await asyncio.get_running_loop().run_in_executor(self._engine_thread, ctx.run,
                                                                                    timed)
            self._measure(sum(sum(p.tokens[s:e]) for p, s, e in batch), seconds)
        except Preempted as e:  # another key waits: hand out what is done, queue the rest again
            self._hand_out(batch, e.results)
            self._put_unreached_first(owner, e.results)
            return
        except WorkCancelled:  # every waiter went away mid-batch: nothing to hand out
            self.metrics.cancelled_work.labels(self.name, "engine").inc(len(flat))
            return
        except Exception as e:  # never fails the worker; one request's bad item never fails the others
            if len(batch) > 1:
                log.warning("PRM %s failed on a batch of %d requests (%s: %s); running each alone", self.name,
                            len(batch), type(e).__name__, e)
                for part in batch:
                    if not part[0].future.done():
                        await self._run_batch([part])
                return
            log.exception("PRM %s failed on a request's %d items", self.name, len(flat))
            if not batch[0][0].future.done():
                batch[0][0].future.set_exception(e)
            return
        finally:
            self.busy_since, self._in_flight = None, None
        dropped = sum(r is None for r in results)  # items whose requests left mid-batch (only theirs are None)
        if dropped:
            self.metrics.cancelled_work.labels(self.name, "engine").inc(dropped)
        self._unreached -= {p.key for p, _, _ in batch}
        self._hand_out(batch, results)

    def _serving_order(self, batch: list[tuple[_Pending, int, int]]) -> list[int] | None:
        """With the quantum on and several keys in one call: each item's key rank, a key the last hand-back did not
        reach first, then the fewest tokens in the call first (the engine answers each key as soon as its items are
        done: a light key's item then waits for its own forward, not for the heavy key's share after it). None: one
        key, the engine's own order."""
        if not self.quantum_s:
            return None
        tokens: dict[str, int] = {}
        for p, start, end in batch:
            tokens[p.key] = tokens.get(p.key, 0) + sum(p.tokens[start:end])
        if len(tokens) < 2:
            return None
        order = sorted(tokens, key=lambda k: (k not in self._unreached, tokens[k]))
        rank = {key: n for n, key in enumerate(order)}
        return [rank[p.key] for p, start, end in batch for _ in range(start, end)]

    def _put_unreached_first(self, owner: list[_Pending], results: list) -> None:
        """After a hand-back: the keys of the call that got nothing done go first in the turn order and in the next
        call's serving order. Without it a key whose share weighed more than another's (or the same: the turn order
        broke the tie) was handed back unreached call after call while the other key's items went first (light
        requests of 100-180 ms among 30 ms ones in load_tests/bench_hostile.py)."""
        reached = {p.key for p, r in zip(owner, results) if r is not None}
        unreached = {p.key for p in owner} - reached
        self._unreached = ((self._unreached - reached) | unreached) & self._queues.keys()
        for key in [k for k in self._queues if k not in unreached]:
            self._queues[key] = self._queues.pop(key)  # (dict order is the turn order: these go behind)

    def _hand_out(self, batch: list[tuple[_Pending, int, int]], results: list) -> None:
        """Each request its results; items without one go back to the front of their key's queue (a preempted
        call's, as a `_Pending` of their own that writes into the request's results) or, when their request has
        gone (the vLLM engine's mid-batch aborts), nowhere."""
        i = 0
        for p, start, end in batch:
            target, index = p.parent or (p, range(len(p.items)))
            left = []
            for k in range(start, end):
                if results[i] is None:
                    left.append(index[k])
                else:
                    target.results[index[k]] = results[i]
                    target.done += 1
                i += 1
            if target.future.done():
                continue
            if target.done == len(target.items):
                target.future.set_result(target.results)
            elif left:
                rest = _Pending([target.items[j] for j in left], [target.tokens[j] for j in left], target.future,
                                target.key, parent=(target, left))
                self._queues.setdefault(rest.key, deque()).appendleft(rest)
                self._key_items[rest.key] = self._key_items.get(rest.key, 0) + len(left)
                self._count(len(left), sum(rest.tokens))
