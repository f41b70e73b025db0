"""Micro-batching of PRM work across concurrent requests.

Requests put their items on one queue per PRM; a single worker runs the engine (in a thread) on batches of at most
`max_batch_items` items and `max_batch_tokens` tokens (a request larger than that is split across batches) and hands
each request its results. Batching is continuous: items that arrived while the engine was busy form the next batch
at once; only a batch that starts on an idle engine waits up to `max_wait_ms` for company (woken by arrivals, not
by polling). A full queue refuses new work (429). A request whose client went away is cancelled: its items that
have not reached the engine are dropped, and a batch already in the engine stops at the engine's next safe point
once every request waiting for it is gone (repirl/cancel.py; `repirl_cancelled_work_total{stage}` counts both). A
batch the engine fails on is run again one request at a time, so one
request's bad item fails that request only (it used to fail every request that shared its batch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from repirl.cancel import WorkCancelled, stop_when
from server.errors import QueueFull
from server.metrics import Metrics

log = logging.getLogger("repirl.server")


@dataclass
class _Pending:
    items: list
    tokens: list[int]
    future: asyncio.Future
    taken: int = 0  # items already handed to a batch (a large request spans several batches)
    done: int = 0  # items whose results are in
    results: list = field(default_factory=list)

    def __post_init__(self):
        self.results = [None] * len(self.items)


class MicroBatcher:
    def __init__(self, name: str, score_fn: Callable[[Sequence], list], *, max_batch_tokens: int,
                 max_wait_ms: float, max_queue_items: int, metrics: Metrics, max_batch_items: int = 256):
        """`score_fn(items) -> results` runs in a worker thread; items are whatever the engine takes."""
        self.name, self.score_fn, self.metrics = name, score_fn, metrics
        self.max_batch_tokens, self.max_batch_items = max_batch_tokens, max_batch_items
        self.max_wait_s, self.max_queue_items = max_wait_ms / 1000, max_queue_items
        self._queue: deque[_Pending] = deque()
        self._queued_items = self._queued_tokens = 0  # running totals: the wait loop never re-sums the queue
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.busy_since: float | None = None  # time.monotonic() when the engine call in flight started (readiness)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, items: list, tokens: list[int], admitted: bool = False) -> list:
        """`admitted`: work already admitted under a budget of its own (a search's PRM calls, bounded by
        max_search_samples_in_flight) is never refused here: a 429 mid-search threw away an admitted search's work."""
        if not items:
            return []
        if not admitted and self._queued_items + len(items) > self.max_queue_items:
            self.metrics.rejected.labels(self.name).inc()
            raise QueueFull(retry_after_s=1)
        pending = _Pending(list(items), list(tokens), asyncio.get_running_loop().create_future())
        self._queue.append(pending)
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

    def _take_batch(self) -> list[tuple[_Pending, int, int]]:
        """Slices (pending, start, end) of queued requests, in arrival order, within the batch bounds."""
        batch, items, tokens = [], 0, 0
        while self._queue and items < self.max_batch_items:
            p = self._queue[0]
            if p.future.done():  # cancelled while queued: its remaining items never reach the engine
                self._queue.popleft()
                left = len(p.items) - p.taken
                self._count(-left, -sum(p.tokens[p.taken:]))
                if p.future.cancelled():  # (not after an engine error, which already failed the request)
                    self.metrics.cancelled_work.labels(self.name, "queued").inc(left)
                continue
            end = p.taken
            while (end < len(p.items) and items < self.max_batch_items
                   and (items == 0 or tokens + p.tokens[end] <= self.max_batch_tokens)):
                items, tokens = items + 1, tokens + p.tokens[end]
                end += 1
            if end == p.taken:  # the batch is full by tokens
                break
            batch.append((p, p.taken, end))
            self._count(-(end - p.taken), -sum(p.tokens[p.taken:end]))
            p.taken = end
            if end == len(p.items):
                self._queue.popleft()
        return batch

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
        self.busy_since = time.monotonic()
        try:
            # read from the engine thread between its forwards: a future is done once its request is cancelled
            with stop_when(lambda: all(p.future.done() for p, _, _ in batch)):
                results = await asyncio.to_thread(self.score_fn, flat)
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
            self.busy_since = None
        i = 0
        for p, start, end in batch:
            p.results[start:end] = results[i: i + end - start]
            i += end - start
            p.done += end - start
            if p.done == len(p.items) and not p.future.done():
                p.future.set_result(p.results)
