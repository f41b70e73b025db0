"""Micro-batching of PRM work across concurrent requests.

Requests put their items on one queue per PRM; a single worker takes items up to `max_batch_tokens` (waiting at
most `max_wait_ms` for the batch to fill), runs the engine once in a thread, and hands each request its results.
A full queue refuses new work (429). A request whose client went away is cancelled: its items are dropped before
they reach the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from repirl.scoring.base import Item, StepScores
from server.errors import QueueFull
from server.metrics import Metrics

log = logging.getLogger("repirl.server")


@dataclass
class _Pending:
    items: list[Item]
    tokens: list[int]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, name: str, score_fn: Callable[[Sequence[Item]], list[StepScores]], *, max_batch_tokens: int,
                 max_wait_ms: float, max_queue_items: int, metrics: Metrics):
        self.name, self.score_fn, self.metrics = name, score_fn, metrics
        self.max_batch_tokens, self.max_wait_s, self.max_queue_items = max_batch_tokens, max_wait_ms / 1000, max_queue_items
        self._queue: list[_Pending] = []
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.busy = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, items: list[Item], tokens: list[int]) -> list[StepScores]:
        if not items:
            return []
        if self._queued_items + len(items) > self.max_queue_items:
            self.metrics.rejected.labels(self.name).inc()
            raise QueueFull(retry_after_s=1)
        pending = _Pending(items, tokens, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._set_depth(len(items))
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            pending.future.cancel()  # the worker skips it if it has not started
            raise

    def _set_depth(self, delta: int) -> None:
        self._queued_items += delta
        self.metrics.queue_depth.labels(self.name).set(self._queued_items)

    def _take_batch(self) -> list[_Pending]:
        batch, tokens = [], 0
        while self._queue:
            p = self._queue[0]
            if p.future.done():  # cancelled while queued: never reaches the engine
                self._queue.pop(0)
                self._set_depth(-len(p.items))
                self.metrics.cancelled.labels(self.name).inc(len(p.items))
                continue
            if batch and tokens + sum(p.tokens) > self.max_batch_tokens:
                break
            self._queue.pop(0)
            self._set_depth(-len(p.items))
            batch.append(p)
            tokens += sum(p.tokens)
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # let concurrent requests join, up to max_wait or a full batch
            deadline = time.monotonic() + self.max_wait_s
            while time.monotonic() < deadline and sum(sum(p.tokens) for p in self._queue) < self.max_batch_tokens:
                await asyncio.sleep(min(0.001, self.max_wait_s))
            batch = self._take_batch()
            if not batch:
                continue
            flat = [it for p in batch for it in p.items]
            self.metrics.batch_items.labels(self.name).observe(len(flat))
            self.metrics.batch_tokens.labels(self.name).observe(sum(sum(p.tokens) for p in batch))
            self.busy = True
            try:
                results = await asyncio.to_thread(self.score_fn, flat)
            except Exception as e:  # one bad batch fails its requests, not the worker
                log.exception("PRM %s failed on a batch of %d items", self.name, len(flat))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            finally:
                self.busy = False
            i = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(results[i: i + len(p.items)])
                i += len(p.items)
