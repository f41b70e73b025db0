"""CPU work on request text (tokenizing, chat templates, answer parsing) off the event loop, in turns.

Every route that tokenizes or parses user text did it with `asyncio.to_thread`, on the loop's default executor: a few
threads and one unbounded FIFO queue. A client sending large bodies with many connections (24 connections of
900 KB /pooling inputs, each about a second of tokenizing) queued that work ahead of everyone's, and a 100-byte
/v1/score from another client waited 11 s (p50; 11 ms alone). Here the work waits in a queue bounded in request
bytes (`limits.max_text_work_bytes`; 429 + Retry-After beyond it, except for a caller with nothing waiting) and is
taken in turns as the PRM queue takes keys (server/batching.py): a caller (API key; one caller without keys) with
nothing waiting goes first, a caller whose job just started goes to the back; each turn starts that caller's
smallest request, and large requests (over 64 KB) never hold the last thread. So a small
request waits for no one's backlog, with or without keys, and a key's flood delays another key's large requests by
about one job, not by the flood.

The cost of a job is its request's body size (REQUEST_BYTES, set by the body-limit middleware from Content-Length;
a body without one counts as the largest allowed). A job whose request is cancelled before it starts never runs."""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from server.errors import QueueFull

T = TypeVar("T")

# a request up to this size is "small": it may take the one thread large jobs leave free (a /v1/score of 64 items
# of a few hundred characters is about 50 KB)
SMALL_BYTES = 64 << 10
# the request's body size in bytes (server/middleware.py BodyLimitMiddleware); 0 outside a request
REQUEST_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("repirl_request_bytes", default=0)


class TextWork:
    """`await run(caller, fn, *args)`: fn(*args) on one of `threads` threads, in turns by caller (module doc)."""

    def __init__(self, threads: int, max_queued_bytes: int, metrics=None):
        if threads < 2:  # large jobs leave one thread free: one thread would never run them
            raise ValueError(f"text work needs at least 2 threads, got {threads}")
        self.threads, self.max_queued_bytes, self.metrics = threads, max_queued_bytes, metrics
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="repirl-text")
        self.running = self.running_large = 0
        self.queued_bytes = 0
        self._queues: dict[str, list] = {}  # caller -> heap of (bytes, seq, job); dict order = whose turn comes first
        self._seq = itertools.count()

    async def run(self, caller: str, fn: Callable[..., T], *args) -> T:
        cost = REQUEST_BYTES.get()
        if self.queued_bytes + cost > self.max_queued_bytes and caller in self._queues:
            if self.metrics is not None:
                self.metrics.rejected.labels(model="text-work").inc()
            raise QueueFull(message=f"requests waiting for tokenizing hold {self.queued_bytes} bytes "
                                    f"(max_text_work_bytes {self.max_queued_bytes}); retry later")
        loop = asyncio.get_running_loop()
        job = (loop.create_future(), contextvars.copy_context(), fn, args, cost)
        if caller not in self._queues:  # nothing waiting: its turn comes first
            self._queues = {caller: [], **self._queues}
        heapq.heappush(self._queues[caller], (cost, next(self._seq), job))
        self.queued_bytes += cost
        self._dispatch(loop)
        try:
            return await job[0]
        finally:
            if job[0].cancelled() or not job[0].done():  # its request was cancelled (the client left): a waiting
                job[0].cancel()  # job leaves the queue now, a running one finishes on its own
                self._forget(caller, job)

    def _forget(self, caller: str, job: tuple) -> None:
        heap = self._queues.get(caller, [])
        kept = [entry for entry in heap if entry[2] is not job]
        if len(kept) == len(heap):
            return  # already running
        self.queued_bytes -= job[4]
        if kept:
            heapq.heapify(kept)
            self._queues[caller] = kept
        else:
            del self._queues[caller]
        self._report()

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.text_work_bytes.set(self.queued_bytes)
            self.metrics.text_work_running.set(self.running)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start jobs while threads are free: callers in turn order, each caller's smallest job; a large job never
        takes the last thread, so a small request never waits for large ones to finish."""
        blocked: set[str] = set()  # callers whose smallest waiting job is large while the large threads are taken
        while self.running < self.threads:
            caller = next((c for c in self._queues if c not in blocked), None)
            if caller is None:
                break
            heap = self._queues[caller]
            large = heap[0][0] > SMALL_BYTES  # its smallest: all of this caller's waiting jobs are large
            if large and self.running_large >= self.threads - 1:
                blocked.add(caller)
                continue
            _, _, (future, ctx, fn, args, cost) = heapq.heappop(heap)
            del self._queues[caller]
            if heap:  # served: to the back of the turn order
                self._queues[caller] = heap
            self.queued_bytes -= cost
            self.running += 1
            self.running_large += large
            done = loop.run_in_executor(self.executor, ctx.run, fn, *args)
            done.add_done_callback(lambda d, f=future, big=large: self._finished(loop, d, f, big))
        self._report()

    def _finished(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future, future: asyncio.Future,
                  large: bool) -> None:
        self.running -= 1
        self.running_large -= large
        if not future.done():
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())
        self._dispatch(loop)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
