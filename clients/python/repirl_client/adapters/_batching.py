"""Scoring many trajectories through /v1/score in as few requests as the service's limits allow.

The items of one call are deduplicated, cut into requests of at most `max_items` (default 64, the service's default
`limits.max_items`) and sent with at most `max_concurrency` requests in flight. The service's answers tune the plan:

- 413 on `items` ("... exceeds the limit of N"): the limit is learnt (kept for later calls) and the request re-split;
- 413 on `body`: the request is halved;
- 413/422 naming one item (`items[3]`, `items[3].steps[1]`, `items.3.steps`): that item fails alone (its result is
  the error), the others are sent again;
- anything else (after the client's own retries): every item of that request fails with the error.

The planning is sans-IO (`_Plan`), so the blocking and the asyncio drivers run the same logic."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple, Union

from repirl_client._client import AsyncClient, Client
from repirl_client._exceptions import APIStatusError, RepirlError
from repirl_client.types import ScoreResult

Item = Tuple[str, Tuple[str, ...]]
Outcome = Union[ScoreResult, Exception]

_ITEM_PARAM = re.compile(r"^items(?:\[(\d+)\]|\.(\d+))(?:$|[.\[])")
_LIMIT = re.compile(r"limit of (\d+)")
DEFAULT_MAX_ITEMS = 64


def item_of_param(param: Optional[str]) -> Optional[int]:
    m = _ITEM_PARAM.match(param or "")
    return int(m.group(1) or m.group(2)) if m else None


class _Limits:
    """What the scorer has learnt about the service, shared by its calls (and threads)."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._lock = threading.Lock()

    def learn(self, max_items: int) -> None:
        with self._lock:
            self.max_items = max(1, min(self.max_items, max_items))


class _Plan:
    """Requests still to send for a set of unique items, and the outcome of each item."""

    def __init__(self, n: int, limits: _Limits):
        self.limits = limits
        self.outcomes: Dict[int, Outcome] = {}
        size = max(1, limits.max_items)
        self.todo: List[List[int]] = [list(range(i, min(n, i + size))) for i in range(0, n, size)]

    def next(self) -> Optional[List[int]]:
        return self.todo.pop(0) if self.todo else None

    def done(self, batch: List[int], results: Sequence[ScoreResult]) -> None:
        for i, r in zip(batch, results):
            self.outcomes[i] = r

    def failed(self, batch: List[int], error: Exception) -> None:
        if isinstance(error, APIStatusError) and error.status_code in (413, 422):
            k = item_of_param(error.param)
            if k is not None and k < len(batch):
                self.outcomes[batch[k]] = error
                rest = batch[:k] + batch[k + 1:]
                if rest:
                    self.todo.append(rest)
                return
            if error.status_code == 413 and error.param == "items" and len(batch) > 1:
                m = _LIMIT.search(error.error_message or "")
                self.limits.learn(int(m.group(1)) if m else len(batch) // 2)
                size = self.limits.max_items
                self.todo.extend(batch[i:i + size] for i in range(0, len(batch), size))
                return
            if error.status_code == 413 and error.param == "body" and len(batch) > 1:
                half = len(batch) // 2
                self.todo.extend([batch[:half], batch[half:]])
                return
        for i in batch:
            self.outcomes[i] = error


def _unique(items: Sequence[Tuple[str, Sequence[str]]]) -> Tuple[List[Item], List[int]]:
    """Unique items and, per input item, its position among them."""
    index: Dict[Item, int] = {}
    where = []
    for question, steps in items:
        key = (question, tuple(steps))
        where.append(index.setdefault(key, len(index)))
    return list(index), where


class BatchScorer:
    """Scores (question, steps) items; `score()` returns one `ScoreResult` or exception per item, in order."""

    def __init__(self, client: Client, *, model: Optional[str] = None, aggregation: Optional[str] = None,
                 max_items: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4):
        self.client, self.model, self.aggregation = client, model, aggregation
        self.limits = _Limits(max_items)
        self.max_concurrency = max(1, max_concurrency)
        self.requests_sent = 0

    def score(self, items: Sequence[Tuple[str, Sequence[str]]]) -> List[Outcome]:
        unique, where = _unique(items)
        plan = _Plan(len(unique), self.limits)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    batch = plan.next()
                    if batch is None:
                        return
                    self.requests_sent += 1
                try:  # the request runs outside the lock; the plan is updated under it
                    r = self.client.score(items=[(unique[i][0], list(unique[i][1])) for i in batch],
                                          model=self.model, aggregation=self.aggregation)
                except RepirlError as e:
                    with lock:
                        plan.failed(batch, e)  # may add work (a split): workers loop until none is left
                else:
                    with lock:
                        plan.done(batch, r.data)

        workers = min(self.max_concurrency, len(plan.todo))
        if workers <= 1:
            worker()
        else:
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(worker) for _ in range(workers)]:
                    f.result()
            while plan.todo:  # work added by a split after the other workers had finished
                worker()
        return [plan.outcomes[w] for w in where]


class AsyncBatchScorer:
    """The asyncio twin of `BatchScorer` (same plan, requests gathered under a semaphore)."""

    def __init__(self, client: AsyncClient, *, model: Optional[str] = None, aggregation: Optional[str] = None,
                 max_items: int = DEFAULT_MAX_ITEMS, max_concurrency: int = 4):
        self.client, self.model, self.aggregation = client, model, aggregation
        self.limits = _Limits(max_items)
        self.max_concurrency = max(1, max_concurrency)
        self.requests_sent = 0

    async def score(self, items: Sequence[Tuple[str, Sequence[str]]]) -> List[Outcome]:
        unique, where = _unique(items)
        plan = _Plan(len(unique), self.limits)
        sem = asyncio.Semaphore(self.max_concurrency)

        async def send(batch: List[int]) -> None:
            async with sem:
                self.requests_sent += 1
                try:
                    r = await self.client.score(items=[(unique[i][0], list(unique[i][1])) for i in batch],
                                                model=self.model, aggregation=self.aggregation)
                except RepirlError as e:
                    plan.failed(batch, e)
                else:
                    plan.done(batch, r.data)

        while plan.todo:
            batches = []
            while (b := plan.next()) is not None:
                batches.append(b)
            await asyncio.gather(*(send(b) for b in batches))
        return [plan.outcomes[w] for w in where]
